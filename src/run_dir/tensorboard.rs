//! TensorBoard event files (`tb/events.out.tfevents.*`), so `tensorboard --logdir runs/<exp>`
//! shows every run and seed as it trains.
//!
//! The format is TFRecord framing — `u64` length, its masked CRC-32C, the bytes, their masked
//! CRC-32C — around protobuf `Event` messages: a `file_version` event, then scalar events
//! (`Summary.Value.simple_value`) with the step as TensorBoard's step. `metrics.csv` and
//! `eval.csv` stay the record: a session writes the file anew from them (up to the checkpoint
//! it resumed from) before appending, so after a `kill -9` and a resume TensorBoard sees one
//! value per step, the same values as the CSV files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use prost::Message;

use super::{EvalRow, MetricsRow};

/// `tensorflow.Event`, the fields gptlab writes.
#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with a `simple_value` (explicitly present, so 0.0 is written).
#[derive(Clone, PartialEq, Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// TFRecord's checksum: CRC-32C rotated right by 15 bits plus a constant.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The scalars of a metrics row: `train/loss`, `train/lr`, `train/grad_norm`,
/// `train/tokens_per_s`, and `val/loss` at an evaluation.
fn row_scalars(row: &MetricsRow) -> Vec<(String, f32)> {
    let mut out = vec![
        ("train/loss".to_string(), row.train_loss),
        ("train/lr".to_string(), row.lr as f32),
        ("train/grad_norm".to_string(), row.grad_norm as f32),
        ("train/tokens_per_s".to_string(), row.tokens_per_s as f32),
    ];
    if let Some(v) = row.val_loss {
        out.push(("val/loss".to_string(), v));
    }
    out
}

/// The tag of an `[eval]` length's loss: `eval/loss_len_256`, with `_sliding` and the RoPE
/// scaling (`_ntk_x2`) when they apply.
pub fn eval_tag(row: &EvalRow) -> String {
    let mut tag = format!("eval/loss_len_{}", row.length);
    if row.mode == "sliding" {
        tag.push_str("_sliding");
    }
    if !row.scaling.is_empty() {
        let scaling: String = row
            .scaling
            .chars()
            .map(|c| match c {
                '×' => 'x',
                c if c.is_ascii_alphanumeric() || c == '.' => c,
                _ => '_',
            })
            .collect();
        tag.push('_');
        tag.push_str(&scaling);
    }
    tag
}

/// A run's event file, open for appending.
pub struct TensorBoard {
    out: BufWriter<File>,
}

impl TensorBoard {
    /// Writes `dir/events.out.tfevents.<time>.<host>.<pid>-<n>` anew from the rows on record
    /// (written whole beside it, then renamed in, so a reader never sees half of it), removes
    /// older event files, and keeps the new one open for the steps to come.
    pub fn create(dir: &Path, metrics: &[MetricsRow], evals: &[EvalRow]) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // TensorBoard's own naming, with this process's id: each session's file is its own.
        let name = format!(
            "events.out.tfevents.{}.{}.{}",
            now() as u64,
            crate::provenance::host().replace(['/', ' '], "_"),
            crate::fsio::unique_suffix()
        );
        let path = dir.join(name);
        let tmp = crate::fsio::temp_beside(&path);
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut tb = Self {
            out: BufWriter::new(file),
        };
        tb.event(Event {
            wall_time: now(),
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        })?;
        for row in metrics {
            tb.row(row)?;
        }
        tb.evals(evals)?;
        tb.flush()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} into place", tmp.display()))?;
        for old in event_files(dir)?.into_iter().filter(|p| *p != path) {
            std::fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(tb)
    }

    fn event(&mut self, event: Event) -> Result<()> {
        self.out
            .write_all(&record(&event.encode_to_vec()))
            .context("writing a TensorBoard event")
    }

    fn scalars(&mut self, step: usize, scalars: Vec<(String, f32)>) -> Result<()> {
        let value = scalars
            .into_iter()
            .map(|(tag, v)| SummaryValue {
                tag,
                simple_value: Some(v),
            })
            .collect();
        self.event(Event {
            wall_time: now(),
            step: step as i64,
            file_version: None,
            summary: Some(Summary { value }),
        })
    }

    /// A step's scalars (buffered until [`flush`](Self::flush)).
    pub fn row(&mut self, row: &MetricsRow) -> Result<()> {
        self.scalars(row.step, row_scalars(row))
    }

    /// The `[eval]` losses of an evaluation (lengths the model cannot read have none).
    pub fn evals(&mut self, rows: &[EvalRow]) -> Result<()> {
        for row in rows {
            if let Some(loss) = row.loss {
                self.scalars(row.step, vec![(eval_tag(row), loss as f32)])?;
            }
        }
        Ok(())
    }

    /// Hands what is buffered to the file, for TensorBoard to read.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().context("flushing the TensorBoard events")
    }
}

/// The event files in `dir` (partly written `.tmp` files of a dead process included, so they
/// are cleaned up too).
fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("events.out.tfevents."))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masked_crc_matches_tensorflows_for_a_known_record() {
        // CRC-32C of "123456789" is 0xE3069283 (the standard check value); TensorFlow's
        // mask of it, computed by hand: rotr15 = 0x2507_C60D, + 0xA282_EAD8 = 0xC78A_B0E5.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
        let r = record(b"abc");
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
    }

    #[test]
    fn a_zero_scalar_is_written_not_left_out() {
        let v = SummaryValue {
            tag: "t".into(),
            simple_value: Some(0.0),
        };
        // tag: field 1 (0x0a, len 1, 't'); simple_value: field 2, fixed32 (0x15) 0.0.
        assert_eq!(v.encode_to_vec(), vec![0x0a, 1, b't', 0x15, 0, 0, 0, 0]);
    }
}
