//! No lost work: kills at any point (SIGKILL, including mid-checkpoint), corrupt checkpoints,
//! spec changes, schedule extensions, divergence, Ctrl-C and a second writer.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

mod common;

use assert_cmd::Command;
use dfdx::prelude::*;
use gptlab::checkpoint;
use gptlab::data::{Corpus, sample_batch};
use gptlab::model::{Dropout, Gpt, HasParams, ModelConfig, ModelOptions, Position};
use gptlab::run_dir::read_metrics;
use gptlab::seed::{Stream, stream};
use gptlab::train::{AdamW, train_step};
use predicates::prelude::*;

/// 16 steps in two phases (8 → 16), checkpoints every 4 steps, phase ends at 10 and 16
/// (`common::TINY_SPEC`), as experiment `res`.
fn spec(dir: &Path, extra: &str) -> PathBuf {
    common::tiny_spec(dir, "res", extra)
}

fn gptlab(spec: &Path, runs: &Path) -> Command {
    common::quiet_run(spec, runs)
}

fn losses(runs: &Path, run: &str) -> Vec<(usize, u32, Option<u32>)> {
    read_metrics(&runs.join("res").join(run).join("metrics.csv"))
        .unwrap()
        .iter()
        .map(|r| (r.step, r.train_loss.to_bits(), r.val_loss.map(f32::to_bits)))
        .collect()
}

fn reference(dir: &Path) -> Vec<(usize, u32, Option<u32>)> {
    let runs = dir.join("reference");
    gptlab(&spec(dir, ""), &runs).assert().success();
    losses(&runs, "default")
}

/// Stands in for the kill test in a build without the hook, so it fails saying why.
#[cfg(not(feature = "fault-injection"))]
#[test]
fn killed_anywhere_then_resumed_equals_the_uninterrupted_run() {
    panic!(
        "this test kills gptlab at chosen points through the test-only `fault-injection` feature: \
         run `cargo test --features fault-injection` (`just test` does)"
    );
}

#[cfg(feature = "fault-injection")]
#[test]
fn killed_anywhere_then_resumed_equals_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let want = reference(dir.path());
    assert_eq!(want.len(), 16);
    let spec = spec(dir.path(), "");
    // Each case kills one process; a chain of kills shares one run folder.
    let chains: &[&[&str]] = &[
        &["step-end@3"],                                 // before any checkpoint
        &["checkpoint-write@4"],                         // during the first checkpoint write
        &["step-end@9", "checkpoint-write@12"],          // twice in one run
        &["checkpoint-write@10"],                        // during a phase-end write
        &["after-checkpoint@12", "checkpoint-write@16"], // just after one, then in the final one
    ];
    for (i, chain) in chains.iter().enumerate() {
        let runs = dir.path().join(format!("killed{i}"));
        for fault in *chain {
            let out = gptlab(&spec, &runs).env("GPTLAB_FAULT", fault).output().unwrap();
            assert!(!out.status.success(), "{fault}: the process should have been killed");
        }
        gptlab(&spec, &runs).assert().success();
        assert_eq!(losses(&runs, "default"), want, "after kills {chain:?}");
        // The evaluations at the [eval] lengths (phase ends 10 and 16) too, byte for byte.
        for file in ["eval.csv", "position_loss.csv"] {
            let read = |root: &Path| std::fs::read_to_string(root.join("res/default").join(file)).unwrap();
            let reference = read(&dir.path().join("reference"));
            assert!(reference.lines().count() > 1, "{file} has rows");
            assert_eq!(read(&runs), reference, "{file} after kills {chain:?}");
        }
        let ckpts: Vec<usize> = checkpoint::list(&runs.join("res/default/checkpoints"))
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(
            ckpts,
            vec![16, 12, 10, 8],
            "after kills {chain:?}: periodic kept 2, phase ends kept"
        );
        assert!(
            std::fs::read_dir(runs.join("res/default/checkpoints"))
                .unwrap()
                .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        );
    }
}

fn flip_a_bit(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    bytes[n - 7] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_corrupt_checkpoint_is_detected_and_the_previous_one_used() {
    let dir = tempfile::tempdir().unwrap();
    let want = reference(dir.path());
    let spec = spec(dir.path(), "");
    for (i, damage) in ["flip-model", "truncate-optimizer", "garble-meta"].iter().enumerate() {
        let runs = dir.path().join(format!("c{i}"));
        gptlab(&spec, &runs)
            .env("GPTLAB_FAULT", "step-end@14")
            .assert()
            .failure();
        let newest = runs.join("res/default/checkpoints/step_00000012");
        match *damage {
            "flip-model" => flip_a_bit(&newest.join("model.safetensors")),
            "truncate-optimizer" => {
                let p = newest.join("optimizer.safetensors");
                let len = std::fs::metadata(&p).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }
            _ => std::fs::write(newest.join("meta.json"), "{ not json").unwrap(),
        }
        gptlab(&spec, &runs)
            .assert()
            .success()
            .stderr(predicate::str::contains("skipping checkpoint").and(predicate::str::contains("step_00000012")))
            .stderr(predicate::str::contains("resuming after step 10"));
        assert_eq!(losses(&runs, "default"), want, "{damage}");
    }
    // With every checkpoint unusable, a clear error rather than a silent restart.
    let runs = dir.path().join("all");
    gptlab(&spec, &runs)
        .env("GPTLAB_FAULT", "step-end@11")
        .assert()
        .failure();
    for (_, ckpt) in checkpoint::list(&runs.join("res/default/checkpoints")) {
        flip_a_bit(&ckpt.join("model.safetensors"));
    }
    gptlab(&spec, &runs)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("none is usable").and(predicate::str::contains("--fresh")));
}

#[test]
fn a_changed_spec_is_refused_with_the_differing_keys_unless_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "");
    let runs = dir.path().join("runs");
    gptlab(&spec, &runs)
        .env("GPTLAB_FAULT", "step-end@6")
        .assert()
        .failure();
    gptlab(&spec, &runs)
        .args(["--set", "model.n_embd=32", "--set", "train.batch_size=8"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "model.n_embd: was `16` when trained, the spec now says `32`",
        ))
        .stderr(predicate::str::contains(
            "train.batch_size: was `4` when trained, the spec now says `8`",
        ))
        .stderr(predicate::str::contains("--fresh"));
    // Options that do nothing to this run are no part of it: `rope_base` with learned
    // positions, `mlp_multiple_of` (it only rounds the MLP width, which the identity holds).
    gptlab(&spec, &runs)
        .args(["--set", "model.rope_base=500000.0", "--set", "model.mlp_multiple_of=7"])
        .assert()
        .success();
    // Bookkeeping settings do not change the trajectory: resuming with them changed is fine.
    gptlab(&spec, &runs)
        .args(["--set", "train.eval_every=3", "--set", "phase.1.steps=7"])
        .assert()
        .success();
    gptlab(&spec, &runs)
        .args(["--set", "model.n_embd=32", "--fresh"])
        .assert()
        .success();
    let rows = read_metrics(&runs.join("res/default/metrics.csv")).unwrap();
    assert_eq!(rows.len(), 16, "--fresh restarts from step 1");
}

#[test]
fn a_completed_run_is_not_retrained_and_an_extended_schedule_continues() {
    let dir = tempfile::tempdir().unwrap();
    let want = reference(dir.path());
    // Train phase 0 only, with the absolute table sized for 8 positions.
    let short = dir.path().join("short.toml");
    let text = std::fs::read_to_string(spec(dir.path(), "")).unwrap();
    let cut = text.find("[[phase]]\nseq_len = 16").unwrap();
    std::fs::write(&short, &text[..cut]).unwrap();
    let runs = dir.path().join("runs");
    gptlab(&short, &runs).assert().success();
    let metrics = runs.join("res/default/metrics.csv");
    let before = std::fs::read(&metrics).unwrap();
    gptlab(&short, &runs)
        .assert()
        .success()
        .stderr(predicate::str::contains("already complete"));
    assert_eq!(std::fs::read(&metrics).unwrap(), before, "a completed run was touched");
    // Now the full spec: 6 more steps at 16, the position table grown to 16 rows.
    gptlab(&spec(dir.path(), ""), &runs).assert().success();
    assert_eq!(
        losses(&runs, "default"),
        want,
        "extending after the fact differs from planning it"
    );
}

#[test]
fn save_then_load_reproduces_the_next_step_exactly() {
    let dev = Cpu::default();
    let corpus = Corpus::from_file(common::corpus_path().as_ref(), 0.1).unwrap();
    let config = ModelConfig {
        vocab_size: 65,
        block_size: 16,
        arch: ModelOptions {
            n_layer: 2,
            n_embd: 16,
            n_head: 4,
            n_kv_head: Some(2),
            position: Position::Rope,
            dropout: 0.1,
            rope_base: 10_000.0,
            ..ModelOptions::default()
        },
    };
    let mut model = Gpt::new(&dev, &config, 3);
    let mut opt = AdamW::new(&model, 0.9, 0.95, 1e-8, 0.1);
    let step = |m: &mut Gpt<Cpu>, o: &mut AdamW, s: u64| {
        let batch = sample_batch(&corpus.train, 4, 16, &mut stream(3, Stream::Batch, s));
        train_step(
            m,
            o,
            &batch,
            1e-3,
            1.0,
            &mut Dropout::train(0.1, stream(3, Stream::Dropout, s)),
        )
        .loss
    };
    for s in 1..=5 {
        step(&mut model, &mut opt, s);
    }
    let dir = tempfile::tempdir().unwrap();
    let meta = checkpoint::Meta::new(
        5,
        0,
        checkpoint::Kind::Periodic,
        &corpus.tokenizer,
        config.clone(),
        Default::default(),
    );
    let saved = checkpoint::save(dir.path(), &model, &opt.state, meta).unwrap();
    let mut restored = Gpt::new(&dev, &config, 99);
    let mut restored_opt = AdamW::new(&restored, 0.9, 0.95, 1e-8, 0.1);
    checkpoint::read(&saved)
        .unwrap()
        .load_all(&mut restored, &mut restored_opt.state)
        .unwrap();
    assert_eq!(restored_opt, opt);
    let a = step(&mut model, &mut opt, 6);
    let b = step(&mut restored, &mut restored_opt, 6);
    assert_eq!(a.to_bits(), b.to_bits());
    let (mut wa, mut wb) = (vec![], vec![]);
    model.visit(&mut |p| wa.extend(p.value.as_vec()));
    restored.visit(&mut |p| wb.extend(p.value.as_vec()));
    assert!(wa == wb, "weights differ after the same step");
}

#[test]
fn a_diverged_run_stops_keeps_its_checkpoints_and_the_others_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        dir.path(),
        "[[run]]\nname = \"boom\"\nphase = [{ seq_len = 8, steps = 8 }, { seq_len = 8, steps = 4, lr = 1e30 }]\ntrain.grad_clip = 0\n[[run]]\nname = \"fine\"\n",
    );
    let runs = dir.path().join("runs");
    gptlab(&spec, &runs).assert().code(1).stderr(
        predicate::str::contains("run `boom` diverged at step")
            .and(predicate::str::contains("1 of 2 runs failed: boom")),
    );
    let status = std::fs::read_to_string(runs.join("res/boom/status.json")).unwrap();
    assert!(status.contains("diverged"), "{status}");
    let kept: Vec<usize> = checkpoint::list(&runs.join("res/boom/checkpoints"))
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(kept, vec![8, 4], "the last good checkpoints stay");
    assert!(
        std::fs::read_to_string(runs.join("res/fine/status.json"))
            .unwrap()
            .contains("complete")
    );
    // Running again does not silently retry the diverged run.
    gptlab(&spec, &runs)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("diverged at step"));
}

#[cfg(feature = "fault-injection")]
#[test]
fn what_a_killed_process_left_is_cleaned_up_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "");
    let runs = dir.path().join("runs");
    gptlab(&spec, &runs)
        .env("GPTLAB_FAULT", "checkpoint-write@8")
        .assert()
        .failure();
    let run = runs.join("res/default");
    assert!(
        run.join("checkpoints/step_00000008.tmp").is_dir(),
        "the kill left a .tmp folder"
    );
    let status = std::fs::read_to_string(run.join("status.json")).unwrap();
    assert!(status.contains("running"), "{status}");
    // A TensorBoard file whose history was being written (TensorBoard reads any `tfevents`).
    let torn_events = run.join("tb/events.out.tfevents.1.host.1-1.tmp");
    std::fs::write(&torn_events, b"half").unwrap();
    // The next start cleans up before it trains (it is killed again at step 9 here).
    gptlab(&spec, &runs)
        .env("GPTLAB_FAULT", "step-end@9")
        .assert()
        .failure()
        .stderr(predicate::str::contains("stopped abruptly"))
        .stderr(predicate::str::contains(
            "removed the unfinished checkpoint step_00000008.tmp",
        ))
        .stderr(predicate::str::contains("now interrupted"))
        .stderr(predicate::str::contains(
            "removed the unfinished file events.out.tfevents.1.host.1-1.tmp",
        ));
    assert!(!run.join("checkpoints/step_00000008.tmp").exists());
    assert!(!torn_events.exists());
    gptlab(&spec, &runs).assert().success();
    assert_eq!(losses(&runs, "default"), reference(dir.path()));
}

#[cfg(feature = "fault-injection")]
#[test]
fn resume_keeps_every_readable_metrics_row_and_sets_aside_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let want = reference(dir.path());
    let spec = spec(dir.path(), "");
    let runs = dir.path().join("runs");
    let metrics = runs.join("res/default/metrics.csv");
    // Killed after step 10 (checkpoint at 10): rows 1..=10 are the record.
    gptlab(&spec, &runs)
        .env("GPTLAB_FAULT", "after-checkpoint@10")
        .assert()
        .failure();
    let text = std::fs::read_to_string(&metrics).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 11);
    lines[0] = lines[0].replace("train_loss", "loss"); // an edited header
    lines.insert(4, "this is not a row".into()); // garbage between rows 3 and 4
    lines.remove(6); // the row of step 5 is gone
    let torn = lines.pop().unwrap(); // the row of step 10, torn by the kill
    lines.push(torn[..torn.len() / 2].to_string());
    std::fs::write(&metrics, lines.join("\n") + "\n").unwrap();
    let out = gptlab(&spec, &runs).assert().success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains("line 1 is not the metrics header"), "{stderr}");
    assert!(stderr.contains("line 5, 11 cannot be read"), "{stderr}");
    assert!(
        stderr.contains("no row for 2 of the steps before the checkpoint at 10 (5, 10)"),
        "{stderr}"
    );
    let aside: Vec<_> = std::fs::read_dir(runs.join("res/default"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("metrics.csv.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    let set_aside = std::fs::read_to_string(aside[0].path()).unwrap();
    assert!(set_aside.contains("5: this is not a row"), "{set_aside}");
    // Every readable row survives with its exact values; only the two lost ones are missing.
    let got = losses(&runs, "default");
    let expected: Vec<_> = want.iter().filter(|(s, _, _)| *s != 5 && *s != 10).cloned().collect();
    assert_eq!(got, expected);
}

#[test]
fn ctrl_c_finishes_the_step_writes_a_checkpoint_and_resume_completes() {
    let dir = tempfile::tempdir().unwrap();
    let long = spec(dir.path(), "").to_str().unwrap().to_string();
    let text = std::fs::read_to_string(&long)
        .unwrap()
        .replace("steps = 6", "steps = 4000");
    std::fs::write(&long, text).unwrap();
    let runs = dir.path().join("runs");
    let bin = assert_cmd::cargo::cargo_bin("gptlab");
    let child = StdCommand::new(&bin)
        .args(["run", &long, "--runs-dir", runs.to_str().unwrap(), "-q", "--no-report"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = runs.join("res/default/metrics.csv");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&metrics)
        .map(|m| m.lines().count())
        .unwrap_or(0)
        < 14
    {
        assert!(Instant::now() < deadline, "training did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    // One line naming the command as typed, flags included.
    assert_eq!(stderr.matches("to resume, run again:").count(), 1, "{stderr}");
    let hint = stderr.lines().find(|l| l.contains("to resume, run again:")).unwrap();
    assert!(
        hint.contains(&long) && hint.contains("--runs-dir") && hint.contains("--no-report"),
        "{hint}"
    );
    let status = std::fs::read_to_string(runs.join("res/default/status.json")).unwrap();
    assert!(status.contains("interrupted"), "{status}");
    let stopped = read_metrics(&metrics).unwrap().len();
    let newest = checkpoint::list(&runs.join("res/default/checkpoints"))[0].0;
    assert_eq!(newest, stopped, "the checkpoint is at the last step written");
    // Resume a shortened schedule so the test stays fast; the first phases are unchanged.
    let short = long.replace("res.toml", "short.toml");
    std::fs::write(
        &short,
        std::fs::read_to_string(&long)
            .unwrap()
            .replace("steps = 4000", &format!("steps = {}", stopped)),
    )
    .unwrap();
    Command::cargo_bin("gptlab")
        .unwrap()
        .args(["run", &short, "--runs-dir", runs.to_str().unwrap(), "-q", "--no-report"])
        .assert()
        .success();
}

#[test]
fn init_from_starts_from_another_runs_weights_with_a_fresh_optimizer() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let spec = spec(dir.path(), "");
    gptlab(&spec, &runs).args(["--set", "train.lr=1e-2"]).assert().success();
    let from = runs.join("res/default/checkpoints/step_00000016");
    let source_last = read_metrics(&runs.join("res/default/metrics.csv"))
        .unwrap()
        .last()
        .unwrap()
        .train_loss;
    let warm = dir.path().join("warm.toml");
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("name = \"res\"", "name = \"warm\"");
    std::fs::write(
        &warm,
        format!(
            "{text}[[run]]\nname = \"tuned\"\ninit_from = \"{}\"\n[[run]]\nname = \"scratch\"\n",
            from.display()
        ),
    )
    .unwrap();
    gptlab(&warm, &runs).assert().success();
    let first = |run: &str| read_metrics(&runs.join("warm").join(run).join("metrics.csv")).unwrap()[0].train_loss;
    assert!(
        first("scratch") - source_last > 0.5,
        "the source run should have learnt: {source_last}"
    );
    assert!(
        (first("tuned") - source_last).abs() < 0.25,
        "warm start {} vs source's last {source_last}",
        first("tuned")
    );
    // The weights are part of the run's identity and its provenance: a source trained again
    // is other weights at the same path, and the warm run is not left claiming to be complete.
    let provenance = std::fs::read_to_string(runs.join("warm/tuned/provenance.json")).unwrap();
    let sha = checkpoint::read_weights(&from).unwrap().meta.model_sha256;
    assert!(
        provenance.contains(&format!("\"weights_sha256\": \"{sha}\"")),
        "{provenance}"
    );
    let plan = common::gptlab().arg("plan").arg(&warm).assert().success();
    let plan = String::from_utf8_lossy(&plan.get_output().stdout).into_owned();
    let said = format!(
        "init:      the weights of {} (step 16; SHA-256 {}…)",
        from.display(),
        &sha[..12]
    );
    assert!(plan.contains(&said), "{plan}");
    gptlab(&spec, &runs)
        .args(["--fresh", "--set", "train.lr=2e-2"])
        .assert()
        .success();
    gptlab(&warm, &runs).assert().code(2).stderr(predicate::str::contains(
        "holds other weights than this run started from",
    ));
    // A missing checkpoint folder is a spec error naming it, before anything trains.
    std::fs::write(
        &warm,
        format!(
            "{text}[[run]]\nname = \"lost\"\ninit_from = \"{}/nope\"\n",
            runs.display()
        ),
    )
    .unwrap();
    // At its line: `[[run]]`, `name`, then `init_from`, after the text.
    let at = format!("{}:{}: key `init_from`", warm.display(), text.lines().count() + 3);
    gptlab(&warm, &runs)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(at).and(predicate::str::contains("nope")));
}

#[test]
fn a_warm_run_outlives_its_source_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    gptlab(&spec(dir.path(), ""), &runs).assert().success();
    let from = runs.join("res/default/checkpoints/step_00000016");
    let extra = format!("[[run]]\nname = \"tuned\"\ninit_from = \"{}\"\n", from.display());
    let warm = common::tiny_spec(dir.path(), "warm", &extra);
    let with_seeds = |n: &str| {
        let mut cmd = gptlab(&warm, &runs);
        cmd.args(["--seeds", n]);
        cmd
    };
    with_seeds("2").assert().success();
    let seed_dirs = ["seed=3407", "seed=1"].map(|s| runs.join("warm/tuned").join(s));
    let before: Vec<_> = seed_dirs.iter().map(|d| common::results_fingerprint(d)).collect();
    // The source run is deleted (or moved, or its checkpoint pruned): the warm run's results are
    // its own, planned with the weights its folder recorded.
    std::fs::rename(runs.join("res"), dir.path().join("res-moved")).unwrap();
    let status = |n: &str| {
        common::gptlab()
            .args([
                "status",
                warm.to_str().unwrap(),
                "--seeds",
                n,
                "--runs-dir",
                runs.to_str().unwrap(),
            ])
            .assert()
    };
    let said = common::stdout_of(&status("2").success());
    assert_eq!(said.matches("complete  16/16").count(), 2, "{said}");
    let reports = dir.path().join("reports");
    common::gptlab()
        .args(["report", warm.to_str().unwrap(), "--seeds", "2", "--no-samples"])
        .args([
            "--runs-dir",
            runs.to_str().unwrap(),
            "--reports-dir",
            reports.to_str().unwrap(),
        ])
        .assert()
        .success();
    with_seeds("2")
        .assert()
        .success()
        .stderr(predicate::str::contains("is gone").and(predicate::str::contains("SHA-256")));
    // Starting over needs the source: refused before the folder is touched.
    with_seeds("2")
        .arg("--fresh")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "starts from step 0 and its init_from checkpoint",
        ));
    let after: Vec<_> = seed_dirs.iter().map(|d| common::results_fingerprint(d)).collect();
    assert_eq!(before, after, "a refused --fresh must leave the results as they were");
    assert_eq!(
        common::stdout_of(&status("2").success())
            .matches("complete  16/16")
            .count(),
        2
    );
    // A seed that never trained needs the source too; the trained ones are still complete.
    with_seeds("3")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("tuned/seed=2"));
    let said = common::stdout_of(&status("3").success());
    assert_eq!(said.matches("complete  16/16").count(), 2, "{said}");
    // A phase appended later resumes from the run's own checkpoint.
    std::fs::write(
        &warm,
        format!(
            "{}[[phase]]\nseq_len = 16\nsteps = 4\n",
            std::fs::read_to_string(&warm).unwrap()
        ),
    )
    .unwrap();
    with_seeds("2").assert().success();
    let said = common::stdout_of(&status("2").success());
    assert_eq!(said.matches("complete  20/20").count(), 2, "{said}");
}

#[test]
fn seeds_warm_started_from_two_versions_of_a_gone_source_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let source = spec(dir.path(), "");
    gptlab(&source, &runs).assert().success();
    let from = runs.join("res/default/checkpoints/step_00000016");
    let extra = format!("[[run]]\nname = \"tuned\"\ninit_from = \"{}\"\n", from.display());
    let warm = common::tiny_spec(dir.path(), "warm", &extra);
    let with_seeds = || {
        let mut cmd = gptlab(&warm, &runs);
        cmd.args(["--seeds", "2"]);
        cmd
    };
    with_seeds().assert().success();
    // The source trained again: seed 1 starts over from its new weights, seed 3407 keeps the old.
    gptlab(&source, &runs)
        .args(["--fresh", "--set", "train.lr=2e-2"])
        .assert()
        .success();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    with_seeds()
        .args(["--only", "tuned/seed=1", "--fresh"])
        .assert()
        .success();
    let status = || {
        let args = [
            "status",
            warm.to_str().unwrap(),
            "--seeds",
            "2",
            "--runs-dir",
            runs.to_str().unwrap(),
        ];
        common::stdout_of(&common::gptlab().args(args).assert().code(2))
    };
    let there = status();
    std::fs::rename(runs.join("res"), dir.path().join("res-moved")).unwrap();
    // Gone, the source is taken as it was last (the newest record): the same verdicts as before.
    let gone = status();
    for said in [&there, &gone] {
        let line = |seed: &str| said.lines().find(|l| l.contains(seed)).unwrap_or_default().to_string();
        assert!(line("seed=1").contains("complete"), "{said}");
        assert!(line("seed=3407").contains("other-settings"), "{said}");
    }
}

/// The learned position table of `model` as it loads from `checkpoint`.
fn position_table(checkpoint: &Path, block_size: usize) -> Vec<f32> {
    let loaded = checkpoint::read_weights(checkpoint).unwrap();
    let config = ModelConfig {
        block_size,
        ..loaded.meta.model.clone()
    };
    let mut model = Gpt::new(&Cpu::default(), &config, 99);
    loaded.load_weights(&mut model).unwrap();
    let mut table = None;
    model.visit(&mut |p| {
        if p.name == "wpe.weight" {
            table = Some(p.value.as_vec());
        }
    });
    table.expect("an absolute-position model has wpe.weight")
}

#[test]
fn init_from_of_another_shape_is_refused_before_training_and_a_shorter_table_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    gptlab(&spec(dir.path(), ""), &runs).assert().success();
    let from = runs.join("res/default/checkpoints/step_00000016");
    let runs_of =
        |body: &str| common::tiny_spec(dir.path(), "warm", &body.replace("FROM", &from.display().to_string()));
    let misfits = runs_of(
        "[[run]]\nname = \"wide\"\ninit_from = \"FROM\"\nmodel.n_embd = 32\n\
         [[run]]\nname = \"grouped\"\ninit_from = \"FROM\"\nmodel.n_kv_head = 1\n\
         [[run]]\nname = \"rotary\"\ninit_from = \"FROM\"\nmodel.position = \"rope\"\n",
    );
    let out = gptlab(&misfits, &runs).assert().code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    for (run, why) in [
        ("wide", "its n_embd is 16, this run's 32"),
        ("grouped", "its n_kv_head is not set (its default), this run's 1"),
        ("rotary", "its position is \"absolute\", this run's \"rope\""),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("(in run `{run}`)")))
            .unwrap_or_else(|| panic!("no error for run {run}: {stderr}"));
        assert!(line.contains("key `init_from`") && line.contains(why), "{line}");
    }
    assert!(!runs.join("warm").exists(), "nothing trained before the refusal");
    // A warm start at a shorter length keeps the table's first rows, as nanoGPT's
    // crop_block_size: the source learnt 16 positions, the run uses 8.
    let short = runs_of("[[run]]\nname = \"short\"\ninit_from = \"FROM\"\nphase = [{ seq_len = 8, steps = 2 }]\n");
    gptlab(&short, &runs).assert().success();
    let full = position_table(&from, 16);
    assert_eq!(position_table(&from, 8), full[..8 * 16], "the first 8 rows, as saved");
    let grown = position_table(&from, 20);
    assert_eq!(grown[..16 * 16], full[..], "a longer table keeps the saved rows first");
}

#[test]
fn an_unusable_output_folder_is_a_clear_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "");
    let blocker = dir.path().join("not_a_folder");
    std::fs::write(&blocker, "x").unwrap();
    gptlab(&spec, &blocker)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(blocker.to_str().unwrap()));
    assert_eq!(
        std::fs::read_to_string(&blocker).unwrap(),
        "x",
        "nothing written over it"
    );
    // With a report asked for, its failure is said once, not counted as a run ("2 of 1 runs").
    let reports = dir.path().join("reports");
    let runs = blocker.join("runs");
    let out = common::gptlab()
        .args([
            "run",
            spec.to_str().unwrap(),
            "-q",
            "--runs-dir",
            runs.to_str().unwrap(),
        ])
        .args(["--reports-dir", reports.to_str().unwrap()])
        .assert()
        .code(1);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        stderr.contains(": 1 of 1 runs failed: default; the report could not be written"),
        "{stderr}"
    );
}
