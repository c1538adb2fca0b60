//! Finding spec files under a folder. A file that does not parse is reported, not skipped.

use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::spec::{SpecErrors, SpecFile};

/// What one discovered spec expands to.
#[derive(Clone, Debug)]
pub struct SpecSummary {
    /// Experiment name.
    pub name: String,
    /// Number of runs.
    pub runs: usize,
    /// Seeds each run trains with (1 without `[experiment] seeds`).
    pub seeds: usize,
    /// Steps summed over every training (each run once per seed).
    pub total_steps: usize,
}

/// Every `*.toml` under `dir` (sorted by path), each with its summary or its errors.
pub fn discover(dir: &Path) -> Vec<(PathBuf, Result<SpecSummary, SpecErrors>)> {
    let mut paths: Vec<PathBuf> = WalkDir::new(dir)
        .follow_links(true)
        .into_iter()
        .filter_map(Result::ok)
        // Anything named *.toml but a folder: a link to a device or a pipe is listed with its
        // error rather than passed over in silence.
        .filter(|e| !e.file_type().is_dir() && e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| e.into_path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let summary = SpecFile::load(&p).and_then(|spec| {
                let runs = spec.expand(&[])?;
                Ok(SpecSummary {
                    name: spec.name.clone(),
                    runs: runs.len(),
                    seeds: runs.first().map_or(1, |r| r.seeds().len()),
                    total_steps: runs
                        .iter()
                        .map(|r| r.total_steps().saturating_mul(r.seeds().len()))
                        .fold(0, usize::saturating_add),
                })
            });
            (p, summary)
        })
        .collect()
}

/// What `gptlab list` prints for `found`: one line per spec, the errors of an invalid one
/// indented under it; with the number of invalid specs.
pub fn listing(dir: &Path, found: &[(PathBuf, Result<SpecSummary, SpecErrors>)]) -> (String, usize) {
    if found.is_empty() {
        return (format!("no spec files (*.toml) under {}", dir.display()), 0);
    }
    let mut out = vec![];
    let mut bad = 0;
    for (path, summary) in found {
        match summary {
            Ok(s) => {
                let runs = match s.seeds {
                    1 => format!("{} runs", s.runs),
                    n => format!("{} runs × {n} seeds = {} trainings", s.runs, s.runs * n),
                };
                out.push(format!(
                    "{:<40} {:<20} {:>34} {:>8} steps",
                    path.display(),
                    s.name,
                    runs,
                    s.total_steps
                ))
            }
            Err(e) => {
                bad += 1;
                out.push(format!("{:<40} INVALID", path.display()));
                out.extend(e.to_string().lines().map(|line| format!("    {line}")));
            }
        }
    }
    (out.join("\n"), bad)
}
