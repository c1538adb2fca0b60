//! A run that diverges tells one story everywhere: its status, `gptlab status`, the report's
//! CSVs, summary.md, the page and the exit code. Divergence of each kind (training loss,
//! validation loss, the loss at one `[eval]` length; before and after the first checkpoint) is
//! made on demand with the test-only `GPTLAB_POISON=<what>@<step>` hook, which takes that loss
//! of that step to be NaN whatever the machine's rounding; one test diverges for real.

mod common;

use std::path::{Path, PathBuf};

use common::{OutDirs, csv_rows, gptlab, tiny_spec};

/// Two runs over two seeds of the tiny spec (checkpoints every 4 steps, 16 steps in all,
/// validation every 5 and at phase ends 10 and 16), evaluated at lengths 8 and 16.
fn seeded_pair(dir: &Path, name: &str) -> PathBuf {
    let extra = "[eval]\nlengths = [8, 16]\ntokens = 256\n[[run]]\nname = \"absolute\"\n[[run]]\nname = \"rope\"\n\
                 model.position = \"rope\"\n";
    let spec = tiny_spec(dir, name, extra);
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("seed = 5", "seeds = [1, 2]");
    std::fs::write(&spec, text).unwrap();
    spec
}

fn run(spec: &Path, out: &OutDirs, extra: &[&str], poison: Option<&str>) -> assert_cmd::assert::Assert {
    let mut cmd = gptlab();
    cmd.arg("run")
        .arg(spec)
        .args(out.args())
        .args(["--threads", "1"])
        .args(extra);
    if let Some(p) = poison {
        cmd.env("GPTLAB_POISON", p);
    }
    cmd.assert()
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

/// Trains the pair, then retrains rope's seed 2 with `poison`, and checks every output.
fn one_seed_diverges(poison: &str, step: usize, cause: &str, before_first_checkpoint: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let spec = seeded_pair(tmp.path(), "div");
    run(&spec, &out, &["-q", "--no-report"], None).success();
    let trained = run(
        &spec,
        &out,
        &["--fresh", "--only", "rope/seed=2", "--no-report"],
        Some(poison),
    )
    .code(1);
    let stderr = String::from_utf8_lossy(&trained.get_output().stderr).into_owned();
    assert!(
        stderr.contains(&format!("diverged at step {step} ({cause}")),
        "{poison}: {stderr}"
    );
    if before_first_checkpoint {
        assert!(stderr.contains("it had no checkpoint yet"), "{stderr}");
        assert!(!stderr.contains("last good checkpoint"), "{stderr}");
    } else {
        assert!(stderr.contains("its last good checkpoint (step "), "{stderr}");
    }

    assert_the_status_says_diverged(&spec, &out, step, cause);
    // The step that diverged is the last row of metrics.csv, its loss as it came out.
    let rows = csv_rows(&out.runs.join("div/rope/seed=2/metrics.csv"));
    let last = rows.last().unwrap();
    assert_eq!(last["step"], step.to_string(), "{last:?}");
    if cause.starts_with("training loss") {
        assert_eq!(
            (last["train_loss"].as_str(), last["val_loss"].as_str()),
            ("NaN", ""),
            "{last:?}"
        );
        assert!(
            last["grad_norm"].parse::<f64>().is_ok() && last["lr"].parse::<f64>().unwrap() > 0.0,
            "{last:?}"
        );
    }
    assert_the_report_leaves_the_seed_out(&spec, &out, step, cause);
    // Training again does not retry it.
    run(&spec, &out, &["-q", "--no-report"], None)
        .code(1)
        .stderr(predicates::str::contains(format!(
            "run `rope/seed=2` diverged at step {step}"
        )));
}

/// `status.json` and `gptlab status` say run `rope/seed=2` diverged at `step` of `cause`.
fn assert_the_status_says_diverged(spec: &Path, out: &OutDirs, step: usize, cause: &str) {
    let run_dir = out.runs.join("div/rope/seed=2");
    let status: serde_json::Value = serde_json::from_str(&read(run_dir.join("status.json"))).unwrap();
    assert_eq!(status["state"], "diverged", "{status}");
    assert_eq!(status["step"], step as u64);
    assert!(status["cause"].as_str().unwrap().starts_with(cause), "{status}");
    let shown = common::status(spec, &out.runs).success();
    let table = common::stdout_of(&shown);
    let line = table.lines().find(|l| l.starts_with("rope/seed=2")).unwrap();
    assert!(
        line.contains("diverged") && line.contains(&format!("{step}/16")) && line.contains(cause),
        "{line}"
    );
}

/// The report (seeds.csv, summary.csv, comparison.csv, summary.md, the page) leaves the
/// diverged seed out of every figure and says why.
fn assert_the_report_leaves_the_seed_out(spec: &Path, out: &OutDirs, step: usize, cause: &str) {
    gptlab()
        .arg("report")
        .arg(spec)
        .args(out.args())
        .arg("--no-samples")
        .assert()
        .success();
    let reports = out.reports.join("div");
    let seeds = csv_rows(&reports.join("seeds.csv"));
    let diverged = seeds.iter().find(|r| r["run"] == "rope" && r["seed"] == "2").unwrap();
    let said = format!("diverged at step {step} ({cause}");
    assert!(diverged["status"].starts_with(&said), "{diverged:?}");
    assert_eq!(
        diverged["final_val_loss"], "",
        "a diverged seed has no final loss: {diverged:?}"
    );
    assert_eq!(diverged["final_train_loss"], "", "{diverged:?}");
    let summary = csv_rows(&reports.join("summary.csv"));
    let rope = summary.iter().find(|r| r["run"] == "rope").unwrap();
    assert_eq!(
        (rope["seeds"].as_str(), rope["complete"].as_str()),
        ("2", "1"),
        "{rope:?}"
    );
    // The aggregate is the complete seed's own value, nothing of the diverged one.
    let seed1 = seeds.iter().find(|r| r["run"] == "rope" && r["seed"] == "1").unwrap();
    assert_eq!(rope["final_val_loss_mean"], seed1["final_val_loss"]);
    let comparison = csv_rows(&reports.join("comparison.csv"));
    assert!(
        !comparison.is_empty() && comparison.iter().all(|r| r["n"] == "1"),
        "{comparison:?}"
    );
    let left_out = format!("Left out: seed 2: {said}");
    assert!(read(reports.join("summary.md")).contains(&left_out), "summary.md");
    let page = read(reports.join("index.html"));
    assert!(page.contains(&left_out), "the page does not say {left_out}");
    assert!(
        !page.contains("no checkpoint (deleted?)"),
        "a diverged run is not a deleted one"
    );
    // Its eval.csv holds no NaN that the report would pass on as a loss.
    for row in csv_rows(&reports.join("eval.csv")) {
        assert!(row["loss"] != "NaN", "{row:?}");
    }
}

#[test]
fn a_training_loss_that_turns_nan_before_the_first_checkpoint() {
    one_seed_diverges("train@3", 3, "training loss NaN", true);
}

#[test]
fn a_training_loss_that_turns_nan_after_a_checkpoint() {
    one_seed_diverges("train@7", 7, "training loss NaN", false);
}

#[test]
fn a_validation_loss_that_turns_nan_while_the_training_loss_is_finite() {
    // Step 5 is a periodic evaluation before the first phase end.
    one_seed_diverges("val@5", 5, "validation loss NaN", false);
    // At the last step: the run would otherwise be complete.
    one_seed_diverges("val@16", 16, "validation loss NaN", false);
}

#[test]
fn the_loss_at_one_evaluation_length_that_turns_nan() {
    one_seed_diverges("eval@10", 10, "loss NaN at evaluation length", false);
}

#[test]
fn a_run_whose_seeds_all_diverged_cannot_be_compared_and_the_verdict_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let spec = seeded_pair(tmp.path(), "div");
    run(&spec, &out, &["-q", "--only", "absolute", "--no-report"], None).success();
    run(&spec, &out, &["-q", "--only", "rope"], Some("val@5")).code(1);
    let md = read(out.reports.join("div/summary.md"));
    assert!(
        md.contains("rope cannot be compared with absolute: no seed of rope completed, and none will"),
        "{md}"
    );
    assert!(!md.contains("cannot be compared with absolute yet"), "{md}");
}

#[test]
fn a_run_recorded_complete_with_a_nan_validation_loss_is_diverged_everywhere() {
    // What an older gptlab left: status complete, the last validation loss NaN.
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let spec = seeded_pair(tmp.path(), "old");
    run(&spec, &out, &["-q", "--no-report"], None).success();
    let metrics = out.runs.join("old/rope/seed=2/metrics.csv");
    let text = read(&metrics);
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let val = header.iter().position(|h| *h == "val_loss").unwrap();
    let last = lines.len() - 1;
    let mut cells: Vec<String> = lines[last].split(',').map(String::from).collect();
    assert!(!cells[val].is_empty(), "the last step has a validation loss");
    cells[val] = "NaN".into();
    lines[last] = cells.join(",");
    std::fs::write(&metrics, lines.join("\n") + "\n").unwrap();

    let shown = common::status(&spec, &out.runs).success();
    let table = common::stdout_of(&shown);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("rope/seed=2") && l.contains("diverged") && l.contains("16/16")),
        "{table}"
    );
    gptlab()
        .arg("report")
        .arg(&spec)
        .args(out.args())
        .arg("--no-samples")
        .assert()
        .success();
    let seeds = csv_rows(&out.reports.join("old/seeds.csv"));
    let row = seeds.iter().find(|r| r["run"] == "rope" && r["seed"] == "2").unwrap();
    assert!(
        row["status"].starts_with("diverged at step 16 (validation loss NaN)"),
        "{row:?}"
    );
    assert_eq!(row["final_val_loss"], "");
    // `run` does not call it complete either.
    run(&spec, &out, &["-q", "--no-report"], None)
        .code(1)
        .stderr(predicates::str::contains(
            "diverged at step 16 (validation loss NaN) though its status says complete",
        ));
}

#[test]
fn a_real_divergence_never_borrows_an_earlier_loss() {
    // The case as reported: a learning rate of 68 without clipping, 20 steps, several seeds.
    // Whichever seeds break, and however, each is either complete with the last step's own
    // validation loss or diverged with none, and only complete seeds are aggregated.
    let tmp = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let extra = "[[run]]\nname = \"absolute\"\n[[run]]\nname = \"rope\"\nmodel.position = \"rope\"\n";
    let spec = tiny_spec(tmp.path(), "hot", extra);
    let text = read(&spec)
        .replace("seed = 5", "seeds = [1, 2, 3, 4]")
        .replace("batch_size = 4", "batch_size = 4\nlr = 68\ngrad_clip = 0");
    std::fs::write(&spec, text).unwrap();
    let done = run(&spec, &out, &["-q"], None);
    let code = done.get_output().status.code();
    let seeds = csv_rows(&out.reports.join("hot/seeds.csv"));
    let mut diverged = 0;
    for s in &seeds {
        let rows = gptlab::run_dir::read_metrics(
            &out.runs
                .join(format!("hot/{}/seed={}/metrics.csv", s["run"], s["seed"])),
        )
        .unwrap();
        if s["status"] == "complete" {
            let last_val = rows.iter().rev().find_map(|r| r.val_loss).unwrap();
            assert!(last_val.is_finite());
            assert_eq!(s["final_val_loss"].parse::<f32>().unwrap(), last_val, "{s:?}");
        } else {
            assert!(s["status"].starts_with("diverged at step"), "{s:?}");
            assert_eq!(s["final_val_loss"], "", "{s:?}");
            diverged += 1;
        }
    }
    assert_eq!(
        code,
        Some(if diverged > 0 { 1 } else { 0 }),
        "the exit code says whether any diverged"
    );
    for agg in csv_rows(&out.reports.join("hot/summary.csv")) {
        let complete = seeds
            .iter()
            .filter(|s| s["run"] == agg["run"] && s["status"] == "complete")
            .count();
        assert_eq!(agg["complete"], complete.to_string(), "{agg:?}");
    }
    // The loss figure's tick labels stay short however far the loss ran off.
    let svg = read(out.reports.join("hot/loss.svg"));
    let doc = roxmltree::Document::parse(&svg).unwrap();
    for t in doc.descendants().filter(|n| n.has_tag_name("text")) {
        let label = t.text().unwrap_or("").trim();
        if label.parse::<f64>().is_ok() {
            assert!(label.len() <= 8, "tick label {label:?} runs off the chart");
        }
    }
}
