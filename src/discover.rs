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
    /// Steps summed over all runs.
    pub total_steps: usize,
}

/// Every `*.toml` under `dir` (sorted by path), each with its summary or its errors.
pub fn discover(dir: &Path) -> Vec<(PathBuf, Result<SpecSummary, SpecErrors>)> {
    let mut paths: Vec<PathBuf> = WalkDir::new(dir)
        .follow_links(true)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "toml"))
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
                    total_steps: runs.iter().map(|r| r.total_steps()).fold(0, usize::saturating_add),
                })
            });
            (p, summary)
        })
        .collect()
}
