//! `tokenizer = { train = "bpe", vocab_size = N }` against independent facts: the BPE a corpus
//! trains is Hugging Face's Python trainer's on the same split, and the one its training text
//! alone trains (a file cut into pieces, a folder's
//! documents apart, never the validation text), the same bytes from any process and thread
//! count, and a sweep over sizes that trains, resumes, reports in bits per byte and starts at
//! ln(vocab).

mod common;

use std::path::Path;

use common::{OutDirs, csv_rows, gptlab, write_spec};
use gptlab::data::{Corpus, CorpusRequest, Format, TokenizerSpec, TrainedTokenizer, byte_level_bpe};

fn request(path: &Path, vocab_size: usize, cache: &Path) -> CorpusRequest {
    CorpusRequest {
        path: path.to_path_buf(),
        val_path: None,
        val_fraction: 0.1,
        include: vec!["**/*".into()],
        tokenizer: TokenizerSpec::Train(TrainedTokenizer {
            train: "bpe".into(),
            vocab_size,
        }),
        format: Format::Text,
        dtype: None,
        text_field: "text".into(),
        cache_dir: cache.to_path_buf(),
    }
}

fn trained_json(texts: &[&str], vocab_size: usize) -> Vec<u8> {
    byte_level_bpe(texts.iter().map(|t| t.to_string()), vocab_size).unwrap()
}

/// The tokenizer.json a loaded corpus trained (from its cache folder).
fn json_of(corpus: &Corpus) -> Vec<u8> {
    corpus.tokenizer.json().expect("a trained BPE has its JSON").to_vec()
}

#[test]
fn a_file_trains_the_bpe_of_its_training_text_alone_read_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let shakespeare = std::fs::read_to_string(common::corpus_path()).unwrap();
    // Over two read blocks (1 MiB), and a word only the validation tail holds, often.
    let text = format!("{shakespeare}{shakespeare}{}", " zyzzyva".repeat(30_000));
    let file = dir.path().join("corpus.txt");
    std::fs::write(&file, &text).unwrap();
    let n = text.chars().count();
    let cut = text.char_indices().nth((n as f64 * 0.9).floor() as usize).unwrap().0;
    let (train, val) = text.split_at(cut);
    assert!(train.len() > 2 << 20 && val.contains(" zyzzyva"));

    let corpus = Corpus::load(&request(&file, 1024, dir.path())).unwrap();
    assert_eq!(json_of(&corpus), trained_json(&[train], 1024));
    let t = &corpus.tokenizer;
    assert_eq!((t.vocab_size(), t.separator()), (1024, Some(1023)));
    assert_eq!(t.record().name, "bpe");
    // The validation word was not learned; trained on the whole text, it would have been.
    let whole = gptlab::data::Tokenizer::trained(trained_json(&[&text], 1024)).unwrap();
    assert!(whole.encode(" zyzzyva").unwrap().len() == 1);
    assert!(t.encode(" zyzzyva").unwrap().len() > 2);
    // Tokenised in small pieces, the text has the ids of the whole.
    assert_eq!(corpus.train.to_vec(), t.encode(train).unwrap());
    assert_eq!(corpus.val.to_vec(), t.encode(val).unwrap());
    // The corpus is its tokens: training text and validation text decode back.
    assert_eq!(t.decode(&corpus.train.to_vec()), train);
    assert_eq!(t.decode(&corpus.val.to_vec()), val);
    assert_eq!(
        (corpus.train_bytes, corpus.val_bytes),
        (train.len() as u64, val.len() as u64)
    );
}

/// Hugging Face's Python trainer (`tokenizers` from PyPI), configured as GPT-2's byte-level BPE
/// is in their documentation, on the text files given as arguments (one sequence each): prints
/// the vocabulary and the merges as JSON.
const PYTHON_REFERENCE: &str = r#"
import json, sys
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
n = int(sys.argv[1])
texts = [open(p, encoding="utf-8", newline="").read() for p in sys.argv[2:]]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=n - 1, min_frequency=0, show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(texts, trainer=trainer)
tok.add_special_tokens(["<|endoftext|>"])
model = json.loads(tok.to_str())["model"]
print(json.dumps({"vocab": model["vocab"], "merges": model["merges"]}))
"#;

/// The vocabulary and merges of a tokenizer.json.
fn vocab_and_merges(json: &[u8]) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(json).unwrap();
    serde_json::json!({ "vocab": v["model"]["vocab"], "merges": v["model"]["merges"] })
}

#[test]
fn a_trained_bpe_equals_hugging_faces_python_trainer_on_the_training_split() {
    let python = common::test_python("tokenizers");
    let dir = tempfile::tempdir().unwrap();
    let shakespeare = std::fs::read_to_string(common::corpus_path()).unwrap();
    let text = format!("{shakespeare}{}", shakespeare.to_uppercase());
    let file = dir.path().join("corpus.txt");
    std::fs::write(&file, &text).unwrap();
    let corpus = Corpus::load(&request(&file, 1500, dir.path())).unwrap();
    // The split worked out here: nanoGPT's floor(0.9 × characters).
    let n = text.chars().count();
    let cut = text.char_indices().nth((n as f64 * 0.9).floor() as usize).unwrap().0;
    let train_file = dir.path().join("train.txt");
    std::fs::write(&train_file, &text[..cut]).unwrap();
    let out = common::output_ok(
        std::process::Command::new(python)
            .args(["-c", PYTHON_REFERENCE, "1500"])
            .arg(&train_file),
        "the Python tokenizers trainer",
    );
    let reference: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reference["merges"].as_array().unwrap().len(), 1500 - 257);
    assert_eq!(vocab_and_merges(&json_of(&corpus)), reference);
}

#[test]
fn a_folder_trains_on_its_training_documents_apart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("texts");
    std::fs::create_dir_all(&root).unwrap();
    let docs = [
        "the king hath spoken and we obey ".repeat(50) + "kingdom",
        "dominion of the night ".repeat(60),
        "a validation document held out at the end, ".repeat(40),
    ];
    for (i, d) in docs.iter().enumerate() {
        std::fs::write(root.join(format!("{i}.txt")), d).unwrap();
    }
    let mut req = request(&root, 290, dir.path());
    req.val_fraction = 0.3;
    let corpus = Corpus::load(&req).unwrap();
    // Documents are pre-tokenized apart ("kingdom" and "dominion" never meet), the separator
    // is no text, and the third document is validation (learning from it would differ).
    assert_eq!(json_of(&corpus), trained_json(&[&docs[0], &docs[1]], 290));
    assert_ne!(json_of(&corpus), trained_json(&[&docs[0], &docs[1], &docs[2]], 290));
    let sep = corpus.tokenizer.separator().unwrap();
    assert_eq!(sep, 289);
    assert_eq!(corpus.train.to_vec().iter().filter(|&&id| id == sep).count(), 1);
}

/// A cached tokenizer edited since it was trained (still valid: two tokens' ids swapped) or
/// without its checksum is not reused: it would train new runs labelled as this recipe's BPE.
#[test]
fn a_cached_tokenizer_edited_since_it_was_trained_is_trained_again() {
    let dir = tempfile::tempdir().unwrap();
    let shakespeare = std::fs::read_to_string(common::corpus_path()).unwrap();
    let file = dir.path().join("corpus.txt");
    std::fs::write(&file, &shakespeare[..200_000]).unwrap();
    let req = request(&file, 400, &dir.path().join("cache"));
    let trained = json_of(&Corpus::load(&req).unwrap());
    let cached: Vec<_> = std::fs::read_dir(&req.cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tokenizer.json"))
        .collect();
    assert_eq!(cached.len(), 1);
    let mut json: serde_json::Value = serde_json::from_slice(&trained).unwrap();
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = (vocab["e"].clone(), vocab["t"].clone());
    (vocab["e"], vocab["t"]) = (b, a);
    let edited = serde_json::to_vec(&json).unwrap();
    assert!(
        gptlab::data::Tokenizer::trained(edited.clone()).is_ok(),
        "the edit is a valid tokenizer"
    );
    std::fs::write(&cached[0], &edited).unwrap();
    assert_eq!(json_of(&Corpus::load(&req).unwrap()), trained);
    assert_eq!(
        std::fs::read(&cached[0]).unwrap(),
        trained,
        "the cache holds the trained one again"
    );
    // Without the checksum beside it (a cache written before there was one, or a crash
    // between the two writes): trained again too.
    std::fs::write(&cached[0], &edited).unwrap();
    std::fs::remove_file(cached[0].with_extension("json.sha256")).unwrap();
    assert_eq!(json_of(&Corpus::load(&req).unwrap()), trained);
}

/// The tiny spec over BPE sizes of tiny-shakespeare (a sweep), written to `dir`.
fn sweep_spec(dir: &Path) -> std::path::PathBuf {
    let text = common::TINY_SPEC
        .replace("[experiment]\n", "[experiment]\nname = \"bpe_sizes\"\n")
        .replace(
            "path = \"CORPUS\"\n",
            "path = \"CORPUS\"\ntokenizer = { train = \"bpe\", vocab_size = 300 }\n",
        );
    write_spec(
        dir,
        "bpe_sizes.toml",
        &format!("{text}[sweep]\n\"data.tokenizer.vocab_size\" = [300, 2000]\n"),
    )
}

#[test]
fn the_same_corpus_trains_the_same_bytes_in_any_process_and_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sweep_spec(dir.path());
    let mut made = vec![];
    for threads in ["1", "3"] {
        let cache = dir.path().join(format!("cache{threads}"));
        gptlab()
            .args(["validate", spec.to_str().unwrap()])
            .env("GPTLAB_CACHE_DIR", &cache)
            .env("RAYON_NUM_THREADS", threads)
            .assert()
            .success();
        let mut files: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".tokenizer.json"))
            .collect();
        files.sort();
        made.push(files.iter().map(|f| std::fs::read(f).unwrap()).collect::<Vec<_>>());
    }
    assert_eq!(made[0].len(), 2, "one tokenizer per size");
    assert_eq!(made[0], made[1]);
}

#[test]
fn a_sweep_over_sizes_trains_resumes_and_reports_in_bits_per_byte() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutDirs::new();
    let spec = sweep_spec(dir.path());
    let cache = dir.path().join("cache");
    let sweep = |extra: &[&str]| {
        let mut cmd = gptlab();
        cmd.args(["sweep", spec.to_str().unwrap(), "-q"])
            .args(out.args())
            .args(extra)
            .env("GPTLAB_CACHE_DIR", &cache);
        cmd
    };
    sweep(&["--set", "phase.1.steps=2", "--no-report"]).assert().success();
    // Resumed with the cache gone: the tokenizer is trained again, to the same bytes.
    std::fs::remove_dir_all(&cache).unwrap();
    sweep(&[]).assert().success();
    for vocab in [300usize, 2000] {
        let run = out.runs.join(format!("bpe_sizes/vocab_size={vocab}"));
        let rows = csv_rows(&run.join("metrics.csv"));
        assert_eq!(rows.len(), 16, "one row a step, 4 of them resumed");
        // An untrained model is near uniform over the vocabulary.
        let first: f64 = rows[0]["train_loss"].parse().unwrap();
        assert!((first - (vocab as f64).ln()).abs() < 0.15, "{vocab}: {first}");
        let json = std::fs::read(run.join("tokenizer.json")).unwrap();
        let t = gptlab::data::Tokenizer::trained(json).unwrap();
        assert_eq!(t.vocab_size(), vocab);
    }
    let summary = csv_rows(&out.reports.join("bpe_sizes/summary.csv"));
    assert!(summary.iter().all(|r| r["loss_unit"] == "bits/byte"), "{summary:?}");
    let page = std::fs::read_to_string(out.reports.join("bpe_sizes/index.html")).unwrap();
    assert!(page.contains("bpe 2000, bpe 300"), "the tokenizers are named by size");
}
