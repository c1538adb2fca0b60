//! `gptlab status`: one line per run of an experiment — state, step of total, host, last
//! update and Slurm job — read from the run folders and their locks, so it works for local
//! runs, for runs on a cluster, and while they train.

use std::time::SystemTime;

use crate::experiment::Experiment;
use crate::provenance::utc;
use crate::run_dir::{RunDir, RunState, StateKind};

/// What `gptlab status` shows.
pub struct StatusTable {
    /// The table, a line per run.
    pub text: String,
    /// Runs whose results were trained with other settings than the spec gives.
    pub other_settings: usize,
}

/// The status table of the selected runs of `exp`.
pub fn table(exp: &Experiment) -> StatusTable {
    let mut other_settings = 0;
    let now = SystemTime::now();
    let mut rows: Vec<[String; 7]> = vec![[
        "run".into(),
        "state".into(),
        "step".into(),
        "host".into(),
        "updated (UTC)".into(),
        "job".into(),
        "note".into(),
    ]];
    for p in exp.selected() {
        let total = p.schedule.total_steps();
        let dir = RunDir::new(&p.dir);
        let mut state = dir.state(total);
        let diff = crate::experiment::differs_from_results(p, dir.last_metrics_step());
        if !diff.is_empty() && state.kind != StateKind::Running {
            (state.kind, state.note) = (StateKind::OtherSettings, Some(diff.join("; ")));
            other_settings += 1;
        }
        rows.push(row(&p.id(), &state, total, now));
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let text = rows
        .iter()
        .map(|r| {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    StatusTable { text, other_settings }
}

fn row(id: &str, s: &RunState, total: usize, now: SystemTime) -> [String; 7] {
    let updated = s.updated.map_or_else(
        || "-".to_string(),
        |t| {
            let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let ago = now.duration_since(t).map_or(0, |d| d.as_secs());
            format!("{} ({} ago)", utc(secs), crate::format::duration(ago as f64))
        },
    );
    let note = s.note.as_deref().and_then(|n| n.lines().next()).unwrap_or("");
    [
        id.to_string(),
        s.kind.to_string(),
        format!("{}/{total}", s.step),
        s.host.clone().unwrap_or_else(|| "-".into()),
        updated,
        s.job.clone().unwrap_or_else(|| "-".into()),
        note.chars().take(120).collect(),
    ]
}
