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
    /// Mean cross-entropy of the step's batch, in nats per token (a token is a character
    /// with `tokenizer = "char"`).
    pub train_loss: f32,
    /// Validation loss (nats per token), on steps where it was evaluated.
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
    /// The run's seed (the column that tells the seeds of a repeated run apart in a report's
    /// merged `metrics.csv`; empty in files written before it existed).
    #[serde(default)]
    pub seed: Option<u64>,
    /// `train_loss` in bits per byte of UTF-8 text (comparable across tokenizers); empty in
    /// files written before it existed.
    #[serde(default)]
    pub train_bpb: Option<f64>,
    /// `val_loss` in bits per byte.
    #[serde(default)]
    pub val_bpb: Option<f64>,
}

/// The columns of `metrics.csv`, in order.
pub const HEADER: [&str; 17] = [
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
    "seed",
    "train_bpb",
    "val_bpb",
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

    /// Appends after step `step` (`0` starts a new file), keeping every row of an earlier step.
    ///
    /// Rows are the record of the experiment, so nothing readable is dropped silently: rows
    /// past `step` are cut (training repeats them, bit for bit); a line that cannot be read (a
    /// torn last row, a garbage line) is set aside in `metrics.csv.corrupt-<unix time>` with a
    /// warning naming it; an edited header is restored (rows are read by position); steps
    /// before `step` with no row are reported.
    pub fn resume(path: &Path, step: usize) -> Result<Self> {
        if step == 0 {
            return Self::create(path);
        }
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::events::warning(format!(
                    "warning: {} is missing: the rows of steps 1..={step} are lost (training goes on from step {})",
                    path.display(),
                    step + 1
                ));
                return Self::create(path);
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let (kept, bad) = rows_through(&text, path, step);
        if !bad.is_empty() {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = path.with_extension(format!("csv.corrupt-{stamp}"));
            let lines: Vec<String> = bad.iter().map(|(n, l)| format!("{n}: {l}")).collect();
            crate::fsio::write_atomic(&aside, (lines.join("\n") + "\n").as_bytes())?;
            let numbers: Vec<String> = bad.iter().map(|(n, _)| n.to_string()).collect();
            crate::events::warning(format!(
                "warning: {}: line {} cannot be read as a metrics row; set aside in {}",
                path.display(),
                numbers.join(", "),
                aside.display()
            ));
        }
        let have: std::collections::BTreeSet<usize> = kept.iter().map(|r| r.step).collect();
        let missing: Vec<usize> = (1..=step).filter(|s| !have.contains(s)).collect();
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(10).map(|s| s.to_string()).collect();
            crate::events::warning(format!(
                "warning: {}: no row for {} of the steps before the checkpoint at {step} ({}{}); training goes on",
                path.display(),
                missing.len(),
                shown.join(", "),
                if missing.len() > 10 { ", …" } else { "" }
            ));
        }
        // The header is written by hand, so it is there even when no row is kept.
        let mut out = csv::WriterBuilder::new().has_headers(false).from_writer(vec![]);
        out.write_record(HEADER)?;
        for r in &kept {
            out.serialize(r)?;
        }
        let bytes = out.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
        crate::fsio::write_atomic(path, &bytes)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            writer: csv::WriterBuilder::new().has_headers(false).from_writer(file),
        })
    }

    /// Appends one row and flushes it, so a kill loses at most the row being written.
    pub fn append(&mut self, row: &MetricsRow) -> Result<()> {
        self.writer.serialize(row).context("writing metrics row")?;
        self.writer.flush().context("flushing metrics")?;
        Ok(())
    }
}

/// The rows of a `metrics.csv`'s `text` up to `step`, and the lines (numbered from 1) that
/// cannot be read as rows.
fn rows_through(text: &str, path: &Path, step: usize) -> (Vec<MetricsRow>, Vec<(usize, String)>) {
    let header = csv::StringRecord::from(HEADER.to_vec());
    let mut kept: Vec<MetricsRow> = vec![];
    let mut bad: Vec<(usize, String)> = vec![];
    // Every row has the header's number of fields: a row torn by a kill has fewer, even
    // when what is left would parse.
    let mut fields = HEADER.len();
    for (i, line) in text.lines().enumerate() {
        if i == 0 {
            // A header of fewer columns is an older gptlab's: its rows read by name.
            if (HEADER.join(",") + ",").starts_with(&format!("{line},")) {
                fields = line.split(',').count();
            } else {
                crate::events::warning(format!(
                    "warning: {}: line 1 is not the metrics header; restored",
                    path.display()
                ));
            }
            continue;
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(line.as_bytes());
        let row = reader
            .records()
            .next()
            .and_then(|r| r.ok())
            .filter(|r| r.len() == fields)
            .and_then(|r| r.deserialize::<MetricsRow>(Some(&header)).ok());
        match row {
            Some(r) if r.step <= step => kept.push(r),
            Some(_) => {} // past the checkpoint: trained again
            None if line.trim().is_empty() => {}
            None => bad.push((i + 1, line.to_string())),
        }
    }
    (kept, bad)
}

/// Reads every row of a `metrics.csv`. A last line without its newline is a row another
/// process is appending right now (the report and `gptlab status` read runs under way): it is
/// left out, not an error.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    let (rows, skipped) = read_metrics_lenient(path)?;
    match skipped.first() {
        Some(first) => Err(anyhow::anyhow!("{first}")),
        None => Ok(rows),
    }
}

/// [`read_metrics`], with the rows that cannot be read left out and named (`metrics.csv: row
/// 7: …`) instead of failing the whole file: what the report needs of a run with one torn
/// row.
pub fn read_metrics_lenient(path: &Path) -> Result<(Vec<MetricsRow>, Vec<String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("opening {}", path.display()))?;
    let whole = &bytes[..bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)];
    Ok(super::eval::deserialize_lenient(csv::Reader::from_reader(whole), path))
}

impl MetricsRow {
    /// Which of the row's losses is not finite, in words (`validation loss NaN`): the
    /// training loss, the gradient norm, the validation loss, in that order.
    pub fn non_finite(&self) -> Option<String> {
        if !self.train_loss.is_finite() {
            return Some(format!("training loss {}", self.train_loss));
        }
        if !self.grad_norm.is_finite() {
            return Some(format!("gradient norm {}", self.grad_norm));
        }
        let v = self.val_loss.filter(|v| !v.is_finite())?;
        Some(format!("validation loss {v}"))
    }
}

/// The first row with a loss that is not finite: its step and which loss.
pub fn first_non_finite(rows: &[MetricsRow]) -> Option<(usize, String)> {
    rows.iter().find_map(|r| Some((r.step, r.non_finite()?)))
}
