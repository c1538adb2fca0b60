//! What produced a run's results: `provenance.json` in the run folder, one entry per session
//! that trained it (a resumed run has several): the gptlab version and the git commit it was
//! built from (and whether that tree had changes), the command line as typed, the spec file
//! and its SHA-256, the data file and its SHA-256, the host, its CPU, the threads, the device,
//! the steps trained and the start and end times in UTC.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// gptlab's version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit this binary was built from, or `unknown` (no git at build time).
pub const GIT_COMMIT: &str = env!("GPTLAB_GIT_COMMIT");
/// Whether that tree had uncommitted changes to tracked files: `true`, `false` or `unknown`.
pub const GIT_DIRTY: &str = env!("GPTLAB_GIT_DIRTY");

/// A build in one phrase: `0.1.0 (abc1234def01)`, or with `, with uncommitted changes`.
fn build_label(version: &str, commit: &str, dirty: &str) -> String {
    let short = &commit[..commit.len().min(12)];
    match dirty {
        "true" => format!("{version} ({short}, with uncommitted changes)"),
        _ => format!("{version} ({short})"),
    }
}

/// What the session knows before any run trains: the command and the spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The command line as given (`std::env::args`).
    pub command: Vec<String>,
    /// The spec file.
    pub spec_file: String,
    /// SHA-256 of the spec file's bytes.
    pub spec_sha256: String,
    /// The specs it `extends`, nearest first, each with its SHA-256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spec_bases: Vec<SpecBase>,
    /// The device that trains, e.g. `cpu`.
    pub device: String,
}

/// A spec file a spec extends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpecBase {
    /// Its path.
    pub file: String,
    /// SHA-256 of its bytes when the spec was read.
    pub sha256: String,
}

impl SessionInfo {
    /// This process's command line, and the spec at `spec` (hashed now) with the specs it
    /// extends.
    pub fn new(spec: &Path, bases: &[(std::path::PathBuf, String)], device: &str) -> Self {
        let bytes = crate::fsio::read_capped(spec, crate::fsio::MAX_SPEC_BYTES, "the spec").unwrap_or_default();
        Self {
            command: std::env::args().collect(),
            spec_file: spec.display().to_string(),
            spec_sha256: crate::fsio::sha256_hex(&bytes),
            spec_bases: bases
                .iter()
                .map(|(file, sha256)| SpecBase {
                    file: file.display().to_string(),
                    sha256: sha256.clone(),
                })
                .collect(),
            device: device.to_string(),
        }
    }
}

/// One session of training a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSession {
    /// gptlab's version.
    pub gptlab_version: String,
    /// The git commit it was built from (`unknown` without git).
    pub git_commit: String,
    /// Whether that tree had uncommitted changes (`true`, `false`, `unknown`).
    pub git_dirty: String,
    /// The command and the spec.
    #[serde(flatten)]
    pub session: SessionInfo,
    /// The data file, as resolved.
    pub data_file: String,
    /// SHA-256 of the data (a folder's: of the list of its files' hashes).
    pub data_sha256: String,
    /// Every file of the data (a folder's, and `val_path`'s), with its SHA-256 and size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_files: Vec<crate::data::DataFile>,
    /// The tokenizer (absent in sessions written before tokenizers: characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<crate::data::TokenizerRecord>,
    /// The checkpoint the run started from (`init_from`), with its weights' SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<crate::checkpoint::WarmStart>,
    /// The machine's host name.
    pub host: String,
    /// The Slurm job that trained it (`123_4` for a task of an array), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The CPU model.
    pub cpu: String,
    /// Threads this run trained with.
    pub threads: usize,
    /// The CPU instruction-set path of its arithmetic (absent on a GPU and in sessions
    /// written before paths were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isa: Option<crate::isa::Isa>,
    /// The path of the checkpoint this session resumed from, when it was another one: the
    /// run is not bit-identical to an uninterrupted run from there on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_isa: Option<crate::isa::Isa>,
    /// The settings this session trained with, through the run's last step (the identity a
    /// checkpoint records, see `RunPlan::identity`): what the metrics rows it wrote after the
    /// run's newest checkpoint are checked against (absent in sessions of older gptlabs).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub settings: std::collections::BTreeMap<String, String>,
    /// The first step this session trained (the step after the checkpoint it resumed from).
    pub first_step: usize,
    /// The last step it trained, once it ended.
    pub last_step: Option<usize>,
    /// How it ended: `complete`, `interrupted`, `diverged`; absent while running (or if the
    /// process died).
    pub outcome: Option<String>,
    /// When it started, UTC (ISO 8601).
    pub started_utc: String,
    /// When it ended, UTC.
    pub ended_utc: Option<String>,
}

impl RunSession {
    /// A session starting now at `first_step`.
    pub fn start(session: &SessionInfo, data_file: &Path, corpus: &crate::data::Corpus, first_step: usize) -> Self {
        Self {
            gptlab_version: VERSION.into(),
            git_commit: GIT_COMMIT.into(),
            git_dirty: GIT_DIRTY.into(),
            session: session.clone(),
            data_file: data_file.display().to_string(),
            data_sha256: corpus.sha256.clone(),
            data_files: corpus.files.iter().chain(&corpus.val_files).cloned().collect(),
            tokenizer: Some(corpus.tokenizer.record().clone()),
            init_from: None,
            host: host(),
            job: job_id(),
            cpu: cpu_model(),
            threads: rayon::current_num_threads(),
            isa: None,
            resumed_from_isa: None,
            settings: Default::default(),
            first_step,
            last_step: None,
            outcome: None,
            started_utc: utc_now(),
            ended_utc: None,
        }
    }
}

/// `provenance.json`: every session that trained the run, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The sessions.
    pub sessions: Vec<RunSession>,
}

impl Provenance {
    /// The distinct builds (`version (commit…)`) that trained the run.
    pub fn builds(&self) -> Vec<String> {
        let mut out: Vec<String> = vec![];
        for s in &self.sessions {
            let b = build_label(&s.gptlab_version, &s.git_commit, &s.git_dirty);
            if !out.contains(&b) {
                out.push(b);
            }
        }
        out
    }
}

/// The host name (`unknown` if it cannot be read).
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The Slurm job this process runs in: `<array job>_<task>` for a task of a job array, else
/// the job id; `None` outside Slurm.
pub fn job_id() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        (Some(array), Some(task)) => Some(format!("{array}_{task}")),
        _ => var("SLURM_JOB_ID"),
    }
}

/// The CPU model (`unknown` if it cannot be read).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Now, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

/// Seconds since 1970 as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian calendar; Howard
/// Hinnant's `civil_from_days`).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_matches_known_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z"); // a leap day of a century year
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
