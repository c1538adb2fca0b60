//! `eval.csv` and `position_loss.csv`: the validation loss of a run's model at several
//! sequence lengths, and per position at the longest one (see [`crate::train::length_eval`]).
//!
//! Both are small (a few rows per evaluation), so each evaluation rewrites them whole and
//! atomically: rows of the same evaluation are replaced, never duplicated.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsio::write_atomic;

/// The loss of one model (a run at a step) at one length, under one evaluation setting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    /// Run name.
    pub run: String,
    /// The run's seed.
    pub seed: Option<u64>,
    /// The step whose weights were evaluated.
    pub step: usize,
    /// The phase that step belongs to.
    pub phase: usize,
    /// The longest sequence the model had trained on by then.
    pub train_len: usize,
    /// The evaluation length.
    pub length: usize,
    /// RoPE scaling applied (`ntk ×2`), empty for none.
    pub scaling: String,
    /// `windows` or `sliding`.
    pub mode: String,
    /// Tokens between window starts (the length itself for non-overlapping windows).
    pub stride: usize,
    /// The `[eval] tokens` asked for.
    pub budget: usize,
    /// Windows evaluated.
    pub windows: usize,
    /// Tokens scored.
    pub tokens: usize,
    /// A fingerprint of the scored text and its windows: equal for two runs exactly when they
    /// were scored on the same windows.
    pub windows_id: String,
    /// Mean cross-entropy per scored token (nats); empty when the model cannot read the length.
    pub loss: Option<f64>,
    /// Why the loss is not defined, when it is not.
    pub note: String,
    /// `loss` in bits per byte of the validation text; empty in files written before it.
    #[serde(default)]
    pub loss_bpb: Option<f64>,
}

impl EvalRow {
    /// The row's loss in words when it is not finite: `loss NaN at evaluation length 256
    /// (ntk ×2)`.
    pub fn non_finite(&self) -> Option<String> {
        let l = self.loss.filter(|l| !l.is_finite())?;
        let scaling = match self.scaling.is_empty() {
            true => String::new(),
            false => format!(" ({})", self.scaling),
        };
        Some(format!("loss {l} at evaluation length {}{scaling}", self.length))
    }

    /// Whether `other` is the same evaluation (same step, length, scaling and setting), so
    /// that one replaces the other.
    pub fn same_evaluation(&self, other: &Self) -> bool {
        self.step == other.step && self.same_setting(other)
    }

    /// Whether `other` measured the same quantity (possibly at another step).
    pub fn same_setting(&self, other: &Self) -> bool {
        (self.length, &self.scaling, &self.mode, self.stride, self.budget)
            == (other.length, &other.scaling, &other.mode, other.stride, other.budget)
    }
}

/// The mean loss at one position of the windows at one length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PositionRow {
    /// Run name.
    pub run: String,
    /// The run's seed.
    pub seed: Option<u64>,
    /// The step whose weights were evaluated.
    pub step: usize,
    /// The phase that step belongs to.
    pub phase: usize,
    /// The evaluation length.
    pub length: usize,
    /// RoPE scaling applied, empty for none.
    pub scaling: String,
    /// `windows` or `sliding`.
    pub mode: String,
    /// Position in the window, from 0.
    pub position: usize,
    /// Mean cross-entropy of the token predicted at this position over every window.
    pub loss: f64,
    /// Windows averaged.
    pub windows: usize,
    /// `loss` in bits per byte of the validation text; empty in files written before it.
    #[serde(default)]
    pub loss_bpb: Option<f64>,
}

/// Every row of a CSV file of `T` (none when there is no file).
pub fn read_rows<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let (rows, skipped) = read_rows_lenient(path)?;
    match skipped.first() {
        Some(first) => Err(anyhow::anyhow!("{first}")),
        None => Ok(rows),
    }
}

/// [`read_rows`], with rows that cannot be read left out and named instead of failing the file.
pub fn read_rows_lenient<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(Vec<T>, Vec<String>)> {
    if !path.exists() {
        return Ok((vec![], vec![]));
    }
    let reader = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(deserialize_lenient(reader, path))
}

/// Every row of `reader` that deserialises, and `<path>: row N: <why>` for each that does not.
pub(super) fn deserialize_lenient<T: serde::de::DeserializeOwned, R: std::io::Read>(
    mut reader: csv::Reader<R>,
    path: &Path,
) -> (Vec<T>, Vec<String>) {
    let (mut rows, mut skipped) = (vec![], vec![]);
    for (i, r) in reader.deserialize().enumerate() {
        match r {
            Ok(row) => rows.push(row),
            Err(e) => skipped.push(format!("{}: row {}: {e}", path.display(), i + 2)),
        }
    }
    (rows, skipped)
}

/// Writes `rows` as CSV to `path`, atomically.
pub fn write_rows<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(vec![]);
    for r in rows {
        writer.serialize(r)?;
    }
    let bytes = writer.into_inner().context("serialising rows")?;
    write_atomic(path, &bytes)
}
