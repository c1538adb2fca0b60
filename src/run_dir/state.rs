//! Where a run stands, read from its folder and its lock: what `gptlab status` prints and what
//! the report says of a run that has not finished.

use std::time::SystemTime;

use super::{RunDir, RunStatus};
use crate::lock::{LockState, inspect};

/// A run's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// Nothing trained yet.
    Pending,
    /// A live process holds its lock.
    Running,
    /// Every step of the schedule trained.
    Complete,
    /// Stopped part-way: on request (a checkpoint at its step), or by a process that died
    /// (its status still said running and nobody holds its lock).
    Interrupted,
    /// The loss became non-finite.
    Diverged,
    /// Training stopped with an error.
    Failed,
    /// Its results were trained with other settings than the spec now gives (decided by the
    /// caller, who knows the plan: see [`crate::experiment::differs_from_results`]).
    OtherSettings,
}

impl std::fmt::Display for StateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StateKind::Pending => "pending",
            StateKind::Running => "running",
            StateKind::Complete => "complete",
            StateKind::Interrupted => "interrupted",
            StateKind::Diverged => "diverged",
            StateKind::Failed => "failed",
            StateKind::OtherSettings => "other-settings",
        })
    }
}

/// A run's state with what says more about it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunState {
    /// The state.
    pub kind: StateKind,
    /// The last step trained (0: none).
    pub step: usize,
    /// The host training it, or that trained it last.
    pub host: Option<String>,
    /// The Slurm job training it, or that trained it last.
    pub job: Option<String>,
    /// When the run last showed progress: the lock's heartbeat while running, else the newest
    /// of its metrics and status files.
    pub updated: Option<SystemTime>,
    /// Why, where the state needs a reason (the error of a failed run, a process that died).
    pub note: Option<String>,
}

impl RunState {
    /// A phrase for a page or a table: `complete`, `not started`, `running on node7 (Slurm job
    /// 12_3), step 40`, `interrupted after step 8`, `failed after step 8: …`.
    pub fn phrase(&self) -> String {
        let step = self.step;
        match self.kind {
            StateKind::Pending => "not started".into(),
            StateKind::Complete => "complete".into(),
            StateKind::Running => {
                let host = self.host.as_deref().unwrap_or("another host");
                let job = self
                    .job
                    .as_ref()
                    .map(|j| format!(" (Slurm job {j})"))
                    .unwrap_or_default();
                format!("running on {host}{job}, step {step}")
            }
            StateKind::Interrupted => format!("interrupted after step {step}"),
            StateKind::Diverged => match &self.note {
                Some(cause) => format!("diverged at step {step} ({cause})"),
                None => format!("diverged at step {step}"),
            },
            StateKind::OtherSettings => format!(
                "trained with other settings ({})",
                self.note.as_deref().unwrap_or("see gptlab run")
            ),
            StateKind::Failed => {
                let why = self.note.as_deref().and_then(|n| n.lines().next()).unwrap_or("");
                let short: String = why.chars().take(160).collect();
                format!("failed after step {step}: {short}")
            }
        }
    }
}

impl RunDir {
    /// The run's state, for a schedule of `total` steps.
    pub fn state(&self, total: usize) -> RunState {
        let provenance = self.read_provenance();
        let last = provenance.sessions.last();
        let modified = |p: std::path::PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut state = RunState {
            kind: StateKind::Pending,
            step: 0,
            host: last.map(|s| s.host.clone()),
            job: last.and_then(|s| s.job.clone()),
            updated: modified(self.metrics_path()).max(modified(self.status_path())),
            note: None,
        };
        let status = self.read_status();
        state.step = match &status {
            Some(
                RunStatus::Running { step }
                | RunStatus::Complete { step }
                | RunStatus::Diverged { step, .. }
                | RunStatus::Interrupted { step }
                | RunStatus::Failed { step, .. },
            ) => *step,
            None => 0,
        };
        if let LockState::Live(holder) = inspect(&self.lock_path()) {
            state.kind = StateKind::Running;
            // The last metrics row is the step under way's predecessor; status.json only moves
            // at checkpoints.
            state.step = state.step.max(self.last_metrics_step());
            if let Some(h) = holder {
                state.updated = Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(h.heartbeat));
                (state.host, state.job) = (Some(h.host), h.job);
            }
            return state;
        }
        state.kind = match status {
            None => match self.last_metrics_step() {
                0 => StateKind::Pending,
                step => {
                    state.step = step;
                    state.note = Some("it has metrics but no status".into());
                    StateKind::Interrupted
                }
            },
            Some(RunStatus::Complete { step }) if step >= total => StateKind::Complete,
            Some(RunStatus::Complete { step }) => {
                state.note = Some(format!("trained {step} steps; the spec now asks for {total}"));
                StateKind::Interrupted
            }
            Some(RunStatus::Running { .. }) => {
                state.step = state.step.max(self.last_metrics_step());
                state.note =
                    Some("its process stopped without a checkpoint; the next run resumes from the last one".into());
                StateKind::Interrupted
            }
            Some(RunStatus::Interrupted { .. }) => StateKind::Interrupted,
            Some(RunStatus::Diverged { cause, .. }) => {
                state.note = cause;
                StateKind::Diverged
            }
            Some(RunStatus::Failed { error, .. }) => {
                state.note = Some(error);
                StateKind::Failed
            }
        };
        // A gptlab that watched only the training loss recorded runs whose validation or
        // [eval] loss turned NaN as complete: they diverged there, whatever the status says.
        if matches!(state.kind, StateKind::Complete | StateKind::Interrupted)
            && let Some((step, cause)) = self.non_finite_loss()
        {
            (state.kind, state.step, state.note) = (StateKind::Diverged, step, Some(cause));
        }
        state
    }

    /// The first step whose training, validation or `[eval]` loss in the run's files is not
    /// finite, and which loss.
    pub fn non_finite_loss(&self) -> Option<(usize, String)> {
        let in_metrics = self
            .read_metrics_lenient()
            .ok()
            .and_then(|(rows, _)| super::first_non_finite(&rows));
        let in_eval = self
            .read_eval_lenient()
            .ok()
            .and_then(|(rows, _)| rows.iter().find_map(|r| Some((r.step, r.non_finite()?))));
        match (in_metrics, in_eval) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// The step of the last row of `metrics.csv` (0 for none).
    pub fn last_metrics_step(&self) -> usize {
        self.read_metrics_lenient()
            .ok()
            .and_then(|(rows, _)| rows.last().map(|r| r.step))
            .unwrap_or(0)
    }
}
