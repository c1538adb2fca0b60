//! The statistics behind the comparison, against independent facts: published t quantiles,
//! hand-computed means and intervals, and the bootstrap against an exact enumeration.

use gptlab::stats::{
    Estimate, PairedDiff, bonferroni, bootstrap_interval, bootstrap_interval_at, mean, sd, t_interval, t_interval_at,
    t_quantile,
};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn t_quantiles_equal_the_published_table() {
    // Two-sided 95% critical values (any statistics table, e.g. NIST/SEMATECH 1.3.6.7.2).
    for (df, want) in [
        (1.0, 12.706),
        (2.0, 4.303),
        (4.0, 2.776),
        (9.0, 2.262),
        (29.0, 2.045),
        (1000.0, 1.962),
    ] {
        let t = t_quantile(0.975, df);
        assert!(close(t, want, 0.0006), "t(0.975, {df}) = {t}, table {want}");
    }
}

#[test]
fn mean_sd_and_t_interval_of_a_fixed_sample() {
    let xs = [1.0, 2.0, 3.0, 4.0, 5.0];
    assert_eq!(mean(&xs), Some(3.0));
    // Σ(x − 3)² = 10, / (n − 1) = 2.5.
    assert!(close(sd(&xs).unwrap(), 2.5f64.sqrt(), 1e-12));
    // 3 ± 2.776445 · 1.581139 / √5 = 3 ± 1.963243.
    let (lo, hi) = t_interval(&xs).unwrap();
    assert!(close(lo, 1.036757, 1e-5) && close(hi, 4.963243, 1e-5), "({lo}, {hi})");
    // One value has no spread: no sd, no interval, never one made up.
    assert_eq!(sd(&[2.0]), None);
    assert_eq!(t_interval(&[2.0]), None);
    let one = Estimate::of(&[2.0]).unwrap();
    assert_eq!((one.n, one.mean, one.sd, one.interval), (1, 2.0, None, None));
    // Non-finite values (a diverged seed) are left out, not averaged in.
    let e = Estimate::of(&[1.0, f64::NAN, 3.0]).unwrap();
    assert_eq!((e.n, e.mean), (2, 2.0));
    assert_eq!(Estimate::of(&[]), None);
}

#[test]
fn simultaneous_intervals_take_the_bonferroni_level() {
    assert_eq!(bonferroni(1), 0.95);
    assert!((bonferroni(5) - 0.99).abs() < 1e-12);
    assert!((bonferroni(3) - (1.0 - 0.05 / 3.0)).abs() < 1e-12);
    // Two-sided 99% critical values (the same tables): t(0.995, 4) = 4.604, t(0.995, 9) = 3.250.
    for (df, want) in [(4.0, 4.604), (9.0, 3.250)] {
        assert!(close(t_quantile(0.995, df), want, 0.0006));
    }
    // 3 ± 4.604095 · 1.581139 / √5 = 3 ± 3.255583.
    let (lo, hi) = t_interval_at(&[1.0, 2.0, 3.0, 4.0, 5.0], bonferroni(5)).unwrap();
    assert!(
        close(lo, 3.0 - 3.255583, 1e-5) && close(hi, 3.0 + 3.255583, 1e-5),
        "({lo}, {hi})"
    );
    // The bootstrap's tails move out too: at 99% the range of three values still (1/27 > 0.5%).
    let (lo, hi) = bootstrap_interval_at(&[0.4, -0.1, 0.25], 0.99).unwrap();
    assert!(close(lo, -0.1, 1e-12) && close(hi, 0.4, 1e-12), "({lo}, {hi})");
    // One comparison is the plain 95% interval.
    let xs = [(1, 2.0), (2, 2.5), (3, 2.2)];
    let base = [(1, 2.4), (2, 2.6), (3, 2.5)];
    let diffs = PairedDiff::pair(&xs, &base);
    assert_eq!(diffs.len(), 3);
    let one = PairedDiff::of(&xs, &base).unwrap();
    assert_eq!(one.t_interval, t_interval(&diffs));
    let five = PairedDiff::among(&diffs, 5).unwrap();
    assert_eq!(five.t_interval, t_interval_at(&diffs, 0.99));
    assert!(five.t_interval.unwrap().0 < one.t_interval.unwrap().0);
}

#[test]
fn bootstrap_of_three_values_is_their_range() {
    // Exact enumeration for n = 3: 27 equally likely resamples; all-lowest and all-highest
    // each have probability 1/27 = 3.7% > 2.5%, so the exact 2.5% and 97.5% percentiles of
    // the resampled mean are the smallest and largest value.
    let xs = [0.4, -0.1, 0.25];
    let (lo, hi) = bootstrap_interval(&xs).unwrap();
    assert!(close(lo, -0.1, 1e-12) && close(hi, 0.4, 1e-12), "({lo}, {hi})");
}

#[test]
fn bootstrap_of_five_values_matches_the_exact_enumeration() {
    let xs = [0.31, 0.12, 0.27, 0.05, 0.22];
    // Every one of the 5⁵ = 3125 resamples, by counting in base 5.
    let mut means: Vec<f64> = (0..3125usize)
        .map(|code| (0..5).map(|digit| xs[(code / 5usize.pow(digit)) % 5]).sum::<f64>() / 5.0)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let pos = q * 3124.0;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        means[lo] + (means[hi] - means[lo]) * (pos - lo as f64)
    };
    let (exact_lo, exact_hi) = (at(0.025), at(0.975));
    // numpy, same enumeration: 0.108 and 0.276.
    assert!(close(exact_lo, 0.108, 1e-9) && close(exact_hi, 0.276, 1e-9));
    let (lo, hi) = bootstrap_interval(&xs).unwrap();
    assert!(
        close(lo, exact_lo, 0.006) && close(hi, exact_hi, 0.006),
        "bootstrap ({lo}, {hi}) vs exact ({exact_lo}, {exact_hi})"
    );
    assert_eq!(bootstrap_interval(&xs), Some((lo, hi)), "a fixed resampling seed");
}

#[test]
fn paired_differences_pair_by_seed() {
    // Seeds listed in different orders, and a seed only the run has.
    let run = [(1, 2.0), (2, 2.5), (3, 2.2), (9, 0.0)];
    let base = [(3, 2.5), (1, 2.4), (2, 2.6)];
    let d = PairedDiff::of(&run, &base).unwrap();
    // Differences −0.4, −0.1, −0.3.
    assert_eq!(d.n, 3);
    assert!(close(d.mean, -0.8 / 3.0, 1e-12));
    assert_eq!(d.wins, 3);
    let (lo, hi) = d.t_interval.unwrap();
    let want = t_interval(&[-0.4, -0.1, -0.3]).unwrap();
    assert!(close(lo, want.0, 1e-12) && close(hi, want.1, 1e-12));
    let (lo, hi) = d.bootstrap.unwrap();
    assert!(
        close(lo, -0.4, 1e-12) && close(hi, -0.1, 1e-12),
        "range of 3: ({lo}, {hi})"
    );
}

#[test]
fn the_verdict_says_what_the_interval_supports() {
    // A clear win: every seed lower, the interval below 0.
    let win = PairedDiff::of(&[(1, 2.5), (2, 2.6), (3, 2.55)], &[(1, 2.8), (2, 2.85), (3, 2.83)]).unwrap();
    let s = win.sentence("rope", "absolute", "final validation loss", "nats");
    assert!(
        s.starts_with("rope has lower final validation loss than absolute by 0.277 nats (95% t interval"),
        "{s}"
    );
    assert!(s.ends_with("3 seeds, better in 3/3)"), "{s}");
    let (lo, hi) = win.t_interval.unwrap();
    assert!(s.contains(&format!("{:.3}–{:.3}", -hi, -lo)), "the gap's interval: {s}");

    // A clear loss: higher everywhere.
    let loss = PairedDiff::of(&[(1, 3.0), (2, 3.1), (3, 3.05)], &[(1, 2.8), (2, 2.85), (3, 2.83)]).unwrap();
    let s = loss.sentence("nope", "absolute", "final validation loss", "nats");
    assert!(
        s.starts_with("nope has higher final validation loss than absolute by 0.223 nats"),
        "{s}"
    );
    assert!(s.ends_with("better in 0/3)"), "{s}");

    // Noise: the interval contains 0.
    let tie = PairedDiff::of(&[(1, 2.9), (2, 2.7), (3, 2.85)], &[(1, 2.8), (2, 2.85), (3, 2.83)]).unwrap();
    let s = tie.sentence("rope", "absolute", "final validation loss", "nats");
    assert!(
        s.starts_with("no difference detected at this number of seeds between rope and absolute"),
        "{s}"
    );
    assert!(s.contains("better in 1/3"), "{s}");

    // One seed: no interval, and it says so.
    let one = PairedDiff::of(&[(7, 2.5)], &[(7, 2.8)]).unwrap();
    assert_eq!((one.t_interval, one.bootstrap), (None, None));
    let s = one.sentence("rope", "absolute", "final validation loss", "nats");
    assert!(s.contains("one seed: no uncertainty estimate"), "{s}");
    assert!(!s.contains("interval"), "no interval from one sample: {s}");
}
