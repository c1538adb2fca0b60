//! The runs of a report read from their folders: each run's metrics, state and summary, its
//! loss curve (one per run, a series per seed), and what the page must say of it.

use super::unit::LossUnit;
use crate::data::Split;
use anyhow::Result;

use super::plot::{Curve, Series};
use super::summary::{self, RunSummary, summarise};
use crate::plan::RunPlan;
use crate::run_dir::{MetricsRow, RunDir, StateKind};

/// What the report knows of its runs.
#[derive(Default)]
pub struct Runs {
    /// Every metrics row of every run and seed, named as the report names them.
    pub rows: Vec<MetricsRow>,
    /// One summary per (run, seed), in plan order.
    pub summaries: Vec<RunSummary>,
    /// One loss curve per run.
    pub curves: Vec<Curve>,
    /// The run of each curve.
    pub curve_runs: Vec<String>,
    /// Runs not finished: `id (status)`.
    pub unfinished: Vec<String>,
    /// Runs a live process is training: `id: step 300 of 800`. While there are any, the page
    /// is live (it reloads itself).
    pub training: Vec<String>,
    /// Runs whose results are of other settings than the spec's: `id: differences`.
    pub other_settings: Vec<String>,
    /// What the page says of single runs (rows left out, checkpoints missing).
    pub run_notes: Vec<String>,
}

impl Runs {
    /// The page's notes on the runs: what has not finished, then each run's own.
    pub fn notes(&self) -> Vec<String> {
        let unfinished =
            (!self.unfinished.is_empty()).then(|| format!("Not finished: {}.", self.unfinished.join(", ")));
        unfinished.into_iter().chain(self.run_notes.iter().cloned()).collect()
    }
}

/// Reads every plan's folder.
pub fn gather(plans: &[RunPlan], unit: &LossUnit) -> Result<Runs> {
    let mut runs = Runs::default();
    for p in plans {
        read_run(p, unit, &mut runs)?;
    }
    label_unfinished(&mut runs);
    Ok(runs)
}

/// Adds run `p`'s rows, summary, curve and notes to `runs`.
fn read_run(p: &RunPlan, unit: &LossUnit, runs: &mut Runs) -> Result<()> {
    let run_dir = RunDir::new(&p.dir);
    let (mut rows, unreadable) = run_dir.read_metrics_lenient()?;
    runs.run_notes.extend(suspect_rows(p, &rows, &unreadable));
    let total = p.schedule.total_steps();
    let state = run_dir.state(total);
    if state.kind == StateKind::Running {
        let step = rows.last().map_or(0, |r| r.step);
        runs.training.push(format!("{}: step {step} of {total}", p.id()));
    }
    // Results of other settings than the spec now gives must not pass as its results: their
    // status says so, which keeps them out of every aggregate and of the verdict.
    let diff = crate::experiment::differs_from_results(p, rows.last().map_or(0, |r| r.step));
    let status = if diff.is_empty() {
        summary::status_word(&state, &rows, total)
    } else {
        let what = format!("{}: {}", p.id(), diff.join("; "));
        runs.run_notes.push(format!(
            "Left out of the verdict and every aggregate: run {what} (it was trained with other settings than this spec gives)."
        ));
        runs.other_settings.push(what);
        format!("trained with other settings ({})", diff.join("; "))
    };
    if !rows.is_empty() && run_dir.checkpoints().is_empty() && state.kind != StateKind::Diverged {
        runs.run_notes.push(format!(
            "Run {} has metrics but no checkpoint (deleted?): it has no samples and cannot be resumed.",
            p.id()
        ));
    }
    if status != "complete" && diff.is_empty() {
        runs.unfinished.push(format!("{} ({status})", p.id()));
    }
    // Curves and summaries in the report's unit; the merged metrics.csv keeps each row as
    // written (nats per token, and bits per byte in their own columns).
    let in_unit: Vec<MetricsRow> = rows
        .iter()
        .map(|r| MetricsRow {
            train_loss: unit.of_loss(p, r.train_loss as f64, Split::Train) as f32,
            val_loss: r.val_loss.map(|v| unit.of_loss(p, v as f64, Split::Val) as f32),
            ..r.clone()
        })
        .collect();
    let series = Series {
        train: in_unit.iter().map(|r| (r.step as f64, r.train_loss as f64)).collect(),
        val: in_unit
            .iter()
            .filter_map(|r| r.val_loss.map(|v| (r.step as f64, v as f64)))
            .collect(),
    };
    match runs.curve_runs.iter().position(|r| *r == p.name) {
        Some(i) => runs.curves[i].seeds.push(series),
        None => {
            runs.curve_runs.push(p.name.clone());
            runs.curves.push(Curve {
                label: p.label(),
                seeds: vec![series],
            });
        }
    }
    let seed = p.seeded.then_some(p.seed);
    let params = p.num_params();
    let mut summary = summarise(&p.name, seed, &p.label(), status, &in_unit, total, params);
    summary.loss_unit = unit.short().to_string();
    summary.validated_on = p.validation_text();
    summary.trained_on = p.training_text();
    runs.summaries.push(summary);
    for r in &mut rows {
        // The merged file names every row's run as the report does (several experiments:
        // `experiment/run`) and its seed.
        r.run = p.name.clone();
        r.seed = Some(p.seed);
    }
    runs.rows.extend(rows);
    Ok(())
}

/// A run whose seeds did not all finish is labelled as such in the figures.
fn label_unfinished(runs: &mut Runs) {
    for (c, run) in runs.curves.iter_mut().zip(&runs.curve_runs) {
        let states: Vec<&RunSummary> = runs.summaries.iter().filter(|s| s.run == *run).collect();
        let done = states.iter().filter(|s| s.status == "complete").count();
        if done < states.len() {
            c.label = match states.as_slice() {
                [one] => format!("{} [{}]", c.label, one.status),
                _ => format!("{} [{done}/{} seeds complete]", c.label, states.len()),
            };
        }
    }
}

/// What the page says of a run's metrics rows that could not be read (left out) or that no
/// training of this spec writes: steps past the schedule's end, negative losses.
fn suspect_rows(p: &RunPlan, rows: &[MetricsRow], unreadable: &[String]) -> Vec<String> {
    let mut notes = vec![];
    if !unreadable.is_empty() {
        notes.push(format!(
            "Run {}: {} metrics row(s) could not be read and are left out ({}).",
            p.id(),
            unreadable.len(),
            unreadable.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
    let total = p.schedule.total_steps();
    let past = rows.iter().filter(|r| r.step > total || r.step == 0).count();
    if past > 0 {
        notes.push(format!(
            "Run {}: {past} metrics row(s) have a step outside the schedule's 1..={total} (edited by hand, or of another spec).",
            p.id()
        ));
    }
    let negative = rows
        .iter()
        .filter(|r| r.train_loss < 0.0 || r.val_loss.is_some_and(|v| v < 0.0))
        .count();
    if negative > 0 {
        notes.push(format!(
            "Run {}: {negative} metrics row(s) have a negative loss, which a cross-entropy cannot be: the file was edited.",
            p.id()
        ));
    }
    notes
}
