//! The instruction-set path (`GPTLAB_ISA`): each path the CPU runs trains, is recorded in
//! provenance and checkpoints, repeats bit for bit on 1 and 3 threads, agrees with the other
//! paths within rounding; a bad or missing path is exit 2; a resume on another path is said;
//! Slurm tasks inherit a pinned path.

mod common;

use std::path::Path;

use gptlab::isa::Isa;
use predicates::prelude::*;

/// Trains the tiny spec (16 steps) under `runs` on `isa`, with `args` added to the command.
fn train_on(isa: Isa, spec: &Path, runs: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    common::quiet_run(spec, runs)
        .env(gptlab::isa::ENV, isa.name())
        .args(args)
        .assert()
}

fn provenance(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("provenance.json")).unwrap()).unwrap()
}

fn newest_checkpoint_isa(run: &Path) -> Option<String> {
    let newest = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(newest.join("meta.json")).unwrap()).unwrap();
    meta["isa"].as_str().map(String::from)
}

#[test]
fn a_path_that_is_no_path_is_a_usage_error_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let spec = common::tiny_spec(dir.path(), "isa_bad", "");
    common::quiet_run(&spec, &dir.path().join("runs"))
        .env(gptlab::isa::ENV, "avx1024")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "GPTLAB_ISA: `avx1024` is not an instruction-set path",
        ));
    assert!(!dir.path().join("runs").exists(), "nothing may be written");
    // A path the CPU lacks: only a CPU without AVX-512 (or AVX2) can show it; the choice
    // itself is unit-tested with a pretend CPU in src/isa.rs.
    if let Some(&missing) = gptlab::isa::ALL.iter().find(|i| !i.supported()) {
        common::quiet_run(&spec, &dir.path().join("runs"))
            .env(gptlab::isa::ENV, missing.name())
            .assert()
            .code(2)
            .stderr(predicate::str::contains(format!(
                "this CPU cannot run the {missing} path"
            )));
    }
}

#[test]
fn every_path_trains_records_itself_repeats_bit_for_bit_on_any_thread_count_and_agrees_with_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let spec = common::tiny_spec(dir.path(), "isa_paths", "");
    let mut finals = vec![];
    for isa in Isa::supported_paths() {
        let mut prints = vec![];
        // One thread, then three: at batch 8 the second cuts the products of its 128-row
        // phase into blocks of rows, the first does not.
        for (attempt, threads) in [(0, "1"), (1, "3")] {
            let runs = dir.path().join(format!("{isa}-{attempt}"));
            train_on(
                isa,
                &spec,
                &runs,
                &["--threads", threads, "--set", "train.batch_size=8"],
            )
            .success();
            let run = runs.join("isa_paths/default");
            assert_eq!(
                provenance(&run)["sessions"][0]["isa"],
                isa.name(),
                "provenance of {isa}"
            );
            assert_eq!(
                newest_checkpoint_isa(&run).as_deref(),
                Some(isa.name()),
                "checkpoint of {isa}"
            );
            prints.push(common::results_fingerprint(&run));
            if attempt == 0 {
                let rows = gptlab::run_dir::read_metrics(&run.join("metrics.csv")).unwrap();
                let last = rows.last().unwrap();
                finals.push((isa, last.train_loss, last.val_loss.unwrap()));
            }
        }
        assert_eq!(
            prints[0], prints[1],
            "trainings on 1 and 3 threads on the {isa} path differ"
        );
    }
    // Paths differ only in the rounding of matrix products (the baseline has no fused
    // multiply-add): after 16 steps the losses agree to 1e-4 relative.
    let (_, train0, val0) = finals[0];
    for &(isa, train, val) in &finals[1..] {
        for (a, b) in [(train0, train), (val0, val)] {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs(),
                "{isa}: {b} vs {} on {}: {a}",
                finals[0].0,
                finals[0].0
            );
        }
    }
}

/// Stands in for the resume test in a build without the kill hook, so it fails saying why.
#[cfg(not(feature = "fault-injection"))]
#[test]
fn a_resume_on_another_path_is_warned_about_and_recorded() {
    panic!(
        "this test kills gptlab through the test-only `fault-injection` feature: run `cargo test --features fault-injection` (`just test` does)"
    );
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_resume_on_another_path_is_warned_about_and_recorded() {
    let paths = Isa::supported_paths();
    let (first, then) = (paths[0], *paths.last().unwrap());
    assert_ne!(
        first, then,
        "every x86-64 CPU this project runs on has AVX2 beside the baseline"
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = common::tiny_spec(dir.path(), "isa_resume", "");
    let runs = dir.path().join("runs");
    common::quiet_run(&spec, &runs)
        .env(gptlab::isa::ENV, first.name())
        .env("GPTLAB_FAULT", "step-end@14")
        .assert()
        .failure();
    train_on(then, &spec, &runs, &[]).success().stderr(predicate::str::contains(format!(
        "the checkpoint at step 12 was written on the {first} instruction-set path and this session continues on {then}"
    )));
    let sessions = provenance(&runs.join("isa_resume/default"))["sessions"].clone();
    assert_eq!(sessions[0]["isa"], first.name());
    assert_eq!(sessions[1]["isa"], then.name());
    assert_eq!(sessions[1]["resumed_from_isa"], first.name());
    // Resuming on the checkpoint's own path says nothing.
    common::quiet_run(&spec, &dir.path().join("again"))
        .env(gptlab::isa::ENV, first.name())
        .env("GPTLAB_FAULT", "step-end@14")
        .assert()
        .failure();
    train_on(first, &spec, &dir.path().join("again"), &[])
        .success()
        .stderr(predicate::str::contains("instruction-set path").not());
}

#[test]
fn the_device_line_names_the_path_and_a_pinned_path_reaches_slurm_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let spec = common::tiny_spec(dir.path(), "isa_line", "");
    let out = common::OutDirs::new();
    common::gptlab()
        .args(["run", spec.to_str().unwrap(), "--no-report"])
        .args(out.args())
        .env(gptlab::isa::ENV, "baseline")
        .assert()
        .success()
        .stderr(predicate::str::contains("isa: baseline (pinned by GPTLAB_ISA)"));
    let untrained = common::OutDirs::new();
    let script = |isa: Option<&str>| {
        let mut cmd = common::gptlab();
        cmd.args(["submit", spec.to_str().unwrap(), "--dry-run"])
            .args(untrained.args());
        match isa {
            Some(v) => cmd.env(gptlab::isa::ENV, v),
            None => cmd.env_remove(gptlab::isa::ENV),
        };
        common::stdout_of(&cmd.assert().success())
    };
    assert!(script(Some("baseline")).contains("\nexport GPTLAB_ISA=baseline\n"));
    assert!(
        !script(None).contains("GPTLAB_ISA"),
        "an unpinned path is each node's own"
    );
}
