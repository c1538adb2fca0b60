//! `extends`: a three-file chain merges tables key by key and replaces arrays, errors name the
//! file and line that wrote the value, a cycle is refused, `run.toml` and provenance record
//! what was trained, and a change in a base is a change of the run.

mod common;

use std::path::{Path, PathBuf};

use common::{gptlab, quiet_run, stdout_of};
use predicates::prelude::*;

const ROOT: &str = r#"[data]
path = "CORPUS"
[model]
n_layer = 1
n_embd = 16
n_head = 2
[train]
batch_size = 4
lr = 1e-3
eval_every = 5
eval_batches = 1
[[phase]]
seq_len = 8
steps = 10
"#;

const MID: &str = r#"extends = "root.toml"
[train]
schedule = "cosine"
warmup_steps = 2
[[phase]]
seq_len = 16
steps = 6
"#;

const LEAF: &str = r#"extends = "mid.toml"
[experiment]
seed = 9
[model]
n_head = 4
"#;

fn chain(dir: &Path) -> PathBuf {
    common::write_spec(dir, "root.toml", ROOT);
    common::write_spec(dir, "mid.toml", MID);
    common::write_spec(dir, "leaf.toml", LEAF)
}

#[test]
fn a_three_file_chain_merges_tables_and_replaces_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let leaf = chain(dir.path());
    let out = gptlab().args(["plan", "--explain"]).arg(&leaf).assert().success();
    let said = stdout_of(&out);
    for line in [
        "experiment `leaf`",
        "n_embd=16 n_head=4",
        "seed:      9",
        "model.n_embd = 16  (",
        "root.toml:5)",
        "model.n_head = 4  (",
        "leaf.toml:5)",
        "train.schedule = \"cosine\"  (",
        "mid.toml:3)",
        "train.lr = 0.001  (",
        "train.beta1 = 0.9  (default)",
    ] {
        assert!(said.contains(line), "missing {line:?} in\n{said}");
    }
    // The child's [[phase]] replaces the base's: one phase of 6 steps at 16.
    assert!(
        said.contains("phase 0:   steps 1..=6 seq_len 16") && !said.contains("phase 1:"),
        "{said}"
    );
    // run.toml is the merged spec as trained; provenance names the chain with hashes.
    let runs = dir.path().join("runs");
    quiet_run(&leaf, &runs).assert().success();
    let run = runs.join("leaf/default");
    let resolved: toml::Table = toml::from_str(&std::fs::read_to_string(run.join("run.toml")).unwrap()).unwrap();
    assert_eq!(resolved["model"]["n_head"].as_integer(), Some(4));
    assert_eq!(resolved["model"]["n_embd"].as_integer(), Some(16));
    assert_eq!(resolved["train"]["schedule"].as_str(), Some("cosine"));
    assert_eq!(resolved["phase"].as_array().unwrap().len(), 1);
    let provenance: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("provenance.json")).unwrap()).unwrap();
    let bases = provenance["sessions"][0]["spec_bases"].as_array().unwrap();
    assert_eq!(bases.len(), 2);
    assert!(bases[0]["file"].as_str().unwrap().ends_with("mid.toml"));
    let root_sha = gptlab::fsio::sha256_hex(&std::fs::read(dir.path().join("root.toml")).unwrap());
    assert_eq!(bases[1]["sha256"].as_str(), Some(root_sha.as_str()));
    // A change in a base is a change of the run: refused like any other.
    let changed = std::fs::read_to_string(dir.path().join("root.toml"))
        .unwrap()
        .replace("lr = 1e-3", "lr = 2e-3");
    std::fs::write(dir.path().join("root.toml"), changed).unwrap();
    quiet_run(&leaf, &runs)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "phase.0.lr: was `0.001` when trained, the spec now says `0.002`",
        ));
}

#[test]
fn an_error_in_a_base_names_the_base_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let leaf = chain(dir.path());
    let root = dir.path().join("root.toml");
    let text = std::fs::read_to_string(&root).unwrap();
    std::fs::write(
        &root,
        text.replace("batch_size = 4", "batch_size = 0")
            .replace("eval_every = 5", "eval_evry = 5"),
    )
    .unwrap();
    let out = gptlab().arg("validate").arg(&leaf).assert().code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("root.toml:10 (extended by") && err.contains("unknown key `eval_evry`"),
        "{err}"
    );
    std::fs::write(&root, text.replace("batch_size = 4", "batch_size = 0")).unwrap();
    gptlab()
        .arg("validate")
        .arg(&leaf)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("root.toml:8 (extended by").and(predicate::str::contains("train.batch_size")));
}

#[test]
fn a_cycle_or_a_missing_base_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let leaf = chain(dir.path());
    let root = dir.path().join("root.toml");
    let text = std::fs::read_to_string(&root).unwrap();
    std::fs::write(&root, format!("extends = \"leaf.toml\"\n{text}")).unwrap();
    gptlab()
        .arg("validate")
        .arg(&leaf)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "key `extends`: the specs extend each other in a cycle",
        ))
        .stderr(predicate::str::contains("leaf.toml → ").and(predicate::str::contains("mid.toml → ")));
    for (target, words) in [
        ("nowhere.toml", "cannot be read"),
        (".", "is not a regular file (a folder)"),
    ] {
        let spec = common::write_spec(dir.path(), "lone.toml", &format!("extends = \"{target}\"\n"));
        gptlab()
            .arg("validate")
            .arg(&spec)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("lone.toml:1: key `extends`").and(predicate::str::contains(words)));
    }
}
