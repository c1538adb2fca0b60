//! Training a planned run through its phase schedule, writing its metrics.

mod adamw;
mod metrics;
mod progress;
mod step;

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

pub use adamw::{AdamW, clip_grad_norm, grad_norm};
pub use metrics::{MetricsRow, MetricsWriter, read_metrics};
pub use progress::Progress;
pub use step::{StepStats, eval_loss, loss_and_grads, train_step};

use crate::data::{Batch, Corpus, sample_batch};
use crate::model::{Dropout, Float, Gpt};
use crate::plan::{Phase, RunPlan};
use crate::seed::{Stream, stream};

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
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Reads a run folder's `status.json`, if there is one.
pub fn read_status(dir: &Path) -> Option<RunStatus> {
    let text = std::fs::read_to_string(dir.join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_status(dir: &Path, status: &RunStatus) -> Result<()> {
    write_atomic(
        &dir.join("status.json"),
        serde_json::to_string_pretty(status)?.as_bytes(),
    )
}

/// The validation batches of a phase: the same windows at every evaluation, so the losses
/// of one run compare over time (and between runs with the same seed).
fn eval_batches(plan: &RunPlan, corpus: &Corpus, phase: &Phase) -> Vec<Batch> {
    let tokens = if corpus.val.len() > phase.seq_len {
        &corpus.val
    } else {
        &corpus.train
    };
    (0..plan.train.eval_batches)
        .map(|i| {
            sample_batch(
                tokens,
                plan.train.batch_size,
                phase.seq_len,
                &mut stream(plan.seed, Stream::Eval, i as u64),
            )
        })
        .collect()
}

/// Trains `plan` from scratch on `dev`, writing `run.toml`, `vocab.json`, `metrics.csv`
/// and `status.json` into its folder.
pub fn train_run<D: Device<Float>>(
    dev: &D,
    plan: &RunPlan,
    corpus: &Corpus,
    quiet: bool,
) -> Result<RunOutcome> {
    let dir = &plan.dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating run folder {}", dir.display()))?;
    let resolved = toml::to_string_pretty(&plan.config).context("serialising the resolved spec")?;
    write_atomic(&dir.join("run.toml"), resolved.as_bytes())?;
    write_atomic(
        &dir.join("vocab.json"),
        serde_json::to_string(corpus.vocab.chars())?.as_bytes(),
    )?;
    write_status(dir, &RunStatus::Running { step: 0 })?;

    let mut model = Gpt::new(dev, &plan.model, &mut stream(plan.seed, Stream::Init, 0));
    let t = &plan.train;
    let mut opt = AdamW::new(&model, t.beta1, t.beta2, t.eps, t.weight_decay);
    let mut metrics = MetricsWriter::create(&dir.join("metrics.csv"))?;
    let total = plan.schedule.total_steps();
    let mut progress = Progress::start(&plan.name, total, 0, quiet);
    let started = Instant::now();
    let (mut last_train, mut last_val) = (None, None);

    for phase in &plan.schedule.phases {
        let evals = eval_batches(plan, corpus, phase);
        for step in phase.first_step..=phase.last_step() {
            let batch = sample_batch(
                &corpus.train,
                t.batch_size,
                phase.seq_len,
                &mut stream(plan.seed, Stream::Batch, step as u64),
            );
            let mut drop = Dropout::train(
                plan.model.dropout as f32,
                stream(plan.seed, Stream::Dropout, step as u64),
            );
            let t0 = Instant::now();
            let stats = train_step(
                &mut model,
                &mut opt,
                &batch,
                phase.lr,
                t.grad_clip,
                &mut drop,
            );
            let step_s = t0.elapsed().as_secs_f64();
            if !(stats.loss.is_finite() && stats.grad_norm.is_finite()) {
                let status = RunStatus::Diverged { step };
                write_status(dir, &status)?;
                progress.finish(&format!(
                    "diverged: loss {} at step {step}; the weights before it are kept",
                    stats.loss
                ));
                return Ok(RunOutcome {
                    status,
                    last_train_loss: last_train,
                    last_val_loss: last_val,
                    wall_s: started.elapsed().as_secs_f64(),
                });
            }
            let evaluate =
                step == phase.last_step() || (t.eval_every > 0 && step % t.eval_every == 0);
            let val_loss = evaluate.then(|| eval_loss(&model, &evals));
            metrics.append(&MetricsRow {
                run: plan.name.clone(),
                phase: phase.index,
                step,
                seq_len: phase.seq_len,
                train_loss: stats.loss,
                val_loss,
                lr: phase.lr,
                grad_norm: stats.grad_norm,
                step_ms: step_s * 1e3,
                tokens_per_s: (batch.b * batch.t) as f64 / step_s.max(1e-12),
            })?;
            last_train = Some(stats.loss);
            last_val = val_loss.or(last_val);
            progress.step(phase.index, step, phase.seq_len, stats.loss, val_loss);
        }
    }
    let status = RunStatus::Complete { step: total };
    write_status(dir, &status)?;
    let wall_s = started.elapsed().as_secs_f64();
    progress.finish(&format!(
        "complete: {total} steps in {wall_s:.1} s, train loss {:.4}, val loss {}",
        last_train.unwrap_or(f32::NAN),
        last_val
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into())
    ));
    Ok(RunOutcome {
        status,
        last_train_loss: last_train,
        last_val_loss: last_val,
        wall_s,
    })
}
