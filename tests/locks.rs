//! One writer per run, across processes and hosts: a run being trained is skipped (or waited
//! for with --wait), runs of one experiment train in parallel processes, and a lock whose
//! holder is gone is taken over with a warning.
#![cfg(feature = "fault-injection")] // GPTLAB_SLOW_STEPS_MS holds a run mid-way

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gptlab::lock::LockHolder;
use predicates::prelude::*;

/// The tiny spec as experiment `locks`, with `extra` appended.
fn spec(dir: &Path, extra: &str) -> PathBuf {
    common::tiny_spec(dir, "locks", extra)
}

/// `gptlab run SPEC --runs-dir RUNS -q --no-report ARGS…`.
fn run(spec: &Path, runs: &Path, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = common::quiet_run(spec, runs);
    cmd.args(args);
    cmd
}

/// The same, started in the background with every step slowed to `ms`.
fn spawn_slow(spec: &Path, runs: &Path, args: &[&str], ms: u64) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("gptlab"))
        .args(common::quiet_run_args(spec, runs))
        .args(args)
        .env("GPTLAB_SLOW_STEPS_MS", ms.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `path` exists (a lock taken, a file written).
fn wait_for(path: &Path) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sessions(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("provenance.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["sessions"].as_array().unwrap().clone()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn a_run_being_trained_is_skipped_or_waited_for_never_trained_twice() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "");
    let runs = dir.path().join("runs");
    let run_dir = runs.join("locks/default");
    let mut first = spawn_slow(&spec, &runs, &[], 150);
    wait_for(&run_dir.join(".lock"));
    // Without --wait: skipped, named, and not a success.
    run(&spec, &runs, &[])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("skipped: another gptlab trains it"))
        .stderr(predicate::str::contains(format!("pid {}", first.id())))
        .stderr(predicate::str::contains("another gptlab is training default"));
    // With --wait: it waits for the holder, then finds the run complete.
    run(&spec, &runs, &["--wait"])
        .assert()
        .success()
        .stderr(predicate::str::contains("waiting: another gptlab trains it"))
        .stderr(predicate::str::contains("already complete (16 steps)"));
    assert!(first.wait().unwrap().success());
    let sessions = sessions(&run_dir);
    assert_eq!(sessions.len(), 1, "one process trained it: {sessions:?}");
    assert_eq!(sessions[0]["outcome"], "complete");
    assert!(!run_dir.join(".lock").exists(), "released");
}

#[test]
fn runs_of_one_experiment_train_in_parallel_processes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        dir.path(),
        "[[run]]\nname = \"a\"\n[[run]]\nname = \"b\"\nmodel.n_head = 4\n",
    );
    let runs = dir.path().join("runs");
    let mut first = spawn_slow(&spec, &runs, &["--only", "a"], 100);
    wait_for(&runs.join("locks/a/.lock"));
    // Another process on another run of the same experiment is not refused.
    run(&spec, &runs, &["--only", "b"]).assert().success();
    assert!(first.wait().unwrap().success());
    for r in ["a", "b"] {
        let status = std::fs::read_to_string(runs.join(format!("locks/{r}/status.json"))).unwrap();
        assert!(status.contains("complete"), "{r}: {status}");
    }
}

#[test]
fn a_lock_from_another_host_holds_until_its_heartbeat_goes_stale() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "");
    let runs = dir.path().join("runs");
    let run_dir = runs.join("locks/default");
    std::fs::create_dir_all(&run_dir).unwrap();
    let lock = |heartbeat_age: u64| {
        let holder = LockHolder {
            host: "node-elsewhere".into(),
            pid: 4242,
            start_time: Some(1),
            job: Some("77_3".into()),
            acquired: now() - heartbeat_age,
            heartbeat: now() - heartbeat_age,
            timeout_s: 60,
        };
        std::fs::write(run_dir.join(".lock"), serde_json::to_vec(&holder).unwrap()).unwrap();
    };
    // A live holder elsewhere (its pid means nothing here): skipped.
    lock(5);
    run(&spec, &runs, &[]).assert().code(1).stderr(predicate::str::contains(
        "host node-elsewhere, pid 4242 (Slurm job 77_3)",
    ));
    assert!(!run_dir.join("metrics.csv").exists(), "nothing trained");
    // Its heartbeat older than its 60 s timeout: taken over, with a warning that gives the
    // heartbeat's age as the process saw it: 61 s, plus any whole second that ticked between
    // writing the lock and the process reading it (a loaded machine can take one).
    let written = now();
    lock(61);
    let out = run(&spec, &runs, &[])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "warning: taking over the lock of run `default`",
        ));
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    let ages = 61..=61 + (now() - written);
    assert!(
        ages.clone().any(|age| stderr.contains(&format!(
            "has not refreshed its heartbeat for {age} s, past its 60 s timeout"
        ))),
        "want an age in {ages:?} s: {stderr}"
    );
    assert!(!run_dir.join(".lock").exists());
}

#[test]
fn a_lock_left_by_a_dead_process_on_this_host_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "");
    let runs = dir.path().join("runs");
    let run_dir = runs.join("locks/default");
    let mut first = spawn_slow(&spec, &runs, &[], 200);
    wait_for(&run_dir.join("checkpoints/step_00000004"));
    first.kill().unwrap(); // SIGKILL: no handler runs, the lock stays
    first.wait().unwrap();
    assert!(run_dir.join(".lock").exists());
    run(&spec, &runs, &[])
        .assert()
        .success()
        .stderr(predicate::str::contains("is gone"))
        .stderr(predicate::str::contains("stopped abruptly"))
        .stderr(predicate::str::contains("resuming after step"));
}

#[test]
fn status_says_how_every_run_stands() {
    let dir = tempfile::tempdir().unwrap();
    // Each its own weight decay: runs with equal settings would be one model trained twice.
    let runs_spec: String = ["done", "killed", "busy", "todo", "broken"]
        .iter()
        .enumerate()
        .map(|(i, r)| format!("[[run]]\nname = \"{r}\"\ntrain.weight_decay = 0.0{i}\n"))
        .collect();
    let spec = spec(dir.path(), &runs_spec);
    let runs = dir.path().join("runs");
    run(&spec, &runs, &["--only", "done"]).assert().success();
    // Killed without a chance to clean up: its status still says running.
    run(&spec, &runs, &["--only", "killed"])
        .env("GPTLAB_FAULT", "step-end@6")
        .assert()
        .failure();
    // Its checkpoints corrupted: resuming fails, and says so in its status.
    run(&spec, &runs, &["--only", "broken"])
        .env("GPTLAB_FAULT", "step-end@9")
        .assert()
        .failure();
    for (_, ckpt) in gptlab::checkpoint::list(&runs.join("locks/broken/checkpoints")) {
        std::fs::write(ckpt.join("model.safetensors"), b"not weights").unwrap();
    }
    run(&spec, &runs, &["--only", "broken"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("none is usable"));
    let mut busy = spawn_slow(&spec, &runs, &["--only", "busy"], 300);
    wait_for(&runs.join("locks/busy/checkpoints/step_00000004"));

    let out = common::gptlab()
        .args(["status", spec.to_str().unwrap(), "--runs-dir", runs.to_str().unwrap()])
        .assert()
        .success();
    let table = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    busy.kill().unwrap();
    busy.wait().unwrap();
    let line = |run: &str| {
        let found = table.lines().find(|l| l.split_whitespace().next() == Some(run));
        found
            .unwrap_or_else(|| panic!("no line for {run}:\n{table}"))
            .to_string()
    };
    let host = gptlab::provenance::host();
    assert!(
        line("done").contains("complete") && line("done").contains("16/16"),
        "{table}"
    );
    assert!(
        line("killed").contains("interrupted") && line("killed").contains("6/16"),
        "{table}"
    );
    assert!(line("killed").contains("stopped without a checkpoint"), "{table}");
    let busy_line = line("busy");
    assert!(busy_line.contains("running") && busy_line.contains(&host), "{table}");
    let step: usize = busy_line
        .split_whitespace()
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((4..16).contains(&step), "{table}");
    assert!(
        line("todo").contains("pending") && line("todo").contains("0/16"),
        "{table}"
    );
    assert!(
        line("broken").contains("failed") && line("broken").contains("none is usable"),
        "{table}"
    );
}

#[test]
fn a_process_whose_lock_was_taken_over_stops_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "");
    let runs = dir.path().join("runs");
    let run_dir = runs.join("locks/default");
    let first = spawn_slow(&spec, &runs, &["--lock-timeout", "2"], 200);
    wait_for(&run_dir.join("checkpoints/step_00000004"));
    // As if this process had stalled past its timeout and another host had taken the run.
    let usurper = LockHolder {
        host: "node-elsewhere".into(),
        pid: 4242,
        start_time: None,
        job: None,
        acquired: now(),
        heartbeat: now(),
        timeout_s: 300,
    };
    std::fs::write(run_dir.join(".lock"), serde_json::to_vec(&usurper).unwrap()).unwrap();
    let out = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("was taken over (now held by host node-elsewhere"),
        "{stderr}"
    );
    assert!(stderr.contains("stopped without writing more"), "{stderr}");
    // The run is the new holder's: its lock stays, and no failure is written over its status.
    let lock: LockHolder = serde_json::from_slice(&std::fs::read(run_dir.join(".lock")).unwrap()).unwrap();
    assert_eq!(lock, usurper);
    let status = std::fs::read_to_string(run_dir.join("status.json")).unwrap();
    assert!(!status.contains("failed"), "{status}");
    let rows = gptlab::run_dir::read_metrics(&run_dir.join("metrics.csv"))
        .unwrap()
        .len();
    assert!(rows < 16, "it stopped part-way ({rows} rows)");
}
