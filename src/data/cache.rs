//! Tokenising a corpus once: the tokens of each split go to a file in the cache folder, named
//! by a key over the data's and the tokenizer's hashes, written atomically with its SHA-256
//! in a `.json` beside it, checked when reused and memory-mapped for training.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::source::{Document, Piece, TextSplit, for_each_piece, safe_cut};
use super::{DataError, Dtype, Tokenizer, Tokens, at, io_at};

/// Layout version of the cache files (part of every key).
const VERSION: u32 = 1;

/// Text below this size is tokenised (or reused) without a word: it takes a moment.
pub(super) const QUIET_BELOW: u64 = 2 << 20;

/// Text tokenised at once, across the threads: 16 pieces of a file (about 1 MiB each), or as
/// many documents of JSON Lines as hold as much (at most [`DOCUMENTS_AT_ONCE`]).
const BYTES_AT_ONCE: u64 = 16 << 20;

/// The most documents tokenised at once (short JSON Lines documents).
const DOCUMENTS_AT_ONCE: usize = 1 << 16;

/// One split's tokens as cached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitFile {
    /// Tokens.
    pub tokens: u64,
    /// UTF-8 bytes of the text they encode.
    pub bytes: u64,
    /// SHA-256 of the token file.
    pub sha256: String,
}

/// `<key>.json`: what a cache entry holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheMeta {
    /// [`VERSION`].
    pub version: u32,
    /// Token width.
    pub dtype: Dtype,
    /// The training split.
    pub train: SplitFile,
    /// The validation split.
    pub val: SplitFile,
    /// A character tokenizer's vocabulary (it is the corpus's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chars: Option<Vec<char>>,
}

/// The tokens of a corpus, from the cache or freshly made.
pub struct Tokenised {
    /// The tokenizer (a character tokenizer is built from the corpus).
    pub tokenizer: Tokenizer,
    /// Training tokens.
    pub train: Tokens,
    /// Validation tokens.
    pub val: Tokens,
    /// What the cache holds of them.
    pub meta: CacheMeta,
    /// Whether they were in the cache already.
    pub reused: bool,
}

/// The cache key of a split text under a tokenizer: the data's identity, the split and the
/// tokenizer's identity (`char`, or a name, or a file's SHA-256).
pub fn key(data_identity: &str, tokenizer_identity: &str) -> String {
    let text = format!("gptlab tokens v{VERSION}\n{data_identity}\n{tokenizer_identity}\n");
    crate::fsio::sha256_hex(text.as_bytes())[..32].to_string()
}

fn paths(dir: &Path, key: &str) -> [PathBuf; 3] {
    ["json", "train.bin", "val.bin"].map(|ext| dir.join(format!("{key}.{ext}")))
}

/// The cached tokens of `key`, or `None` (with a warning when an entry exists but fails its
/// checksum: it is rebuilt).
fn reuse(dir: &Path, key: &str) -> Option<(CacheMeta, Tokens, Tokens)> {
    let [meta_path, train_path, val_path] = paths(dir, key);
    let text = std::fs::read(&meta_path).ok()?;
    let checked = (|| {
        let meta: CacheMeta = serde_json::from_slice(&text).map_err(|e| format!("{e}"))?;
        let mut maps = vec![];
        for (path, split) in [(&train_path, &meta.train), (&val_path, &meta.val)] {
            // Read, not through the mapping: the check then leaves no pages of the corpus
            // counted in the process's resident memory.
            let sha = crate::fsio::sha256_file(path).map_err(|e| format!("{e:#}"))?;
            if sha != split.sha256 {
                return Err(format!("{} does not match its checksum", path.display()));
            }
            let tokens = Tokens::map(path, meta.dtype).map_err(|e| format!("{e:#}"))?;
            if tokens.len() as u64 != split.tokens {
                return Err(format!(
                    "{} does not hold the {} tokens its entry says",
                    path.display(),
                    split.tokens
                ));
            }
            maps.push(tokens);
        }
        let val = maps.pop().expect("two splits");
        let train = maps.pop().expect("two splits");
        Ok((meta, train, val))
    })();
    match checked {
        Ok(found) => Some(found),
        Err(why) => {
            crate::events::warning(format!(
                "warning: token cache entry {}: {why}; tokenising again",
                meta_path.display()
            ));
            None
        }
    }
}

/// The tokens of `split`: reused from `dir` under `key`, else tokenised (in parallel, with
/// progress and a rate) and cached. `tokenizer` is `None` for the character tokenizer, whose
/// vocabulary is the corpus's own characters. An error names the key at fault: the corpus
/// (unreadable), the tokenizer (text it cannot encode) or the cache folder.
pub fn tokenise(
    split: &TextSplit,
    tokenizer: Option<&Tokenizer>,
    dir: &Path,
    key: &str,
) -> Result<Tokenised, DataError> {
    if let Some((meta, train, val)) = reuse(dir, key) {
        let tokenizer = match (&meta.chars, tokenizer) {
            (_, Some(t)) => t.clone(),
            (Some(chars), None) => Tokenizer::chars(chars.clone()),
            (None, None) => return Err(at("data.cache_dir")("token cache entry without a vocabulary".into())),
        };
        if meta.train.bytes + meta.val.bytes >= QUIET_BELOW {
            let (train, val) = (meta.train.tokens, meta.val.tokens);
            crate::events::note(format!(
                "tokens: reusing {} ({train} + {val} tokens)",
                dir.join(key).display()
            ));
        }
        return Ok(Tokenised {
            tokenizer,
            train,
            val,
            meta,
            reused: true,
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        let why = format!("the token cache folder `{}` cannot be written: {e}", dir.display());
        io_at("data.cache_dir", &e.into(), why)
    })?;
    let tokenizer = match tokenizer {
        Some(t) => t.clone(),
        None => Tokenizer::chars(char_vocabulary(split).map_err(at("data.path"))?),
    };
    let dtype = Dtype::for_vocab(tokenizer.vocab_size());
    let [meta_path, train_path, val_path] = paths(dir, key);
    let total: u64 = split.train.iter().chain(&split.val).map(Document::len).sum();
    let mut progress = Rate::new(total);
    let train = write_split(&split.train, &tokenizer, dtype, &train_path, &mut progress)?;
    let val = write_split(&split.val, &tokenizer, dtype, &val_path, &mut progress)?;
    progress.done();
    let meta = CacheMeta {
        version: VERSION,
        dtype,
        train,
        val,
        chars: tokenizer.char_vocab().map(<[char]>::to_vec),
    };
    let json = serde_json::to_vec_pretty(&meta).expect("cache meta serialises");
    let in_cache = at("data.cache_dir");
    crate::fsio::write_atomic(&meta_path, &json).map_err(|e| io_at("data.cache_dir", &e, format!("{e:#}")))?;
    let map = |p: &Path| Tokens::map(p, dtype).map_err(|e| in_cache(format!("{e:#}")));
    Ok(Tokenised {
        train: map(&train_path)?,
        val: map(&val_path)?,
        tokenizer,
        meta,
        reused: false,
    })
}

/// Every distinct character of the split text, sorted (read in parallel, by document).
fn char_vocabulary(split: &TextSplit) -> Result<Vec<char>, String> {
    let docs: Vec<&Document> = split.train.iter().chain(&split.val).collect();
    let sets: Vec<std::collections::BTreeSet<char>> = docs
        .par_iter()
        .map(|doc| {
            let mut set = std::collections::BTreeSet::new();
            for_each_piece(doc, |piece| {
                if let Piece::Text(text) = piece {
                    set.extend(text.chars());
                }
                Ok(())
            })?;
            Ok(set)
        })
        .collect::<Result<_, String>>()?;
    Ok(sets
        .into_iter()
        .flatten()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect())
}

/// Tokenises `docs` into `path` (separators between documents), atomically.
fn write_split(
    docs: &[Document],
    tokenizer: &Tokenizer,
    dtype: Dtype,
    path: &Path,
    progress: &mut Rate,
) -> Result<SplitFile, DataError> {
    let tmp = crate::fsio::temp_beside(path);
    let cannot = |e: std::io::Error| {
        let why = format!("the token cache file `{}` cannot be written: {e}", tmp.display());
        io_at("data.cache_dir", &e.into(), why)
    };
    let file = std::fs::File::create(&tmp).map_err(cannot)?;
    let mut out = TokenWriter {
        file: BufWriter::new(file),
        hasher: sha2::Sha256::new(),
        dtype,
        tokens: 0,
        buf: vec![],
    };
    let result = (|| {
        let mut bytes = 0u64;
        for (i, doc) in docs.iter().enumerate() {
            if i > 0
                && let Some(sep) = tokenizer.separator()
            {
                out.put(&[sep]).map_err(cannot)?;
            }
            let text = encode_document(doc, tokenizer, &mut out, progress)?;
            // Progress counts the file's bytes: of JSON Lines, the keys and quotes around the text.
            progress.add(doc.len().saturating_sub(text));
            bytes += text;
        }
        out.file
            .flush()
            .and_then(|_| out.file.get_ref().sync_all())
            .map_err(cannot)?;
        std::fs::rename(&tmp, path).map_err(cannot)?;
        Ok(SplitFile {
            tokens: out.tokens,
            bytes,
            sha256: crate::fsio::hex(&out.hasher.clone().finalize()),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Tokenises one document (of JSON Lines, a range of them, with the separator between two):
/// pieces in parallel when the tokenizer cuts safely, else each document whole (the documents
/// of a range in parallel). Returns the bytes of text it encoded.
fn encode_document(
    doc: &Document,
    tokenizer: &Tokenizer,
    out: &mut TokenWriter,
    progress: &mut Rate,
) -> Result<u64, DataError> {
    // Text to encode, or `None` where a separator goes, in order.
    let mut batch: Vec<Option<String>> = vec![];
    let chunked = tokenizer.chunks_safely();
    let separator: Vec<u32> = tokenizer.separator().into_iter().collect();
    let mut flush = |batch: &mut Vec<Option<String>>, out: &mut TokenWriter| -> Result<(), DataError> {
        // In order: the small pieces of each text (whole texts when cutting is unsafe), and
        // `None` for each separator.
        let mut units: Vec<Option<&str>> = vec![];
        for t in batch.iter() {
            match t {
                Some(t) if chunked => units.extend(small_pieces(t).map(Some)),
                t => units.push(t.as_deref()),
            }
        }
        let encode = |t: &Option<&str>| t.map_or_else(|| Ok(separator.clone()), |t| tokenizer.encode(t));
        let ids: Result<Vec<Vec<u32>>, String> = match tokenizer.encodes_faster_in_parallel() {
            true => units.par_iter().map(encode).collect(),
            false => units.iter().map(encode).collect(),
        };
        let ids = ids.map_err(|why| {
            at("data.tokenizer")(format!("{} on `{}`: {why}", tokenizer.record(), doc.path.display()))
        })?;
        for piece in &ids {
            out.put(piece).map_err(|e| {
                let why = format!("writing the token cache: {e}");
                io_at("data.cache_dir", &e.into(), why)
            })?;
        }
        progress.add(batch.iter().flatten().map(|t| t.len() as u64).sum());
        batch.clear();
        Ok(())
    };
    // Reading the pieces fails as `data.path`; a failure of `flush` inside keeps its own key.
    let mut failed_at = "data.path";
    let mut whole = String::new();
    let (mut bytes, mut pending) = (0u64, 0u64);
    let read = for_each_piece(doc, |piece| {
        match piece {
            Piece::Text(text) => {
                bytes += text.len() as u64;
                pending += text.len() as u64;
                match chunked {
                    true => batch.push(Some(text.to_string())),
                    false => whole.push_str(text),
                }
            }
            Piece::Boundary => {
                if !chunked {
                    batch.push(Some(std::mem::take(&mut whole)));
                }
                batch.push(None);
            }
        }
        if pending < BYTES_AT_ONCE && batch.len() < DOCUMENTS_AT_ONCE {
            return Ok(());
        }
        pending = 0;
        flush(&mut batch, out).map_err(|e| {
            failed_at = e.key;
            e.message
        })
    });
    read.map_err(at(failed_at))?;
    if !chunked {
        batch.push(Some(whole));
    }
    flush(&mut batch, out)?;
    Ok(bytes)
}

/// Bytes of text a tokenizer is given at a time, when it may be cut: the `tokenizers` crate
/// encodes pieces of a few KB about twice as fast as pieces of 16 KB to 1 MiB (measured on
/// tiny-shakespeare ×3 with a trained 4,000-token BPE, 2 threads, Zen 3: 5.8 MB/s at 4 KB,
/// 2.8 at 16 KB, 2.5 at 1 MiB).
const SMALL_PIECE: usize = 4 << 10;

/// `text` cut where [`safe_cut`] allows into pieces of about [`SMALL_PIECE`] bytes (longer
/// when no place to cut is in reach): they tokenise as the whole does.
fn small_pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut reach = SMALL_PIECE;
        let cut = loop {
            if reach >= rest.len() {
                break rest.len();
            }
            if let Some(cut) = safe_cut(&rest.as_bytes()[..reach]) {
                break cut;
            }
            reach *= 2;
        };
        let (piece, after) = rest.split_at(cut);
        rest = after;
        Some(piece)
    })
}

/// Writes ids at a width, hashing what it writes.
struct TokenWriter {
    file: BufWriter<std::fs::File>,
    hasher: sha2::Sha256,
    dtype: Dtype,
    tokens: u64,
    buf: Vec<u8>,
}

impl TokenWriter {
    fn put(&mut self, ids: &[u32]) -> std::io::Result<()> {
        self.buf.clear();
        for &id in ids {
            self.dtype.push(&mut self.buf, id);
        }
        self.hasher.update(&self.buf);
        self.tokens += ids.len() as u64;
        self.file.write_all(&self.buf)
    }
}

/// Progress of tokenising, in MB of the corpus's files and MB/s, at most once a second.
struct Rate {
    total: u64,
    done: u64,
    started: Instant,
    shown: Instant,
}

impl Rate {
    fn new(total: u64) -> Self {
        if total >= QUIET_BELOW {
            crate::events::progress(format!("tokenising {:.1} MB", total as f64 / 1e6));
        }
        Self {
            total,
            done: 0,
            started: Instant::now(),
            shown: Instant::now(),
        }
    }

    fn add(&mut self, bytes: u64) {
        self.done += bytes;
        if self.total >= QUIET_BELOW && self.shown.elapsed().as_secs_f64() >= 1.0 {
            self.shown = Instant::now();
            crate::events::progress(format!(
                "tokenising: {:.0}/{:.0} MB ({:.1} MB/s)",
                self.done as f64 / 1e6,
                self.total as f64 / 1e6,
                self.rate()
            ));
        }
    }

    fn rate(&self) -> f64 {
        self.done as f64 / 1e6 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    fn done(&self) {
        if self.total < QUIET_BELOW {
            return;
        }
        crate::events::note(format!(
            "tokens: tokenised {:.1} MB in {:.1} s ({:.1} MB/s)",
            self.done as f64 / 1e6,
            self.started.elapsed().as_secs_f64(),
            self.rate()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pieces_cover_the_text_and_cut_only_before_a_space_between_letters() {
        let text = "ab cd. ".repeat(3000) + &"x".repeat(20_000) + " tail of it é";
        let pieces: Vec<&str> = small_pieces(&text).collect();
        assert_eq!(pieces.concat(), text);
        assert!(pieces.len() > 4, "{}", pieces.len());
        let mut at = 0;
        for p in &pieces[..pieces.len() - 1] {
            at += p.len();
            let b = text.as_bytes();
            assert!(b[at] == b' ' && b[at - 1].is_ascii_alphabetic() && b[at + 1].is_ascii_alphabetic());
        }
        // A run of letters with no place to cut stays whole.
        assert!(pieces.iter().any(|p| p.len() > 20_000));
        assert!(pieces[0].len() <= SMALL_PIECE);
        assert_eq!(small_pieces("").count(), 0);
    }
}
