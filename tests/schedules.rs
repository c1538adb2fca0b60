//! Learning-rate schedules against values computed by hand, the `lr` column of real runs,
//! resuming inside warmup and decay, extending a run, and bad schedule settings.

mod common;

use std::f64::consts::PI;
use std::path::Path;

use common::{gptlab, quiet_run, tiny_spec};
use gptlab::plan::PhaseSchedule;
use gptlab::spec::RunConfig;
use predicates::prelude::*;

fn schedule(toml_text: &str) -> PhaseSchedule {
    let config: RunConfig = toml::from_str(toml_text).unwrap();
    PhaseSchedule::new(&config)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-15 + 1e-12 * b.abs()
}

#[track_caller]
fn check(s: &PhaseSchedule, want: &[(usize, f64)]) {
    for &(step, lr) in want {
        assert!(close(s.lr_at(step), lr), "step {step}: {} vs {lr}", s.lr_at(step));
    }
}

#[test]
fn cosine_with_warmup_matches_the_hand_computation() {
    let s = schedule(
        "[train]\nlr = 1e-3\nschedule = \"cosine\"\nwarmup_steps = 10\nmin_lr = 1e-4\n[[phase]]\nseq_len = 8\nsteps = 110\n",
    );
    check(
        &s,
        &[
            (1, 1e-4),    // warmup's first step: peak / 10, never 0
            (5, 5e-4),    //
            (10, 1e-3),   // warmup's last step: the peak exactly
            (60, 5.5e-4), // half way through the decay: min + (peak - min) / 2
            (110, 1e-4),  // the last step: the floor
        ],
    );
    let p = 25.0 / 100.0;
    check(&s, &[(35, 1e-4 + 9e-4 * 0.5 * (1.0 + (PI * p).cos()))]);
}

#[test]
fn linear_and_wsd_match_the_hand_computation() {
    let linear = schedule("[train]\nlr = 2e-3\nschedule = \"linear\"\n[[phase]]\nseq_len = 8\nsteps = 100\n");
    check(&linear, &[(1, 2e-3 * 0.99), (50, 1e-3), (100, 0.0)]);
    let wsd = |shape: &str| {
        schedule(&format!(
            "[train]\nlr = 1e-3\nschedule = \"wsd\"\nwarmup_steps = 5\ndecay_fraction = 0.2\ndecay_shape = \"{shape}\"\n\
             [[phase]]\nseq_len = 8\nsteps = 100\n"
        ))
    };
    check(
        &wsd("linear"),
        &[
            (1, 2e-4),
            (5, 1e-3),
            (6, 1e-3),
            (80, 1e-3),
            (81, 0.95e-3),
            (90, 0.5e-3),
            (100, 0.0),
        ],
    );
    check(&wsd("sqrt"), &[(85, 0.5e-3), (100, 0.0)]);
    check(&wsd("cosine"), &[(90, 0.5e-3), (100, 0.0)]);
    let steps = schedule(
        "[train]\nlr = 1e-3\nschedule = \"wsd\"\ndecay_steps = 10\nmin_lr_ratio = 0.1\n[[phase]]\nseq_len = 8\nsteps = 40\n",
    );
    check(&steps, &[(30, 1e-3), (35, 1e-4 + 9e-4 * 0.5), (40, 1e-4)]);
}

#[test]
fn a_run_wide_schedule_spans_the_phases_and_a_phase_may_have_its_own() {
    // Two phases share the run-wide linear decay over 100 steps; the third has its own
    // warmup and constant rate.
    let s = schedule(
        "[train]\nlr = 1e-3\nschedule = \"linear\"\n\
         [[phase]]\nseq_len = 8\nsteps = 60\n\
         [[phase]]\nseq_len = 16\nsteps = 40\n\
         [[phase]]\nseq_len = 32\nsteps = 20\nlr = 2e-4\nwarmup_steps = 4\n",
    );
    check(
        &s,
        &[
            (60, 4e-4),
            (61, 1e-3 * 0.39),
            (100, 0.0),
            (101, 5e-5),
            (104, 2e-4),
            (120, 2e-4),
        ],
    );
    // Today's behaviour, bit for bit: constant, a phase's own rate.
    let old = schedule(
        "[train]\nlr = 5e-4\n[[phase]]\nseq_len = 8\nsteps = 10\n[[phase]]\nseq_len = 8\nsteps = 5\nlr = 1e-4\n",
    );
    assert_eq!(
        (old.lr_at(1), old.lr_at(10), old.lr_at(11), old.lr_at(15)),
        (5e-4, 5e-4, 1e-4, 1e-4)
    );
}

fn metrics(runs: &Path, run: &str) -> Vec<gptlab::run_dir::MetricsRow> {
    gptlab::run_dir::read_metrics(&runs.join(run).join("metrics.csv")).unwrap()
}

const COSINE: &str = "[train]\nschedule = \"cosine\"\nwarmup_steps = 4\nmin_lr_ratio = 0.1\n";

/// [`common::TINY_SPEC`] with `[train]` keys added.
fn spec_with_train(dir: &Path, name: &str, train: &str, extra: &str) -> std::path::PathBuf {
    let text = common::TINY_SPEC
        .replace("[experiment]\n", &format!("[experiment]\nname = \"{name}\"\n"))
        .replace("[train]\n", &format!("[train]\n{train}\n"));
    common::write_spec(dir, &format!("{name}.toml"), &format!("{text}{extra}"))
}

#[test]
fn the_lr_column_of_a_run_is_the_formula_at_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let train = COSINE.trim_start_matches("[train]\n");
    let spec = spec_with_train(dir.path(), "cos", train, "");
    let runs = dir.path().join("runs");
    quiet_run(&spec, &runs).assert().success();
    // The tiny spec: lr 5e-4 (default), 16 steps over two phases, one run-wide schedule.
    let (peak, min) = (5e-4, 5e-5);
    for r in metrics(&runs, "cos/default") {
        let want = match r.step {
            s if s <= 4 => peak * s as f64 / 4.0,
            s => min + (peak - min) * 0.5 * (1.0 + (PI * (s - 4) as f64 / 12.0).cos()),
        };
        assert!(close(r.lr, want), "step {}: {} vs {want}", r.step, r.lr);
    }
    // With accumulation the schedule counts optimizer steps, not micro-batches.
    let micro = spec_with_train(dir.path(), "cos_micro", &format!("{train}micro_batch_size = 1\n"), "");
    quiet_run(&micro, &runs).assert().success();
    let rates = |run: &str| metrics(&runs, run).iter().map(|r| r.lr.to_bits()).collect::<Vec<_>>();
    assert_eq!(rates("cos_micro/default"), rates("cos/default"));
}

#[cfg(feature = "fault-injection")]
#[test]
fn killed_in_warmup_and_in_decay_then_resumed_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let train = "schedule = \"wsd\"\nwarmup_steps = 5\ndecay_steps = 6\nmicro_batch_size = 2";
    let spec = spec_with_train(dir.path(), "kill", train, "");
    let reference = dir.path().join("reference");
    quiet_run(&spec, &reference).assert().success();
    let bits = |runs: &Path| -> Vec<(usize, u32, u64, Option<u32>)> {
        metrics(runs, "kill/default")
            .iter()
            .map(|r| {
                (
                    r.step,
                    r.train_loss.to_bits(),
                    r.lr.to_bits(),
                    r.val_loss.map(f32::to_bits),
                )
            })
            .collect()
    };
    let want = bits(&reference);
    assert_eq!(want.len(), 16);
    let killed = dir.path().join("killed");
    // Step 3 is in the warmup (checkpoint at 0: none yet); 13 in the decay (checkpoint at 12).
    for fault in ["step-end@3", "after-checkpoint@4", "step-end@13"] {
        let out = quiet_run(&spec, &killed).env("GPTLAB_FAULT", fault).output().unwrap();
        assert!(!out.status.success(), "{fault}: the process should have been killed");
    }
    quiet_run(&spec, &killed).assert().success();
    assert_eq!(bits(&killed), want);
    let weights =
        |runs: &Path| std::fs::read(runs.join("kill/default/checkpoints/step_00000016/model.safetensors")).unwrap();
    assert!(weights(&killed) == weights(&reference), "final weights differ");
}

#[test]
fn extending_a_decaying_run_is_refused_and_a_constant_or_own_schedule_phase_continues() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let train = COSINE.trim_start_matches("[train]\n");
    quiet_run(&spec_with_train(dir.path(), "ext", train, ""), &runs)
        .assert()
        .success();
    let more = "[[phase]]\nseq_len = 16\nsteps = 4\n";
    quiet_run(&spec_with_train(dir.path(), "ext", train, more), &runs)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "run-wide `cosine` learning-rate schedule spanned 16 steps",
        ))
        .stderr(predicate::str::contains("now makes it 20"))
        .stderr(predicate::str::contains("--fresh"));
    let own = "[[phase]]\nseq_len = 16\nsteps = 4\nlr = 1e-5\n";
    quiet_run(&spec_with_train(dir.path(), "ext", train, own), &runs)
        .assert()
        .success();
    let rows = metrics(&runs, "ext/default");
    assert_eq!(rows.len(), 20);
    assert!(rows[16..].iter().all(|r| r.lr == 1e-5));
    // A constant run takes another phase as today.
    quiet_run(&tiny_spec(dir.path(), "flat", ""), &runs).assert().success();
    quiet_run(&tiny_spec(dir.path(), "flat", more), &runs)
        .assert()
        .success();
    assert_eq!(metrics(&runs, "flat/default").len(), 20);
}

#[test]
fn bad_schedule_settings_are_spec_errors_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let train = "lr = -1e-3\nschedule = \"cosine\"\nwarmup_steps = 50\nmin_lr = 1.0\nmin_lr_ratio = 0.1\n\
                 decay_fraction = 1.5\nmicro_batch_size = 3";
    let spec = spec_with_train(
        dir.path(),
        "bad",
        train,
        "[[phase]]\nseq_len = 8\nsteps = 2\nwarmup_steps = 3\n",
    );
    let out = gptlab().arg("validate").arg(&spec).assert().code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    for (key, words) in [
        ("train.lr", "must be a positive number"),
        ("train.min_lr", "not both"),
        ("train.min_lr", "between 0 and train.lr"),
        ("train.decay_fraction", "applies to schedule = \"wsd\" only"),
        ("train.decay_fraction", "must be in (0, 1]"),
        ("train.warmup_steps", "more than the 16 steps of the run-wide schedule"),
        ("phase.2.warmup_steps", "more than the 2 steps of phase 2"),
        ("train.micro_batch_size", "does not divide batch_size 4"),
    ] {
        assert!(
            err.contains(key) && err.contains(words),
            "want {key}: {words} in\n{err}"
        );
    }
    assert!(err.contains("bad.toml:"), "{err}");
    let zero = spec_with_train(dir.path(), "zero", "micro_batch_size = 0", "");
    gptlab()
        .arg("validate")
        .arg(&zero)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("train.micro_batch_size").and(predicate::str::contains("at least 1")));
}
