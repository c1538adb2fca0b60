//! `tokenizer = { train = "bpe", vocab_size = N }`: the BPE learned from a corpus's training
//! split (never its validation text, which would then be compressed by what it taught), kept
//! in the cache folder under a key over the text, the split and the size, and reused.

use std::path::Path;
use std::time::Instant;

use super::source::{Piece, TextSplit, for_each_piece};
use super::tokenizer::train;
use super::{DataError, Tokenizer, at, io_at};

/// What the reader returns when the trainer has stopped taking text.
const TRAINER_STOPPED: &str = "";

/// Pieces of text in flight between the reader and the trainer (about 1 MiB each).
const PIECES_IN_FLIGHT: usize = 8;

/// The BPE of `vocab_size` tokens trained on `split.train`: from `dir`'s `<key>.tokenizer.json`
/// when there, else trained and written there atomically.
pub fn bpe(split: &TextSplit, vocab_size: usize, dir: &Path, key: &str) -> Result<Tokenizer, DataError> {
    let path = dir.join(format!("{key}.tokenizer.json"));
    let sum_path = dir.join(format!("{key}.tokenizer.json.sha256"));
    if let Some(cached) = cached(&path, &sum_path, vocab_size) {
        return Ok(cached);
    }
    let started = Instant::now();
    let bytes: u64 = split.train.iter().map(|d| d.len()).sum();
    if bytes >= super::cache::QUIET_BELOW {
        crate::events::progress(format!(
            "tokenizer: training a BPE of {vocab_size} tokens on {:.1} MB of training text",
            bytes as f64 / 1e6
        ));
    }
    let json = train_on(split, vocab_size).map_err(at("data.tokenizer"))?;
    let tokenizer = Tokenizer::trained(json.clone()).map_err(at("data.tokenizer"))?;
    // The checksum last: a tokenizer without one is trained again.
    std::fs::create_dir_all(dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| crate::fsio::write_atomic(&path, &json))
        .and_then(|()| crate::fsio::write_atomic(&sum_path, crate::fsio::sha256_hex(&json).as_bytes()))
        .map_err(|e| {
            let why = format!("the trained tokenizer cannot be cached in `{}`: {e:#}", dir.display());
            io_at("data.cache_dir", &e, why)
        })?;
    crate::events::note(format!(
        "tokenizer: trained a BPE of {vocab_size} tokens on the training split in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        path.display()
    ));
    Ok(tokenizer)
}

/// The tokenizer cached at `path`, when it is the one trained there: the SHA-256 written beside
/// it (`sums`) when it was trained is still its own. A cached file edited or damaged since
/// would otherwise train new runs labelled as this recipe's BPE; it is trained again, with a
/// warning.
fn cached(path: &Path, sums: &Path, vocab_size: usize) -> Option<Tokenizer> {
    let json = std::fs::read(path).ok()?;
    let why = match std::fs::read_to_string(sums) {
        Ok(sum) if sum.trim() == crate::fsio::sha256_hex(&json) => match Tokenizer::trained(json) {
            Ok(t) if t.vocab_size() == vocab_size => return Some(t),
            Ok(t) => format!("it has {} tokens", t.vocab_size()),
            Err(why) => why,
        },
        Ok(_) => "its SHA-256 is not the one it was trained with: edited or damaged since".into(),
        Err(_) => format!("no checksum beside it in {}", sums.display()),
    };
    warn_unusable(path, &why);
    None
}

fn warn_unusable(path: &Path, why: &str) {
    crate::events::warning(format!(
        "warning: cached tokenizer {} cannot be used ({why}); training it again",
        path.display()
    ));
}

/// Trains on the training documents' pieces, read on one thread while the trainer counts
/// them on the others. A document that cannot be read fails the whole (naming it).
fn train_on(split: &TextSplit, vocab_size: usize) -> Result<Vec<u8>, String> {
    let (send, receive) = std::sync::mpsc::sync_channel::<String>(PIECES_IN_FLIGHT);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> Result<(), String> {
            for doc in &split.train {
                for_each_piece(doc, |piece| {
                    match piece {
                        // The trainer stops reading only when it fails: its error is the one
                        // to tell (`TRAINER_STOPPED` is no message).
                        Piece::Text(text) => send.send(text.to_string()).map_err(|_| TRAINER_STOPPED.to_string()),
                        Piece::Boundary => Ok(()),
                    }
                })?;
            }
            Ok(())
        });
        // On one thread: the trainer allocates for every word, and the process's one allocator
        // arena (`crate::alloc`) makes more threads queue for its lock (10 MB of text to 8,192
        // tokens, Zen 3: 3.8 s on one thread, 6.0–7.4 s on two).
        let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build();
        let trained = match one_thread {
            Ok(pool) => pool.install(|| train::byte_level_bpe(receive.into_iter(), vocab_size)),
            Err(_) => train::byte_level_bpe(receive.into_iter(), vocab_size),
        };
        match reader.join() {
            Ok(Err(why)) if why != TRAINER_STOPPED => Err(why),
            Err(_) => Err("the corpus reader panicked".into()),
            _ => trained,
        }
    })
}
