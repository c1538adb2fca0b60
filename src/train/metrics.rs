//! `metrics.csv`: one row per training step, flushed as it is written.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One training step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// Run name.
    pub run: String,
    /// 0-based phase index.
    pub phase: usize,
    /// Global step, from 1.
    pub step: usize,
    /// Sequence length of the step's batch.
    pub seq_len: usize,
    /// Mean cross-entropy of the step's batch (nats per character).
    pub train_loss: f32,
    /// Validation loss, on steps where it was evaluated.
    pub val_loss: Option<f32>,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall time of forward, backward, clip and update.
    pub step_ms: f64,
    /// Training tokens per second of wall time in this step.
    pub tokens_per_s: f64,
}

/// Appends rows to a run's `metrics.csv`.
pub struct MetricsWriter {
    writer: csv::Writer<File>,
}

impl MetricsWriter {
    /// Creates (or empties) the file and writes the header.
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            writer: csv::Writer::from_writer(file),
        })
    }

    /// Writes one row and flushes it, so a crash loses at most the row being written.
    pub fn append(&mut self, row: &MetricsRow) -> Result<()> {
        self.writer.serialize(row).context("writing metrics row")?;
        self.writer.flush().context("flushing metrics")?;
        Ok(())
    }
}

/// Reads every row of a `metrics.csv`.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    reader
        .deserialize()
        .enumerate()
        .map(|(i, r)| r.with_context(|| format!("{}: row {}", path.display(), i + 2)))
        .collect()
}
