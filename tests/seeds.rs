//! Seeds: a run repeated over `[experiment] seeds`, end to end — folders, exact resume of one
//! (run, seed) after a kill, `--only RUN/seed=S`, the band in the loss figure, the comparison
//! and the verdict on the page (in headless Chromium) — and the spec errors around seeds.
// The end-to-end test needs the `fault-injection` feature; without it (`cargo check` of the
// CUDA build) its helpers are unused.
#![cfg_attr(not(feature = "fault-injection"), allow(dead_code, unused_imports))]

use std::path::{Path, PathBuf};

mod common;

use common::{dump_dom, gptlab, write_spec};
use gptlab::run_dir::read_metrics;

/// The tiny spec as experiment `sd`, two runs, repeated over seeds 5 and 6.
fn seeded_spec(dir: &Path) -> PathBuf {
    let text = common::TINY_SPEC.replace("seed = 5", "name = \"sd\"\nseeds = [5, 6]");
    let runs = "\n[[run]]\nname = \"absolute\"\n\n[[run]]\nname = \"rope\"\nmodel.position = \"rope\"\n\n[report]\nbaseline = \"absolute\"\n";
    write_spec(dir, "sd.toml", &format!("{text}{runs}"))
}

fn bits(metrics: &Path) -> Vec<(usize, u32, Option<u32>, Option<u64>)> {
    read_metrics(metrics)
        .unwrap()
        .iter()
        .map(|r| (r.step, r.train_loss.to_bits(), r.val_loss.map(f32::to_bits), r.seed))
        .collect()
}

fn run_args<'a>(spec: &'a Path, runs: &'a Path, reports: &'a Path) -> Vec<&'a str> {
    vec![
        "run",
        spec.to_str().unwrap(),
        "--runs-dir",
        runs.to_str().unwrap(),
        "--reports-dir",
        reports.to_str().unwrap(),
        "-q",
    ]
}

#[cfg(not(feature = "fault-injection"))]
#[test]
fn two_seeds_end_to_end_with_a_kill_resume_and_the_verdict_in_a_browser() {
    panic!(
        "this test kills gptlab through the test-only `fault-injection` feature: run `cargo test --features fault-injection` (`just test` does)"
    );
}

#[cfg(feature = "fault-injection")]
#[test]
fn two_seeds_end_to_end_with_a_kill_resume_and_the_verdict_in_a_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = seeded_spec(tmp.path());
    let (runs, reports) = (tmp.path().join("runs"), tmp.path().join("reports"));

    // Killed (SIGKILL at the end of step 7) while training the first (run, seed), then resumed.
    let out = gptlab()
        .args(run_args(&spec, &runs, &reports))
        .env("GPTLAB_FAULT", "step-end@7")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the fault should have killed the process");
    gptlab().args(run_args(&spec, &runs, &reports)).assert().success();

    let exp = runs.join("sd");
    assert_each_seed_is_its_own_run(tmp.path(), &spec, &exp, &reports);
    let report = reports.join("sd");
    assert_the_tables_pair_the_seeds(&report, &exp);
    assert_the_verdict_comes_first_in_a_browser(&report);
}

/// One folder per (run, seed) of `exp`, each a full run with its seed in every row; the
/// killed and resumed (run, seed) equals the same trained alone, and seed 5 of `seeds` is the
/// run a single `seed = 5` trains.
#[cfg(feature = "fault-injection")]
fn assert_each_seed_is_its_own_run(tmp: &Path, spec: &Path, exp: &Path, reports: &Path) {
    for run in ["absolute", "rope"] {
        for seed in [5u64, 6] {
            let rows = bits(&exp.join(run).join(format!("seed={seed}")).join("metrics.csv"));
            assert_eq!(rows.len(), 16, "{run} seed {seed}");
            assert!(rows.iter().all(|r| r.3 == Some(seed)), "{run} seed {seed}: seed column");
        }
    }
    assert!(
        !exp.join("absolute/metrics.csv").exists(),
        "no run-level files beside the seeds"
    );
    let killed = bits(&exp.join("absolute/seed=5/metrics.csv"));

    // The killed (run, seed), trained alone and uninterrupted with --only, is the same bit for bit.
    let alone = tmp.join("alone");
    gptlab()
        .args(run_args(spec, &alone, reports))
        .args(["--only", "absolute/seed=5", "--no-report"])
        .assert()
        .success();
    assert_eq!(bits(&alone.join("sd/absolute/seed=5/metrics.csv")), killed);
    assert!(
        !alone.join("sd/absolute/seed=6").exists(),
        "--only RUN/seed=S trains that seed only"
    );
    // A seed is every source of randomness: the two seeds' trajectories differ.
    assert_ne!(bits(&exp.join("absolute/seed=6/metrics.csv"))[3].1, killed[3].1);
    // And seed 5 of `seeds` is the run a single `seed = 5` trains (only the folder differs).
    let single = common::TINY_SPEC.replace("[experiment]\n", "[experiment]\nname = \"sd\"\n");
    let single = write_spec(tmp, "single.toml", &format!("{single}\n[[run]]\nname = \"absolute\"\n"));
    let one = tmp.join("one");
    gptlab()
        .args(run_args(&single, &one, reports))
        .arg("--no-report")
        .assert()
        .success();
    let plain: Vec<_> = bits(&one.join("sd/absolute/metrics.csv"));
    assert_eq!(
        plain.iter().map(|r| (r.0, r.1, r.2)).collect::<Vec<_>>(),
        killed.iter().map(|r| (r.0, r.1, r.2)).collect::<Vec<_>>()
    );
}

/// The report: a band per run, per-run aggregates that are the mean of the seeds, the
/// comparison paired by seed, and a verdict with its interval.
#[cfg(feature = "fault-injection")]
fn assert_the_tables_pair_the_seeds(report: &Path, exp: &Path) {
    let svg = std::fs::read_to_string(report.join("loss.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let bands: Vec<_> = doc.descendants().filter(|n| n.tag_name().name() == "polygon").collect();
    assert_eq!(bands.len(), 2, "one filled band per run");
    assert!(bands.iter().all(|b| b.attribute("fill").is_some_and(|f| f != "none")));

    let summary = std::fs::read_to_string(report.join("summary.csv")).unwrap();
    let mut lines = summary.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "one row per run:\n{summary}");
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for r in &rows {
        assert_eq!((r[col("seeds")], r[col("complete")]), ("2", "2"));
    }
    // The aggregate is the mean of the seeds' final validation losses.
    let seeds_csv = std::fs::read_to_string(report.join("seeds.csv")).unwrap();
    assert_eq!(seeds_csv.lines().count(), 5, "a row per run and seed:\n{seeds_csv}");
    let final_val = |run: &str, seed: u64| -> f64 {
        let rows = read_metrics(&exp.join(run).join(format!("seed={seed}")).join("metrics.csv")).unwrap();
        rows.iter().filter_map(|r| r.val_loss).next_back().unwrap() as f64
    };
    let rope_row = rows.iter().find(|r| r[0] == "rope").unwrap();
    let rope_mean: f64 = rope_row[col("final_val_loss_mean")].parse().unwrap();
    assert!((rope_mean - (final_val("rope", 5) + final_val("rope", 6)) / 2.0).abs() < 1e-9);

    let comparison = std::fs::read_to_string(report.join("comparison.csv")).unwrap();
    let first = comparison.lines().nth(1).unwrap();
    assert!(first.starts_with("rope,absolute,final_val_loss,2,"), "{comparison}");
    let diffs: Vec<f64> = [5, 6]
        .iter()
        .map(|&s| final_val("rope", s) - final_val("absolute", s))
        .collect();
    let diff: f64 = first.split(',').nth(4).unwrap().parse().unwrap();
    assert!(
        (diff - (diffs[0] + diffs[1]) / 2.0).abs() < 1e-9,
        "paired by seed: {first}"
    );

    let md = std::fs::read_to_string(report.join("summary.md")).unwrap();
    let verdict = md.lines().find(|l| l.starts_with("- ")).unwrap();
    assert!(verdict.contains("2 seeds, better in"), "{md}");
    assert!(verdict.contains("95% t interval"), "{md}");
}

/// The page in headless Chromium: the verdict first, the paired comparison, every figure loaded.
#[cfg(feature = "fault-injection")]
fn assert_the_verdict_comes_first_in_a_browser(report: &Path) {
    let profile = tempfile::tempdir().unwrap();
    let dom = dump_dom(&report.join("index.html"), profile.path());
    let verdict_html = dom
        .split("id=\"verdict\"")
        .nth(1)
        .expect("a verdict section")
        .split("</section>")
        .next()
        .unwrap();
    assert!(
        verdict_html.contains("rope") && verdict_html.contains("2 seeds, better in"),
        "{verdict_html}"
    );
    assert!(
        dom.find("id=\"verdict\"") < dom.find("id=\"compact\""),
        "the verdict comes first"
    );
    assert!(dom.contains("id=\"comparison\""), "the paired comparison table");
    assert_eq!(
        dom.matches("class=\"loaded\"").count(),
        dom.matches("<img ").count(),
        "every figure loads"
    );
}

#[test]
fn seed_errors_name_the_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str, args: &[&str], want: &[&str]| {
        let spec = write_spec(tmp.path(), name, text);
        let out = gptlab().arg("validate").arg(&spec).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        for w in want {
            assert!(err.contains(w), "{name}: wanted {w:?} in:\n{err}");
        }
    };
    let base = common::TINY_SPEC;
    // `seed` and `seeds` in one file: ambiguous.
    let both = base.replace("seed = 5", "seed = 5\nseeds = [1, 2]");
    check("both.toml", &both, &[], &["both.toml:", "experiment.seed", "not both"]);
    // A seed listed twice.
    let dup = base.replace("seed = 5", "seeds = [1, 2, 1]");
    check(
        "dup.toml",
        &dup,
        &[],
        &["dup.toml:3", "experiment.seeds", "listed twice"],
    );
    // Seeds per run would break the pairing.
    let per_run = base.replace("seed = 5", "seeds = [1, 2]")
        + "\n[[run]]\nname = \"a\"\n\n[[run]]\nname = \"b\"\nexperiment.seeds = [3, 4]\n";
    check(
        "per_run.toml",
        &per_run,
        &[],
        &["per_run.toml:", "experiment.seeds", "not a run's"],
    );
    // --seeds 0, and --only naming a seed the run does not have.
    check("zero.toml", base, &["--seeds", "0"], &["--seeds must be between 1"]);
    let ok = base.replace("seed = 5", "seeds = [1, 2]");
    check(
        "only.toml",
        &ok,
        &["--only", "default/seed=9"],
        &["default/seed=1", "default/seed=2"],
    );
    // --seeds replaces the file's single seed.
    let spec = write_spec(tmp.path(), "plain.toml", base);
    gptlab()
        .args(["validate", spec.to_str().unwrap(), "--seeds", "3"])
        .assert()
        .success()
        .stdout(predicates::str::contains("1 run × 3 seeds (3 trainings)"));
}
