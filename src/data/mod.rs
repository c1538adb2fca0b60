//! The data layer: where a corpus's text is, the tokenizer that turns it into ids (the one
//! place that knows what a token is made of), the tokens cached and memory-mapped, and the
//! seeded windows training draws from them.

mod cache;
mod jsonl;
mod source;
mod tokenizer;
mod tokens;
mod trained;

use std::path::{Path, PathBuf};

use rand::Rng;

pub use cache::key as cache_key;
pub use source::{DataFile, safe_cut};
pub use tokenizer::train::byte_level_bpe;
pub use tokenizer::{BUILT_IN, Tokenizer, TokenizerFile, TokenizerRecord, TokenizerSpec, TrainedTokenizer};
pub use tokens::{Dtype, Tokens};

/// `[data] format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// UTF-8 text, tokenised by gptlab.
    #[default]
    Text,
    /// Token ids already laid out (nanoGPT's `train.bin`).
    Tokens,
    /// JSON Lines: a document per line, its text a string field (`text_field`).
    Jsonl,
}

/// One of the two splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The head of the corpus.
    Train,
    /// The held-out tail.
    Val,
}

/// Everything the data layer needs to load a corpus, paths resolved.
#[derive(Clone, Debug)]
pub struct CorpusRequest {
    /// A file or a folder.
    pub path: PathBuf,
    /// Validation text (or tokens) of its own.
    pub val_path: Option<PathBuf>,
    /// Without `val_path`, the share held out.
    pub val_fraction: f64,
    /// A folder's files to read.
    pub include: Vec<String>,
    /// The tokenizer, a file's path resolved.
    pub tokenizer: TokenizerSpec,
    /// Text or tokens.
    pub format: Format,
    /// The width of stored tokens (`format = "tokens"`).
    pub dtype: Option<Dtype>,
    /// The field of each line's text (`format = "jsonl"`).
    pub text_field: String,
    /// Where tokenised text is kept.
    pub cache_dir: PathBuf,
}

/// What is wrong with a corpus, and the `[data]` key it comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct DataError {
    /// `data.path`, `data.tokenizer`, ….
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
    /// The machine's problem, not the spec's: the disk is full ([`crate::fsio::disk_full`]).
    pub io: bool,
}

fn at(key: &'static str) -> impl Fn(String) -> DataError {
    move |message| DataError {
        key,
        message,
        io: false,
    }
}

/// `key`'s problem from an I/O failure `e`, said as `message`: the machine's when the disk is
/// full, else the key's (a folder that cannot be written is the spec's to change).
fn io_at(key: &'static str, e: &anyhow::Error, message: String) -> DataError {
    DataError {
        key,
        message,
        io: e
            .chain()
            .filter_map(|c| c.downcast_ref::<std::io::Error>())
            .any(crate::fsio::disk_full),
    }
}

/// A tokenised corpus split into a training head and a validation tail.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// How its text becomes ids.
    pub tokenizer: Tokenizer,
    /// The training tokens.
    pub train: Tokens,
    /// The validation tokens.
    pub val: Tokens,
    /// UTF-8 bytes of the training text (for bits per byte).
    pub train_bytes: u64,
    /// UTF-8 bytes of the validation text.
    pub val_bytes: u64,
    /// The corpus's files with their hashes (provenance).
    pub files: Vec<DataFile>,
    /// `val_path`'s files.
    pub val_files: Vec<DataFile>,
    /// SHA-256 of the corpus (one file's own hash; a folder's listing of hashes).
    pub sha256: String,
    /// SHA-256 of `val_path`'s data.
    pub val_sha256: Option<String>,
    /// Whether the tokens came from the cache (false: tokenised by this load, or in memory).
    pub from_cache: bool,
}

impl Corpus {
    /// A character corpus from `text` held in memory: the last `val_fraction` of its
    /// characters are for validation.
    pub fn from_text(text: &str, val_fraction: f64) -> Self {
        let tokenizer = Tokenizer::chars_of(text);
        let n_chars = text.chars().count();
        let n_train = ((n_chars as f64) * (1.0 - val_fraction)).floor() as usize;
        let cut = text.char_indices().nth(n_train).map_or(text.len(), |(i, _)| i);
        let (train, val) = text.split_at(cut);
        let tokens = |t: &str| {
            Tokens::from_ids(
                tokenizer.encode(t).expect("the vocabulary covers its own text"),
                Dtype::U16,
            )
        };
        Self {
            train: tokens(train),
            val: tokens(val),
            train_bytes: train.len() as u64,
            val_bytes: val.len() as u64,
            files: vec![],
            val_files: vec![],
            sha256: crate::fsio::sha256_hex(text.as_bytes()),
            val_sha256: None,
            from_cache: false,
            tokenizer,
        }
    }

    /// A character corpus from a UTF-8 file read whole (small corpora, tests); training loads
    /// through [`Corpus::load`] and its cache.
    pub fn from_file(path: &Path, val_fraction: f64) -> anyhow::Result<Self> {
        let text = crate::fsio::read_text_capped(path, u64::MAX, "the corpus")?;
        Ok(Self::from_text(&text, val_fraction))
    }

    /// Loads (tokenising once, then from the cache) the corpus `req` describes; every
    /// problem found is returned with the key it comes from.
    pub fn load(req: &CorpusRequest) -> Result<Self, Vec<DataError>> {
        let tokenizer = match &req.tokenizer {
            t if t.is_char() => None,
            TokenizerSpec::Named(name) => Some(
                Tokenizer::bpe(name)
                    .ok_or_else(|| vec![at("data.tokenizer")(req.tokenizer.problem().unwrap_or_default())])?,
            ),
            TokenizerSpec::File(f) => Some(load_tokenizer_file(&f.file).map_err(|e| vec![e])?),
            // Learned from the split text, in `load_text`.
            TokenizerSpec::Train(_) => None,
        };
        match req.format {
            Format::Text | Format::Jsonl => load_text(req, tokenizer.as_ref()),
            Format::Tokens => load_tokens(req, tokenizer),
        }
    }

    /// The tokens of a split.
    pub fn split(&self, split: Split) -> &Tokens {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// Tokens per byte of a split's text: a loss in nats per token times this, over ln 2, is
    /// in bits per byte.
    pub fn tokens_per_byte(&self, split: Split) -> f64 {
        let bytes = match split {
            Split::Train => self.train_bytes,
            Split::Val => self.val_bytes,
        };
        self.split(split).len() as f64 / bytes.max(1) as f64
    }

    /// A loss in nats per token as bits per UTF-8 byte of the split's text.
    pub fn bits_per_byte(&self, nats: f64, split: Split) -> f64 {
        nats * self.tokens_per_byte(split) / std::f64::consts::LN_2
    }
}

/// Where tokenised text is cached when `[data] cache_dir` is not set: `$GPTLAB_CACHE_DIR`,
/// else the user's cache folder (`$XDG_CACHE_HOME/gptlab/tokens`, `~/.cache/gptlab/tokens`),
/// shared by every experiment (and by the nodes of a cluster that share the home folder);
/// `<runs_dir>/.cache/tokens` without a home.
pub fn default_cache_dir(runs_dir: &Path) -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("GPTLAB_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("gptlab").join("tokens")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("gptlab").join("tokens")))
        .unwrap_or_else(|| runs_dir.join(".cache").join("tokens"))
}

/// The most a `tokenizer.json` may hold (the largest published ones are tens of MB).
const MAX_TOKENIZER_BYTES: u64 = 512 << 20;

fn load_tokenizer_file(file: &Path) -> Result<Tokenizer, DataError> {
    let json = crate::fsio::read_capped_or_why(file, MAX_TOKENIZER_BYTES)
        .map_err(|why| format!("tokenizer file `{}` {why}", file.display()))
        .map_err(at("data.tokenizer"))?;
    Tokenizer::from_json(json, file)
        .map_err(|why| format!("tokenizer file `{}` {why}", file.display()))
        .map_err(at("data.tokenizer"))
}

fn load_text(req: &CorpusRequest, tokenizer: Option<&Tokenizer>) -> Result<Corpus, Vec<DataError>> {
    let list = |path: &Path, key| source::list_files(path, &req.include).map_err(|e| vec![at(key)(e)]);
    let field: Option<std::sync::Arc<str>> = (req.format == Format::Jsonl).then(|| req.text_field.as_str().into());
    let scan_one = |p: &Path| match &field {
        Some(field) => source::scan_json_lines(p, field),
        None => source::scan_text(p),
    };
    let scan = |paths: &[PathBuf], key| {
        source::scan_all(paths, scan_one).map_err(|es| es.into_iter().map(at(key)).collect::<Vec<_>>())
    };
    let files = scan(&list(&req.path, "data.path")?, "data.path")?;
    let val_files = match &req.val_path {
        Some(p) => scan(&list(p, "data.val_path")?, "data.val_path")?,
        None => vec![],
    };
    let mut errors = vec![];
    for (path, set, key, use_) in [
        (Some(&req.path), &files, "data.path", "train"),
        (req.val_path.as_ref(), &val_files, "data.val_path", "validate"),
    ] {
        if let Some(path) = path
            && set.iter().all(|f| f.bytes == 0)
        {
            errors.push(at(key)(format!(
                "`{}` is empty: there is no text to {use_} on",
                path.display()
            )));
        }
    }
    errors.extend(validation_in_training(&files, &val_files));
    if !errors.is_empty() {
        return Err(errors);
    }
    let scanned = source::Scanned { files, val_files };
    let split = source::split_text(&scanned, req.val_fraction, req.val_path.is_some(), field.clone())
        .map_err(|e| vec![at("data.path")(e)])?;
    let sha256 = source::files_sha256(&scanned.files, &req.path);
    let val_sha256 = req
        .val_path
        .as_ref()
        .map(|p| source::files_sha256(&scanned.val_files, p));
    let split_said = match &val_sha256 {
        Some(v) => format!("val_path {v}"),
        None => format!("val_fraction {}", req.val_fraction),
    };
    // The same bytes read as JSON Lines are other text (and each field is other text).
    let read_as = field.map_or_else(String::new, |f| format!(" jsonl {f:?}"));
    let text_said = format!("text {sha256} {split_said}{read_as}");
    let trained;
    let tokenizer = match &req.tokenizer {
        TokenizerSpec::Train(t) => {
            let key = cache_key(&text_said, &format!("{} {}", tokenizer::train::RECIPE, t.vocab_size));
            trained = trained::bpe(&split, t.vocab_size, &req.cache_dir, &key).map_err(|e| vec![e])?;
            Some(&trained)
        }
        _ => tokenizer,
    };
    let tokenizer_said = tokenizer.map_or_else(|| "char".to_string(), Tokenizer::cache_identity);
    let key = cache_key(&text_said, &tokenizer_said);
    let done = cache::tokenise(&split, tokenizer, &req.cache_dir, &key).map_err(|e| vec![e])?;
    Ok(Corpus {
        tokenizer: done.tokenizer,
        train: done.train,
        val: done.val,
        train_bytes: done.meta.train.bytes,
        val_bytes: done.meta.val.bytes,
        files: scanned.files,
        val_files: scanned.val_files,
        sha256,
        val_sha256,
        from_cache: done.reused,
    })
}

/// A token file: its hash, and its ids checked against the width and the vocabulary.
fn token_file(
    path: &Path,
    dtype: Dtype,
    tokenizer: &Tokenizer,
    key: &'static str,
) -> Result<(Tokens, DataFile), DataError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("`{}` cannot be read: {e}", path.display()))
        .map_err(at(key))?;
    if !meta.is_file() {
        return Err(at(key)(format!(
            "`{}` is not a regular file; format = \"tokens\" reads one .bin file",
            path.display()
        )));
    }
    if meta.len() % dtype.width() as u64 != 0 {
        return Err(at(key)(format!(
            "`{}` is {} bytes long, not a whole number of {dtype} tokens ({} bytes each): is dtype right?",
            path.display(),
            meta.len(),
            dtype.width()
        )));
    }
    let tokens = Tokens::map(path, dtype).map_err(|e| at(key)(format!("{e:#}")))?;
    if let Some(max) = tokens.max_id()
        && max as usize >= tokenizer.vocab_size()
    {
        return Err(at(key)(format!(
            "`{}` holds token id {max}, at or above the vocabulary size {} of the tokenizer {}",
            path.display(),
            tokenizer.vocab_size(),
            tokenizer.record()
        )));
    }
    let file = DataFile {
        path: path.to_path_buf(),
        sha256: crate::fsio::sha256_hex(tokens.as_le_bytes()),
        bytes: meta.len(),
        units: tokens.len() as u64,
    };
    Ok((tokens, file))
}

/// A `val_path` file whose bytes are also a training file's (the same file, or a copy inside a
/// training folder): its losses would be scored on text the model trains on.
fn validation_in_training(train: &[DataFile], val: &[DataFile]) -> Vec<DataError> {
    val.iter()
        .filter(|v| v.bytes > 0)
        .filter_map(|v| {
            let t = train.iter().find(|t| t.sha256 == v.sha256)?;
            let same = match t.path == v.path {
                true => "it is read for training too".to_string(),
                false => format!("`{}` holds the same bytes", t.path.display()),
            };
            Some(at("data.val_path")(format!(
                "`{}` is training text ({same}): validation would score text the model trains on; keep \
                 it out of `path` (another folder, or `include` patterns that skip it) or leave val_path \
                 out to hold out val_fraction",
                v.path.display(),
            )))
        })
        .collect()
}

/// The UTF-8 bytes `tokens` decode to, token by token.
fn decoded_bytes(tokens: &Tokens, lengths: &[u32]) -> u64 {
    use rayon::prelude::*;
    (0..tokens.len())
        .into_par_iter()
        .with_min_len(1 << 16)
        .map(|i| lengths.get(tokens.get(i) as usize).copied().unwrap_or(0) as u64)
        .sum()
}

fn load_tokens(req: &CorpusRequest, tokenizer: Option<Tokenizer>) -> Result<Corpus, Vec<DataError>> {
    let Some(tokenizer) = tokenizer else {
        let why = "format = \"tokens\" needs the tokenizer the ids came from (e.g. \"gpt2\"): `char` and a trained BPE learn their vocabulary from text";
        return Err(vec![at("data.tokenizer")(why.into())]);
    };
    let dtype = req.dtype.unwrap_or_default();
    if tokenizer.vocab_size() > dtype.max_vocab() {
        return Err(vec![at("data.dtype")(format!(
            "dtype {dtype} holds ids below {}, but the tokenizer {} has {} tokens: use \"u32\"",
            dtype.max_vocab(),
            tokenizer.record(),
            tokenizer.vocab_size()
        ))]);
    }
    let (train_all, file) = token_file(&req.path, dtype, &tokenizer, "data.path").map_err(|e| vec![e])?;
    let (train, val, val_files) = match &req.val_path {
        Some(p) => {
            let (val, vfile) = token_file(p, dtype, &tokenizer, "data.val_path").map_err(|e| vec![e])?;
            let overlap = validation_in_training(std::slice::from_ref(&file), std::slice::from_ref(&vfile));
            if !overlap.is_empty() {
                return Err(overlap);
            }
            (train_all, val, vec![vfile])
        }
        None => {
            let cut = ((train_all.len() as f64) * (1.0 - req.val_fraction)).floor() as usize;
            (train_all.slice(0..cut), train_all.slice(cut..train_all.len()), vec![])
        }
    };
    let lengths = tokenizer.byte_lengths();
    Ok(Corpus {
        train_bytes: decoded_bytes(&train, &lengths),
        val_bytes: decoded_bytes(&val, &lengths),
        train,
        val,
        sha256: file.sha256.clone(),
        val_sha256: val_files.first().map(|f| f.sha256.clone()),
        files: vec![file],
        val_files,
        from_cache: false,
        tokenizer,
    })
}

/// `b` windows of `t + 1` tokens: inputs are the first `t`, targets the last `t`, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Sequences.
    pub b: usize,
    /// Sequence length.
    pub t: usize,
    /// `(B, T)` input tokens.
    pub inputs: Vec<usize>,
    /// `(B, T)` next tokens.
    pub targets: Vec<usize>,
}

impl Batch {
    /// The `k`-th run of `micro` windows (the batch split into micro-batches of `micro`).
    pub fn part(&self, k: usize, micro: usize) -> Batch {
        let rows = k * micro * self.t..(k + 1) * micro * self.t;
        Batch {
            b: micro,
            t: self.t,
            inputs: self.inputs[rows.clone()].to_vec(),
            targets: self.targets[rows].to_vec(),
        }
    }
}

/// Draws `b` uniformly placed windows of `t + 1` tokens from `tokens`.
///
/// `tokens.len() > t` is the caller's contract (the planner checks it against the split).
pub fn sample_batch(tokens: &Tokens, b: usize, t: usize, rng: &mut impl Rng) -> Batch {
    assert!(
        tokens.len() > t,
        "corpus of {} tokens is too short for windows of {}",
        tokens.len(),
        t + 1
    );
    let mut inputs = Vec::with_capacity(b * t);
    let mut targets = Vec::with_capacity(b * t);
    for _ in 0..b {
        let start = rng.gen_range(0..tokens.len() - t);
        tokens.extend_into(start..start + t, &mut inputs);
        tokens.extend_into(start + 1..start + t + 1, &mut targets);
    }
    Batch { b, t, inputs, targets }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_full_disk_is_the_machines_problem_and_a_folder_that_cannot_be_written_the_specs() {
        use std::io::{Error, ErrorKind};
        let said = |kind: ErrorKind| {
            let e = anyhow::Error::from(Error::from(kind)).context("writing x.tmp");
            io_at("data.cache_dir", &e, format!("{e:#}")).io
        };
        assert!(said(ErrorKind::StorageFull) && said(ErrorKind::QuotaExceeded));
        assert!(!said(ErrorKind::PermissionDenied) && !said(ErrorKind::NotFound));
        // As the OS reports it: ENOSPC.
        assert!(crate::fsio::disk_full(&Error::from_raw_os_error(libc::ENOSPC)));
    }

    #[test]
    fn split_keeps_every_token_once() {
        let c = Corpus::from_text("abcdefghij", 0.2);
        assert_eq!(c.train.len(), 8);
        assert_eq!(c.val.len(), 2);
        assert_eq!(c.tokenizer.decode(&c.val.to_vec()), "ij");
        assert_eq!((c.train_bytes, c.val_bytes), (8, 2));
    }

    #[test]
    fn windows_are_shifted_by_one_and_seeded() {
        let tokens = Tokens::from_ids(0..100, Dtype::U16);
        let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let a = sample_batch(&tokens, 4, 10, &mut r1);
        assert_eq!(a, sample_batch(&tokens, 4, 10, &mut r2));
        for (x, y) in a.inputs.iter().zip(&a.targets) {
            assert_eq!(x + 1, *y);
        }
        // The last window may end exactly at the last token.
        let small = Tokens::from_ids(0..11, Dtype::U16);
        let s = sample_batch(&small, 3, 10, &mut r1);
        assert_eq!(s.inputs[..10], (0..10).collect::<Vec<usize>>()[..]);
    }
}
