//! The length-generalisation part of a report: every run's `eval.csv` rows under the spec's
//! current `[eval]` settings, the loss by length and by position averaged over seeds, and the
//! sentences that answer "what happens past the training length?".

use super::unit::LossUnit;
use crate::data::Split;
use anyhow::Result;

pub use super::length_plot::{LengthCurve, PositionCurve};
use crate::plan::RunPlan;
use crate::run_dir::{EvalRow, PositionRow, RunDir};
use crate::train::length_eval::expected_rows;

/// The length evaluations of a report's runs.
#[derive(Debug, Default)]
pub struct LengthResults {
    /// The rows that match the spec's `[eval]` settings, run named as in the report.
    pub rows: Vec<EvalRow>,
    /// Loss by position at the longest length of the unscaled curves.
    pub positions: Vec<PositionRow>,
    /// Phase ends reached but not evaluated under the current settings, e.g. `rope step 600`.
    pub missing: Vec<String>,
    /// Lengths at which runs were scored on different windows (another corpus or split).
    pub mismatched_windows: Vec<usize>,
    /// Runs lacking evaluations that `[eval] every` asks for, and at which steps.
    pub periodic_missing: Vec<String>,
    /// Rows of `eval.csv` files that could not be read (left out), named.
    pub unreadable: Vec<String>,
    /// Runs left out because they diverged, with how.
    pub diverged: Vec<String>,
}

impl LengthResults {
    /// The page's notes on what the loss by length lacks, leaves out or cannot compare.
    fn notes(&self) -> Vec<String> {
        let first3 = |v: &[String]| v.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
        let lengths: Vec<String> = self.mismatched_windows.iter().map(usize::to_string).collect();
        [
            (
                !self.missing.is_empty(),
                format!(
                    "Not evaluated at the [eval] lengths with the spec's current settings: {} (`gptlab run` on the spec evaluates them from the phase-end checkpoints).",
                    self.missing.join(", ")
                ),
            ),
            (
                !self.diverged.is_empty(),
                format!("Left out of the loss by length: {}.", self.diverged.join(", ")),
            ),
            (
                !self.unreadable.is_empty(),
                format!(
                    "{} row(s) of the runs' eval.csv could not be read and are left out ({}).",
                    self.unreadable.len(),
                    first3(&self.unreadable)
                ),
            ),
            (
                !self.periodic_missing.is_empty(),
                format!(
                    "Not evaluated at the steps [eval] every now asks for (it was set or changed after they trained, and their weights are gone): {}. `gptlab run --fresh` retrains with them.",
                    self.periodic_missing.join("; ")
                ),
            ),
            (
                !self.mismatched_windows.is_empty(),
                format!(
                    "At length {} the runs were scored on different validation windows (another corpus or split), so their losses by length do not compare.",
                    lengths.join(", ")
                ),
            ),
        ]
        .into_iter()
        .filter_map(|(said, note)| said.then_some(note))
        .collect()
    }
}

/// Reads every run's evaluations and keeps those the spec asks for now.
pub fn collect(plans: &[RunPlan]) -> Result<LengthResults> {
    let mut out = LengthResults::default();
    for p in plans {
        let run_dir = RunDir::new(&p.dir);
        let state = run_dir.state(p.schedule.total_steps());
        if state.kind == crate::run_dir::StateKind::Diverged {
            // Its evaluations end in a non-finite loss: none of them enters a mean.
            out.diverged.push(format!("{} ({})", p.id(), state.phrase()));
            continue;
        }
        let (have, unreadable) = run_dir.read_eval_lenient()?;
        out.unreadable.extend(unreadable);
        let reached = run_dir.read_metrics_lenient()?.0.last().map_or(0, |r| r.step);
        let mut found_steps = vec![];
        for phase in p.schedule.phases.iter().filter(|ph| ph.last_step() <= reached) {
            let step = phase.last_step();
            for want in expected_rows(p, phase, step) {
                match have.iter().find(|h| h.same_evaluation(&want)) {
                    Some(h) => {
                        out.rows.push(EvalRow {
                            run: p.name.clone(),
                            seed: Some(p.seed),
                            ..h.clone()
                        });
                        found_steps.push(step);
                    }
                    None => {
                        let what = format!("{} step {step}", p.id());
                        if !out.missing.contains(&what) {
                            out.missing.push(what);
                        }
                    }
                }
            }
        }
        let periodic = crate::train::length_eval::missing_periodic(p, &have, reached);
        if !periodic.is_empty() {
            out.periodic_missing.push(format!(
                "{} at steps {}",
                p.id(),
                crate::train::length_eval::steps_in_words(&periodic)
            ));
        }
        let positions = run_dir.read_position_loss()?;
        out.positions.extend(
            positions
                .into_iter()
                .filter(|r| r.scaling.is_empty() && found_steps.contains(&r.step))
                .map(|r| PositionRow {
                    run: p.name.clone(),
                    seed: Some(p.seed),
                    ..r
                }),
        );
    }
    let mut lengths: Vec<usize> = out.rows.iter().map(|r| r.length).collect();
    lengths.sort_unstable();
    lengths.dedup();
    for l in lengths {
        let mut ids: Vec<&str> = out
            .rows
            .iter()
            .filter(|r| r.length == l && !r.windows_id.is_empty())
            .map(|r| r.windows_id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > 1 {
            out.mismatched_windows.push(l);
        }
    }
    Ok(out)
}

/// The runs' curves in report order: one per (run, phase end, scaling). A scaled curve reads
/// the unscaled losses up to its training length (the scaling applies only past it).
pub fn curves(plans: &[RunPlan], rows: &[EvalRow]) -> Vec<LengthCurve> {
    let mut runs: Vec<&RunPlan> = vec![];
    for p in plans {
        if !runs.iter().any(|r| r.name == p.name) {
            runs.push(p);
        }
    }
    let mut out = vec![];
    for (run_index, p) in runs.iter().enumerate() {
        let of_run: Vec<&EvalRow> = rows.iter().filter(|r| r.run == p.name).collect();
        let mut keys: Vec<(usize, String)> = vec![];
        for r in &of_run {
            if !keys.contains(&(r.phase, r.scaling.clone())) {
                keys.push((r.phase, r.scaling.clone()));
            }
        }
        keys.sort();
        for (phase, scaling) in keys {
            let at_phase: Vec<&&EvalRow> = of_run.iter().filter(|r| r.phase == phase).collect();
            let train_len = at_phase.first().map_or(0, |r| r.train_len);
            let mut lengths: Vec<usize> = at_phase.iter().map(|r| r.length).collect();
            lengths.sort_unstable();
            lengths.dedup();
            let mut notes = vec![];
            let points = lengths
                .into_iter()
                .filter_map(|l| {
                    let want = if scaling.is_empty() || l <= train_len {
                        ""
                    } else {
                        scaling.as_str()
                    };
                    let seeds: Vec<&&&EvalRow> =
                        at_phase.iter().filter(|r| r.length == l && r.scaling == want).collect();
                    if seeds.is_empty() {
                        return None;
                    }
                    let losses: Option<Vec<f64>> = seeds.iter().map(|r| r.loss).collect();
                    if losses.is_none()
                        && let Some(r) = seeds.iter().find(|r| r.loss.is_none())
                    {
                        notes.push((l, r.note.clone()));
                    }
                    Some((l, losses.and_then(|v| crate::stats::mean(&v))))
                })
                .collect();
            out.push(LengthCurve {
                run: p.name.clone(),
                run_index,
                phase,
                last_phase: phase + 1 == p.schedule.phases.len(),
                train_len,
                scaling,
                points,
                notes,
            });
        }
    }
    out
}

/// One sentence per phase end and multiple of the training length that was evaluated, e.g.
/// "At 2× the training length, after phase 1 (512 vs 256): absolute n/a, rope +0.410
/// nats/char, alibi +0.020 nats/char" — the change of the loss from the training length to `k×` it, per run
/// (mean over seeds).
pub fn sentences(curves: &[LengthCurve], unit: &str) -> Vec<String> {
    let mut groups: Vec<(usize, usize, usize)> = vec![]; // (phase, train_len, length)
    for c in curves.iter().filter(|c| c.scaling.is_empty()) {
        for &(l, _) in &c.points {
            if l > c.train_len && l % c.train_len == 0 && !groups.contains(&(c.phase, c.train_len, l)) {
                groups.push((c.phase, c.train_len, l));
            }
        }
    }
    groups.sort();
    let mut out = vec![];
    for (phase, train_len, length) in groups {
        let entries: Vec<String> = curves
            .iter()
            .filter(|c| c.phase == phase && c.train_len == train_len)
            .filter_map(|c| {
                let at = |l: usize| c.points.iter().find(|p| p.0 == l).map(|p| p.1);
                let name = if c.scaling.is_empty() {
                    c.run.clone()
                } else {
                    format!("{} {}", c.run, c.scaling)
                };
                match (at(train_len)?, at(length)?) {
                    (Some(base), Some(long)) => {
                        Some(format!("{name} {} {unit}", crate::format::signed(long - base, 3)))
                    }
                    (Some(_), None) => {
                        // The reason of this length, not of another the run cannot read.
                        let why = c
                            .notes
                            .iter()
                            .find(|(l, _)| *l == length)
                            .map_or("", |(_, n)| n.as_str());
                        Some(format!("{name} n/a ({why})"))
                    }
                    (None, _) => None,
                }
            })
            .collect();
        if entries.is_empty() {
            continue;
        }
        out.push(format!(
            "At {}× the training length after phase {phase} (loss at {length} minus loss at {train_len}): {}.",
            length / train_len,
            entries.join(", ")
        ));
    }
    out
}

/// The tokens the rows scored, in words: what `eval.csv` says, not what `[eval] tokens`
/// asked for (a validation split shorter than the budget scores fewer).
fn scored_words(rows: &[EvalRow], asked: usize) -> String {
    let scored = rows.iter().filter(|r| r.loss.is_some()).map(|r| r.tokens);
    let (lo, hi) = scored.fold((usize::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let int = |n: usize| crate::format::int(n as u64);
    let range = match (lo, hi) {
        (usize::MAX, _) => return format!("{} tokens asked for, none scored", int(asked)),
        (lo, hi) if lo == hi => format!("{} tokens scored", int(lo)),
        (lo, hi) => format!("{}–{} tokens scored by length", int(lo), int(hi)),
    };
    if hi < asked {
        format!(
            "{range}, fewer than the {} asked for: the validation split is that short",
            int(asked)
        )
    } else {
        range
    }
}

/// Positions per bin of `position_loss.svg`: single positions are noisy (one token per window),
/// so the figure draws means over about 64 bins.
pub fn position_bin(length: usize) -> usize {
    (length / 64).max(1)
}

/// The runs' loss-by-position curves, one per (run, phase end), averaged over seeds and binned.
pub fn position_curves(plans: &[RunPlan], positions: &[PositionRow]) -> Vec<PositionCurve> {
    let mut names: Vec<&str> = vec![];
    for p in plans {
        if !names.contains(&p.name.as_str()) {
            names.push(&p.name);
        }
    }
    let mut out = vec![];
    for (run_index, name) in names.iter().enumerate() {
        let plan = plans.iter().find(|p| p.name == *name).expect("a name of the plans");
        let of_run: Vec<&PositionRow> = positions.iter().filter(|r| r.run == *name).collect();
        let mut steps: Vec<(usize, usize)> = of_run.iter().map(|r| (r.step, r.phase)).collect();
        steps.sort_unstable();
        steps.dedup();
        for (step, phase) in steps {
            let rows: Vec<&&PositionRow> = of_run.iter().filter(|r| r.step == step).collect();
            let length = rows.iter().map(|r| r.length).max().unwrap_or(0);
            let bin = position_bin(length);
            let mut sums = vec![(0.0, 0usize); length.div_ceil(bin)];
            for r in rows.iter().filter(|r| r.length == length) {
                let s = &mut sums[r.position / bin];
                (s.0, s.1) = (s.0 + r.loss, s.1 + 1);
            }
            let points = sums
                .iter()
                .enumerate()
                .filter(|(_, s)| s.1 > 0)
                .map(|(i, s)| ((i * bin) as f64 + (bin as f64 - 1.0) / 2.0, s.0 / s.1 as f64))
                .collect();
            let trained = crate::train::length_eval::train_len(
                plan,
                &plan.schedule.phases[phase.min(plan.schedule.phases.len() - 1)],
            );
            out.push(PositionCurve {
                label: format!("{name}, after phase {phase} (trained to {trained})"),
                run_index,
                last_phase: phase + 1 == plan.schedule.phases.len(),
                points,
            });
        }
    }
    out
}

/// What the length evaluations add to a report.
#[derive(Debug, Default)]
pub struct LengthSection {
    /// `(file, caption)` of the figures written.
    pub figures: Vec<(String, String)>,
    /// Verdict sentences (see [`sentences`]).
    pub sentences: Vec<String>,
    /// Notes for the page: evaluations missing, windows that differ.
    pub notes: Vec<String>,
}

/// Every loss of `found` in `unit`.
fn to_unit(found: &mut LengthResults, plans: &[RunPlan], unit: &LossUnit) {
    let plan_of = |run: &str| plans.iter().find(|p| p.name == run);
    for r in &mut found.rows {
        if let Some(p) = plan_of(&r.run) {
            r.loss = r.loss.map(|l| unit.of_loss(p, l, Split::Val));
        }
    }
    for r in &mut found.positions {
        if let Some(p) = plan_of(&r.run) {
            r.loss = unit.of_loss(p, r.loss, Split::Val);
        }
    }
}

/// Writes `eval.csv`, `position_loss.csv`, `length.svg` and `position_loss.svg` into `dir`.
pub fn write(dir: &std::path::Path, title: &str, plans: &[RunPlan], unit: &LossUnit) -> Result<LengthSection> {
    use crate::fsio::write_atomic;
    let mut found = collect(plans)?;
    super::write_csv(&dir.join("eval.csv"), &found.rows)?;
    super::write_csv(&dir.join("position_loss.csv"), &found.positions)?;
    // The files keep each row as written (nats per token, and `loss_bpb`); curves and
    // sentences are in the report's unit.
    to_unit(&mut found, plans, unit);
    let mut out = LengthSection {
        notes: found.notes(),
        ..Default::default()
    };
    let curves = curves(plans, &found.rows);
    if curves.iter().all(|c| c.points.iter().all(|p| p.1.is_none())) {
        return Ok(out);
    }
    let eval = &plans[0].config.eval;
    out.sentences = sentences(&curves, unit.short());
    let how = match eval.mode {
        crate::spec::EvalMode::Windows => "non-overlapping windows, every position scored".to_string(),
        crate::spec::EvalMode::Sliding => match eval.stride {
            Some(s) => format!("sliding windows {s} tokens apart, each scoring the tokens the previous did not"),
            None => "sliding windows half a length apart, each scoring the tokens the previous did not".to_string(),
        },
    };
    // One length is no curve: the loss by position below says more.
    let several = curves.iter().any(|c| c.points.len() > 1);
    if several {
        write_atomic(
            &dir.join("length.svg"),
            super::length_plot::length_chart(&format!("{title}: loss by evaluation length"), &curves, &unit.long())?
                .as_bytes(),
        )?;
    }
    out.figures.extend(several.then(|| {
        (
            "length.svg".into(),
            format!(
                "Validation loss at each evaluation length, on the same validation text at every length ({}; {how}); \
             one line per run and phase end (lighter: earlier phases; dashed: RoPE scaled past the training length); \
             × marks a length the model cannot read",
                scored_words(&found.rows, eval.tokens)
            ),
        )
    }));
    let positions = position_curves(plans, &found.positions);
    if !positions.is_empty() {
        let mut trained: Vec<usize> = plans
            .iter()
            .flat_map(|p| p.schedule.phases.iter().map(|ph| ph.seq_len))
            .collect();
        trained.sort_unstable();
        trained.dedup();
        let length = found.positions.iter().map(|r| r.length).max().unwrap_or(0);
        write_atomic(
            &dir.join("position_loss.svg"),
            super::length_plot::position_chart(
                &format!("{title}: loss by position"),
                &positions,
                &trained,
                &unit.long(),
            )?
            .as_bytes(),
        )?;
        out.figures.push((
            "position_loss.svg".into(),
            format!(
                "Mean validation loss at each position of the window, at the longest length each model can read (up to {length}), \
                 in bins of {} positions; dashed lines at the training lengths",
                position_bin(length)
            ),
        ));
    }
    Ok(out)
}
