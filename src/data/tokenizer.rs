//! The one type that knows what a token is made of: characters, OpenAI's byte-level BPE
//! (`tiktoken-rs`, vocabularies inside the crate), a Hugging Face `tokenizer.json`
//! (`tokenizers`, pure Rust, never the hub) or a byte-level BPE trained on the corpus
//! (`tokenizers`' trainer, [`train`]). Everything else sees ids and a vocabulary size.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod hf;
pub mod train;
use hf::{dropped_text, file_token_bytes};

/// `[data] tokenizer`: a built-in name, `{ file = "tokenizer.json" }` or `{ train = "bpe",
/// vocab_size = N }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "must be a tokenizer name (\"char\", \"gpt2\", \"cl100k\", \"o200k\"), { file = \"path/to/tokenizer.json\" } or { train = \"bpe\", vocab_size = 4096 } (no other key)"
)]
pub enum TokenizerSpec {
    /// `char`, `gpt2`, `cl100k` or `o200k`.
    Named(String),
    /// A Hugging Face tokenizer file.
    File(TokenizerFile),
    /// A byte-level BPE trained on the corpus's training split.
    Train(TrainedTokenizer),
}

/// `{ train = "bpe", vocab_size = 4096 }`: a GPT-2-style byte-level BPE learned from the
/// training split (never the validation text), `vocab_size` tokens in all: the 256 bytes,
/// `vocab_size − 257` merges and `<|endoftext|>` between documents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainedTokenizer {
    /// The algorithm: `bpe`.
    pub train: String,
    /// Tokens in the vocabulary, the separator included.
    pub vocab_size: usize,
}

/// `{ file = "tokenizer.json" }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerFile {
    /// Its path (relative: to the working directory, then the spec's folder).
    pub file: PathBuf,
}

impl Default for TokenizerSpec {
    fn default() -> Self {
        TokenizerSpec::Named("char".into())
    }
}

/// The built-in names `[data] tokenizer` takes.
pub const BUILT_IN: [&str; 4] = ["char", "gpt2", "cl100k", "o200k"];

impl TokenizerSpec {
    /// Why the value cannot be used, if it cannot (an unknown name).
    pub fn problem(&self) -> Option<String> {
        match self {
            TokenizerSpec::Named(n) if n.ends_with(".json") || n.contains(['/', '\\']) => Some(format!(
                "unknown tokenizer `{n}`: a tokenizer file is written {{ file = \"{n}\" }}"
            )),
            TokenizerSpec::Named(n) if !BUILT_IN.contains(&n.as_str()) => Some(format!(
                "unknown tokenizer `{n}`: use one of {}, {{ file = \"path/to/tokenizer.json\" }} or {{ train = \"bpe\", vocab_size = 4096 }}",
                BUILT_IN.map(|b| format!("`{b}`")).join(", ")
            )),
            TokenizerSpec::Train(t) if t.train != "bpe" => Some(format!(
                "cannot train a `{}` tokenizer: train = \"bpe\" (a byte-level BPE) is the one gptlab trains",
                t.train
            )),
            TokenizerSpec::Train(t) if !train::VOCAB_SIZES.contains(&t.vocab_size) => Some(format!(
                "vocab_size {} is outside {}..={}: a trained BPE holds the 256 bytes and `<|endoftext|>`, at least",
                t.vocab_size,
                train::VOCAB_SIZES.start(),
                train::VOCAB_SIZES.end()
            )),
            _ => None,
        }
    }

    /// Whether this is the character tokenizer (its vocabulary comes from the corpus).
    pub fn is_char(&self) -> bool {
        matches!(self, TokenizerSpec::Named(n) if n == "char")
    }

    /// Whether the tokenizer is made from the corpus's text (`char`, or a trained BPE), and so
    /// cannot read ids already made.
    pub fn learns_from_text(&self) -> bool {
        self.is_char() || matches!(self, TokenizerSpec::Train(_))
    }
}

/// What a checkpoint and `provenance.json` record of a tokenizer: enough to refuse another one
/// and to rebuild this one (a file tokenizer's JSON is kept beside the run as `tokenizer.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerRecord {
    /// `char`, `gpt2`, `cl100k`, `o200k`, `file` or `bpe` (trained on the corpus).
    pub name: String,
    /// SHA-256 of the tokenizer's JSON (`file` and `bpe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where the file was read from (`file` only; for messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
}

impl TokenizerRecord {
    /// Whether the tokenizer is rebuilt from its JSON (kept beside the run as `tokenizer.json`).
    pub fn has_json(&self) -> bool {
        self.sha256.is_some()
    }

    /// The record of checkpoints written before tokenizers existed: characters.
    pub fn chars(vocab_size: usize) -> Self {
        Self {
            name: "char".into(),
            sha256: None,
            file: None,
            vocab_size,
        }
    }
}

impl std::fmt::Display for TokenizerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, &self.sha256) {
            (Some(file), Some(sha)) => write!(f, "tokenizer file {file} (SHA-256 {}…)", &sha[..sha.len().min(12)]),
            (None, Some(sha)) => write!(
                f,
                "`{}` ({} tokens, trained on the corpus; SHA-256 {}…)",
                self.name,
                self.vocab_size,
                &sha[..sha.len().min(12)]
            ),
            _ => write!(f, "`{}` ({} tokens)", self.name, self.vocab_size),
        }
    }
}

#[derive(Clone)]
enum Kind {
    /// Sorted distinct characters; a token is an index into them.
    Char(Arc<Vec<char>>),
    /// OpenAI's byte-level BPE.
    Bpe(&'static tiktoken_rs::CoreBPE),
    /// A Hugging Face tokenizer and the bytes of its file.
    File {
        inner: Arc<tokenizers::Tokenizer>,
        json: Arc<Vec<u8>>,
    },
}

/// Encodes text to ids and back.
#[derive(Clone)]
pub struct Tokenizer {
    kind: Kind,
    record: TokenizerRecord,
    separator: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({})", self.record)
    }
}

/// The separator tokens a Hugging Face tokenizer may have, in order of preference.
const SEPARATORS: [&str; 5] = ["<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]"];

impl Tokenizer {
    /// Characters: the vocabulary is `chars`, sorted and distinct.
    pub fn chars(chars: Vec<char>) -> Self {
        debug_assert!(chars.windows(2).all(|w| w[0] < w[1]));
        Self {
            record: TokenizerRecord::chars(chars.len()),
            kind: Kind::Char(Arc::new(chars)),
            separator: None,
        }
    }

    /// Every distinct character of `text`, sorted, as a tokenizer.
    pub fn chars_of(text: &str) -> Self {
        let set: BTreeSet<char> = text.chars().collect();
        Self::chars(set.into_iter().collect())
    }

    /// A built-in byte-level BPE: `gpt2`, `cl100k` or `o200k`.
    pub fn bpe(name: &str) -> Option<Self> {
        let bpe = match name {
            "gpt2" => tiktoken_rs::r50k_base_singleton(),
            "cl100k" => tiktoken_rs::cl100k_base_singleton(),
            "o200k" => tiktoken_rs::o200k_base_singleton(),
            _ => return None,
        };
        // The vocabulary runs to the largest id, special tokens included (GPT-2: 50,257).
        let special_ids = bpe
            .special_tokens()
            .into_iter()
            .flat_map(|s| bpe.encode_with_special_tokens(s))
            .max()
            .unwrap_or(0);
        let ordinary = (0..1u32 << 18)
            .rev()
            .find(|&id| bpe.decode_bytes(&[id]).is_ok())
            .unwrap_or(0);
        let separator = bpe.encode_with_special_tokens("<|endoftext|>");
        Some(Self {
            record: TokenizerRecord {
                name: name.into(),
                sha256: None,
                file: None,
                vocab_size: special_ids.max(ordinary) as usize + 1,
            },
            kind: Kind::Bpe(bpe),
            separator: (separator.len() == 1).then(|| separator[0]),
        })
    }

    /// A Hugging Face `tokenizer.json`, from its bytes; `shown` names it in messages.
    pub fn from_json(json: Vec<u8>, shown: &Path) -> Result<Self, String> {
        let mut inner =
            tokenizers::Tokenizer::from_bytes(&json).map_err(|e| format!("is not a usable tokenizer.json: {e}"))?;
        // A corpus is encoded in pieces of about 1 MiB: a `truncation` or `padding` saved in
        // the file (as files exported for classification carry) would keep each piece's first
        // tokens or pad it. The post-processor adds special tokens only when asked (never
        // here); as `ByteLevel` it trims spaces off the offsets, which would read as dropped text.
        // A special token's string in the text is ordinary text, as with the OpenAI encodings.
        inner.set_encode_special_tokens(true);
        inner
            .with_truncation(None)
            .map_err(|e| format!("is not a usable tokenizer.json: {e}"))?
            .with_padding(None)
            .with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        // One past the largest id, not the count of tokens: ids may leave holes (as the OpenAI
        // encodings' do), and the model must have a row for every id the text can produce.
        let vocab_size = inner.get_vocab(true).values().max().map_or(0, |&id| id as usize + 1);
        if vocab_size < 2 {
            return Err(format!(
                "has a vocabulary of {vocab_size} tokens; at least 2 are needed"
            ));
        }
        let separator = SEPARATORS.iter().find_map(|s| inner.token_to_id(s));
        Ok(Self {
            record: TokenizerRecord {
                name: "file".into(),
                sha256: Some(crate::fsio::sha256_hex(&json)),
                file: Some(shown.display().to_string()),
                vocab_size,
            },
            kind: Kind::File {
                inner: Arc::new(inner),
                json: Arc::new(json),
            },
            separator,
        })
    }

    /// A byte-level BPE trained on the corpus ([`train::byte_level_bpe`]), from its JSON.
    pub fn trained(json: Vec<u8>) -> Result<Self, String> {
        let mut t = Self::from_json(json, Path::new("trained"))?;
        t.record.name = "bpe".into();
        t.record.file = None;
        Ok(t)
    }

    /// Rebuilds the tokenizer a checkpoint recorded: `chars` for a character vocabulary,
    /// `json` (the run's `tokenizer.json`) for a file tokenizer or a trained one.
    pub fn from_record(record: &TokenizerRecord, chars: &[char], json: Option<Vec<u8>>) -> Result<Self, String> {
        let rebuilt = match record.name.as_str() {
            "char" => Self::chars(chars.to_vec()),
            "file" | "bpe" => {
                let json = json.ok_or_else(|| format!("the run's tokenizer.json ({record}) is missing"))?;
                let mut t = Self::from_json(json, Path::new(record.file.as_deref().unwrap_or("tokenizer.json")))?;
                t.record.name.clone_from(&record.name);
                t.record.file.clone_from(&record.file);
                t
            }
            name => Self::bpe(name).ok_or_else(|| format!("unknown tokenizer `{name}` in the checkpoint"))?,
        };
        if rebuilt.record.sha256 != record.sha256 || rebuilt.vocab_size() != record.vocab_size {
            return Err(format!(
                "the tokenizer found is {}, not the {record} the run was trained with",
                rebuilt.record
            ));
        }
        Ok(rebuilt)
    }

    /// What identifies it.
    pub fn record(&self) -> &TokenizerRecord {
        &self.record
    }

    /// What the token cache keys its entries by. A file tokenizer's entries made before its
    /// truncation, padding and dropped text were dealt with (see [`Tokenizer::from_json`]) may
    /// hold cut or padded tokens: its key says they are not those.
    pub fn cache_identity(&self) -> String {
        match &self.kind {
            Kind::File { .. } => format!("{:?} whole, unpadded, nothing dropped", self.record),
            _ => format!("{:?}", self.record),
        }
    }

    /// Tokens in the vocabulary: the model's embedding and output sizes.
    pub fn vocab_size(&self) -> usize {
        self.record.vocab_size
    }

    /// The token put between documents, if the tokenizer has one (GPT-2's `<|endoftext|>`).
    pub fn separator(&self) -> Option<u32> {
        self.separator
    }

    /// The characters of a character tokenizer.
    pub fn char_vocab(&self) -> Option<&[char]> {
        match &self.kind {
            Kind::Char(chars) => Some(chars),
            _ => None,
        }
    }

    /// The bytes of a file tokenizer's or a trained one's JSON (copied into the run folder).
    pub fn json(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::File { json, .. } => Some(json),
            _ => None,
        }
    }

    /// The ids of `text`; special-token strings in the text are ordinary text. A character
    /// outside a character vocabulary is an error naming every such character.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        match &self.kind {
            Kind::Char(chars) => {
                let mut unknown: Vec<char> = vec![];
                let ids = text
                    .chars()
                    .filter_map(|c| match chars.binary_search(&c) {
                        Ok(i) => Some(i as u32),
                        Err(_) => {
                            if !unknown.contains(&c) {
                                unknown.push(c);
                            }
                            None
                        }
                    })
                    .collect();
                match unknown.is_empty() {
                    true => Ok(ids),
                    false => Err(format!("characters not in the vocabulary: {unknown:?}")),
                }
            }
            Kind::Bpe(bpe) => Ok(bpe.encode_ordinary(text)),
            Kind::File { inner, .. } => {
                let encoding = inner
                    .encode(text, false)
                    .map_err(|e| format!("the tokenizer failed: {e}"))?;
                let dropped_alone = |c: char| {
                    let mut buf = [0; 4];
                    inner
                        .encode(&*c.encode_utf8(&mut buf), false)
                        .is_ok_and(|e| e.get_offsets().iter().all(|&(s, e)| s >= e))
                };
                match dropped_text(text, encoding.get_offsets(), dropped_alone) {
                    None => Ok(encoding.get_ids().to_vec()),
                    Some(dropped) => Err(dropped),
                }
            }
        }
    }

    /// The text of `ids`; bytes that do not form UTF-8 on their own (a token cut mid
    /// character) show as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.kind {
            Kind::Char(chars) => ids
                .iter()
                .map(|&i| chars.get(i as usize).copied().unwrap_or('\u{FFFD}'))
                .collect(),
            Kind::Bpe(bpe) => {
                let bytes: Vec<u8> = ids
                    .iter()
                    .flat_map(|&id| bpe.decode_bytes(&[id]).unwrap_or_default())
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Kind::File { inner, .. } => inner.decode(ids, false).unwrap_or_default(),
        }
    }

    /// [`Tokenizer::decode`] of model ids.
    pub fn decode_usize(&self, ids: &[usize]) -> String {
        self.decode(&ids.iter().map(|&i| i as u32).collect::<Vec<_>>())
    }

    /// The UTF-8 length of each token on its own, by id: the bytes of pre-tokenised data,
    /// whose text is not at hand (for bits per byte).
    pub fn byte_lengths(&self) -> Vec<u32> {
        let n = self.vocab_size() as u32;
        match &self.kind {
            Kind::Char(chars) => chars.iter().map(|c| c.len_utf8() as u32).collect(),
            Kind::Bpe(bpe) => (0..n)
                .map(|id| bpe.decode_bytes(&[id]).map_or(0, |b| b.len() as u32))
                .collect(),
            Kind::File { inner, .. } => file_token_bytes(inner, n),
        }
    }

    /// Whether pieces of text encode faster on several threads than on one. Not a Hugging Face
    /// tokenizer's: it allocates for every token, and the process keeps one allocator arena
    /// for every thread (`crate::alloc`), whose lock the threads then queue for (tiny-shakespeare
    /// ×3 with a trained 4,000-token BPE, Zen 3: 2.9 MB/s on one thread, 1.9 on two; GPT-2
    /// through tiktoken: 10.7 on one, 16.4 on two).
    pub fn encodes_faster_in_parallel(&self) -> bool {
        !matches!(self.kind, Kind::File { .. })
    }

    /// Whether text cut before a space between two ASCII letters encodes as the whole does
    /// (true of every byte-level BPE and of whitespace pre-tokenizers; not of a tokenizer that
    /// prepends a marker to each call): then a long document is tokenised in parallel chunks.
    pub fn chunks_safely(&self) -> bool {
        match &self.kind {
            Kind::Char(_) | Kind::Bpe(_) => true,
            Kind::File { .. } => {
                let probe = ["The cat sat on the mat", "The cat", " sat on", " the mat"];
                let whole = self.encode(probe[0]);
                let parts: Result<Vec<u32>, String> = probe[1..]
                    .iter()
                    .map(|p| self.encode(p))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|v| v.concat());
                whole.is_ok() && whole == parts
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_round_trip_and_unknown_ones_are_named() {
        let t = Tokenizer::chars_of("hello world");
        assert_eq!(t.vocab_size(), 8);
        assert_eq!(t.decode(&t.encode("world").unwrap()), "world");
        let err = t.encode("hi!").unwrap_err();
        assert!(err.contains("'i'") && err.contains("'!'"), "{err}");
    }

    #[test]
    fn unknown_names_are_refused_with_the_choices() {
        let why = TokenizerSpec::Named("gpt3".into()).problem().unwrap();
        assert!(
            why.contains("`gpt3`") && why.contains("`o200k`") && why.contains("file ="),
            "{why}"
        );
        assert!(TokenizerSpec::default().problem().is_none());
        let why = TokenizerSpec::Named("tok/en.json".into()).problem().unwrap();
        assert!(why.contains(r#"{ file = "tok/en.json" }"#), "{why}");
    }
}
