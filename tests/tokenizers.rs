//! The data layer against independent facts: OpenAI's published GPT-2 and cl100k ids, byte-level
//! round trips, a tokenizer.json written here, the text split shared by every tokenizer,
//! folder corpora, nanoGPT's token files, the token cache and bits per byte by hand.

use std::path::{Path, PathBuf};

use gptlab::data::{Corpus, CorpusRequest, Dtype, Format, Split, Tokenizer, TokenizerFile, TokenizerSpec};
use rand::{Rng, SeedableRng};

fn request(path: &Path, tokenizer: &str, cache: &Path) -> CorpusRequest {
    CorpusRequest {
        path: path.to_path_buf(),
        val_path: None,
        val_fraction: 0.1,
        include: vec!["**/*".into()],
        tokenizer: TokenizerSpec::Named(tokenizer.into()),
        format: Format::Text,
        dtype: None,
        text_field: "text".into(),
        cache_dir: cache.to_path_buf(),
    }
}

fn load(req: &CorpusRequest) -> Corpus {
    Corpus::load(req).unwrap_or_else(|e| panic!("{e:?}"))
}

fn ids(t: &Tokenizer, text: &str) -> Vec<u32> {
    t.encode(text).unwrap()
}

/// Words and punctuation in sentences, about `bytes` long, seeded.
fn prose(bytes: usize, seed: u64) -> String {
    let words = [
        "the", "king", "hath", "spoken", "and", "we", "obey", "Rome", "is", "fair", "O", "night",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = String::new();
    while out.len() < bytes {
        out.push_str(words[rng.gen_range(0..words.len())]);
        out.push_str(match rng.gen_range(0..12) {
            0 => ".\n\n",
            1 => ", ",
            2 => "'s ",
            3 => "  ",
            _ => " ",
        });
    }
    out
}

#[test]
fn gpt2_and_cl100k_give_openais_published_ids() {
    let gpt2 = Tokenizer::bpe("gpt2").unwrap();
    assert_eq!(gpt2.vocab_size(), 50_257, "GPT-2's published vocabulary");
    assert_eq!(gpt2.separator(), Some(50_256), "<|endoftext|>");
    assert_eq!(ids(&gpt2, "Hello world"), vec![15496, 995]);
    assert_eq!(ids(&gpt2, "The quick brown fox"), vec![464, 2068, 7586, 21831]);
    // Special-token text in a corpus is ordinary text, never the separator.
    assert!(!ids(&gpt2, "<|endoftext|>").contains(&50_256));
    let cl100k = Tokenizer::bpe("cl100k").unwrap();
    assert_eq!(ids(&cl100k, "tiktoken is great!"), vec![83, 1609, 5963, 374, 2294, 0]);
    assert_eq!(cl100k.vocab_size(), 100_277);
    assert!(Tokenizer::bpe("o200k").unwrap().vocab_size() > 199_999);
}

#[test]
fn byte_level_bpe_decodes_what_it_encodes_over_random_unicode() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let ranges = [
        (0x20u32, 0x7e),
        (0xa0, 0x2ff),
        (0x400, 0x4ff),
        (0x4e00, 0x4fff),
        (0x1f600, 0x1f64f),
    ];
    for name in ["gpt2", "cl100k", "o200k"] {
        let t = Tokenizer::bpe(name).unwrap();
        for _ in 0..50 {
            let text: String = (0..rng.gen_range(1..80))
                .map(|_| {
                    let (lo, hi) = ranges[rng.gen_range(0..ranges.len())];
                    char::from_u32(rng.gen_range(lo..=hi)).unwrap_or(' ')
                })
                .collect();
            assert_eq!(t.decode(&ids(&t, &text)), text, "{name}");
        }
    }
}

/// Words and the spaces between them as tokens (a space is a piece of its own), glued back
/// together by the decoder.
const WORD_LEVEL: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
  "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "Isolated", "invert": false},
  "post_processor": null, "decoder": {"type": "Fuse"},
  "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "the": 1, "cat": 2, "sat": 3, "</s>": 4, " ": 5}, "unk_token": "[UNK]"}
}"#;

fn from_json(json: &str) -> Tokenizer {
    Tokenizer::from_json(json.as_bytes().to_vec(), Path::new("tiny.json")).unwrap()
}

#[test]
fn a_tokenizer_json_written_here_loads_and_encodes_as_specified() {
    let t = from_json(WORD_LEVEL);
    assert_eq!(t.vocab_size(), 6);
    assert_eq!(ids(&t, "the cat sat dog"), vec![1, 5, 2, 5, 3, 5, 0]);
    assert_eq!(t.decode(&ids(&t, "the cat sat")), "the cat sat");
    assert_eq!(t.separator(), Some(4), "</s> separates documents");
    assert!(t.chunks_safely());
    let why = Tokenizer::from_json(b"{\"model\": 3}".to_vec(), Path::new("bad.json")).unwrap_err();
    assert!(why.contains("not a usable tokenizer.json"), "{why}");
}

#[test]
fn a_tokenizer_file_encodes_all_of_the_text_or_is_refused_naming_what_it_drops() {
    // Saved truncation and padding (as files exported for classification carry) would cut
    // each 1 MiB piece of a corpus to its first tokens or pad it: they are not applied.
    let saved = WORD_LEVEL.replace(
        r#""truncation": null, "padding": null"#,
        r#""truncation": {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0},
           "padding": {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": null,
                       "pad_id": 4, "pad_type_id": 0, "pad_token": "</s>"}"#,
    );
    assert_ne!(saved, WORD_LEVEL);
    let text = "the cat sat the cat";
    assert_eq!(ids(&from_json(&saved), text), ids(&from_json(WORD_LEVEL), text));
    assert_eq!(ids(&from_json(&saved), text).len(), 9);

    // A whitespace pre-tokenizer drops the spaces; a BPE without an unknown token drops what
    // its vocabulary lacks (and `tokenizers` then shifts the offsets that follow).
    let whitespace = WORD_LEVEL.replace(
        r#"{"type": "Split", "pattern": {"String": " "}, "behavior": "Isolated", "invert": false}"#,
        r#"{"type": "Whitespace"}"#,
    );
    let why = from_json(&whitespace).encode(text).unwrap_err();
    assert!(
        why.contains("drops text") && why.contains("4 of 19 bytes") && why.contains("[' ']"),
        "{why}"
    );
    let no_unk = r#"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
        "post_processor": null, "decoder": null, "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}"#;
    let why = from_json(no_unk).encode("ab\nab\r\nb").unwrap_err();
    assert!(why.contains("3 of 8 bytes") && why.contains("['\\n', '\\r']"), "{why}");

    // Byte-level BPE keeps every byte, also under its post-processor, whose trimmed offsets
    // leave a space outside every token.
    let byte_level = r#"{"version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "\u0120": 2}, "merges": []}}"#;
    let t = from_json(byte_level);
    assert_eq!(ids(&t, "ab  ab"), vec![0, 1, 2, 2, 0, 1]);
    assert_eq!(t.decode(&ids(&t, "ab  ab")), "ab  ab");
}

#[test]
fn a_special_tokens_string_in_the_text_is_ordinary_text_as_with_the_openai_encodings() {
    let json = r#"{"version": "1.0", "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "added_tokens": [{"id": 3, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": true}],
        "decoder": null, "model": {"type": "BPE", "vocab": {"a": 0, "<": 1, ">": 2, "<s>": 3, "s": 4}, "merges": []}}"#;
    assert_eq!(ids(&from_json(json), "a<s>a"), vec![0, 1, 4, 2, 0]);
    assert_eq!(ids(&Tokenizer::bpe("gpt2").unwrap(), "<|endoftext|>").len(), 7);
}

#[test]
fn a_vocabulary_with_holes_in_its_ids_reaches_the_largest() {
    let holes = r#"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
        "post_processor": null, "decoder": null, "model": {"type": "BPE", "vocab": {"a": 0, "b": 9}, "merges": []}}"#;
    let t = from_json(holes);
    assert_eq!(t.vocab_size(), 10, "the model needs a row for id 9");
    assert_eq!(ids(&t, "ab"), vec![0, 9]);
    assert_eq!(t.byte_lengths(), [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
}

#[test]
fn char_and_bpe_runs_hold_out_the_same_validation_text() {
    let dir = tempfile::tempdir().unwrap();
    // Over two read blocks (1 MiB), so the BPE corpus is tokenised in pieces.
    let text = prose(2_500_000, 1) + "Ünïcödé at the end, ok";
    let file = dir.path().join("corpus.txt");
    std::fs::write(&file, &text).unwrap();
    let chars = load(&request(&file, "char", dir.path()));
    let gpt2 = load(&request(&file, "gpt2", dir.path()));
    let n = text.chars().count();
    let cut = text.char_indices().nth((n as f64 * 0.9).floor() as usize).unwrap().0;
    let (train, val) = text.split_at(cut);
    for c in [&chars, &gpt2] {
        assert_eq!(c.tokenizer.decode(&c.val.to_vec()), val);
        assert_eq!(c.tokenizer.decode(&c.train.to_vec()), train);
        assert_eq!((c.train_bytes, c.val_bytes), (train.len() as u64, val.len() as u64));
    }
    // Pieces cut between words tokenise as the whole text does.
    let t = &gpt2.tokenizer;
    assert_eq!(gpt2.train.to_vec(), ids(t, train));
    assert_eq!(gpt2.val.to_vec(), ids(t, val));
    // The character corpus is what it was before tokenizers: the same ids, the same split.
    let old = Corpus::from_text(&text, 0.1);
    assert_eq!(chars.train.to_vec(), old.train.to_vec());
    assert_eq!(chars.val.to_vec(), old.val.to_vec());
    assert_eq!(chars.sha256, old.sha256);
}

#[test]
fn a_folder_is_read_in_sorted_order_with_separators_and_split_by_documents() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("texts");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let write = |rel: &str, text: &str| std::fs::write(root.join(rel), text).unwrap();
    write("b.txt", "Second document here.");
    write("a.txt", "First document.");
    write(
        "sub/c.md",
        "Third, a long one held out for validation at the end of the folder.",
    );
    write(".hidden.txt", "never read");
    write("notes.bin", "not matched");
    let mut req = request(&root, "gpt2", dir.path());
    req.include = vec!["**/*.txt".into(), "**/*.md".into()];
    req.val_fraction = 0.3;
    let c = load(&req);
    let t = &c.tokenizer;
    let mut want = ids(t, "First document.");
    want.push(50_256);
    want.extend(ids(t, "Second document here."));
    assert_eq!(c.train.to_vec(), want);
    assert_eq!(
        c.val.to_vec(),
        ids(t, "Third, a long one held out for validation at the end of the folder.")
    );
    assert_eq!(c.files.len(), 3);
    assert!(c.files[2].path.ends_with("sub/c.md"));
    // The folder is identified by its files' hashes: a changed file is another corpus.
    write("a.txt", "First document!");
    assert_ne!(load(&req).sha256, c.sha256);
}

#[test]
fn links_in_a_corpus_folder_are_read_and_a_loop_or_a_broken_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (root, elsewhere) = (dir.path().join("texts"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(elsewhere.join("more")).unwrap();
    std::fs::write(root.join("a.txt"), "First document.").unwrap();
    std::fs::write(elsewhere.join("b.txt"), "Linked file.").unwrap();
    std::fs::write(elsewhere.join("more/c.txt"), "In a linked folder, held out.").unwrap();
    std::os::unix::fs::symlink(elsewhere.join("b.txt"), root.join("b.txt")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("more"), root.join("c")).unwrap();
    let mut req = request(&root, "char", dir.path());
    req.val_fraction = 0.3;
    let c = load(&req);
    let names: Vec<_> = c
        .files
        .iter()
        .map(|f| f.path.strip_prefix(&root).unwrap().to_owned())
        .collect();
    assert_eq!(names, [Path::new("a.txt"), Path::new("b.txt"), Path::new("c/c.txt")]);
    assert_eq!(c.val.len(), "In a linked folder, held out.".len());

    std::os::unix::fs::symlink(&root, root.join("c/loop")).unwrap();
    let errors = Corpus::load(&req).err().unwrap_or_else(|| panic!("a loop is refused"));
    assert!(
        errors[0].key == "data.path" && errors[0].message.contains("loop"),
        "{errors:?}"
    );
    std::fs::remove_file(root.join("c/loop")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone.txt"), root.join("d.txt")).unwrap();
    let errors = Corpus::load(&req)
        .err()
        .unwrap_or_else(|| panic!("a broken link is refused"));
    assert!(
        errors[0].key == "data.path" && errors[0].message.contains("d.txt"),
        "{errors:?}"
    );
}

fn write_u16(path: &Path, ids: &[u16]) {
    // numpy's `np.array(ids, dtype=np.uint16).tofile(path)` on a little-endian machine.
    std::fs::write(path, ids.iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

#[test]
fn token_files_load_in_numpys_layout() {
    let dir = tempfile::tempdir().unwrap();
    let gpt2 = Tokenizer::bpe("gpt2").unwrap();
    let train: Vec<u16> = ids(&gpt2, "The quick brown fox").iter().map(|&i| i as u16).collect();
    let val: Vec<u16> = vec![15496, 995]; // "Hello world"
    let (tp, vp) = (dir.path().join("train.bin"), dir.path().join("val.bin"));
    write_u16(&tp, &train);
    write_u16(&vp, &val);
    let mut req = request(&tp, "gpt2", dir.path());
    (req.format, req.val_path, req.dtype) = (Format::Tokens, Some(vp.clone()), Some(Dtype::U16));
    let c = load(&req);
    assert_eq!(c.train.to_vec(), train.iter().map(|&i| i as u32).collect::<Vec<_>>());
    assert_eq!(c.val.to_vec(), vec![15496, 995]);
    assert_eq!(c.val_bytes, 11, "the bytes of the decoded text");
    assert_eq!(c.train_bytes, "The quick brown fox".len() as u64);
    // u32 too.
    let (wide, wide_val) = (dir.path().join("wide.bin"), dir.path().join("wide_val.bin"));
    let write_u32 = |path: &Path, ids: [u32; 2]| std::fs::write(path, ids.map(u32::to_le_bytes).concat()).unwrap();
    write_u32(&wide, [70_000, 5]);
    write_u32(&wide_val, [70_001, 6]);
    let mut req = request(&wide, "cl100k", dir.path());
    (req.format, req.val_path, req.dtype) = (Format::Tokens, Some(wide_val), Some(Dtype::U32));
    let c = load(&req);
    assert_eq!((c.train.to_vec(), c.val.to_vec()), (vec![70_000, 5], vec![70_001, 6]));
}

#[test]
fn the_cache_is_built_once_reused_rebuilt_when_corrupt_and_keyed_by_data_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let file = dir.path().join("c.txt");
    std::fs::write(&file, prose(50_000, 2)).unwrap();
    let req = request(&file, "gpt2", &cache);
    let first = load(&req);
    assert!(!first.from_cache);
    // A copy: `first` maps the cache file this test is about to corrupt in place.
    let want = first.train.to_vec();
    let second = load(&req);
    assert!(second.from_cache, "the second load reuses the cache");
    assert!(second.train.to_vec() == want);
    // Corrupt a token file: the load warns and tokenises again, to the same tokens.
    let bin = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".train.bin"))
        .unwrap();
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&bin, bytes).unwrap();
    let sink = std::sync::Arc::new(gptlab::events::Collect::default());
    gptlab::events::set_sink(sink.clone());
    let rebuilt = load(&req);
    assert!(!rebuilt.from_cache);
    assert!(rebuilt.train.to_vec() == want);
    let said: Vec<String> = sink.events().into_iter().map(|e| e.text).collect();
    let said = said.join("\n");
    assert!(
        said.contains("does not match its checksum") && said.contains("tokenising again"),
        "{said}"
    );
    assert!(load(&req).from_cache);
    // Another tokenizer, or changed data, is another entry.
    assert!(!load(&request(&file, "cl100k", &cache)).from_cache);
    std::fs::write(&file, prose(50_000, 3)).unwrap();
    assert!(!load(&req).from_cache);
}

#[test]
fn bits_per_byte_are_nats_per_char_over_ln2_for_ascii_and_a_hand_count_for_bpe() {
    let c = Corpus::from_text(&prose(10_000, 4), 0.1);
    for nats in [0.5, 1.7, 4.2] {
        assert_eq!(c.bits_per_byte(nats, Split::Val), nats / std::f64::consts::LN_2);
    }
    // "Hello world" is 2 GPT-2 tokens and 11 bytes; "The quick brown fox" 4 and 19.
    let dir = tempfile::tempdir().unwrap();
    let (tp, vp) = (dir.path().join("t.txt"), dir.path().join("v.txt"));
    std::fs::write(&tp, "The quick brown fox").unwrap();
    std::fs::write(&vp, "Hello world").unwrap();
    let mut req = request(&tp, "gpt2", dir.path());
    req.val_path = Some(vp);
    let c = load(&req);
    let ln2 = std::f64::consts::LN_2;
    assert!((c.bits_per_byte(1.5, Split::Val) - 1.5 * 2.0 / (11.0 * ln2)).abs() < 1e-12);
    assert!((c.bits_per_byte(3.0, Split::Train) - 3.0 * 4.0 / (19.0 * ln2)).abs() < 1e-12);
}

/// Files each wrong in one way, in `dir`.
fn write_bad_data(dir: &Path) {
    let p = |name: &str| -> PathBuf { dir.join(name) };
    let mut bad_utf8 = b"fine text ".to_vec();
    bad_utf8.push(0xc3);
    bad_utf8.extend_from_slice(b"(broken)");
    std::fs::write(p("latin1.txt"), &bad_utf8).unwrap();
    std::fs::write(p("empty.txt"), "").unwrap();
    std::fs::write(p("odd.bin"), [1u8, 0, 2]).unwrap();
    write_u16(&p("high.bin"), &[1, 60_000]);
    std::fs::write(p("broken.json"), "{ not json").unwrap();
    std::fs::write(p("ok.txt"), "some text to train on").unwrap();
    std::fs::write(p("a_file"), "not a folder").unwrap();
    let letters_only = r#"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
        "post_processor": null, "decoder": null, "model": {"type": "BPE", "vocab": {"e": 0, "t": 1}, "merges": []}}"#;
    std::fs::write(p("letters_only.json"), letters_only).unwrap();
    // Validation text that is also training text: the same file, or a copy in the training folder.
    std::fs::create_dir(p("folder")).unwrap();
    std::fs::write(p("folder/train.txt"), "text to train on").unwrap();
    std::fs::write(p("folder/val.txt"), "text to score").unwrap();
    std::fs::write(p("held_out.txt"), "text to score").unwrap();
    std::fs::write(p("ids.bin"), [1u32, 2, 3].map(u32::to_le_bytes).concat()).unwrap();
    std::fs::copy(p("ids.bin"), p("copy.bin")).unwrap();
}

/// Requests of the files of [`write_bad_data`] in `dir`, each with the key its error names and
/// words the error says.
fn bad_data_cases(dir: &Path) -> Vec<(CorpusRequest, &'static str, &'static str)> {
    let p = |name: &str| -> PathBuf { dir.join(name) };
    let cache = p("cache");
    let text = |path: &str, tok: &str| request(&p(path), tok, &cache);
    let tokens = |path: &str, tok: &str, dtype| CorpusRequest {
        format: Format::Tokens,
        dtype: Some(dtype),
        ..request(&p(path), tok, &cache)
    };
    vec![
        (text("latin1.txt", "gpt2"), "data.path", "invalid byte at offset 10"),
        (text("empty.txt", "char"), "data.path", "is empty"),
        (
            tokens("odd.bin", "gpt2", Dtype::U16),
            "data.path",
            "3 bytes long, not a whole number of u16",
        ),
        (
            tokens("high.bin", "gpt2", Dtype::U16),
            "data.path",
            "token id 60000, at or above the vocabulary size 50257",
        ),
        (tokens("high.bin", "o200k", Dtype::U16), "data.dtype", "use \"u32\""),
        (
            CorpusRequest {
                tokenizer: TokenizerSpec::File(TokenizerFile { file: p("broken.json") }),
                ..text("ok.txt", "x")
            },
            "data.tokenizer",
            "broken.json` is not a usable tokenizer.json",
        ),
        (
            CorpusRequest {
                val_path: Some(p("ok.txt")),
                ..text("ok.txt", "char")
            },
            "data.val_path",
            "ok.txt` is training text (it is read for training too)",
        ),
        (
            CorpusRequest {
                val_path: Some(p("held_out.txt")),
                ..text("folder", "gpt2")
            },
            "data.val_path",
            "held_out.txt` is training text (`",
        ),
        (
            CorpusRequest {
                val_path: Some(p("copy.bin")),
                ..tokens("ids.bin", "o200k", Dtype::U32)
            },
            "data.val_path",
            "copy.bin` is training text (`",
        ),
        (
            CorpusRequest {
                tokenizer: TokenizerSpec::File(TokenizerFile {
                    file: p("letters_only.json"),
                }),
                ..text("ok.txt", "x")
            },
            "data.tokenizer",
            "ok.txt`: it drops text it has no token for",
        ),
        (
            CorpusRequest {
                cache_dir: p("a_file").join("cache"),
                ..text("ok.txt", "gpt2")
            },
            "data.cache_dir",
            "cannot be written",
        ),
    ]
}

#[test]
fn bad_data_is_an_error_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_bad_data(dir.path());
    for (req, key, words) in bad_data_cases(dir.path()) {
        let errors = Corpus::load(&req).err().unwrap_or_else(|| panic!("{req:?} loaded"));
        assert!(
            errors.iter().any(|e| e.key == key && e.message.contains(words)),
            "{req:?}: want {key}: {words}, got {errors:?}"
        );
        if key == "data.path" {
            assert!(
                errors
                    .iter()
                    .any(|e| e.message.contains(&req.path.display().to_string())),
                "{errors:?}"
            );
        }
    }
}

#[test]
fn tiny_shakespeare_in_gpt2_tokens_has_nanogpts_published_counts() {
    // nanoGPT's data/shakespeare/prepare.py (the first 90% of the characters for training):
    // "train has 301,966 tokens, val has 36,059 tokens".
    let dir = tempfile::tempdir().unwrap();
    let c = load(&request(Path::new(&common_corpus()), "gpt2", dir.path()));
    assert_eq!((c.train.len(), c.val.len()), (301_966, 36_059));
}

fn common_corpus() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/data/tinyshakespeare.txt").to_string()
}

/// A Llama-style tokenizer.json: `▁` for spaces (prepended to the text), byte fallback, and a
/// decoder that strips the space it prepended.
fn llama_style_json() -> String {
    let mut vocab: Vec<String> = vec!["\"<unk>\": 0".into()];
    vocab.extend((0..256).map(|b| format!("\"<0x{b:02X}>\": {}", b + 1)));
    vocab.extend(
        ["▁", "a", "b", "▁a", "▁b", "ab"]
            .iter()
            .enumerate()
            .map(|(i, t)| format!("\"{t}\": {}", 257 + i)),
    );
    format!(
        r#"{{"version": "1.0", "added_tokens": [], "post_processor": null, "pre_tokenizer": null,
        "normalizer": {{"type": "Sequence", "normalizers": [{{"type": "Prepend", "prepend": "▁"}},
                       {{"type": "Replace", "pattern": {{"String": " "}}, "content": "▁"}}]}},
        "decoder": {{"type": "Sequence", "decoders": [{{"type": "Replace", "pattern": {{"String": "▁"}}, "content": " "}},
                     {{"type": "ByteFallback"}}, {{"type": "Fuse"}}, {{"type": "Strip", "content": " ", "start": 1, "stop": 0}}]}},
        "model": {{"type": "BPE", "vocab": {{{}}}, "merges": [["▁", "a"], ["▁", "b"], ["a", "b"]],
                   "byte_fallback": true, "unk_token": "<unk>", "fuse_unk": true}}}}"#,
        vocab.join(", ")
    )
}

/// A byte-level BPE tokenizer.json: GPT-2's 256-character alphabet and two merges.
fn byte_level_json() -> String {
    let alphabet = (33..=126).chain(161..=172).chain(174..=255).chain(256..=323);
    let vocab: Vec<String> = alphabet
        .map(|c| serde_json::to_string(&char::from_u32(c).unwrap().to_string()).unwrap())
        .chain(["\"\u{120}a\"".to_string(), "\"ab\"".to_string()])
        .enumerate()
        .map(|(i, t)| format!("{t}: {i}"))
        .collect();
    let byte_level = r#"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}"#;
    format!(
        r#"{{"version": "1.0", "added_tokens": [], "normalizer": null, "post_processor": null,
        "pre_tokenizer": {byte_level}, "decoder": {byte_level},
        "model": {{"type": "BPE", "vocab": {{{}}}, "merges": [["\u0120", "a"], ["a", "b"]]}}}}"#,
        vocab.join(", ")
    )
}

#[test]
fn a_tokenizer_files_tokens_count_the_bytes_of_the_text_they_encode() {
    // Bits per byte of a token file add up each token's bytes: they must be the text's,
    // characters cut across tokens and spaces inside `▁` included.
    let text = "ab ba aab \u{e9}\u{20ac} b, \u{4e2d}\u{6587}!";
    for (name, json, prepended) in [
        ("llama-style", llama_style_json(), 1),
        ("byte-level", byte_level_json(), 0),
        ("word-level", WORD_LEVEL.to_string(), 0),
    ] {
        let t = from_json(&json);
        let text = match name {
            "word-level" => "the cat sat the cat",
            _ => text,
        };
        let ids = ids(&t, text);
        assert_eq!(t.decode(&ids), text, "{name}");
        assert!(ids.len() < text.len(), "{name}: some tokens hold several bytes");
        let lengths = t.byte_lengths();
        let sum: u32 = ids.iter().map(|&i| lengths[i as usize]).sum();
        assert_eq!(sum as usize, text.len() + prepended, "{name}: {ids:?}");
    }
}
