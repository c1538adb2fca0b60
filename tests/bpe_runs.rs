//! Training with a subword tokenizer end to end: a kill -9 and resume stays bit-identical, a
//! sweep over tokenizers is compared in bits per byte, samples decode with the run's
//! tokenizer, and another tokenizer is refused where it would mislabel a result.

mod common;

use std::path::{Path, PathBuf};

use common::{csv_rows, gptlab, quiet_run, stdout_of, write_spec};
use predicates::prelude::*;

/// [`common::TINY_SPEC`] as experiment `name` with `data` added to `[data]` and `extra`
/// appended; the `[eval]` lengths score 1,024 tokens (a 50,257-wide output is slow to score).
fn spec(dir: &Path, name: &str, data: &str, extra: &str) -> PathBuf {
    let text = common::TINY_SPEC
        .replace("[experiment]\n", &format!("[experiment]\nname = \"{name}\"\n"))
        .replace("[data]\n", &format!("[data]\n{data}\n"));
    write_spec(
        dir,
        &format!("{name}.toml"),
        &format!("{text}[eval]\ntokens = 1024\n{extra}"),
    )
}

fn metrics_bits(runs: &Path, run: &str) -> Vec<(usize, u32, Option<u32>, Option<u64>)> {
    gptlab::run_dir::read_metrics(&runs.join(run).join("metrics.csv"))
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.step,
                r.train_loss.to_bits(),
                r.val_loss.map(f32::to_bits),
                r.val_bpb.map(f64::to_bits),
            )
        })
        .collect()
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_bpe_run_killed_and_resumed_equals_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "bpe", "tokenizer = \"gpt2\"", "");
    let (reference, killed) = (dir.path().join("reference"), dir.path().join("killed"));
    quiet_run(&spec, &reference).assert().success();
    let want = metrics_bits(&reference, "bpe/default");
    assert_eq!(want.len(), 16);
    for fault in ["step-end@6", "checkpoint-write@12"] {
        let out = quiet_run(&spec, &killed).env("GPTLAB_FAULT", fault).output().unwrap();
        assert!(!out.status.success(), "{fault}: the process should have been killed");
    }
    quiet_run(&spec, &killed).assert().success();
    assert_eq!(metrics_bits(&killed, "bpe/default"), want);
    let meta = std::fs::read_to_string(killed.join("bpe/default/checkpoints/step_00000016/meta.json")).unwrap();
    assert!(
        meta.contains("\"name\": \"gpt2\"") && meta.contains("\"vocab_size\": 50257"),
        "{meta}"
    );
}

#[test]
fn a_sweep_over_tokenizers_is_compared_in_bits_per_byte() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let spec = spec(
        dir.path(),
        "tok",
        "",
        "[sweep]\n\"data.tokenizer\" = [\"char\", \"gpt2\"]\n",
    );
    let plan = gptlab().arg("plan").arg(&spec).assert().success();
    let said = stdout_of(&plan);
    assert!(said.contains("vocab=65") && said.contains("vocab=50257"), "{said}");
    let args = [
        "run",
        spec.to_str().unwrap(),
        "--runs-dir",
        runs.to_str().unwrap(),
        "-q",
    ];
    let report_dir = dir.path().join("reports");
    gptlab()
        .args(args)
        .args(["--reports-dir", report_dir.to_str().unwrap()])
        .assert()
        .success();
    let report = report_dir.join("tok");
    let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
    assert!(
        summary.contains("different tokenizers (char, gpt2)") && summary.contains("bits per byte"),
        "{summary}"
    );
    for row in csv_rows(&report.join("seeds.csv")) {
        assert_eq!(row["loss_unit"], "bits/byte");
    }
    let page = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(page.contains("mean cross-entropy in bits per byte"));
    assert!(
        std::fs::read_to_string(report.join("loss.svg"))
            .unwrap()
            .contains("loss (bits per byte)")
    );
    // The summary's final validation loss is the last row's, converted by the run's own
    // tokens per byte: the recorded val_bpb.
    for row in csv_rows(&report.join("seeds.csv")) {
        let rows = gptlab::run_dir::read_metrics(&runs.join("tok").join(&row["run"]).join("metrics.csv")).unwrap();
        let last = rows.iter().rev().find_map(|r| r.val_bpb).unwrap();
        let shown: f64 = row["final_val_loss"].parse().unwrap();
        assert!(
            (shown - last).abs() < 1e-5 * last,
            "{} vs {last}",
            row["final_val_loss"]
        );
    }
    // Samples decode with each run's tokenizer; a prompt in GPT-2 tokens continues.
    let gpt2_run = std::fs::read_dir(runs.join("tok"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.ends_with("tokenizer=gpt2"));
    let gpt2_run = gpt2_run.unwrap_or_else(|| runs.join("tok").join("gpt2"));
    let sample = gptlab()
        .args([
            "sample",
            gpt2_run.to_str().unwrap(),
            "--prompt",
            "ROMEO: ¿Qué?",
            "--tokens",
            "5",
        ])
        .assert()
        .success();
    assert!(stdout_of(&sample).starts_with("ROMEO: ¿Qué?"));
}

#[test]
fn another_tokenizer_is_refused_on_resume_and_init_from() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let chars = spec(dir.path(), "same", "", "");
    quiet_run(&chars, &runs).assert().success();
    let now_gpt2 = spec(dir.path(), "same", "tokenizer = \"gpt2\"", "");
    quiet_run(&now_gpt2, &runs)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "data.tokenizer: was `char` when trained, the spec now says `gpt2`",
        ));
    let ckpt = runs.join("same/default/checkpoints/step_00000016");
    let warm = spec(
        dir.path(),
        "warm",
        "tokenizer = \"gpt2\"",
        &format!("[[run]]\nname = \"warm\"\ninit_from = \"{}\"\n", ckpt.display()),
    );
    quiet_run(&warm, &runs)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("init_from"))
        .stderr(predicate::str::contains(
            "trained with the tokenizer `char` (65 tokens)",
        ))
        .stderr(predicate::str::contains("this run uses `gpt2` (50257 tokens)"));
}

#[test]
fn bad_data_settings_are_spec_errors_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "a tiny corpus of a few dozen characters, no more.").unwrap();
    let cases = [
        ("tokenizer = \"gpt3\"", "data.tokenizer", "unknown tokenizer `gpt3`"),
        ("dtype = \"u16\"", "data.dtype", "applies to format = \"tokens\" only"),
        (
            "format = \"tokens\"",
            "data.tokenizer",
            "needs the tokenizer the ids came from",
        ),
        ("include = []", "data.include", "at least one"),
        ("val_fraction = 0.0", "data.val_fraction", "above 0"),
        (
            "tokenizer = { file = \"nowhere.json\" }",
            "data.tokenizer",
            "tokenizer file `nowhere.json` not found",
        ),
        ("tokenizer = 5", "data.tokenizer", "must be a tokenizer name"),
        (
            "tokenizer = { file = \"t.json\", vocab = 3 }",
            "data.tokenizer",
            "(no other key)",
        ),
    ];
    for (i, (line, key, words)) in cases.iter().enumerate() {
        let spec = spec(dir.path(), &format!("bad{i}"), line, "");
        let out = gptlab().arg("validate").arg(&spec).assert().code(2);
        let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(err.contains(key) && err.contains(words), "{line}: {err}");
        assert!(err.contains(&format!("bad{i}.toml:")), "names the file: {err}");
    }
    // The validation split of a small corpus under a long window.
    let text = common::TINY_SPEC.replace("CORPUS", short.to_str().unwrap());
    let spec = dir.path().join("short_split.toml");
    std::fs::write(&spec, text).unwrap();
    gptlab()
        .arg("validate")
        .arg(&spec)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("phase.0.seq_len"))
        .stderr(predicate::str::contains("the validation split"));
}

#[test]
fn a_tokenizer_file_trains_and_its_copy_in_the_run_decodes_samples() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("words.txt");
    std::fs::write(
        &corpus,
        "the cat sat on the mat and the dog sat on the cat ".repeat(400),
    )
    .unwrap();
    let vocab = ["[UNK]", "the", "cat", "sat", "on", "mat", "and", "dog", "</s>", " "];
    let entries: Vec<String> = vocab.iter().enumerate().map(|(i, w)| format!("\"{w}\": {i}")).collect();
    let json = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {{"type": "Split", "pattern": {{"String": " "}}, "behavior": "Isolated", "invert": false}},
        "post_processor": null, "decoder": {{"type": "Fuse"}}, "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "[UNK]"}}}}"#,
        entries.join(", ")
    );
    let tokenizer = dir.path().join("words.json");
    std::fs::write(&tokenizer, json).unwrap();
    let data = format!("tokenizer = {{ file = \"{}\" }}", tokenizer.display());
    let text = common::TINY_SPEC
        .replace("CORPUS", corpus.to_str().unwrap())
        .replace("[experiment]\n", "[experiment]\nname = \"words\"\n")
        .replace("[data]\n", &format!("[data]\n{data}\n"));
    let spec = dir.path().join("words.toml");
    std::fs::write(&spec, text + "[eval]\ntokens = 256\n").unwrap();
    let runs = dir.path().join("runs");
    quiet_run(&spec, &runs).assert().success();
    let run = runs.join("words/default");
    assert_eq!(
        std::fs::read(run.join("tokenizer.json")).unwrap(),
        std::fs::read(&tokenizer).unwrap()
    );
    // The original may move or change: the run decodes with its own copy.
    std::fs::remove_file(&tokenizer).unwrap();
    let out = gptlab()
        .args(["sample", run.to_str().unwrap(), "--prompt", "the cat", "--tokens", "4"])
        .assert()
        .success();
    let said = stdout_of(&out);
    assert!(said.starts_with("the cat"), "{said}");
    assert!(said.split_whitespace().skip(2).all(|w| vocab.contains(&w)), "{said}");
}

#[test]
fn a_checkpoint_written_before_tokenizers_still_resumes_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let first = spec(dir.path(), "old", "", "");
    quiet_run(&first, &runs).assert().success();
    // Make every checkpoint look like an older gptlab's: no tokenizer record, and none of the
    // identity keys added since (the tokenizer, the data format, the schedule).
    let checkpoints = runs.join("old/default/checkpoints");
    for entry in std::fs::read_dir(&checkpoints).unwrap() {
        let meta_path = entry.unwrap().path().join("meta.json");
        let mut meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
        meta.as_object_mut().unwrap().remove("tokenizer");
        let identity = meta["identity"].as_object_mut().unwrap();
        for key in ["data.tokenizer", "data.format", "train.schedule", "train.warmup_steps"] {
            assert!(identity.remove(key).is_some(), "{key}");
        }
        std::fs::write(&meta_path, serde_json::to_string_pretty(&meta).unwrap()).unwrap();
    }
    let run = runs.join("old/default");
    gptlab()
        .args(["sample", run.to_str().unwrap(), "--prompt", "ROMEO:", "--tokens", "5"])
        .assert()
        .success();
    let longer = spec(dir.path(), "old", "", "[[phase]]\nseq_len = 16\nsteps = 2\n");
    quiet_run(&longer, &runs).assert().success();
    assert_eq!(metrics_bits(&runs, "old/default").len(), 18);
}

/// The same token file read as u16 and as u32 is two corpora: a run trained on one is refused,
/// not passed off, under a spec that reads the other; a checkpoint from before the width was
/// recorded is not held against the spec.
#[test]
fn a_token_file_read_at_another_width_is_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("train.bin");
    // Ids below 65,536 as u32: read as u16, every other id is 0, and still a valid corpus.
    let ids: Vec<u8> = (0..6000u32).flat_map(|i| ((i * 7919) % 50_000).to_le_bytes()).collect();
    std::fs::write(&bin, ids).unwrap();
    let spec_of = |dtype: &str| {
        let data = format!(
            "path = \"{}\"\nformat = \"tokens\"\ntokenizer = \"gpt2\"\ndtype = \"{dtype}\"",
            bin.display()
        );
        let text = common::TINY_SPEC.replace("path = \"CORPUS\"", &data);
        write_spec(
            dir.path(),
            &format!("w{dtype}.toml"),
            &text.replace("[experiment]\n", "[experiment]\nname = \"w\"\n"),
        )
    };
    let (wide, narrow) = (spec_of("u32"), spec_of("u16"));
    let runs = dir.path().join("runs");
    quiet_run(&wide, &runs).assert().success();
    quiet_run(&narrow, &runs)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "data.dtype: was `u32` when trained, the spec now says `u16`",
        ));
    // A checkpoint's identity without the width (written before it was recorded) still
    // resumes, or here stays complete, under its own spec.
    let ckpt = runs.join("w/default/checkpoints/step_00000016/meta.json");
    let meta = std::fs::read_to_string(&ckpt).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert!(json["identity"].as_object_mut().unwrap().remove("data.dtype").is_some());
    std::fs::write(&ckpt, json.to_string()).unwrap();
    quiet_run(&wide, &runs).assert().success();
    common::status(&wide, &runs)
        .success()
        .stdout(predicate::str::contains("complete"));
}
