//! Training a planned run through its phase schedule, writing its metrics.

mod adamw;
mod jobs;
mod metrics;
mod progress;
mod run;
mod step;

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use adamw::{AdamW, clip_grad_norm, grad_norm};
pub use jobs::{JobLayout, train_in_turn, train_runs};
pub use metrics::{MetricsRow, MetricsWriter, read_metrics};
pub use progress::Progress;
pub use run::{RunOptions, train_run};
pub use step::{StepStats, eval_loss, loss_and_grads, train_step};

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RunStatus {
    /// Training is under way (or was interrupted).
    Running {
        /// Last step written to metrics.
        step: usize,
    },
    /// Every phase finished.
    Complete {
        /// Total steps.
        step: usize,
    },
    /// The loss became non-finite at `step`; the weights before it are the last good ones.
    Diverged {
        /// The step whose loss was not finite.
        step: usize,
    },
    /// Stopped on request (Ctrl-C) after `step`, with a checkpoint there.
    Interrupted {
        /// Last step completed and checkpointed.
        step: usize,
    },
}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// How it ended.
    pub status: RunStatus,
    /// Loss of the last step trained.
    pub last_train_loss: Option<f32>,
    /// Last validation loss.
    pub last_val_loss: Option<f32>,
    /// Wall time spent training.
    pub wall_s: f64,
}

/// Writes `contents` to `path` atomically: a temporary file in the same folder, synced, then renamed.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Reads a run folder's `status.json`, if there is one.
pub fn read_status(dir: &Path) -> Option<RunStatus> {
    let text = std::fs::read_to_string(dir.join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

pub(crate) fn write_status(dir: &Path, status: &RunStatus) -> Result<()> {
    write_atomic(
        &dir.join("status.json"),
        serde_json::to_string_pretty(status)?.as_bytes(),
    )
}
