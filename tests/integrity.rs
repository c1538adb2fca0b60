//! Results that cannot lie (issue 14): no run is trained under a name that does not describe
//! it, no result of another configuration passes as current, and every bad argument is exit 2
//! with one line saying why.

mod common;

use std::path::{Path, PathBuf};

use common::{TINY_SPEC, gptlab, write_spec};
use predicates::prelude::*;

/// The tiny spec as a two-run comparison, `cmp.toml` in `dir`.
fn two_runs(dir: &Path) -> PathBuf {
    let text =
        format!("{TINY_SPEC}\n[[run]]\nname = \"absolute\"\n[[run]]\nname = \"rope\"\nmodel.position = \"rope\"\n");
    write_spec(dir, "cmp.toml", &text)
}

/// `gptlab run SPEC --runs-dir DIR/runs --reports-dir DIR/reports -q` plus `extra`.
fn run(spec: &Path, dir: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    gptlab()
        .arg("run")
        .arg(spec)
        .arg("--runs-dir")
        .arg(dir.join("runs"))
        .arg("--reports-dir")
        .arg(dir.join("reports"))
        .arg("-q")
        .args(extra)
        .assert()
}

/// `gptlab report SPEC --runs-dir DIR/runs --reports-dir DIR/reports` plus `extra`.
fn report(spec: &Path, dir: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    gptlab()
        .arg("report")
        .arg(spec)
        .arg("--runs-dir")
        .arg(dir.join("runs"))
        .arg("--reports-dir")
        .arg(dir.join("reports"))
        .args(extra)
        .assert()
}

#[test]
fn a_set_of_a_key_a_run_or_the_sweep_sets_is_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = two_runs(tmp.path());
    run(&spec, tmp.path(), &["--set", "model.position=rope"])
        .code(2)
        .stderr(predicate::str::contains("--set model.position=rope"))
        .stderr(predicate::str::contains("run `rope` sets `model.position` itself"));
    assert!(
        !tmp.path().join("runs").exists(),
        "nothing may train under a wrong name"
    );
    // Leaving the run that sets the key out is fine.
    gptlab()
        .arg("plan")
        .arg(&spec)
        .args(["--set", "model.position=rope", "--only", "absolute"])
        .assert()
        .success()
        .stdout(predicate::str::contains("position=rope"));
    let sweep = write_spec(
        tmp.path(),
        "sw.toml",
        &format!("{TINY_SPEC}\n[sweep]\n\"model.n_kv_head\" = [1, 2]\n"),
    );
    gptlab()
        .arg("plan")
        .arg(&sweep)
        .args(["--set", "model.n_kv_head=2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("the [sweep] varies `model.n_kv_head`"));
}

#[test]
fn a_completed_run_of_other_settings_is_refused_and_a_new_name_keeps_both() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = two_runs(tmp.path());
    run(&spec, tmp.path(), &["--only", "absolute", "--no-report"]).success();
    let metrics = tmp.path().join("runs/cmp/absolute/metrics.csv");
    let before = std::fs::read(&metrics).unwrap();
    run(
        &spec,
        tmp.path(),
        &[
            "--only",
            "absolute",
            "--set",
            "model.n_embd=32",
            "--set",
            "experiment.seed=99",
        ],
    )
    .code(2)
    .stderr(predicate::str::contains("run `absolute`"))
    .stderr(predicate::str::contains(
        "model.n_embd: was `16` when trained, the spec now says `32`",
    ))
    .stderr(predicate::str::contains(
        "experiment.seed: was `5` when trained, the spec now says `99`",
    ))
    .stderr(predicate::str::contains("--fresh").and(predicate::str::contains("--set experiment.name=")))
    .stderr(predicate::str::contains("already complete").not());
    assert_eq!(
        std::fs::read(&metrics).unwrap(),
        before,
        "the old results are untouched"
    );
    // A report drawn with the changed spec says the run does not match it, leaves it out, and
    // exits 2 as `run` does.
    report(
        &spec,
        tmp.path(),
        &["--only", "absolute", "--no-samples", "--set", "model.n_embd=32"],
    )
    .code(2)
    .stderr(predicate::str::contains("trained with other settings"));
    let page = std::fs::read_to_string(tmp.path().join("reports/cmp/index.html")).unwrap();
    let said = "Left out of the verdict and every aggregate: run absolute";
    assert!(page.contains(said) && page.contains("model.n_embd"), "not said");
    // Renaming the experiment trains the variant beside the old results.
    run(
        &spec,
        tmp.path(),
        &[
            "--only",
            "absolute",
            "--set",
            "model.n_embd=32",
            "--set",
            "experiment.name=wide",
            "--no-report",
        ],
    )
    .success();
    assert!(tmp.path().join("runs/wide/absolute/metrics.csv").is_file());
    let saved = std::fs::read_to_string(tmp.path().join("runs/wide/absolute/run.toml")).unwrap();
    assert!(
        saved.contains("n_embd = 32") && saved.contains("name = \"wide\""),
        "{saved}"
    );
    assert_eq!(std::fs::read(&metrics).unwrap(), before);
}

#[test]
fn a_grown_phase_is_explained_in_the_spec_s_words() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "grow.toml", TINY_SPEC);
    run(&spec, tmp.path(), &["--no-report"]).success();
    run(&spec, tmp.path(), &["--set", "phase.0.steps=12"])
        .code(2)
        .stderr(predicate::str::contains(
            "phase 0 had run 10 steps at the checkpoint (step 16), but the spec now makes it 12 steps long",
        ))
        .stderr(predicate::str::contains("add a [[phase]]"))
        .stderr(predicate::str::contains("steps_done").not());
}

#[test]
fn no_validation_split_is_a_spec_error() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        "noval.toml",
        &TINY_SPEC.replace("[data]\n", "[data]\nval_fraction = 0\n"),
    );
    gptlab()
        .arg("validate")
        .arg(&spec)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("noval.toml:"))
        .stderr(predicate::str::contains("data.val_fraction"))
        .stderr(predicate::str::contains("held-out"));
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "args.toml", TINY_SPEC);
    for (extra, words) in [
        (&["--only", "nope"][..], "--only names no run"),
        (&["--threads", "0"], "at least 1"),
        // A pool this size never finished a step (and ignored `timeout`'s SIGTERM meanwhile).
        (
            &["--threads", "100000"],
            "--threads 100000 is more than the 1024 threads",
        ),
        (&["--jobs", "0"], "at least 1"),
    ] {
        run(&spec, tmp.path(), extra)
            .code(2)
            .stderr(predicate::str::contains(words));
    }
    gptlab()
        .args(["list", "no_such_dir"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no_such_dir is not a folder"));
    for (extra, words) in [
        (&["--temperature=-1"][..], "a positive number, not -1"),
        (&["--temperature=nan"], "a positive number, not NaN"),
        (&[], "runs/args/nope: no such checkpoint or run folder"),
    ] {
        gptlab()
            .current_dir(tmp.path())
            .args(["sample", "runs/args/nope", "--prompt", "To"])
            .args(extra)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(words));
    }
    assert!(!tmp.path().join("runs").exists());
}

#[test]
fn sampling_takes_a_run_folder_greedy_decoding_and_refuses_bad_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "samp.toml", TINY_SPEC);
    run(&spec, tmp.path(), &["--no-report"]).success();
    let run_dir = tmp.path().join("runs/samp/default");
    let sample = |from: &Path, extra: &[&str]| {
        let out = gptlab()
            .arg("sample")
            .arg(from)
            .args(["--prompt", "ROMEO:", "--tokens", "20"])
            .args(extra)
            .assert()
            .success();
        String::from_utf8(out.get_output().stdout.clone()).unwrap()
    };
    // The run folder means its newest checkpoint (the final one, step 16).
    let newest = run_dir.join("checkpoints/step_00000016");
    assert_eq!(sample(&run_dir, &["--seed", "3"]), sample(&newest, &["--seed", "3"]));
    // Temperature 0 is greedy: the same text whatever the seed, and top-k 1's text.
    let greedy = sample(&run_dir, &["--temperature", "0", "--seed", "1"]);
    assert_eq!(greedy, sample(&run_dir, &["--temperature", "0", "--seed", "2"]));
    assert_eq!(greedy, sample(&run_dir, &["--top-k", "1"]));
    for (prompt, words) in [("", "--prompt is empty"), ("€uro", "€")] {
        gptlab()
            .arg("sample")
            .arg(&run_dir)
            .args(["--prompt", prompt])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(words));
    }
    // A mistyped count is refused before a token is drawn, not generated for hours.
    gptlab()
        .arg("sample")
        .arg(&run_dir)
        .args(["--prompt", "ROMEO:", "--tokens", "500000000"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "--tokens 500000000 is beyond the 100000 tokens",
        ));
}

#[test]
fn a_report_of_an_experiment_that_never_ran_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "never.toml", TINY_SPEC);
    report(&spec, tmp.path(), &[])
        .code(1)
        .stderr(predicate::str::contains("nothing to report"));
    assert!(!tmp.path().join("reports/never/index.html").exists());
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    // Many runs, so `plan` writes more than the pipe holds after `head` has gone.
    let spec = write_spec(
        tmp.path(),
        "many.toml",
        &format!(
            "{TINY_SPEC}\n[sweep]\n\"experiment.seed\" = [{}]\n",
            (1..400).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        ),
    );
    let bin = assert_cmd::cargo::cargo_bin("gptlab");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{}' plan '{}' | head -1 >/dev/null; echo \"status=${{PIPESTATUS[0]}}\"",
            bin.display(),
            spec.display()
        ))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // 141 = killed by SIGPIPE, as `cat` or `grep` end; 0 if it finished first. Never 101.
    assert!(
        stdout.contains("status=141") || stdout.contains("status=0"),
        "{stdout} {stderr}"
    );
}

#[test]
fn sigterm_finishes_the_step_and_writes_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    // Twice at once, as when `timeout` or Slurm signal the process group and `just` forwards
    // the same signal: one event, still a clean stop.
    let stderr = stop_mid_run(tmp.path(), &[libc::SIGTERM, libc::SIGTERM]);
    // A wrapper's own command is named (the justfile sets it for `just study`).
    assert!(stderr.contains("to resume, run again: just study"), "{stderr}");
}

#[test]
fn slurms_time_limit_warning_finishes_the_step_and_writes_a_checkpoint() {
    // `sbatch --signal=USR1@120` (or USR2) sends it to the step: its default action would kill
    // gptlab with no checkpoint.
    for signal in [libc::SIGUSR1, libc::SIGUSR2] {
        let tmp = tempfile::tempdir().unwrap();
        stop_mid_run(tmp.path(), &[signal]);
    }
}

/// Starts a long run under `dir`, sends `signals` mid-run, and checks it stopped cleanly: exit
/// 130, status interrupted, a checkpoint at the last step written, the report of what exists.
/// Returns its stderr.
fn stop_mid_run(dir: &std::path::Path, signals: &[libc::c_int]) -> String {
    // Long enough to be mid-run when the signal comes.
    let spec = write_spec(
        dir,
        "term.toml",
        &TINY_SPEC
            .replace("steps = 10", "steps = 3000")
            .replace("checkpoint_every = 4", "checkpoint_every = 0"),
    );
    let bin = assert_cmd::cargo::cargo_bin("gptlab");
    let child = std::process::Command::new(&bin)
        .env("GPTLAB_RESUME", "just study")
        .arg("run")
        .arg(&spec)
        .arg("--runs-dir")
        .arg(dir.join("runs"))
        .arg("--reports-dir")
        .arg(dir.join("reports"))
        .arg("-q")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = dir.join("runs/term/default/metrics.csv");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 20 {
        assert!(started.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for &signal in signals {
        // SAFETY: kill(2) on the child's pid sends a signal and touches no memory.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(130), "signals {signals:?}: {stderr}");
    let status = std::fs::read_to_string(dir.join("runs/term/default/status.json")).unwrap();
    assert!(status.contains("interrupted"), "{status}");
    let rows = std::fs::read_to_string(&metrics).unwrap().lines().count() - 1;
    let ckpt = dir.join(format!("runs/term/default/checkpoints/step_{rows:08}"));
    assert!(ckpt.is_dir(), "a checkpoint at the last step written ({rows})");
    // (The report of what exists is written on the way out.)
    let page = std::fs::read_to_string(dir.join("reports/term/index.html")).unwrap();
    assert!(
        page.contains(&format!("Not finished: default (interrupted after step {rows})")),
        "the report of what exists"
    );
    stderr
}

#[test]
fn what_a_run_will_need_is_checked_before_it_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let blank = write_spec(dir, "blank.toml", &format!("{TINY_SPEC}\n[[run]]\nname = \" \"\n"));
    let init = write_spec(
        dir,
        "init.toml",
        &format!("{TINY_SPEC}\n[[run]]\nname = \"warm\"\ninit_from = \"no/such/checkpoint\"\n"),
    );
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let folder = write_spec(
        dir,
        "folder.toml",
        &TINY_SPEC.replace("CORPUS", empty.to_str().unwrap()),
    );
    for (spec, key, words) in [
        (&blank, "name", "blank"),
        (&init, "init_from", "not a checkpoint folder"),
        (&folder, "data.path", "has no file matching"),
    ] {
        gptlab()
            .arg("validate")
            .arg(spec)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(key))
            .stderr(predicate::str::contains(words));
    }
    // A report folder that cannot be written fails before the first step, not after hours.
    let spec = write_spec(dir, "rep.toml", TINY_SPEC);
    std::fs::write(dir.join("reports"), "a file where the folder should be").unwrap();
    run(&spec, dir, &[])
        .code(1)
        .stderr(predicate::str::contains("cannot be written"));
    assert!(!dir.join("runs/rep/default/metrics.csv").exists(), "nothing trained");
}

#[test]
fn quiet_is_quiet_and_too_many_runs_are_blamed_on_what_makes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "q.toml", TINY_SPEC);
    let out = run(&spec, tmp.path(), &["--no-report"]).success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(!stderr.contains("device:"), "-q printed: {stderr}");
    let runs: String = (0..50_000).map(|i| format!("[[run]]\nname = \"r{i}\"\n")).collect();
    let many = write_spec(tmp.path(), "many.toml", &format!("{TINY_SPEC}\n{runs}"));
    gptlab()
        .arg("validate")
        .arg(&many)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("50000 [[run]] entries"))
        .stderr(predicate::str::contains("`sweep`").not());
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn every_run_records_what_produced_it_and_the_report_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Phase 0 only first; the second phase is added later, so the run trains in two sessions.
    let cut = TINY_SPEC.find("[[phase]]\nseq_len = 16").unwrap();
    let spec = write_spec(dir, "prov.toml", &TINY_SPEC[..cut]);
    run(&spec, dir, &["--set", "train.lr=0.002", "--no-report"]).success();
    let run_dir = dir.join("runs/prov/default");
    let saved = std::fs::read_to_string(run_dir.join("run.toml")).unwrap();
    assert!(saved.contains("lr = 0.002"), "run.toml is the spec as trained: {saved}");
    write_spec(dir, "prov.toml", TINY_SPEC);
    run(&spec, dir, &["--set", "train.lr=0.002"]).success();

    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("provenance.json")).unwrap()).unwrap();
    let sessions = p["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{p:#}");
    let (first, last) = (&sessions[0], &sessions[1]);
    assert_eq!(
        (first["first_step"].as_u64(), first["last_step"].as_u64()),
        (Some(1), Some(10))
    );
    assert_eq!(
        (last["first_step"].as_u64(), last["last_step"].as_u64()),
        (Some(11), Some(16))
    );
    assert_eq!(last["outcome"], "complete");
    let commit = last["git_commit"].as_str().unwrap();
    assert!(
        commit == "unknown" || (commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit}"
    );
    assert_eq!(last["gptlab_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(last["spec_sha256"].as_str().unwrap(), sha256_file(&spec));
    assert_ne!(
        first["spec_sha256"], last["spec_sha256"],
        "the spec changed between the sessions"
    );
    assert_eq!(
        last["data_sha256"].as_str().unwrap(),
        sha256_file(Path::new(&common::corpus_path()))
    );
    let command: Vec<&str> = last["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        command.contains(&"train.lr=0.002") && command.contains(&"--runs-dir"),
        "{command:?}"
    );
    assert_eq!(last["device"], "cpu");
    assert!(last["threads"].as_u64().unwrap() >= 1);
    assert!(!last["host"].as_str().unwrap().is_empty() && !last["cpu"].as_str().unwrap().is_empty());
    for key in ["started_utc", "ended_utc"] {
        let t = last[key].as_str().unwrap();
        assert!(t.len() == 20 && t.ends_with('Z') && &t[10..11] == "T", "{key}: {t}");
    }
    let page = std::fs::read_to_string(dir.join("reports/prov/index.html")).unwrap();
    assert!(
        page.contains("id=\"provenance\"") && page.contains(&commit[..commit.len().min(12)]),
        "no provenance on the page"
    );
    assert!(!page.contains("different gptlab builds"));

    // A run trained by another build is called out.
    let edited = std::fs::read_to_string(run_dir.join("provenance.json"))
        .unwrap()
        .replacen(commit, "0123456789abcdef0123456789abcdef01234567", 1);
    std::fs::write(run_dir.join("provenance.json"), edited).unwrap();
    report(&spec, dir, &["--no-samples", "--set", "train.lr=0.002"]).success();
    let page = std::fs::read_to_string(dir.join("reports/prov/index.html")).unwrap();
    assert!(
        page.contains("different gptlab builds") && page.contains("0123456789ab"),
        "mixed builds not said"
    );
}

#[test]
fn every_misspelling_and_wrong_type_is_reported_in_one_pass_with_a_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    let text = TINY_SPEC
        .replace("n_head = 2", "n_heads = 2\npostion = \"rope\"")
        .replace("n_layer = 1", "n_layer = \"one\"")
        .replace("batch_size = 4", "batch_size = 4\nlearning_rate = 1e-3");
    let spec = write_spec(tmp.path(), "typos.toml", &text);
    let out = gptlab().arg("validate").arg(&spec).assert().code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    for want in [
        "key `model.n_heads`: unknown key `n_heads`; did you mean `n_head`?",
        "key `model.postion`: unknown key `postion`; did you mean `position`?",
        "key `model.n_layer`: wrong type: got string \"one\", expected a whole number",
        "key `train.learning_rate`: unknown key `learning_rate`; did you mean `lr`?",
    ] {
        assert!(stderr.contains(want), "missing `{want}` in:\n{stderr}");
    }
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        4,
        "{stderr}"
    );
    assert!(
        !stderr.contains("usize") && !stderr.contains("struct "),
        "Rust words: {stderr}"
    );
}

#[test]
fn a_run_whose_checkpoints_were_deleted_is_marked_on_the_page() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = two_runs(tmp.path());
    let with_prompts = std::fs::read_to_string(&spec).unwrap() + "[sample]\nprompts = [\"RO\"]\nmax_new_tokens = 5\n";
    std::fs::write(&spec, with_prompts).unwrap();
    run(&spec, tmp.path(), &[]).success();
    std::fs::remove_dir_all(tmp.path().join("runs/cmp/rope/checkpoints")).unwrap();
    report(&spec, tmp.path(), &[]).success();
    let page = std::fs::read_to_string(tmp.path().join("reports/cmp/index.html")).unwrap();
    assert!(page.contains("Run rope has metrics but no checkpoint"), "not marked");
    let md = std::fs::read_to_string(tmp.path().join("reports/cmp/samples.md")).unwrap();
    assert!(md.contains("checkpoints were deleted"), "{md}");
}

#[test]
fn the_time_left_covers_the_specs_a_wrapper_trains_next() {
    let tmp = tempfile::tempdir().unwrap();
    let first = write_spec(tmp.path(), "first.toml", TINY_SPEC);
    let next = write_spec(
        tmp.path(),
        "next.toml",
        &TINY_SPEC.replace("steps = 10", "steps = 5000"),
    );
    let train = |name: &str, also: Option<&Path>| {
        let mut cmd = gptlab();
        cmd.arg("run")
            .arg(&first)
            .args(["--set", &format!("experiment.name={name}"), "--no-report", "--runs-dir"])
            .arg(tmp.path().join("runs"));
        if let Some(also) = also {
            cmd.env("GPTLAB_ETA_ALSO", also);
        }
        let out = cmd.assert().success();
        String::from_utf8_lossy(&out.get_output().stderr).into_owned()
    };
    let alone = train("alone", None);
    assert!(alone.contains("steps/s, eta") && !alone.contains("all runs"), "{alone}");
    let study = train("study", Some(&next));
    let line = study
        .lines()
        .find(|l| l.contains("step 5/16"))
        .expect("a progress line at step 5");
    assert!(line.contains(", all runs "), "{line}");
}

#[cfg(not(feature = "fault-injection"))]
#[test]
fn rows_past_the_last_checkpoint_are_checked_against_the_settings_that_wrote_them() {
    panic!(
        "this test kills gptlab at chosen steps through the test-only `fault-injection` feature: run `cargo test --features fault-injection` (`just test` does)"
    );
}

/// A process killed between checkpoints leaves metrics rows no checkpoint vouches for: once
/// the spec changes a setting they were trained with, `status` and the report must not pass
/// them off as the spec's, while changes they never saw (a phase not reached, a new phase)
/// leave them standing; the next `run` retrains from the last checkpoint without a refusal.
#[cfg(feature = "fault-injection")]
#[test]
fn rows_past_the_last_checkpoint_are_checked_against_the_settings_that_wrote_them() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let spec = write_spec(tmp.path(), "kill.toml", TINY_SPEC);
    let state = |extra: &[&str]| {
        let out = gptlab()
            .args(["status", spec.to_str().unwrap(), "--runs-dir", runs.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap_or("")
            .to_string()
    };
    // A fresh run of the spec, killed at `fault`.
    let killed_at = |fault: &str| {
        let _ = std::fs::remove_dir_all(&runs);
        let mut cmd = gptlab();
        cmd.args(common::quiet_run_args(&spec, &runs))
            .env("GPTLAB_FAULT", fault);
        assert!(
            !cmd.output().unwrap().status.success(),
            "{fault}: should have been killed"
        );
    };
    // (where it dies, an edit of what its rows trained with, an edit of a phase they did not reach)
    for (fault, trained, unreached) in [
        ("step-end@3", "train.lr=0.01", Some("phase.1.lr=0.01")), // before any checkpoint
        ("step-end@11", "phase.1.lr=0.01", None),                 // in phase 1, after phase 0's checkpoints
    ] {
        killed_at(fault);
        assert!(state(&[]).contains("interrupted"), "{fault}: {}", state(&[]));
        let line = state(&["--set", trained]);
        assert!(
            line.contains("other-settings") && line.contains("was `0.0005` when trained"),
            "{fault} --set {trained}: {line}"
        );
        if let Some(unreached) = unreached {
            let line = state(&["--set", unreached]);
            assert!(line.contains("interrupted"), "{fault} --set {unreached}: {line}");
        }
        report(&spec, tmp.path(), &["--set", trained])
            .code(2)
            .stderr(predicate::str::contains("trained with other settings"));
        let page = std::fs::read_to_string(tmp.path().join("reports/kill/index.html")).unwrap();
        assert!(
            page.contains("Left out of the verdict"),
            "{fault}: the page passes the rows as the spec's"
        );
        run(&spec, tmp.path(), &["--set", trained, "--no-report"]).success();
        assert!(state(&["--set", trained]).contains("complete"));
    }
    // A phase added after the kill is one the rows never reached.
    killed_at("step-end@11");
    std::fs::write(
        &spec,
        std::fs::read_to_string(&spec).unwrap() + "[[phase]]\nseq_len = 16\nsteps = 2\n",
    )
    .unwrap();
    assert!(state(&[]).contains("interrupted"), "{}", state(&[]));
}

/// What a run's rows are checked against is its whole identity cut back to their last step:
/// the cut must equal the identity the plan gives at that step, at every step.
#[test]
fn a_whole_run_s_identity_cut_at_a_step_is_its_identity_there() {
    let tmp = tempfile::tempdir().unwrap();
    // A run-wide cosine (its length is part of the identity) and a third phase of its own.
    let text = TINY_SPEC.replace(
        "checkpoint_every = 4\n",
        "checkpoint_every = 4\nschedule = \"cosine\"\n",
    ) + "[[phase]]\nseq_len = 16\nsteps = 3\nlr = 1e-3\nwarmup_steps = 2\n";
    let file = write_spec(tmp.path(), "cut.toml", &text);
    let spec = gptlab::spec::SpecFile::parse(&file, &std::fs::read_to_string(&file).unwrap()).unwrap();
    let plans = gptlab::plan::plan(&spec.expand(&[]).unwrap(), tmp.path(), &|_, _| None).unwrap();
    let p = &plans[0];
    let total = p.schedule.total_steps();
    assert_eq!(total, 19);
    let whole = p.identity(total);
    for step in 0..=total {
        assert_eq!(gptlab::plan::identity_at(&whole, step), p.identity(step), "step {step}");
    }
}
