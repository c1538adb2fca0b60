//! One row per run: what sets it apart, its size, and its losses, speed and state.

use serde::Serialize;

use crate::plan::TextUsed;
use crate::run_dir::{MetricsRow, RunState, StateKind};

/// Steps averaged for the "mean of the last steps" figure.
pub const LAST_N: usize = 50;

/// The summary of one run, computed from its metrics rows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSummary {
    /// Run name.
    pub run: String,
    /// The seed, for a run repeated over `[experiment] seeds` (empty otherwise).
    pub seed: Option<u64>,
    /// What sets it apart, e.g. `position=rope`.
    pub differs: String,
    /// `complete`, or how far it got ([`status_word`]: `not started`, `running on …`,
    /// `interrupted after step 8`, `diverged at step 8`, `failed after step 8: …`).
    pub status: String,
    /// Steps recorded.
    pub steps: usize,
    /// Steps the schedule asks for.
    pub total_steps: usize,
    /// Model parameters.
    pub params: usize,
    /// The unit of every loss of the row: `nats/char`, `nats/token` or `bits/byte` (when
    /// the runs compared use different tokenizers).
    pub loss_unit: String,
    /// Train loss of the last recorded step.
    pub final_train_loss: Option<f64>,
    /// Mean train loss over the last 50 recorded steps (none below 50 steps).
    pub train_loss_last50: Option<f64>,
    /// Lowest train loss.
    pub best_train_loss: Option<f64>,
    /// Last validation loss.
    pub final_val_loss: Option<f64>,
    /// Lowest validation loss.
    pub best_val_loss: Option<f64>,
    /// Median training tokens per second over the recorded steps.
    pub tokens_per_s: Option<f64>,
    /// Time spent in training steps, seconds.
    pub train_s: f64,
    /// Median time inside attention per step (ms), when measured.
    pub attn_ms: Option<f64>,
    /// Median bytes (10⁶) attention kept for backward per step, measured.
    pub attn_mem_mb: Option<f64>,
    /// The same from the shapes.
    pub attn_mem_mb_analytic: Option<f64>,
    /// Peak resident memory of the process during the run (10⁶ bytes).
    pub peak_rss_mb: Option<f64>,
    /// Key/value cache per generated position, from the shapes (bytes).
    pub kv_bytes_per_token: Option<f64>,
    /// Decode speed with the cache when sampling the last phase-end checkpoint (tokens/s).
    pub decode_tokens_per_s: Option<f64>,
    /// The text of its validation losses (not a column: the report compares by it).
    #[serde(skip)]
    pub validated_on: TextUsed,
    /// The text of its training losses.
    #[serde(skip)]
    pub trained_on: TextUsed,
}

fn min(xs: impl Iterator<Item = f64>) -> Option<f64> {
    xs.filter(|x| x.is_finite())
        .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.min(x))))
}

/// Median of finite values.
pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// A run's state as the page says it: `complete` only when every step's row is there too
/// (a non-finite loss in the rows is already a divergence in [`RunState`]).
pub fn status_word(state: &RunState, rows: &[MetricsRow], total: usize) -> String {
    match state.kind {
        StateKind::Complete if rows.len() < total => {
            format!("incomplete ({} of {total} metrics rows)", rows.len())
        }
        _ => state.phrase(),
    }
}

/// Summarises `rows` (one run's metrics, in step order).
pub fn summarise(
    run: &str,
    seed: Option<u64>,
    differs: &str,
    status: String,
    rows: &[MetricsRow],
    total_steps: usize,
    params: usize,
) -> RunSummary {
    // The final losses are the last rows' as they are: a non-finite one is no value (None),
    // never the last finite one before it.
    // A diverged run has no final loss: its last finite one is from before it broke.
    let diverged = status.starts_with("diverged");
    let finite = |x: f64| (x.is_finite() && !diverged).then_some(x);
    let last_train = rows.last().and_then(|r| finite(r.train_loss as f64));
    let last_val = rows
        .iter()
        .rev()
        .find_map(|r| r.val_loss)
        .and_then(|v| finite(v as f64));
    let train: Vec<f64> = rows
        .iter()
        .map(|r| r.train_loss as f64)
        .filter(|x| x.is_finite())
        .collect();
    let val: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.val_loss.map(f64::from))
        .filter(|x| x.is_finite())
        .collect();
    let tail = &train[train.len().saturating_sub(LAST_N)..];
    let tail = if train.len() >= LAST_N { tail } else { &[] };
    RunSummary {
        run: run.to_string(),
        seed,
        differs: differs.to_string(),
        status,
        steps: rows.len(),
        total_steps,
        params,
        loss_unit: "nats/char".into(),
        final_train_loss: last_train,
        train_loss_last50: (!tail.is_empty()).then(|| tail.iter().sum::<f64>() / tail.len() as f64),
        best_train_loss: min(train.iter().copied()),
        final_val_loss: last_val,
        best_val_loss: min(val.iter().copied()),
        tokens_per_s: median(rows.iter().map(|r| r.tokens_per_s).collect()),
        // + 0.0: an empty f64 sum is -0.0.
        train_s: rows.iter().map(|r| r.step_ms).filter(|x| x.is_finite()).sum::<f64>() / 1e3 + 0.0,
        attn_ms: median(rows.iter().filter_map(|r| r.attn_ms).collect()),
        attn_mem_mb: median(rows.iter().filter_map(|r| r.attn_mem_mb).collect()),
        attn_mem_mb_analytic: median(rows.iter().filter_map(|r| r.attn_mem_mb_analytic).collect()),
        peak_rss_mb: rows
            .iter()
            .filter_map(|r| r.peak_rss_mb)
            .filter(|x| x.is_finite())
            .reduce(f64::max),
        kv_bytes_per_token: None,
        decode_tokens_per_s: None,
        validated_on: TextUsed::default(),
        trained_on: TextUsed::default(),
    }
}

use crate::format::{int, num};

/// Column titles of the per-seed summary tables.
pub const COLUMNS: [&str; 19] = [
    "run",
    "seed",
    "differs",
    "status",
    "steps",
    "params",
    "final train",
    "train (last 50)",
    "best train",
    "final val",
    "best val",
    "tokens/s",
    "train time",
    "attn ms",
    "attn MB (measured)",
    "attn MB (shapes)",
    "peak MB",
    "KV bytes/token",
    "decode tokens/s",
];

/// The cells of one summary row, formatted, in [`COLUMNS`] order.
pub fn cells(r: &RunSummary) -> Vec<String> {
    vec![
        r.run.clone(),
        r.seed.map_or_else(|| "–".into(), |s| s.to_string()),
        r.differs.clone(),
        r.status.clone(),
        format!("{}/{}", int(r.steps as u64), int(r.total_steps as u64)),
        int(r.params as u64),
        num(r.final_train_loss, 4),
        num(r.train_loss_last50, 4),
        num(r.best_train_loss, 4),
        num(r.final_val_loss, 4),
        num(r.best_val_loss, 4),
        num(r.tokens_per_s, 0),
        crate::format::duration(r.train_s),
        num(r.attn_ms, 1),
        num(r.attn_mem_mb, 1),
        num(r.attn_mem_mb_analytic, 1),
        num(r.peak_rss_mb, 0),
        num(r.kv_bytes_per_token, 0),
        num(r.decode_tokens_per_s, 0),
    ]
}

/// A table's header and rows without the columns that are empty (`–`) in every row.
pub fn drop_empty_columns(header: &[&str], rows: &[Vec<String>]) -> (Vec<String>, Vec<Vec<String>>) {
    let keep: Vec<usize> = (0..header.len())
        .filter(|&c| rows.is_empty() || rows.iter().any(|r| r.get(c).is_some_and(|v| v != "–")))
        .collect();
    (
        keep.iter().map(|&c| header[c].to_string()).collect(),
        rows.iter()
            .map(|r| keep.iter().map(|&c| r[c].clone()).collect())
            .collect(),
    )
}

/// A Markdown table.
pub fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len()));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}
