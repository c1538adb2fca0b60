//! The `gptlab` binary as a user meets it: every kind of bad spec gives a clear error that
//! names the file, the line and the key, with exit code 2; good specs list, plan and train.

use std::path::Path;

mod common;

use common::{gptlab, write_spec as write};
use predicates::prelude::*;

const PHASE: &str = "[[phase]]\nseq_len = 8\nsteps = 2\n";

/// `(file name, spec text, line, key, words the message must contain)`.
fn bad_specs() -> Vec<(&'static str, String, usize, &'static str, &'static str)> {
    vec![
        ("unknown.toml", format!("[model]\nn_layer = 2\nn_hed = 3\n{PHASE}"), 3, "model.n_hed", "unknown key"),
        ("type.toml", format!("[model]\nn_layer = \"two\"\n{PHASE}"), 2, "model.n_layer", "wrong type"),
        ("device.toml", format!("[experiment]\ndevice = \"gpu\"\n{PHASE}"), 2, "experiment.device", "unknown variant"),
        ("negative.toml", format!("[train]\nbatch_size = -4\n{PHASE}"), 2, "train.batch_size", "got integer `-4`, expected a whole number"),
        ("embd.toml", format!("[data]\npath = \"CORPUS\"\n[model]\nn_embd = 190\nn_head = 6\n{PHASE}"), 5, "model.n_head", "divisible"),
        ("kv.toml", format!("[data]\npath = \"CORPUS\"\n[model]\nn_head = 6\nn_kv_head = 4\n{PHASE}"), 5, "model.n_kv_head", "divisible"),
        (
            "odd.toml",
            format!("[data]\npath = \"CORPUS\"\n[model]\nn_embd = 18\nn_head = 6\n{PHASE}[[run]]\nname = \"a\"\n[[run]]\nname = \"b\"\nmodel.position = \"rope\"\n"),
            13,
            "model.position",
            "even head dimension",
        ),
        ("zero.toml", "[data]\npath = \"CORPUS\"\n[[phase]]\nseq_len = 8\nsteps = 0\n".into(), 5, "phase.0.steps", "at least 1"),
        ("nophase.toml", "[data]\npath = \"CORPUS\"\n".into(), 0, "phase", "at least one [[phase]]"),
        (
            "long.toml",
            "[data]\npath = \"tiny.txt\"\nval_fraction = 0.4\n[[phase]]\nseq_len = 8\nsteps = 2\n[[phase]]\nseq_len = 300\nsteps = 2\n".into(),
            8,
            "phase.1.seq_len",
            "training split of",
        ),
        ("missing.toml", format!("[data]\npath = \"nope/none.txt\"\n{PHASE}"), 2, "data.path", "not found"),
        (
            "dup.toml",
            format!("[data]\npath = \"CORPUS\"\n{PHASE}[[run]]\nname = \"x\"\n[[run]]\nname = \"x\"\nmodel.position = \"rope\"\n"),
            9,
            "name",
            "duplicate run name",
        ),
        (
            "case.toml",
            format!("[data]\npath = \"CORPUS\"\n{PHASE}[[run]]\nname = \"rope\"\n[[run]]\nname = \"RoPE\"\nmodel.position = \"rope\"\n"),
            9,
            "name",
            "`rope` and `RoPE` differ only in case",
        ),
        ("sweep.toml", format!("[data]\npath = \"CORPUS\"\n{PHASE}[sweep]\n\"model.n_kv_head\" = [1, 4]\n"), 7, "model.n_kv_head", "n_kv_head=4"),
        ("sweepdup.toml", format!("[data]\npath = \"CORPUS\"\n{PHASE}[sweep]\n\"model.n_kv_head\" = [1, 2, 1]\n"), 7, "sweep.model.n_kv_head", "the value 1 is listed twice"),
        // Runs that would train the same model: a sweep of a setting that does nothing here, and a copy.
        ("rbase.toml", format!("[data]\npath = \"CORPUS\"\n{PHASE}[sweep]\n\"model.rope_base\" = [10000.0, 500000.0]\n"), 7, "model.rope_base", "differ only in model.rope_base, which has no effect with position = \"absolute\""),
        ("copy.toml", format!("[data]\npath = \"CORPUS\"\n{PHASE}[[run]]\nname = \"x\"\n[[run]]\nname = \"y\"\n"), 9, "name", "runs `x` and `y` would train the same model the same way: their settings are equal"),
        ("badrun.toml", format!("[data]\npath = \"CORPUS\"\n{PHASE}[[run]]\nname = \"r\"\nmodel.positon = \"rope\"\n"), 8, "model.positon", "unknown key"),
        ("position.toml", format!("[model]\nposition = \"xpos\"\n{PHASE}"), 2, "model.position", "unknown variant"),
        ("syntax.toml", "[model\nn_layer = 2\n".into(), 1, "", "invalid TOML"),
        ("huge.toml", format!("[model]\nn_layer = 99999999999999999999\n{PHASE}"), 2, "model.n_layer", "too large"),
        // Samples are drawn after training: a prompt they cannot take is refused before it.
        ("prompt.toml", format!("[data]\npath = \"CORPUS\"\n{PHASE}[sample]\nprompts = [\"To be\", \"\"]\n"), 7, "sample.prompts", "prompt 2 is empty"),
        ("vocab.toml", format!("[data]\npath = \"CORPUS\"\n{PHASE}[sample]\nprompts = [\"€uro\"]\n"), 7, "sample.prompts", "prompt 1 (\"€uro\") cannot be encoded: characters not in the vocabulary: ['€']"),
        ("samepath.toml", format!("[data]\npath = \"tiny.txt\"\n{PHASE}[sweep]\n\"data.path\" = [\"tiny.txt\", \"./tiny.txt\"]\n"), 7, "sweep.data.path", "is the path \"tiny.txt\" again"),
        // A name made by a sweep is placed at the sweep's line.
        (
            "longname.toml",
            format!("[data]\npath = \"CORPUS\"\n{PHASE}[sweep]\n\"sample.prompts\" = [[\"{}\"], [\"e\"]]\n", "e".repeat(210)),
            7,
            "sweep.sample.prompts",
            "a name may be at most 200 bytes",
        ),
        // Ranges hold for the values training's 32-bit floats compute with, not only as written.
        ("dropout32.toml", format!("[model]\ndropout = 0.99999999\n{PHASE}"), 2, "model.dropout", "0.99999999, which is 1 in the 32-bit"),
        ("beta32.toml", format!("[train]\nbeta2 = 0.999999999\n{PHASE}"), 2, "train.beta2", "which is 1 in the 32-bit"),
        ("eps32.toml", format!("[train]\neps = 1e-50\n{PHASE}"), 2, "train.eps", "1e-50, which is 0 in the 32-bit"),
    ]
}

#[test]
fn every_kind_of_bad_spec_names_file_line_and_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.txt"), "hello world, a tiny corpus\n").unwrap();
    for (name, text, line, key, words) in bad_specs() {
        let path = write(dir.path(), name, &text);
        let out = gptlab()
            .current_dir(dir.path())
            .arg("validate")
            .arg(&path)
            .assert()
            .code(2)
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let place = if line > 0 {
            format!("{}:{line}: ", path.display())
        } else {
            format!("{}: ", path.display())
        };
        assert!(stderr.contains(&place), "{name}: expected `{place}` in:\n{stderr}");
        if !key.is_empty() {
            assert!(
                stderr.contains(&format!("key `{key}`")),
                "{name}: expected key `{key}` in:\n{stderr}"
            );
        }
        assert!(stderr.contains(words), "{name}: expected `{words}` in:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{name} panicked:\n{stderr}");
    }
}

/// `gptlab validate` of `text` written to `dir/name`, which must fail with exit 2: its stderr.
fn invalid(dir: &Path, name: &str, text: &str) -> String {
    let path = write(dir, name, text);
    let out = gptlab().args(["validate", path.to_str().unwrap()]).assert().code(2);
    String::from_utf8_lossy(&out.get_output().stderr).to_string()
}

#[test]
fn runs_that_differ_in_what_they_train_or_measure_are_not_copies() {
    let dir = tempfile::tempdir().unwrap();
    for (name, runs) in [
        // RoPE's base under RoPE, and a run that only differs in how its batch is split (memory).
        (
            "rope.toml",
            "[model]\nposition = \"rope\"\n[sweep]\n\"model.rope_base\" = [10000.0, 500000.0]\n",
        ),
        (
            "micro.toml",
            "[[run]]\nname = \"x\"\n[[run]]\nname = \"y\"\ntrain.micro_batch_size = 2\n",
        ),
    ] {
        let path = write(dir.path(), name, &format!("[data]\npath = \"CORPUS\"\n{PHASE}{runs}"));
        gptlab().args(["validate", path.to_str().unwrap()]).assert().success();
    }
}

#[test]
fn a_wrong_value_is_one_error_not_also_a_missing_field() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        "[data]\npath = \"CORPUS\"\n[[phase]]\nseq_len = 8\nsteps = 2\n[[phase]]\nseq_len = 8\nsteps = \"ten\"\n";
    let stderr = invalid(dir.path(), "ten.toml", text);
    assert!(stderr.contains(":8: key `phase.1.steps`: wrong type"), "{stderr}");
    assert!(!stderr.contains("missing field"), "{stderr}");
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
}

#[test]
fn a_value_of_a_wrong_type_is_reported_with_the_other_sections_problems() {
    let dir = tempfile::tempdir().unwrap();
    // n_head of a wrong type: the model section falls back to n_head = 6, which 190 does not
    // divide, but that is the default's problem, not the user's, and must not be reported.
    // The learning rate (another section) and the second run's misspelt variant are real.
    let text = "[data]\npath = \"CORPUS\"\n[model]\nn_embd = 190\nn_head = \"six\"\n[train]\nlr = -1.0\n\
                [[phase]]\nseq_len = 8\nsteps = 2\n[[run]]\nname = \"a\"\n[[run]]\nname = \"b\"\nsample.temperature = \"hot\"\n";
    let stderr = invalid(dir.path(), "mixed.toml", text);
    let at = |line: usize, key: &str| format!("mixed.toml:{line}: key `{key}`");
    for (line, key, words) in [
        (5, "model.n_head", "wrong type"),
        (7, "train.lr", "positive"),
        (15, "sample.temperature", "wrong type"),
    ] {
        let found = stderr.lines().find(|l| l.contains(&at(line, key)));
        assert!(
            found.is_some_and(|l| l.contains(words)),
            "expected `{key}` ({words}) at line {line} in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("divisible"), "a check of a default taken in: {stderr}");
    assert_eq!(stderr.matches("error:").count(), 3, "{stderr}");
}

#[test]
fn a_specs_sampling_temperature_takes_what_gptlab_sample_takes() {
    // 0 is greedy for `gptlab sample --temperature 0`, so for `[sample] temperature` too.
    let dir = tempfile::tempdir().unwrap();
    let spec = |t: &str| format!("[data]\npath = \"CORPUS\"\n{PHASE}[sample]\nprompts = [\"a\"]\ntemperature = {t}\n");
    let greedy = write(dir.path(), "greedy.toml", &spec("0.0"));
    gptlab().arg("validate").arg(&greedy).assert().success();
    let stderr = invalid(dir.path(), "negative.toml", &spec("-0.5"));
    assert!(
        stderr.contains("key `sample.temperature`: must be 0 (greedy) or a positive number, not -0.5"),
        "{stderr}"
    );
}

#[test]
fn a_section_written_as_an_array_is_a_wrong_type_not_read_by_position() {
    // serde reads a struct from an array by position: `train = [1]` was batch_size = 1.
    let dir = tempfile::tempdir().unwrap();
    let text = "train = [1]\nphase = [[8, 2]]\n[data]\npath = \"CORPUS\"\n[[run]]\nname = \"a\"\nmodel = [2, 32]\n";
    let stderr = invalid(dir.path(), "arrays.toml", text);
    for (line, key) in [(1, "train"), (2, "phase.0"), (7, "model")] {
        let want = format!("arrays.toml:{line}: key `{key}`: wrong type: got an array, expected a table");
        assert!(stderr.contains(&want), "expected {want} in:\n{stderr}");
    }
}

#[test]
fn a_missing_data_file_is_reported_beside_the_specs_own_errors_unless_a_key_was_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let validate = |name: &str, text: &str| invalid(dir.path(), name, text);
    let stderr = validate(
        "lr.toml",
        &format!("[data]\npath = \"nope/none.txt\"\n[train]\nlr = -1.0\n{PHASE}"),
    );
    assert!(
        stderr.contains("lr.toml:4: key `train.lr`: must be a positive number"),
        "{stderr}"
    );
    assert!(
        stderr.contains("lr.toml:2: key `data.path`") && stderr.contains("not found"),
        "{stderr}"
    );
    // A key that could not be read leaves the runs' settings partly defaults: no data check
    // judges them (the default corpus would be "not found" too, or worse, found).
    let stderr = validate(
        "type.toml",
        &format!("[data]\npath = \"nope/none.txt\"\n[model]\nn_layer = \"two\"\n{PHASE}"),
    );
    assert!(
        stderr.contains("type.toml:4: key `model.n_layer`: wrong type"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
}

#[test]
fn a_bracketed_index_in_set_names_the_dotted_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "s.toml", &format!("[data]\npath = \"CORPUS\"\n{PHASE}"));
    gptlab()
        .args(["validate", path.to_str().unwrap(), "--set", "phase[0].steps=3"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`phase.0.steps`"));
}

#[test]
fn set_overrides_are_checked_like_the_file_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "s.toml", &format!("[data]\npath = \"CORPUS\"\n{PHASE}"));
    for (arg, key, words) in [
        ("model.n_head=5", "model.n_head", "divisible"),
        ("model.bogus=1", "model.bogus", "unknown key"),
        ("phase.3.steps=1", "phase.3.steps", "has 1 entry,"),
        ("train.lr=-1", "train.lr", "positive"),
    ] {
        gptlab()
            .args(["validate", path.to_str().unwrap(), "--set", arg])
            .assert()
            .code(2)
            .stderr(
                predicate::str::contains(format!("(from --set {arg})"))
                    .and(predicate::str::contains(format!("key `{key}`")))
                    .and(predicate::str::contains(words)),
            );
    }
    gptlab()
        .args(["validate", path.to_str().unwrap(), "--set", "noequals"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("key=value"));
    gptlab()
        .args(["validate", path.to_str().unwrap(), "--set", "train.batch_size=16"])
        .assert()
        .success();
}

#[test]
fn hostile_values_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "18446744073709551615";
    for (i, text) in [
        format!("[data]\npath = \"CORPUS\"\n[[phase]]\nseq_len = 8\nsteps = {huge}\n[[phase]]\nseq_len = 8\nsteps = {huge}\n"),
        format!("[data]\npath = \"CORPUS\"\n[model]\nn_embd = {huge}\nn_head = 1\n{PHASE}"),
        format!("[data]\npath = \"CORPUS\"\n[train]\nbatch_size = {huge}\n{PHASE}"),
        format!("[data]\npath = \"CORPUS\"\n[[phase]]\nseq_len = {huge}\nsteps = 1\n"),
        format!("[data]\npath = \"CORPUS\"\n[model]\nn_layer = 99999999999\n{PHASE}"),
        format!("[data]\npath = \"CORPUS\"\n[model]\ndropout = nan\n{PHASE}"),
        format!("[data]\npath = \"CORPUS\"\n[train]\nlr = inf\n{PHASE}"),
        format!("[data]\npath = \"CORPUS\"\n[model]\nn_head = 0\n{PHASE}"),
        format!("[data]\npath = \"CORPUS\"\n[model]\nn_kv_head = 0\n{PHASE}"),
        format!("[data]\npath = \"{}\"\n{PHASE}", env!("CARGO_MANIFEST_DIR")),
        format!("[experiment]\nname = \"../escape\"\n[data]\npath = \"CORPUS\"\n{PHASE}"),
        format!("[data]\npath = \"CORPUS\"\n{PHASE}[[run]]\nname = \"a/b\"\n"),
        format!("[data]\npath = \"CORPUS\"\n{PHASE}[[run]]\nname = \"r\"\nexperiment.name = \"other\"\n"),
        format!("[data]\npath = \"CORPUS\"\n{PHASE}[sweep]\n\"model.n_head\" = []\n"),
        format!("[data]\npath = \"CORPUS\"\n{PHASE}[sweep]\n\"model.n_head\" = 3\n"),
        format!("[data]\npath = \"CORPUS\"\n{PHASE}[sample]\nprompts = [\"a\"]\nmax_new_tokens = 5000000000\n"),
        format!("[data]\npath = \"CORPUS\"\ncache_dir = \"\"\n{PHASE}"),
        "run = 3\n".to_string(),
        "[[run]]\n".to_string(),
        "\u{0}\u{1}garbage".to_string(),
    ]
    .into_iter()
    .enumerate()
    {
        let path = write(dir.path(), &format!("h{i}.toml"), &text);
        let out = gptlab().arg("validate").arg(&path).assert().code(2).get_output().clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&path.display().to_string()) && !stderr.contains("panicked"), "case {i}:\n{text}\n{stderr}");
    }
}

/// The sweep a researcher writes over their own corpora (paths in folders) and tokenizers
/// (a name beside a table) names its runs as folders can be named, and `differs` shows each
/// setting whole.
#[test]
fn sweeps_over_corpus_paths_and_tokenizer_tables_name_their_runs_as_folders() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(common::corpus_path()).unwrap();
    for corpus in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join("corpora").join(corpus)).unwrap();
        std::fs::write(
            dir.path().join("corpora").join(corpus).join("train.txt"),
            &text[..20_000],
        )
        .unwrap();
    }
    let spec = format!(
        "[data]\npath = \"corpora/a/train.txt\"\n{PHASE}[sweep]\n\"data.path\" = [\"corpora/a/train.txt\", \"corpora/b/train.txt\"]\n\"data.tokenizer\" = [\"char\", {{ train = \"bpe\", vocab_size = 300 }}]\n"
    );
    let path = write(dir.path(), "corpora.toml", &spec);
    let out = gptlab()
        .current_dir(dir.path())
        .arg("plan")
        .arg(&path)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    for name in ["path=a-train.txt,tokenizer=char", "path=b-train.txt,tokenizer=bpe-300"] {
        assert!(
            stdout.contains(&format!("run `{name}`")),
            "no run `{name}` in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("differs:   path=corpora/b/train.txt, tokenizer={ train = \"bpe\", vocab_size = 300 }"),
        "{stdout}"
    );
    assert!(!stdout.contains("vocab_size=default"), "{stdout}");
}

#[test]
fn list_shows_valid_specs_and_the_errors_of_invalid_ones() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "good.toml",
        &format!(
            "[experiment]\nname = \"g\"\n[data]\npath = \"CORPUS\"\n{PHASE}[sweep]\n\"model.n_kv_head\" = [1, 2]\n"
        ),
    );
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    write(&dir.path().join("nested"), "bad.toml", "[model]\nn_hed = 1\n");
    gptlab()
        .arg("list")
        .arg(dir.path())
        .assert()
        .code(2)
        .stdout(
            predicate::str::contains("good.toml")
                .and(predicate::str::contains("2 runs"))
                .and(predicate::str::contains("4 steps")),
        )
        .stdout(
            predicate::str::contains("bad.toml")
                .and(predicate::str::contains("INVALID"))
                .and(predicate::str::contains("n_hed")),
        );
}

#[test]
fn shipped_experiments_validate_and_plan_as_the_study_needs() {
    let root = env!("CARGO_MANIFEST_DIR");
    gptlab()
        .current_dir(root)
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains("rope_vs_abs").and(predicate::str::contains("gqa_heads")));
    let out = gptlab()
        .current_dir(root)
        .args(["plan", "experiments/rope_vs_abs.toml"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    // The absolute table is sized to the longest phase: 2,719,104 + 128 × 192.
    assert!(out.contains("params:    2743680"), "{out}");
    assert!(out.contains("params:    2694528"), "{out}");
    assert!(out.contains("steps 601..=800 seq_len 256"), "{out}");
    let out = gptlab()
        .current_dir(root)
        .args(["plan", "experiments/gqa_heads.toml"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    for kv in [1, 2, 3, 6] {
        assert!(out.contains(&format!("run `n_kv_head={kv}`")), "{out}");
    }
    // The handout's parts 4-6 assume learned absolute positions.
    assert_eq!(out.matches("position=absolute").count(), 4, "{out}");
    let llama = gptlab()
        .current_dir(root)
        .args(["plan", "experiments/llama_style.toml"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let llama = String::from_utf8(llama).unwrap();
    // Keys only one run sets (n_kv_head, mlp_hidden) still count as differences.
    assert!(
        llama.contains("differs:   n_kv_head=2, position=rope, norm=rmsnorm, mlp=swiglu, bias=false, mlp_hidden=600"),
        "{llama}"
    );
    assert!(
        llama.contains("params:    2690880") && llama.contains("params:    2743680"),
        "{llama}"
    );
}

#[test]
fn smoke_trains_end_to_end_and_a_second_run_skips_completed_runs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let runs = tempfile::tempdir().unwrap();
    let args = [
        "run",
        "experiments/smoke.toml",
        "--runs-dir",
        runs.path().to_str().unwrap(),
    ];
    gptlab().current_dir(root).args(args).assert().success();
    for run in ["absolute", "rope"] {
        let dir = runs.path().join("smoke").join(run);
        let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let mut lines = metrics.lines();
        assert_eq!(
            lines.next().unwrap(),
            "run,phase,step,seq_len,train_loss,val_loss,lr,grad_norm,step_ms,tokens_per_s,attn_ms,attn_mem_mb,attn_mem_mb_analytic,peak_rss_mb,seed,train_bpb,val_bpb"
        );
        assert_eq!(lines.count(), 40);
        let resolved = std::fs::read_to_string(dir.join("run.toml")).unwrap();
        assert!(resolved.contains(&format!("position = \"{run}\"")), "{resolved}");
        let vocab: Vec<char> = serde_json::from_str(&std::fs::read_to_string(dir.join("vocab.json")).unwrap()).unwrap();
        assert_eq!(vocab.len(), 65);
    }
    gptlab()
        .current_dir(root)
        .args(args)
        .assert()
        .success()
        .stderr(predicate::str::contains("already complete"));
    gptlab()
        .current_dir(root)
        .args(["run", "experiments/smoke.toml", "--only", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--only names no run"));
    // A spec is a spec: `sweep` and `run` are interchangeable.
    gptlab()
        .current_dir(root)
        .args(["sweep", "experiments/smoke.toml"])
        .args(&args[2..])
        .assert()
        .success()
        .stderr(predicate::str::contains("already complete"));
}

#[test]
fn runs_side_by_side_learn_exactly_what_they_learn_one_at_a_time() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (one, three) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (dir, jobs, threads) in [(&one, "1", "2"), (&three, "3", "3")] {
        gptlab()
            .current_dir(root)
            .args([
                "sweep",
                "experiments/smoke_gqa.toml",
                "--no-report",
                "--jobs",
                jobs,
                "--threads",
                threads,
            ])
            .args(["--runs-dir", dir.path().to_str().unwrap()])
            // The probes would keep the runs one at a time.
            .args(["--set", "measure.attention=false"])
            .assert()
            .success()
            .stderr(predicate::str::contains(if jobs == "3" {
                "3 at a time with 1 thread each"
            } else {
                "device: cpu"
            }));
    }
    // The columns a run learns, not the ones that time it.
    let learned = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').take(8).collect::<Vec<_>>().join(","))
            .collect()
    };
    // Three runs (n_kv_head 1, 2, 4) over two seeds: six (run, seed) folders.
    let mut runs = 0;
    for kv in [1, 2, 4] {
        for seed in [1, 2] {
            let run = format!("n_kv_head={kv}/seed={seed}");
            let a = learned(&one.path().join("smoke_gqa").join(&run));
            let b = learned(&three.path().join("smoke_gqa").join(&run));
            assert_eq!(a.len(), 21, "{run}");
            assert_eq!(a, b, "run {run} differs between --jobs 1 and --jobs 3");
            // The process's peak memory is a run's own only when it trains alone.
            let peaks = |dir: &Path| -> Vec<String> {
                let rows = common::csv_rows(&dir.join("smoke_gqa").join(&run).join("metrics.csv"));
                rows.iter().map(|r| r["peak_rss_mb"].clone()).collect()
            };
            assert!(
                peaks(one.path()).iter().all(|p| p.parse::<f64>().unwrap() > 1.0),
                "{run}"
            );
            assert!(peaks(three.path()).iter().all(String::is_empty), "{run}");
            runs += 1;
        }
    }
    assert_eq!(runs, 6);
}

#[test]
fn asking_a_cpu_build_for_cuda_is_a_clear_error() {
    if gptlab::device::HAS_CUDA {
        return;
    }
    let runs = tempfile::tempdir().unwrap();
    gptlab()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "experiments/smoke.toml", "--device", "cuda", "--runs-dir"])
        .arg(runs.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("built without CUDA").and(predicate::str::contains("just build-cuda")));
    assert!(!runs.path().join("smoke").exists(), "nothing trained");
}
