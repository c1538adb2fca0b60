//! Evaluation at several lengths: the loss at a length is the mean of its per-position losses
//! over windows every run shares, equals the model's own mean cross-entropy on those windows,
//! learned absolute positions past their table are "not defined" (not an error), and RoPE's
//! scaled angles follow their closed forms.

mod common;

use common::{OutDirs, gptlab, write_spec};
use dfdx::prelude::*;
use gptlab::checkpoint;
use gptlab::data::Corpus;
use gptlab::model::{Gpt, Rope, RopeScaling, RopeScalingKind};
use gptlab::run_dir::{EvalRow, PositionRow, RunDir};
use predicates::prelude::*;

/// Two runs (absolute, rope; different seeds do not matter to the windows) trained 10 steps
/// at 8 and 6 at 16 (`TINY_SPEC`), evaluated at 8, 16, 32 and 64 with NTK scaling.
const LENGTHS: &str = r#"
[eval]
lengths = [8, 16, 32, 64]
tokens = 512
rope_scaling = { kind = "ntk", factor = 4.0 }
[[run]]
name = "absolute"
[[run]]
name = "rope"
model.position = "rope"
experiment.seed = 9
"#;

/// Writes `text` as experiment `len` and trains it (with its report).
fn train(dirs: &OutDirs, text: &str) {
    let spec = write_spec(dirs.tmp.path(), "len.toml", text);
    gptlab()
        .arg("run")
        .arg(&spec)
        .args(dirs.args())
        .arg("-q")
        .assert()
        .success();
}

fn rows(dirs: &OutDirs, exp: &str, run: &str) -> (Vec<EvalRow>, Vec<PositionRow>) {
    let dir = RunDir::new(dirs.runs.join(exp).join(run));
    (dir.read_eval().unwrap(), dir.read_position_loss().unwrap())
}

/// At phase ends 10 and 16, the loss in `evals` at the `longest` length is the mean of its
/// per-position losses in `positions`.
fn assert_the_loss_is_the_mean_of_its_positions(evals: &[EvalRow], positions: &[PositionRow], longest: usize) {
    for step in [10, 16] {
        let at: Vec<f64> = positions
            .iter()
            .filter(|p| p.step == step && p.scaling.is_empty())
            .map(|p| {
                assert_eq!(p.length, longest);
                p.loss
            })
            .collect();
        assert_eq!(at.len(), longest);
        let row = evals
            .iter()
            .find(|r| r.step == step && r.length == longest && r.scaling.is_empty())
            .unwrap();
        let mean = at.iter().sum::<f64>() / at.len() as f64;
        assert!(
            (row.loss.unwrap() - mean).abs() < 1e-9,
            "{} vs {mean}",
            row.loss.unwrap()
        );
    }
}

/// Independently: the model's own mean cross-entropy (dfdx's log-softmax) on the same
/// windows, from the phase-end checkpoint, equals the loss recorded at each length.
fn assert_the_model_recomputes_the_recorded_losses(dirs: &OutDirs, rope: &[EvalRow]) {
    let corpus = Corpus::from_file(std::path::Path::new(&common::corpus_path()), 0.1).unwrap();
    let dev = Cpu::default();
    let loaded = checkpoint::read(&dirs.runs.join("len/rope/checkpoints/step_00000016")).unwrap();
    let mut model = Gpt::new(&dev, &loaded.meta.model, 0);
    loaded.load_weights(&mut model).unwrap();
    for length in [8, 16, 32] {
        let model = model.for_length(length, None).unwrap();
        let n = 512 / length;
        let val: Vec<usize> = corpus.val.to_vec().into_iter().map(|id| id as usize).collect();
        let inputs: Vec<usize> = val[..n * length].to_vec();
        let targets: Vec<usize> = val[1..n * length + 1].to_vec();
        let logits = model.eval_logits(&inputs, n, length);
        let want = model.loss(logits, &targets).as_vec()[0] as f64;
        let got = rope
            .iter()
            .find(|r| r.step == 16 && r.length == length && r.scaling.is_empty())
            .unwrap();
        assert!(
            (got.loss.unwrap() - want).abs() < 1e-4,
            "length {length}: {:?} vs {want}",
            got.loss
        );
    }
}

#[test]
fn the_loss_at_a_length_is_the_mean_over_positions_of_shared_windows() {
    let dirs = OutDirs::new();
    train(&dirs, &format!("{}{LENGTHS}", common::TINY_SPEC));

    let (abs, abs_pos) = rows(&dirs, "len", "absolute");
    let (rope, rope_pos) = rows(&dirs, "len", "rope");
    // Phase ends 10 (trained to 8) and 16 (trained to 16); 4 lengths each, plus for rope the
    // NTK-scaled lengths past the training length (16, 32, 64 after phase 0; 32, 64 after 1).
    assert_eq!(abs.len(), 8);
    assert_eq!(rope.len(), 8 + 3 + 2);
    for r in abs.iter().chain(&rope) {
        assert_eq!(
            (r.mode.as_str(), r.stride, r.budget),
            ("windows", r.length, 512),
            "{r:?}"
        );
    }

    // Learned absolute positions: a 16-row table (the longest phase), so 32 and 64 are not
    // defined, with the reason; everything else has a loss.
    for r in &abs {
        if r.length > 16 {
            assert!(
                r.loss.is_none() && r.note.contains("learned absolute positions"),
                "{r:?}"
            );
            assert_eq!(r.windows, 0);
        } else {
            assert!(r.loss.is_some_and(f64::is_finite), "{r:?}");
        }
    }
    assert!(rope.iter().all(|r| r.loss.is_some_and(f64::is_finite)));

    // The same windows for every run at each length (the seed and the model do not enter).
    for r in rope.iter().filter(|r| r.scaling.is_empty()) {
        for a in abs.iter().filter(|a| a.length == r.length && a.loss.is_some()) {
            assert_eq!(
                (&a.windows_id, a.windows, a.tokens),
                (&r.windows_id, r.windows, r.tokens)
            );
        }
        assert_eq!(
            r.tokens,
            r.windows * r.length,
            "non-overlapping windows score every position"
        );
        assert_eq!(r.windows, (512 / r.length).max(1));
    }

    // The loss at the longest length equals the mean of its per-position losses.
    assert_the_loss_is_the_mean_of_its_positions(&rope, &rope_pos, 64);
    assert_the_loss_is_the_mean_of_its_positions(&abs, &abs_pos, 16);
    assert_the_model_recomputes_the_recorded_losses(&dirs, &rope);

    // The report draws both figures and says what happens past the training length.
    let reports = dirs.reports.join("len");
    for f in ["length.svg", "position_loss.svg", "eval.csv", "position_loss.csv"] {
        assert!(reports.join(f).exists(), "{f}");
    }
    let summary = std::fs::read_to_string(reports.join("summary.md")).unwrap();
    assert!(
        summary.contains("At 2× the training length after phase 1 (loss at 32 minus loss at 16): absolute n/a"),
        "{summary}"
    );
    assert!(summary.contains("rope ntk ×4 "), "{summary}");
}

#[test]
fn changed_eval_settings_are_evaluated_from_the_phase_end_checkpoints_without_retraining() {
    let dirs = OutDirs::new();
    let text = format!("{}{LENGTHS}", common::TINY_SPEC);
    train(&dirs, &text);
    let metrics = std::fs::read(dirs.runs.join("len/rope/metrics.csv")).unwrap();
    let before = rows(&dirs, "len", "rope").0;

    // Sliding windows now: the run is complete, so only the evaluations are added.
    let sliding = text.replace("tokens = 512", "tokens = 512\nmode = \"sliding\"\nstride = 4");
    let spec = write_spec(dirs.tmp.path(), "len.toml", &sliding);
    gptlab()
        .arg("run")
        .arg(&spec)
        .args(dirs.args())
        .assert()
        .success()
        .stderr(predicate::str::contains("evaluating the [eval] lengths it lacks"));
    assert_eq!(
        std::fs::read(dirs.runs.join("len/rope/metrics.csv")).unwrap(),
        metrics,
        "not retrained"
    );
    let after = rows(&dirs, "len", "rope").0;
    let slid: Vec<&EvalRow> = after.iter().filter(|r| r.mode == "sliding").collect();
    assert_eq!(slid.len(), before.len());
    for r in &slid {
        assert_eq!(r.stride, 4);
        // The first window scores all its positions, the others their last 4.
        assert_eq!(r.tokens, r.length + 4 * (r.windows - 1));
    }
    // The windows rows are kept beside them, unchanged.
    let kept: Vec<&EvalRow> = after.iter().filter(|r| r.mode == "windows").collect();
    assert_eq!(kept, before.iter().collect::<Vec<_>>());
    let page = std::fs::read_to_string(dirs.reports.join("len/index.html")).unwrap();
    assert!(
        page.contains("sliding windows 4 tokens apart"),
        "the figure says how it was scored"
    );
}

#[test]
fn eval_settings_are_checked_and_shared_by_every_run() {
    let dirs = OutDirs::new();
    for (extra, key, says) in [
        ("[eval]\nstride = 4\n", "eval.stride", "mode = \"sliding\""),
        ("[eval]\nlengths = [8, 0, 8]\n", "eval.lengths", "listed twice"),
        (
            "[eval]\nmode = \"sliding\"\nlengths = [8]\nstride = 9\n",
            "eval.stride",
            "between 1 and the shortest length",
        ),
        (
            "[eval]\nrope_scaling = { kind = \"ntk\", factor = 0.5 }\n",
            "eval.rope_scaling",
            "at least 1",
        ),
        (
            "[[run]]\nname = \"a\"\neval.tokens = 64\n",
            "eval.tokens",
            "the experiment's, not a run's",
        ),
    ] {
        let spec = write_spec(dirs.tmp.path(), "bad.toml", &format!("{}{extra}", common::TINY_SPEC));
        gptlab()
            .arg("validate")
            .arg(&spec)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(key).and(predicate::str::contains(says)));
    }
}

/// `(cos, sin)` of the angle of pair `i` at position `m`, read off a RoPE table by rotating the
/// unit vector of that pair.
fn angle_of(rope: &Rope, hd: usize, m: usize, i: usize) -> (f32, f32) {
    let dev = Cpu::default();
    let mut x = vec![0.0f32; (m + 1) * hd];
    x[m * hd + i] = 1.0;
    let y = rope.apply(dev.tensor_from_vec(x, (1, m + 1, 1, hd)), 0).as_vec();
    (y[m * hd + i], y[m * hd + i + hd / 2])
}

#[test]
fn rope_scaling_angles_follow_the_closed_forms_and_factor_one_is_unscaled() {
    let (hd, base, len) = (16, 10_000.0f64, 300);
    for (kind, factor) in [
        (RopeScalingKind::Linear, 2.0),
        (RopeScalingKind::Ntk, 2.0),
        (RopeScalingKind::Ntk, 8.0),
    ] {
        let s = RopeScaling { kind, factor };
        let rope = Rope::scaled(hd, len, base, Some(&s));
        for m in [0usize, 1, 7, 255, 299] {
            for i in 0..hd / 2 {
                let d = hd as f64;
                let angle = match kind {
                    // Position interpolation: positions divided by the factor.
                    RopeScalingKind::Linear => (m as f64 / factor) * base.powf(-2.0 * i as f64 / d),
                    // NTK-aware: base · factor^(d/(d−2)).
                    RopeScalingKind::Ntk => m as f64 * (base * factor.powf(d / (d - 2.0))).powf(-2.0 * i as f64 / d),
                };
                let (c, s) = angle_of(&rope, hd, m, i);
                assert!(
                    (c as f64 - angle.cos()).abs() < 1e-5 && (s as f64 - angle.sin()).abs() < 1e-5,
                    "{kind:?} ×{factor} m={m} i={i}"
                );
            }
        }
        // NTK leaves the fastest pair (i = 0) exactly as trained.
        if kind == RopeScalingKind::Ntk {
            assert_eq!(angle_of(&rope, hd, 5, 0), angle_of(&Rope::new(hd, len, base), hd, 5, 0));
        }
        // Factor 1 is the unscaled table, bit for bit.
        let one = Rope::scaled(hd, len, base, Some(&RopeScaling { kind, factor: 1.0 }));
        for m in [3, 299] {
            for i in 0..hd / 2 {
                assert_eq!(angle_of(&one, hd, m, i), angle_of(&Rope::new(hd, len, base), hd, m, i));
            }
        }
    }
}
