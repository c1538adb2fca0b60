//! TensorBoard event files, read back with TensorBoard's own reader (`EventAccumulator`, from
//! the `tensorboard` package that scripts/test-deps.sh installs into target/tb-venv): every
//! scalar equals `metrics.csv`'s and `eval.csv`'s, value for value, one value per step, also
//! after a kill -9 and a resume; `[report] tensorboard = false` writes none.

mod common;

use std::path::{Path, PathBuf};

/// Python with the `tensorboard` package.
fn python() -> PathBuf {
    common::test_python("tensorboard")
}

/// Reads `run/tb` with TensorBoard's reader and compares it with the run's CSV files; prints
/// `checked N scalars` or fails with the first difference.
const CHECK: &str = r#"
import csv, math, sys
import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = sys.argv[1]
ea = EventAccumulator(run + "/tb", size_guidance={"scalars": 0})
ea.Reload()
got = {}
for tag in ea.Tags()["scalars"]:
    steps = [e.step for e in ea.Scalars(tag)]
    assert len(steps) == len(set(steps)), f"{tag}: a step written twice: {steps}"
    got[tag] = {e.step: e.value for e in ea.Scalars(tag)}

want = {}
for row in csv.DictReader(open(run + "/metrics.csv")):
    step = int(row["step"])
    for tag, col in [("train/loss", "train_loss"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm"),
                     ("train/tokens_per_s", "tokens_per_s"), ("val/loss", "val_loss")]:
        if row[col] != "":
            want.setdefault(tag, {})[step] = np.float32(float(row[col]))
for row in csv.DictReader(open(run + "/eval.csv")):
    if row["loss"] != "":
        tag = "eval/loss_len_" + row["length"] + ("_sliding" if row["mode"] == "sliding" else "")
        if row["scaling"]:
            tag += "_" + row["scaling"].replace(" ", "_").replace("\u00d7", "x")
        want.setdefault(tag, {})[int(row["step"])] = np.float32(float(row["loss"]))

assert sorted(got) == sorted(want), f"tags {sorted(got)} vs {sorted(want)}"
n = 0
for tag, by_step in want.items():
    assert sorted(got[tag]) == sorted(by_step), f"{tag}: steps {sorted(got[tag])} vs {sorted(by_step)}"
    for step, v in by_step.items():
        assert got[tag][step] == v, f"{tag} step {step}: {got[tag][step]} vs {v}"
        n += 1
print(f"checked {n} scalars")
"#;

/// Runs [`CHECK`] on `run` and returns how many scalars it compared.
fn check(run: &Path) -> usize {
    let text = common::output_ok(
        std::process::Command::new(python()).args(["-c", CHECK, run.to_str().unwrap()]),
        &format!("the TensorBoard check of {}", run.display()),
    );
    text.trim()
        .strip_prefix("checked ")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The tiny spec with `[eval]` lengths (one past the training length) and two seeds.
fn spec(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let text = format!("[eval]\nlengths = [8, 16, 32]\ntokens = 256\n{extra}");
    common::tiny_spec(dir, name, &text)
}

#[test]
fn every_scalar_tensorboard_reads_equals_the_csv_files() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "tb_plain", "");
    let spec_text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("seed = 5", "seeds = [5, 6]");
    std::fs::write(&spec, spec_text).unwrap();
    let runs = dir.path().join("runs");
    common::quiet_run(&spec, &runs).assert().success();
    for seed in [5, 6] {
        let run = runs.join(format!("tb_plain/default/seed={seed}"));
        // 16 steps × 4 training scalars, validation at 5, 10, 15, 16 and the phase ends' lengths.
        let n = check(&run);
        assert!(n >= 16 * 4 + 4 + 3, "only {n} scalars for seed {seed}");
    }
}

#[cfg(feature = "fault-injection")]
#[test]
fn after_a_kill_and_a_resume_each_step_has_one_value_equal_to_the_csv() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "tb_kill", "");
    let runs = dir.path().join("runs");
    // Killed after step 14 (the last checkpoint is step 12): steps 13–14 of the event file
    // are gone with the rest of that session, and the resume writes them once more.
    common::quiet_run(&spec, &runs)
        .env("GPTLAB_FAULT", "step-end@14")
        .assert()
        .failure();
    common::quiet_run(&spec, &runs).assert().success();
    let run = runs.join("tb_kill/default");
    let n = check(&run);
    assert!(n >= 16 * 4 + 4 + 3, "only {n} scalars");
    let files: Vec<_> = std::fs::read_dir(run.join("tb")).unwrap().collect();
    assert_eq!(files.len(), 1, "one event file, no leftovers: {files:?}");
}

/// Stands in for the kill test in a build without the hook, so it fails saying why.
#[cfg(not(feature = "fault-injection"))]
#[test]
fn after_a_kill_and_a_resume_each_step_has_one_value_equal_to_the_csv() {
    panic!(
        "this test kills gptlab through the test-only `fault-injection` feature: run `cargo test --features fault-injection` (`just test` does)"
    );
}

#[test]
fn tensorboard_false_writes_no_event_files() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "tb_off", "[report]\ntensorboard = false\n");
    let runs = dir.path().join("runs");
    common::quiet_run(&spec, &runs).assert().success();
    let run = runs.join("tb_off/default");
    assert!(run.join("metrics.csv").exists());
    assert!(!run.join("tb").exists(), "[report] tensorboard = false still wrote tb/");
}
