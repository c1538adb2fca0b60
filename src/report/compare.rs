//! Runs over their seeds, and the comparison with the baseline: one [`RunAggregate`] per run,
//! one [`ComparisonRow`] per (other run, loss), and the verdict in words.
//!
//! Only a run's *complete* seeds enter its aggregate and the comparison: an unfinished seed's
//! "final" loss is from an earlier step and would bias the mean (the per-seed table still
//! shows it, with its status).

use serde::Serialize;

use super::summary::RunSummary;
use crate::plan::TextUsed;
use crate::stats::{Estimate, PairedDiff};

/// A loss the comparison covers: CSV key, words, accessor.
pub struct Loss {
    /// Column key (`final_val_loss`).
    pub key: &'static str,
    /// In a sentence ("final validation loss").
    pub words: &'static str,
    /// The per-seed value.
    pub get: fn(&RunSummary) -> Option<f64>,
    /// The text it is measured on: runs are compared on the same text only.
    pub text: fn(&RunSummary) -> &TextUsed,
}

/// The losses compared, the headline (the verdict's) first.
pub const LOSSES: [Loss; 3] = [
    Loss {
        key: "final_val_loss",
        words: "final validation loss",
        get: |s| s.final_val_loss,
        text: |s| &s.validated_on,
    },
    Loss {
        key: "best_val_loss",
        words: "best validation loss",
        get: |s| s.best_val_loss,
        text: |s| &s.validated_on,
    },
    Loss {
        key: "train_loss_last50",
        words: "training loss over the last 50 steps",
        get: |s| s.train_loss_last50,
        text: |s| &s.trained_on,
    },
];

/// One run over its seeds (a row of `summary.csv`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunAggregate {
    /// Run name.
    pub run: String,
    /// What sets it apart.
    pub differs: String,
    /// Seeds the run has.
    pub seeds: usize,
    /// Seeds complete (the ones aggregated).
    pub complete: usize,
    /// Model parameters.
    pub params: usize,
    /// The unit of the losses (see `RunSummary::loss_unit`).
    pub loss_unit: String,
    /// Final validation loss over the complete seeds: mean, sd, 95% t interval.
    pub final_val_loss_mean: Option<f64>,
    /// Standard deviation across seeds.
    pub final_val_loss_sd: Option<f64>,
    /// Lower end of the 95% t interval of the mean.
    pub final_val_loss_lo: Option<f64>,
    /// Upper end.
    pub final_val_loss_hi: Option<f64>,
    /// Best validation loss: mean over seeds.
    pub best_val_loss_mean: Option<f64>,
    /// Its sd.
    pub best_val_loss_sd: Option<f64>,
    /// Its interval's lower end.
    pub best_val_loss_lo: Option<f64>,
    /// Its interval's upper end.
    pub best_val_loss_hi: Option<f64>,
    /// Training loss over the last 50 steps: mean over seeds.
    pub train_loss_last50_mean: Option<f64>,
    /// Its sd.
    pub train_loss_last50_sd: Option<f64>,
    /// Its interval's lower end.
    pub train_loss_last50_lo: Option<f64>,
    /// Its interval's upper end.
    pub train_loss_last50_hi: Option<f64>,
    /// Median over seeds of each seed's median tokens per second.
    pub tokens_per_s: Option<f64>,
    /// Mean training time of a seed (s).
    pub train_s: Option<f64>,
}

impl RunAggregate {
    /// The estimate of loss `key` (one of [`LOSSES`]) over the complete seeds.
    pub fn estimate(&self, key: &str) -> Option<Estimate> {
        let (m, sd, lo, hi) = match key {
            "final_val_loss" => (
                self.final_val_loss_mean,
                self.final_val_loss_sd,
                self.final_val_loss_lo,
                self.final_val_loss_hi,
            ),
            "best_val_loss" => (
                self.best_val_loss_mean,
                self.best_val_loss_sd,
                self.best_val_loss_lo,
                self.best_val_loss_hi,
            ),
            _ => (
                self.train_loss_last50_mean,
                self.train_loss_last50_sd,
                self.train_loss_last50_lo,
                self.train_loss_last50_hi,
            ),
        };
        Some(Estimate {
            n: self.complete,
            mean: m?,
            sd,
            interval: lo.zip(hi),
        })
    }
}

/// The seeds of each run, in order of first appearance: `(run, [summary])`.
pub fn by_run(summaries: &[RunSummary]) -> Vec<(String, Vec<&RunSummary>)> {
    let mut out: Vec<(String, Vec<&RunSummary>)> = vec![];
    for s in summaries {
        match out.iter_mut().find(|(r, _)| *r == s.run) {
            Some((_, seeds)) => seeds.push(s),
            None => out.push((s.run.clone(), vec![s])),
        }
    }
    out
}

fn complete<'a>(seeds: &[&'a RunSummary]) -> Vec<&'a RunSummary> {
    seeds.iter().copied().filter(|s| s.status == "complete").collect()
}

/// Aggregates each run over its complete seeds.
pub fn aggregate(summaries: &[RunSummary]) -> Vec<RunAggregate> {
    by_run(summaries)
        .into_iter()
        .map(|(run, seeds)| {
            let done = complete(&seeds);
            let est = |get: fn(&RunSummary) -> Option<f64>| {
                Estimate::of(&done.iter().filter_map(|s| get(s)).collect::<Vec<_>>())
            };
            let parts = |e: Option<Estimate>| match e {
                Some(e) => (Some(e.mean), e.sd, e.interval.map(|i| i.0), e.interval.map(|i| i.1)),
                None => (None, None, None, None),
            };
            let (fm, fs, fl, fh) = parts(est(LOSSES[0].get));
            let (bm, bs, bl, bh) = parts(est(LOSSES[1].get));
            let (tm, ts, tl, th) = parts(est(LOSSES[2].get));
            RunAggregate {
                differs: seeds[0].differs.clone(),
                seeds: seeds.len(),
                complete: done.len(),
                params: seeds[0].params,
                loss_unit: seeds[0].loss_unit.clone(),
                final_val_loss_mean: fm,
                final_val_loss_sd: fs,
                final_val_loss_lo: fl,
                final_val_loss_hi: fh,
                best_val_loss_mean: bm,
                best_val_loss_sd: bs,
                best_val_loss_lo: bl,
                best_val_loss_hi: bh,
                train_loss_last50_mean: tm,
                train_loss_last50_sd: ts,
                train_loss_last50_lo: tl,
                train_loss_last50_hi: th,
                tokens_per_s: super::summary::median(done.iter().filter_map(|s| s.tokens_per_s).collect()),
                train_s: crate::stats::mean(&done.iter().map(|s| s.train_s).collect::<Vec<_>>()),
                run,
            }
        })
        .collect()
}

/// One run against the baseline on one loss (a row of `comparison.csv`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComparisonRow {
    /// The run.
    pub run: String,
    /// The baseline.
    pub baseline: String,
    /// The loss ([`Loss::key`]).
    pub loss: String,
    /// Seeds both have complete.
    pub n: usize,
    /// Mean of (run − baseline) over the paired seeds; negative: the run is better.
    pub diff: f64,
    /// t interval of `diff` at `level` (n ≥ 2): simultaneous 95% over the `comparisons`.
    pub t_lo: Option<f64>,
    /// Its upper end.
    pub t_hi: Option<f64>,
    /// Percentile-bootstrap interval of `diff` at `level` (n ≥ 2).
    pub bootstrap_lo: Option<f64>,
    /// Its upper end.
    pub bootstrap_hi: Option<f64>,
    /// Runs compared with the baseline on this loss with intervals (see [`crate::stats`]).
    pub comparisons: usize,
    /// The confidence of each interval: 0.95 for one comparison, 1 − 0.05/m for m.
    pub level: f64,
    /// Seeds where the run's loss is lower.
    pub wins: usize,
    /// The finding in words.
    pub sentence: String,
}

/// The run the others are compared with: `[report] baseline` when it names a run here, else
/// the first run.
pub fn baseline<'a>(runs: &'a [RunAggregate], asked: Option<&str>) -> Option<&'a RunAggregate> {
    asked
        .and_then(|b| runs.iter().find(|r| r.run == b))
        .or_else(|| runs.first())
}

/// The unit of a run's losses in a sentence: `nats`, or `bits per byte`.
fn unit_words(seeds: &[&RunSummary]) -> &'static str {
    match seeds.first().map(|s| s.loss_unit.as_str()) {
        Some("bits/byte") => "bits per byte",
        _ => "nats",
    }
}

/// Whether `loss` of two runs' seeds is measured on the same text (a run's seeds share
/// their data): losses on other text say nothing of the runs.
fn same_text(loss: &Loss, run: &[&RunSummary], base: &[&RunSummary]) -> bool {
    match (run.first(), base.first()) {
        (Some(r), Some(b)) => (loss.text)(r).identity == (loss.text)(b).identity,
        _ => false,
    }
}

/// Each other run against `base`, on each loss measured on the same text, paired by seed
/// over complete seeds.
pub fn compare(summaries: &[RunSummary], base: &str) -> Vec<ComparisonRow> {
    let groups = by_run(summaries);
    let Some((_, base_seeds)) = groups.iter().find(|(r, _)| r == base) else {
        return vec![];
    };
    let paired = |seeds: &[&RunSummary], get: fn(&RunSummary) -> Option<f64>| -> Vec<(u64, f64)> {
        complete(seeds)
            .iter()
            .filter_map(|s| Some((s.seed.unwrap_or(0), get(s)?)))
            .collect()
    };
    let others: Vec<_> = groups.iter().filter(|(r, _)| r != base).collect();
    let diffs = |seeds: &[&RunSummary], loss: &Loss| -> Option<Vec<f64>> {
        same_text(loss, seeds, base_seeds)
            .then(|| PairedDiff::pair(&paired(seeds, loss.get), &paired(base_seeds, loss.get)))
    };
    // The comparisons with intervals (two paired seeds or more) on each loss: the family whose
    // intervals must hold together.
    let family: Vec<usize> = LOSSES
        .iter()
        .map(|loss| {
            others
                .iter()
                .filter(|(_, seeds)| diffs(seeds, loss).is_some_and(|d| d.len() >= 2))
                .count()
        })
        .collect();
    let mut rows = vec![];
    for (run, seeds) in others {
        for (loss, &m) in LOSSES.iter().zip(&family) {
            let Some(d) = diffs(seeds, loss).and_then(|d| PairedDiff::among(&d, m)) else {
                continue;
            };
            rows.push(ComparisonRow {
                run: run.clone(),
                baseline: base.to_string(),
                loss: loss.key.to_string(),
                n: d.n,
                diff: d.mean,
                t_lo: d.t_interval.map(|i| i.0),
                t_hi: d.t_interval.map(|i| i.1),
                bootstrap_lo: d.bootstrap.map(|i| i.0),
                bootstrap_hi: d.bootstrap.map(|i| i.1),
                comparisons: d.comparisons,
                level: d.level,
                wins: d.wins,
                sentence: d.sentence(run, base, loss.words, unit_words(seeds)),
            });
        }
    }
    rows
}

/// Whether a seed that is not complete never will be by training on (it diverged, or its
/// results are of other settings): then "yet" would be a false promise.
fn final_state(status: &str) -> bool {
    status.starts_with("diverged") || status.starts_with("trained with other settings")
}

/// A seed that is left out, and why: `seed 5: diverged at step 20 (validation loss NaN)`.
fn left_out(s: &RunSummary) -> String {
    match s.seed {
        Some(seed) => format!("seed {seed}: {}", s.status),
        None => s.status.clone(),
    }
}

/// The verdict: one sentence per other run on the headline loss (final validation loss),
/// and what kept a run or a seed out of it, named seed by seed.
pub fn verdict(
    runs: &[RunAggregate],
    summaries: &[RunSummary],
    comparison: &[ComparisonRow],
    base: Option<&str>,
) -> Vec<String> {
    let Some(base) = base else {
        return vec!["No run has finished: nothing to compare yet.".into()];
    };
    if runs.len() < 2 {
        return vec![format!("One run ({base}): nothing to compare it with.")];
    }
    let groups = by_run(summaries);
    let seeds_of = |run: &str| groups.iter().find(|(r, _)| r == run).map_or(&[][..], |(_, s)| &s[..]);
    let never = |run: &str| {
        let seeds = seeds_of(run);
        !seeds.is_empty() && seeds.iter().all(|s| final_state(&s.status))
    };
    let mut out = vec![];
    for r in runs.iter().filter(|r| r.run != base) {
        let (seeds, base_seeds) = (seeds_of(&r.run), seeds_of(base));
        if let (false, Some(a), Some(b)) = (
            same_text(&LOSSES[0], seeds, base_seeds),
            seeds.first(),
            base_seeds.first(),
        ) {
            out.push(format!(
                "{} is not compared with {base}: their validation losses are on different text ({}: {}; {base}: {}), \
                 so a difference would be the text's; give both runs one data.val_path to compare them.",
                r.run, r.run, a.validated_on.words, b.validated_on.words
            ));
            continue;
        }
        match comparison.iter().find(|c| c.run == r.run && c.loss == LOSSES[0].key) {
            Some(c) => out.push(format!("{}.", c.sentence)),
            None if never(&r.run) || never(base) => out.push(format!(
                "{} cannot be compared with {base}: no seed of {} completed, and none will by training on (below).",
                r.run,
                if never(&r.run) { &r.run } else { base },
            )),
            None => out.push(format!(
                "{} cannot be compared with {base} yet: they share no complete seed with a validation loss.",
                r.run
            )),
        }
    }
    for r in runs.iter().filter(|r| r.complete < r.seeds) {
        let out_seeds: Vec<String> = seeds_of(&r.run)
            .iter()
            .filter(|s| s.status != "complete")
            .map(|s| left_out(s))
            .collect();
        let used = match r.complete {
            0 => "none is in the figures above".to_string(),
            1 => "the figures above use the one complete".to_string(),
            _ => "the figures above use those".to_string(),
        };
        out.push(format!(
            "{}: {} of {} seeds complete; {used}. Left out: {}.",
            r.run,
            r.complete,
            r.seeds,
            out_seeds.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete seed of `run` with final validation loss `loss` (other losses unset).
    fn seed(run: &str, seed: u64, loss: f64) -> RunSummary {
        let mut s = super::super::summary::summarise(run, Some(seed), run, "complete".into(), &[], 10, 1);
        s.final_val_loss = Some(loss);
        s
    }

    /// `base` at 5 seeds, and each of `others` at the same seeds with losses base + its diffs.
    fn runs(others: &[(&str, [f64; 5])]) -> Vec<RunSummary> {
        let base = [2.0, 2.1, 1.9, 2.05, 1.95];
        let mut all: Vec<RunSummary> = (0..5).map(|i| seed("base", i, base[i as usize])).collect();
        for (run, diffs) in others {
            all.extend((0..5).map(|i| seed(run, i, base[i as usize] + diffs[i as usize])));
        }
        all
    }

    #[test]
    fn a_difference_clear_alone_is_not_claimed_among_five_comparisons() {
        // Differences −0.10, −0.02, −0.06, −0.04, −0.08: mean −0.06, sd √0.001, se √0.001/√5.
        let b = ("b", [-0.10, -0.02, -0.06, -0.04, -0.08]);
        let se = 0.001f64.sqrt() / 5f64.sqrt();
        let alone = compare(&runs(&[b]), "base");
        let alone = alone.iter().find(|c| c.loss == "final_val_loss").unwrap();
        // t(0.975, 4) = 2.776 (any table): −0.06 ± 0.0393, clear of 0.
        assert_eq!((alone.comparisons, alone.level), (1, 0.95));
        assert!((alone.t_hi.unwrap() - (-0.06 + 2.776 * se)).abs() < 1e-3, "{alone:?}");
        assert!(
            alone.sentence.starts_with("b has lower final validation loss"),
            "{}",
            alone.sentence
        );
        // Beside four more runs: each interval at 1 − 0.05/5 = 99%, t(0.995, 4) = 4.604: −0.06 ±
        // 0.0651, which holds 0.
        let clear = [-0.5, -0.52, -0.49, -0.51, -0.5];
        let five = compare(
            &runs(&[b, ("c", clear), ("d", clear), ("e", clear), ("f", clear)]),
            "base",
        );
        let among = five
            .iter()
            .find(|c| c.run == "b" && c.loss == "final_val_loss")
            .unwrap();
        assert_eq!(among.comparisons, 5);
        assert!((among.level - 0.99).abs() < 1e-12);
        assert!((among.t_hi.unwrap() - (-0.06 + 4.604 * se)).abs() < 1e-3, "{among:?}");
        assert!((among.t_lo.unwrap() - (-0.06 - 4.604 * se)).abs() < 1e-3, "{among:?}");
        assert!(
            among.sentence.starts_with("no difference detected")
                && among
                    .sentence
                    .contains("Bonferroni-adjusted for 5 comparisons, 5 seeds"),
            "{}",
            among.sentence
        );
    }

    #[test]
    fn a_run_of_one_seed_is_no_comparison_of_the_family() {
        // c has one seed: no interval, so it does not widen b's.
        let mut all = runs(&[("b", [-0.10, -0.02, -0.06, -0.04, -0.08])]);
        all.push(seed("c", 0, 1.0));
        let rows = compare(&all, "base");
        let b = rows
            .iter()
            .find(|c| c.run == "b" && c.loss == "final_val_loss")
            .unwrap();
        assert_eq!(b.comparisons, 1);
        let c = rows
            .iter()
            .find(|c| c.run == "c" && c.loss == "final_val_loss")
            .unwrap();
        assert_eq!((c.n, c.t_lo), (1, None));
    }
}
