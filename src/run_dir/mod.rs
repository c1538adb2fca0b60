//! The run folder `runs/<experiment>/<run>/` and everything in it. [`RunDir`] is its one
//! owner: training, resuming, the report and sampling read and write it only through here.
//!
//! - `run.toml`: the resolved spec of the run.
//! - `vocab.json`: a character tokenizer's vocabulary, token id → character; or
//!   `tokenizer.json`: a file tokenizer's own file (so a checkpoint decodes without it).
//! - `metrics.csv`: one row per step ([`MetricsRow`]).
//! - `eval.csv`, `position_loss.csv`: the loss at several lengths ([`EvalRow`], [`PositionRow`]).
//! - `status.json`: how the run stands ([`RunStatus`]; with the lock, [`RunState`]).
//! - `.lock`: who trains it now ([`crate::lock`]).
//! - `provenance.json`: what produced the results ([`crate::provenance`]).
//! - `checkpoints/step_NNNNNNNN/`: see [`crate::checkpoint`].

mod eval;
mod metrics;
mod state;
mod tensorboard;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use eval::{EvalRow, PositionRow, write_rows};
pub use metrics::{HEADER as METRICS_HEADER, MetricsRow, MetricsWriter, first_non_finite, read_metrics};
pub use state::{RunState, StateKind};
pub use tensorboard::{TensorBoard, eval_tag};

use crate::checkpoint::{self, Meta, OptimizerState};
use crate::fsio::write_atomic;
use crate::model::{Float, HasParams};

/// How a run stands.
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
    /// A loss became non-finite at `step` (the training loss, the validation loss or a loss of
    /// an `[eval]` length); the weights before it are the last good ones.
    Diverged {
        /// The step whose loss was not finite.
        step: usize,
        /// Which loss, e.g. `validation loss NaN` (absent in status files of older gptlab
        /// versions, which only watched the training loss).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<String>,
    },
    /// Stopped on request (Ctrl-C, SIGTERM from Slurm) after `step`, with a checkpoint there.
    Interrupted {
        /// Last step completed and checkpointed.
        step: usize,
    },
    /// Training stopped with an error (it resumes from its newest checkpoint when run again).
    Failed {
        /// The newest checkpoint's step when it failed.
        step: usize,
        /// The error.
        error: String,
    },
}

/// A run's folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The folder at `root` (nothing is created until something is written).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `metrics.csv`.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }

    /// `checkpoints/`.
    pub fn checkpoints_path(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// `.lock`: who trains the run now ([`crate::lock`]).
    pub fn lock_path(&self) -> PathBuf {
        self.root.join(".lock")
    }

    fn status_path(&self) -> PathBuf {
        self.root.join("status.json")
    }

    /// Creates the folder.
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root).with_context(|| format!("creating run folder {}", self.root.display()))
    }

    /// Removes what training wrote (checkpoints, metrics, status), to start the run over.
    pub fn clear(&self) -> Result<()> {
        for stale in [
            self.checkpoints_path(),
            self.metrics_path(),
            self.eval_path(),
            self.position_loss_path(),
            self.status_path(),
            self.root.join("provenance.json"),
            self.tensorboard_path(),
        ] {
            if stale.is_dir() {
                std::fs::remove_dir_all(&stale).with_context(|| format!("removing {}", stale.display()))?;
            } else if stale.exists() {
                std::fs::remove_file(&stale).with_context(|| format!("removing {}", stale.display()))?;
            }
        }
        Ok(())
    }

    /// Writes `run.toml`, the resolved spec of the run.
    pub fn write_config(&self, config: &crate::spec::RunConfig) -> Result<()> {
        let resolved = toml::to_string_pretty(config).context("serialising the resolved spec")?;
        write_atomic(&self.root.join("run.toml"), resolved.as_bytes())
    }

    /// Writes what decoding needs besides the checkpoint: `vocab.json` for characters, a
    /// copy of a tokenizer file as `tokenizer.json` (built-in tokenizers need nothing).
    pub fn write_tokenizer(&self, tokenizer: &crate::data::Tokenizer) -> Result<()> {
        if let Some(chars) = tokenizer.char_vocab() {
            write_atomic(&self.root.join("vocab.json"), serde_json::to_string(chars)?.as_bytes())?;
        }
        if let Some(json) = tokenizer.json() {
            write_atomic(&self.tokenizer_json(), json)?;
        }
        Ok(())
    }

    /// Where a file tokenizer's copy is kept.
    pub fn tokenizer_json(&self) -> PathBuf {
        self.root.join("tokenizer.json")
    }

    /// The tokenizer of a checkpoint of this run, rebuilt from its record.
    pub fn tokenizer_of(&self, meta: &crate::checkpoint::Meta) -> Result<crate::data::Tokenizer> {
        let record = meta.tokenizer_record();
        let json = record
            .has_json()
            .then(|| std::fs::read(self.tokenizer_json()).ok())
            .flatten();
        crate::data::Tokenizer::from_record(&record, &meta.vocab, json)
            .map_err(|why| anyhow::anyhow!("{}: {why}", self.root.display()))
    }

    /// `status.json`, if there is a readable one.
    pub fn read_status(&self) -> Option<RunStatus> {
        let text = crate::fsio::read_text_capped(&self.status_path(), crate::fsio::MAX_META_BYTES, "status").ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Replaces `status.json`.
    pub fn write_status(&self, status: &RunStatus) -> Result<()> {
        write_atomic(&self.status_path(), serde_json::to_string_pretty(status)?.as_bytes())
    }

    /// `provenance.json` (empty when there is none or it cannot be read).
    pub fn read_provenance(&self) -> crate::provenance::Provenance {
        crate::fsio::read_text_capped(
            &self.root.join("provenance.json"),
            crate::fsio::MAX_META_BYTES,
            "provenance",
        )
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
    }

    /// Replaces `provenance.json`.
    pub fn write_provenance(&self, p: &crate::provenance::Provenance) -> Result<()> {
        write_atomic(
            &self.root.join("provenance.json"),
            serde_json::to_string_pretty(p)?.as_bytes(),
        )
    }

    /// Every row of `metrics.csv` (none when there is no file).
    pub fn read_metrics(&self) -> Result<Vec<MetricsRow>> {
        let path = self.metrics_path();
        if path.exists() { read_metrics(&path) } else { Ok(vec![]) }
    }

    /// The readable rows of `metrics.csv`, and the rows that are not, named.
    pub fn read_metrics_lenient(&self) -> Result<(Vec<MetricsRow>, Vec<String>)> {
        let path = self.metrics_path();
        if path.exists() {
            metrics::read_metrics_lenient(&path)
        } else {
            Ok((vec![], vec![]))
        }
    }

    /// The readable rows of `eval.csv`, and the rows that are not, named.
    pub fn read_eval_lenient(&self) -> Result<(Vec<EvalRow>, Vec<String>)> {
        eval::read_rows_lenient(&self.eval_path())
    }

    /// `eval.csv`.
    pub fn eval_path(&self) -> PathBuf {
        self.root.join("eval.csv")
    }

    /// `position_loss.csv`.
    pub fn position_loss_path(&self) -> PathBuf {
        self.root.join("position_loss.csv")
    }

    /// Every row of `eval.csv` (none when there is no file).
    pub fn read_eval(&self) -> Result<Vec<EvalRow>> {
        eval::read_rows(&self.eval_path())
    }

    /// Every row of `position_loss.csv` (none when there is no file).
    pub fn read_position_loss(&self) -> Result<Vec<PositionRow>> {
        eval::read_rows(&self.position_loss_path())
    }

    /// Adds an evaluation's rows, replacing those of the same evaluation (same step and
    /// setting; for positions, the same step, length and scaling).
    pub fn record_eval(&self, rows: &[EvalRow], positions: &[PositionRow]) -> Result<()> {
        let mut all = self.read_eval()?;
        all.retain(|old| !rows.iter().any(|new| new.same_evaluation(old)));
        all.extend_from_slice(rows);
        all.sort_by_key(|r| r.step);
        eval::write_rows(&self.eval_path(), &all)?;
        let mut all = self.read_position_loss()?;
        let key = |r: &PositionRow| (r.step, r.length, r.scaling.clone());
        all.retain(|old| !positions.iter().any(|new| key(new) == key(old)));
        all.extend_from_slice(positions);
        all.sort_by_key(|r| r.step);
        eval::write_rows(&self.position_loss_path(), &all)
    }

    /// Drops the evaluations of steps after `step` (a resumed run evaluates them again).
    pub fn truncate_eval(&self, step: usize) -> Result<()> {
        let rows = self.read_eval()?;
        if rows.iter().any(|r| r.step > step) {
            let kept: Vec<EvalRow> = rows.into_iter().filter(|r| r.step <= step).collect();
            eval::write_rows(&self.eval_path(), &kept)?;
        }
        let rows = self.read_position_loss()?;
        if rows.iter().any(|r| r.step > step) {
            let kept: Vec<PositionRow> = rows.into_iter().filter(|r| r.step <= step).collect();
            eval::write_rows(&self.position_loss_path(), &kept)?;
        }
        Ok(())
    }

    /// `metrics.csv` for appending after step `step` (rows past it are cut; a new file at 0).
    pub fn metrics_writer(&self, step: usize) -> Result<MetricsWriter> {
        MetricsWriter::resume(&self.metrics_path(), step)
    }

    /// `tb/`: the run's TensorBoard event file.
    pub fn tensorboard_path(&self) -> PathBuf {
        self.root.join("tb")
    }

    /// The TensorBoard event file, written anew from `metrics.csv` and `eval.csv` as they are
    /// now (call after they were cut back to the resumed step), open for the steps to come.
    /// Rows the CSV readers set aside (the report notes them) are left out here too.
    pub fn tensorboard(&self) -> Result<TensorBoard> {
        let (metrics, _) = self.read_metrics_lenient()?;
        let (evals, _) = self.read_eval_lenient()?;
        TensorBoard::create(&self.tensorboard_path(), &metrics, &evals)
    }

    /// Cleans up after a gptlab that died without doing so (`kill -9`, a second Ctrl-C, a lost
    /// node): unfinished `checkpoints/*.tmp` folders are removed and a status still saying
    /// `running` becomes `interrupted`. Call only while holding the run's lock (no other
    /// process can be writing). Returns what it did, for a note.
    pub fn recover_leftovers(&self) -> Result<Vec<String>> {
        let mut done = vec![];
        if let Ok(entries) = std::fs::read_dir(self.checkpoints_path()) {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") && e.path().is_dir() {
                    std::fs::remove_dir_all(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
                    done.push(format!("removed the unfinished checkpoint {name}"));
                }
            }
        }
        // A file `write_atomic` was writing when the process died (`status.json.tmp`, …), or a
        // TensorBoard file before its history was complete (TensorBoard would read it as a
        // second stream: its name holds `tfevents`); lock files are the lock's own business
        // (another process may be creating one).
        for dir in [self.root.clone(), self.tensorboard_path()] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") && !name.starts_with(".lock") && e.path().is_file() {
                    std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
                    done.push(format!("removed the unfinished file {name}"));
                }
            }
        }
        if let Some(RunStatus::Running { step }) = self.read_status() {
            self.write_status(&RunStatus::Interrupted { step })?;
            done.push(format!("its status said running at step {step}; now interrupted"));
        }
        Ok(done)
    }

    /// Checkpoint folders, newest first.
    pub fn checkpoints(&self) -> Vec<(usize, PathBuf)> {
        checkpoint::list(&self.checkpoints_path())
    }

    /// The newest checkpoint whose metadata reads (unverified: for comparing settings), with
    /// its step.
    pub fn newest_meta(&self) -> Option<(usize, Meta)> {
        self.checkpoints()
            .into_iter()
            .find_map(|(step, dir)| Some((step, checkpoint::read_meta(&dir)?)))
    }

    /// The step of the newest checkpoint (0 for none).
    pub fn newest_step(&self) -> usize {
        self.checkpoints().first().map_or(0, |c| c.0)
    }

    /// The newest checkpoint folder, if any.
    pub fn newest_checkpoint(&self) -> Option<PathBuf> {
        self.checkpoints().into_iter().next().map(|(_, dir)| dir)
    }

    /// Writes a checkpoint; periodic ones beyond the newest `keep` are pruned.
    pub fn save_checkpoint<D: dfdx::prelude::Device<Float>>(
        &self,
        model: &impl HasParams<D>,
        opt: &OptimizerState,
        meta: Meta,
        keep: usize,
    ) -> Result<PathBuf> {
        let periodic = meta.kind == checkpoint::Kind::Periodic;
        let dir = checkpoint::save(&self.checkpoints_path(), model, opt, meta)?;
        if periodic {
            checkpoint::prune(&self.checkpoints_path(), keep)?;
        }
        Ok(dir)
    }
}
