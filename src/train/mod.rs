//! Training a planned run through its phase schedule, writing its metrics.

mod adamw;
mod jobs;
pub mod length_eval;
mod progress;
mod run;
mod step;

use crate::run_dir::RunStatus;

pub use adamw::{AdamW, clip_grad_norm, grad_norm};
pub use jobs::{JobLayout, train_in_parallel, train_in_turn};
pub use progress::Progress;
pub use run::{EvalHook, RunOptions, train_run};
pub use step::{StepDropout, StepStats, eval_loss, loss_and_grads, train_step, train_step_accumulated};

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
