//! The memory a run needs: `plan`'s estimate against the peak a run records (evaluation
//! included), and a run that cannot fit refused before anything is written.

mod common;

use std::path::Path;

use common::{csv_rows, gptlab, quiet_run, write_spec};
use predicates::prelude::*;

/// What a case adds to [`one_step`]'s run.
#[derive(Clone, Copy, PartialEq)]
enum Extra {
    Nothing,
    /// A step at T = 128 first, whose smaller blocks must not stay resident beside the 256's.
    After128,
    /// RoPE, evaluated at 4,096 tokens: one window longer than the training pass.
    LongEval,
}

/// One step at T = 256 (`tokenizer`, `batch`, `layers` of width `width`, with `extra`),
/// evaluated at each phase end at two `[eval]` lengths, as experiment `name`.
fn one_step(
    dir: &Path,
    name: &str,
    tokenizer: &str,
    (batch, layers, width): (usize, usize, usize),
    extra: Extra,
) -> std::path::PathBuf {
    let first = if extra == Extra::After128 {
        "[[phase]]\nseq_len = 128\nsteps = 1\n"
    } else {
        ""
    };
    let (position, longest) = if extra == Extra::LongEval {
        ("rope", 4096)
    } else {
        ("absolute", 512)
    };
    let text = format!(
        "[experiment]\nname = \"{name}\"\nseed = 1\n[data]\npath = \"CORPUS\"\ntokenizer = \"{tokenizer}\"\n\
         [model]\nn_layer = {layers}\nn_embd = {width}\nn_head = 4\nposition = \"{position}\"\n\
         [train]\nbatch_size = {batch}\neval_every = 0\neval_batches = 1\ncheckpoint_every = 0\n\
         {first}[[phase]]\nseq_len = 256\nsteps = 1\n[eval]\nlengths = [256, {longest}]\ntokens = 4096\n"
    );
    write_spec(dir, &format!("{name}.toml"), &text)
}

/// The estimate `gptlab plan` prints, in MB.
fn planned_mb(spec: &Path) -> f64 {
    let out = gptlab().args(["plan", spec.to_str().unwrap()]).assert().success();
    let text = common::stdout_of(&out);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("memory:"))
        .expect(&text);
    let gb: f64 = line.split_whitespace().nth(2).unwrap().parse().expect(line);
    gb * 1e3
}

#[test]
fn the_planned_memory_is_above_the_peak_a_run_records_and_near_it() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // Activations dominate the first; the others' 50,257-wide logits (16 × 256 tokens: 823 MB),
    // the last's from a 4,096-token evaluation window after training on 2 × 256.
    let cases = [
        ("chars", "char", (16, 6, 192), Extra::Nothing),
        ("gpt2", "gpt2", (16, 1, 32), Extra::Nothing),
        ("gpt2-after-128", "gpt2", (16, 1, 32), Extra::After128),
        ("gpt2-long-eval", "gpt2", (2, 1, 32), Extra::LongEval),
    ];
    for (name, tokenizer, shape, extra) in cases {
        let spec = one_step(dir.path(), name, tokenizer, shape, extra);
        let planned = planned_mb(&spec);
        quiet_run(&spec, &runs).assert().success();
        let rows = csv_rows(&runs.join(name).join("default/metrics.csv"));
        let peak: f64 = rows.last().unwrap()["peak_rss_mb"].parse().unwrap();
        println!("{name}: planned {planned:.0} MB, peak {peak:.0} MB");
        assert!(
            peak <= planned && planned <= 1.5 * peak,
            "{name}: planned {planned:.0} MB, peak {peak:.0} MB"
        );
    }
}

#[test]
fn a_run_that_cannot_fit_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // 2²⁴ tokens a step (the most a spec may ask): 3.4·10¹⁵ bytes of logits, which no
    // machine this runs on has.
    let spec = one_step(dir.path(), "huge", "gpt2", (1 << 16, 1, 32), Extra::Nothing);
    quiet_run(&spec, &runs)
        .assert()
        .code(1)
        .stderr(
            predicate::str::is_match(r"run `default` needs about \d+\.\d GB to train but \d+\.\d GB is available")
                .unwrap(),
        )
        .stderr(predicate::str::contains("train.micro_batch_size"));
    assert!(!runs.join("huge").exists(), "a refused run left a folder");
}

#[test]
fn runs_trained_one_after_another_in_one_process_each_record_their_own_peak() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let spec = one_step(dir.path(), "two", "char", (64, 6, 192), Extra::Nothing);
    let text = std::fs::read_to_string(&spec).unwrap();
    let runs_text = "[[run]]\nname = \"big\"\n[[run]]\nname = \"small\"\ntrain.batch_size = 8\n";
    std::fs::write(&spec, text + runs_text).unwrap();
    quiet_run(&spec, &runs).args(["--jobs", "1"]).assert().success();
    let peak = |run: &str| -> f64 {
        let rows = csv_rows(&runs.join("two").join(run).join("metrics.csv"));
        rows.last().unwrap()["peak_rss_mb"].parse().unwrap()
    };
    let (big, small) = (peak("big"), peak("small"));
    println!("big {big:.0} MB, then small {small:.0} MB");
    // The small run needs about a fifth of the big one's memory; what the big one freed is
    // handed back before the small one starts, not counted as its peak.
    assert!(small < 0.5 * big, "big {big:.0} MB, then small {small:.0} MB");
}
