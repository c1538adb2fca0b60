//! `metrics.csv`: one row per training step, flushed as it is written.

use std::fs::{File, OpenOptions};
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
    /// Time inside attention (scores, softmax, weighted sum; projections excluded), forward
    /// and backward, summed over layers; with `[measure] attention = true`.
    #[serde(default)]
    pub attn_ms: Option<f64>,
    /// Bytes (10⁶) attention left allocated for backward in this step, counted by the allocator.
    #[serde(default)]
    pub attn_mem_mb: Option<f64>,
    /// The same from the shapes.
    #[serde(default)]
    pub attn_mem_mb_analytic: Option<f64>,
    /// The process's peak resident memory since the run started (10⁶ bytes).
    #[serde(default)]
    pub peak_rss_mb: Option<f64>,
}

/// The columns of `metrics.csv`, in order.
pub const HEADER: [&str; 14] = [
    "run",
    "phase",
    "step",
    "seq_len",
    "train_loss",
    "val_loss",
    "lr",
    "grad_norm",
    "step_ms",
    "tokens_per_s",
    "attn_ms",
    "attn_mem_mb",
    "attn_mem_mb_analytic",
    "peak_rss_mb",
];

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

    /// Keeps the rows up to `step` (dropping any later or torn ones, e.g. from a kill) and
    /// appends after them; `step = 0` starts a new file.
    pub fn resume(path: &Path, step: usize) -> Result<Self> {
        if step == 0 || !path.exists() {
            return Self::create(path);
        }
        let mut kept = vec![];
        let mut reader = csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
        for row in reader.deserialize::<MetricsRow>() {
            match row {
                Ok(r) if r.step <= step => kept.push(r),
                _ => break,
            }
        }
        let mut buf = csv::Writer::from_writer(vec![]);
        for r in &kept {
            buf.serialize(r)?;
        }
        if kept.is_empty() {
            buf.write_record(HEADER)?;
        }
        let bytes = buf.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
        crate::fsio::write_atomic(path, &bytes)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            writer: csv::WriterBuilder::new().has_headers(false).from_writer(file),
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
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    reader
        .deserialize()
        .enumerate()
        .map(|(i, r)| r.with_context(|| format!("{}: row {}", path.display(), i + 2)))
        .collect()
}
