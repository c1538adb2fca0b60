//! Statistics over seeds: the mean and spread of a run's losses across its seeds, and the
//! paired difference between two runs with a 95% interval.
//!
//! Two intervals are computed for a paired difference. The **t interval** (mean ± t₀.₉₇₅,ₙ₋₁ ·
//! sd/√n) is the one the verdict uses: with the 3–10 seeds a comparison usually has, the
//! percentile bootstrap is known to be too narrow (it cannot be wider than the sample's range,
//! and at n = 3 it *is* the range), while the t interval widens honestly as n shrinks. The
//! **percentile bootstrap** (10,000 resamples of the seeds, a fixed resampling seed so that a
//! report is reproducible) is reported beside it, as a check that needs no normality.
//!
//! A report compares every run with one baseline: with `m` such comparisons, each at 95%, the
//! chance that at least one interval misses its true difference grows towards 1 − 0.95ᵐ (a
//! sweep of 8 runs: 30%). The differences' intervals are therefore **simultaneous** (Bonferroni:
//! each at 1 − 0.05/m), so that all of a report's claims together hold with 95% confidence.

use rand::{Rng, SeedableRng};

use crate::format::signed;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Resamples drawn by [`bootstrap_interval`].
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// The fixed seed of the bootstrap's resampling: the same data gives the same interval.
pub const BOOTSTRAP_SEED: u64 = 0x6770_746c_6162; // "gptlab"

/// Arithmetic mean; `None` for no values.
pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Sample standard deviation (n − 1 in the denominator); `None` below two values.
pub fn sd(xs: &[f64]) -> Option<f64> {
    let m = mean(xs)?;
    (xs.len() >= 2).then(|| (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt())
}

/// The `p` quantile of Student's t distribution with `df` degrees of freedom.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    StudentsT::new(0.0, 1.0, df)
        .expect("df > 0 is checked by the callers")
        .inverse_cdf(p)
}

/// The confidence of every interval gptlab reports (of a family of comparisons, together).
pub const CONFIDENCE: f64 = 0.95;

/// The confidence each of `comparisons` intervals needs for all of them to hold together with
/// [`CONFIDENCE`] (Bonferroni): 0.95 for one, 0.9833 for three.
pub fn bonferroni(comparisons: usize) -> f64 {
    1.0 - (1.0 - CONFIDENCE) / comparisons.max(1) as f64
}

/// The two-sided 95% t interval of the mean of `xs`; `None` below two values (one sample has
/// no spread to estimate an interval from).
pub fn t_interval(xs: &[f64]) -> Option<(f64, f64)> {
    t_interval_at(xs, CONFIDENCE)
}

/// The two-sided t interval of the mean of `xs` at confidence `level` (0.95: 95%).
pub fn t_interval_at(xs: &[f64], level: f64) -> Option<(f64, f64)> {
    let (m, s) = (mean(xs)?, sd(xs)?);
    let half = t_quantile(1.0 - (1.0 - level) / 2.0, (xs.len() - 1) as f64) * s / (xs.len() as f64).sqrt();
    Some((m - half, m + half))
}

/// The `q` quantile (0..=1) of sorted values, interpolating linearly between order statistics
/// (numpy's default, "type 7").
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The 95% percentile-bootstrap interval of the mean of `xs`: [`BOOTSTRAP_RESAMPLES`]
/// resamples with replacement, seeded with [`BOOTSTRAP_SEED`]; `None` below two values.
pub fn bootstrap_interval(xs: &[f64]) -> Option<(f64, f64)> {
    bootstrap_interval_at(xs, CONFIDENCE)
}

/// The percentile-bootstrap interval of the mean of `xs` at confidence `level`.
pub fn bootstrap_interval_at(xs: &[f64], level: f64) -> Option<(f64, f64)> {
    if xs.len() < 2 {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(BOOTSTRAP_SEED);
    let n = xs.len();
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| (0..n).map(|_| xs[rng.gen_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    Some((quantile(&means, tail), quantile(&means, 1.0 - tail)))
}

/// One quantity of one run over its seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// Seeds with a value.
    pub n: usize,
    /// Mean over the seeds.
    pub mean: f64,
    /// Standard deviation across seeds (n ≥ 2).
    pub sd: Option<f64>,
    /// 95% t interval of the mean (n ≥ 2).
    pub interval: Option<(f64, f64)>,
}

impl Estimate {
    /// The estimate of `values` (non-finite ones are left out); `None` when none is left.
    pub fn of(values: &[f64]) -> Option<Self> {
        let xs: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        Some(Self {
            n: xs.len(),
            mean: mean(&xs)?,
            sd: sd(&xs),
            interval: t_interval(&xs),
        })
    }
}

/// A run against the baseline, seed by seed, on one loss (lower is better).
#[derive(Clone, Debug, PartialEq)]
pub struct PairedDiff {
    /// Seeds both runs have a value for.
    pub n: usize,
    /// Mean of (run − baseline): negative when the run has the lower loss.
    pub mean: f64,
    /// How many runs the report compares with the baseline on this loss (with intervals): the
    /// intervals below hold together with 95% confidence over them all.
    pub comparisons: usize,
    /// The confidence of each interval below: [`bonferroni`] of `comparisons`.
    pub level: f64,
    /// t interval of that mean at `level` (n ≥ 2).
    pub t_interval: Option<(f64, f64)>,
    /// Percentile-bootstrap interval of that mean at `level` (n ≥ 2).
    pub bootstrap: Option<(f64, f64)>,
    /// Seeds where the run's loss is lower than the baseline's.
    pub wins: usize,
}

impl PairedDiff {
    /// Pairs `run` and `baseline` by seed (`(seed, value)`; seeds only one side has, and
    /// non-finite values, are left out): run − baseline per seed.
    pub fn pair(run: &[(u64, f64)], baseline: &[(u64, f64)]) -> Vec<f64> {
        run.iter()
            .filter_map(|(seed, r)| {
                let (_, b) = baseline.iter().find(|(s, _)| s == seed)?;
                Some(r - b).filter(|d| d.is_finite())
            })
            .collect()
    }

    /// The one comparison of `run` with `baseline` (95% intervals); `None` when no seed pairs.
    pub fn of(run: &[(u64, f64)], baseline: &[(u64, f64)]) -> Option<Self> {
        Self::among(&Self::pair(run, baseline), 1)
    }

    /// The paired differences `diffs` as one of `comparisons` made together (intervals at
    /// [`bonferroni`]`(comparisons)`); `None` for no differences.
    pub fn among(diffs: &[f64], comparisons: usize) -> Option<Self> {
        let level = bonferroni(comparisons);
        Some(Self {
            n: diffs.len(),
            mean: mean(diffs)?,
            comparisons: comparisons.max(1),
            level,
            t_interval: t_interval_at(diffs, level),
            bootstrap: bootstrap_interval_at(diffs, level),
            wins: diffs.iter().filter(|d| **d < 0.0).count(),
        })
    }

    /// How the intervals were made, after their numbers: empty for one comparison,
    /// `, Bonferroni-adjusted for 3 comparisons` for more.
    fn adjustment(&self) -> String {
        match self.comparisons {
            1 => String::new(),
            m => format!(", Bonferroni-adjusted for {m} comparisons"),
        }
    }

    /// The finding in words, e.g. "rope has lower final validation loss than absolute by 0.27
    /// nats (95% t interval 0.24–0.30, 5 seeds, better in 5/5)", with the loss in `unit`
    /// (`nats`, `bits per byte`). With one seed it says there is no uncertainty estimate; when
    /// the interval contains 0, that no difference was detected.
    pub fn sentence(&self, run: &str, baseline: &str, quantity: &str, unit: &str) -> String {
        let size = self.mean.abs();
        let direction = if self.mean < 0.0 { "lower" } else { "higher" };
        let Some((lo, hi)) = self.t_interval else {
            return format!(
                "{run} has {direction} {quantity} than {baseline} by {size:.3} {unit}, from one seed: no uncertainty \
                 estimate (repeat over seeds with [experiment] seeds or --seeds N)"
            );
        };
        let rest = format!(
            "{}, {} seeds, better in {}/{}",
            self.adjustment(),
            self.n,
            self.wins,
            self.n
        );
        if lo <= 0.0 && hi >= 0.0 {
            return format!(
                "no difference detected at this number of seeds between {run} and {baseline} in {quantity}: \
                 {run} − {baseline} = {} {unit} (95% t interval {} to {}{rest})",
                signed(self.mean, 3),
                signed(lo, 3),
                signed(hi, 3)
            );
        }
        // The interval of the size of the gap, in the direction of the finding.
        let (a, b) = if self.mean < 0.0 { (-hi, -lo) } else { (lo, hi) };
        format!(
            "{run} has {direction} {quantity} than {baseline} by {size:.3} {unit} (95% t interval {a:.3}–{b:.3}{rest})"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_numpy() {
        // numpy.quantile([1, 2, 3, 4], [0, 0.25, 0.5, 0.975]) = [1, 1.75, 2.5, 3.925]
        let xs = [1.0, 2.0, 3.0, 4.0];
        for (q, want) in [(0.0, 1.0), (0.25, 1.75), (0.5, 2.5), (0.975, 3.925)] {
            assert!((quantile(&xs, q) - want).abs() < 1e-12, "q {q}");
        }
    }
}
