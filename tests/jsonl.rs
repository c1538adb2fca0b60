//! JSON Lines corpora (`format = "jsonl"`) against an independent fact: a JSON Lines file is
//! the folder of its documents, one file each — the same tokens, split, bytes and vocabulary —
//! whatever the escapes, line endings, blank lines and extra keys; and what a bad line, a
//! misplaced `text_field` and another field make of a spec.

mod common;

use std::path::{Path, PathBuf};

use gptlab::data::{Corpus, CorpusRequest, Format, TokenizerSpec};
use predicates::prelude::*;
use rand::{Rng, SeedableRng};

/// `n` documents of random text with what JSON must escape: quotes, backslashes, newlines,
/// tabs, control characters, accents, characters outside the BMP; one is over a megabyte (its
/// line spans read blocks).
fn documents(n: usize) -> Vec<String> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let words = [
        "the",
        "quick",
        "fox",
        "\"quoted\"",
        "back\\slash",
        "tab\there",
        "line\nbreak",
        "crlf\r\n",
        "café",
        "naïve",
        "😀",
        "𝄞",
        "\u{1}",
        "ünïcödé",
        "ROMEO:",
        "{\"json\": 1}",
    ];
    (0..n)
        .map(|i| {
            let count = if i == 0 { 200_000 } else { r.gen_range(1..400) };
            (0..count)
                .map(|_| words[r.gen_range(0..words.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn request(path: &Path, tokenizer: &str, format: Format, cache: &Path) -> CorpusRequest {
    CorpusRequest {
        path: path.to_path_buf(),
        val_path: None,
        val_fraction: 0.02,
        include: vec!["**/*".into()],
        tokenizer: TokenizerSpec::Named(tokenizer.into()),
        format,
        dtype: None,
        text_field: "body".into(),
        cache_dir: cache.to_path_buf(),
    }
}

/// The lines of `docs` as JSON objects with the text under `body` among other keys, with
/// CRLF endings on odd lines and a blank line now and then.
fn json_lines(docs: &[String], first: usize) -> String {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        let n = first + i;
        let line = serde_json::json!({"id": n, "body": doc, "meta": {"text": "not this one"}});
        out.push_str(&line.to_string());
        out.push_str(if n % 2 == 1 { "\r\n" } else { "\n" });
        if n % 7 == 3 {
            out.push_str("   \n");
        }
    }
    out
}

#[test]
fn a_json_lines_corpus_is_the_folder_of_its_documents() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents(40);
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    for (i, doc) in docs.iter().enumerate() {
        std::fs::write(folder.join(format!("{i:03}.txt")), doc).unwrap();
    }
    let one = dir.path().join("one.jsonl");
    std::fs::write(&one, json_lines(&docs, 0)).unwrap();
    let two = dir.path().join("two");
    std::fs::create_dir(&two).unwrap();
    std::fs::write(two.join("a.jsonl"), json_lines(&docs[..25], 0)).unwrap();
    std::fs::write(two.join("b.jsonl"), json_lines(&docs[25..], 25)).unwrap();
    let cache = dir.path().join("cache");
    for tokenizer in ["gpt2", "char"] {
        let load = |path: &Path, format| {
            Corpus::load(&request(path, tokenizer, format, &cache)).unwrap_or_else(|e| panic!("{e:?}"))
        };
        let want = load(&folder, Format::Text);
        for (what, got) in [
            ("one file", load(&one, Format::Jsonl)),
            ("two files", load(&two, Format::Jsonl)),
        ] {
            let case = format!("{what}, {tokenizer}");
            assert_eq!(got.train.to_vec(), want.train.to_vec(), "{case}: training tokens");
            assert_eq!(got.val.to_vec(), want.val.to_vec(), "{case}: validation tokens");
            assert_eq!(
                (got.train_bytes, got.val_bytes),
                (want.train_bytes, want.val_bytes),
                "{case}: bytes of text (bits per byte)"
            );
            assert_eq!(got.tokenizer.vocab_size(), want.tokenizer.vocab_size(), "{case}");
            assert!(!want.val.is_empty() && want.val.len() < want.train.len(), "{case}");
        }
    }
    // The file's bytes read as plain text are another corpus, cached apart.
    let as_text = Corpus::load(&request(&one, "gpt2", Format::Text, &cache)).unwrap();
    assert_ne!(
        as_text.train.len(),
        Corpus::load(&request(&one, "gpt2", Format::Jsonl, &cache))
            .unwrap()
            .train
            .len()
    );
}

/// The tiny spec as experiment `jl`, reading `corpus.jsonl` beside it, with `data` (lines of
/// `[data]`) after its path: the path is on line 6, `data` from line 7.
fn spec(dir: &Path, data: &str) -> PathBuf {
    let path = common::tiny_spec(dir, "jl", "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("path = \"{}\"", common::corpus_path()),
        &format!("path = \"corpus.jsonl\"\n{data}"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn write_corpus(dir: &Path, lines: &[String]) {
    std::fs::write(dir.join("corpus.jsonl"), lines.join("\n")).unwrap();
}

#[test]
fn bad_lines_a_misplaced_text_field_and_another_field_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents(30);
    let good: Vec<String> = docs
        .iter()
        .map(|d| serde_json::json!({"text": d, "other": d.to_uppercase()}).to_string())
        .collect();
    let mut bad = good.clone();
    bad[2] = "{\"text\": \"unterminated".into();
    bad[6] = "{\"title\": \"no text\"}".into();
    bad[9] = "{\"text\": null}".into();
    write_corpus(dir.path(), &bad);
    let spec = spec(dir.path(), "format = \"jsonl\"");
    let runs = dir.path().join("runs");
    // Its own token cache: nothing of another build's is reused.
    let cache = dir.path().join("cache");
    let gptlab = || {
        let mut cmd = common::gptlab();
        cmd.current_dir(dir.path()).env("GPTLAB_CACHE_DIR", &cache);
        cmd
    };
    let quiet_run = || {
        let mut cmd = gptlab();
        cmd.args(common::quiet_run_args(&spec, &runs));
        cmd
    };
    gptlab().args(["validate", "jl.toml"]).assert().code(2).stderr(
        predicate::str::contains("jl.toml:6: key `data.path`")
            .and(predicate::str::contains("line 3 is not JSON"))
            .and(predicate::str::contains("line 7 has no `text` (its keys: title)"))
            .and(predicate::str::contains("line 10 has `text` = null, not a string")),
    );
    write_corpus(dir.path(), &good);
    let with = |data: &str| self::spec(dir.path(), data);
    with("text_field = \"other\"");
    gptlab()
        .args(["validate", "jl.toml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "jl.toml:7: key `data.text_field`: applies to format = \"jsonl\" only",
        ));
    with("format = \"jsonl\"");
    quiet_run().assert().success();
    // The same file's other field is other text: the run is not "already complete".
    with("format = \"jsonl\"\ntext_field = \"other\"");
    quiet_run().assert().code(2).stderr(predicate::str::contains(
        "data.text_field: was `text` when trained, the spec now says `other`",
    ));
}

#[test]
fn tokenising_progress_counts_the_files_bytes_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    // About 3 MB of JSON (over the 2 MiB under which no progress is shown), a quarter of it
    // keys, quotes and escapes around the text.
    let text = std::fs::read_to_string(common::corpus_path()).unwrap();
    let lines: Vec<String> = text
        .lines()
        .chain(text.lines())
        .map(|l| serde_json::json!({"text": l, "source": "tiny-shakespeare"}).to_string())
        .collect();
    write_corpus(dir.path(), &lines);
    let file_mb = std::fs::metadata(dir.path().join("corpus.jsonl")).unwrap().len() as f64 / 1e6;
    let cache = dir.path().join("cache");
    let spec = spec(
        dir.path(),
        &format!("format = \"jsonl\"\ncache_dir = \"{}\"", cache.display()),
    );
    let out = common::gptlab()
        .args(["validate", spec.to_str().unwrap()])
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    let line = stderr.lines().find(|l| l.contains("tokenised")).expect(&stderr);
    let mb: f64 = line
        .split("tokenised ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((mb - file_mb).abs() < 0.06, "{line}: the file is {file_mb:.2} MB");
    assert!(stderr.contains(&format!("tokenising {file_mb:.1} MB")), "{stderr}");
}
