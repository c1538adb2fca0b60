//! Where a corpus's text is (one file, or the files of a folder in sorted order), how it
//! splits into training and validation text before any tokenizer sees it, and what
//! identifies it (the SHA-256 of every file). Files are read in blocks, never whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;
use sha2::Digest;
use std::ops::ControlFlow;

use super::jsonl;
use crate::fsio::for_each_block;

/// A byte range of one file: a document, or the part of one that falls in a split; of a JSON
/// Lines file, whole lines, each a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// The file.
    pub path: PathBuf,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The field that holds each line's text, when the file is JSON Lines.
    pub field: Option<Arc<str>>,
}

/// What [`for_each_piece`] hands on: text, or the end of one document of a JSON Lines range
/// where the next begins (the tokenizer's separator goes there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Text of the current document.
    Text(&'a str),
    /// One document ended and another follows.
    Boundary,
}

impl Document {
    fn range(&self) -> jsonl::Range<'_> {
        jsonl::Range {
            path: &self.path,
            start: self.start,
            end: self.end,
        }
    }

    /// Bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// One file of a corpus, as `provenance.json` records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DataFile {
    /// Its path.
    pub path: PathBuf,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Characters in it (text) or tokens (token files).
    #[serde(skip)]
    pub units: u64,
}

/// The files of `path`: the file itself, or the regular files under a folder whose path
/// relative to it matches one of `include` (glob patterns; hidden files and folders are
/// skipped), in sorted order.
pub fn list_files(path: &Path, include: &[String]) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("`{}` cannot be read: {e}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !meta.is_dir() {
        return Err(format!(
            "`{}` is not a regular file or a folder (a device or a pipe would be read without end)",
            path.display()
        ));
    }
    let mut set = globset::GlobSetBuilder::new();
    for pattern in include {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("include pattern `{pattern}` is not a glob: {e}"))?;
        set.add(glob);
    }
    let set = set.build().map_err(|e| format!("include patterns: {e}"))?;
    let mut files = vec![];
    let hidden = |e: &walkdir::DirEntry| e.depth() > 0 && e.file_name().to_string_lossy().starts_with('.');
    // Links are followed, to folders as to files: a corpus assembled from links is read
    // whole, and a loop or a broken link is an error naming it, not a part left out.
    for entry in walkdir::WalkDir::new(path)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !hidden(e))
    {
        let entry = entry.map_err(|e| format!("reading folder `{}`: {e}", path.display()))?;
        let relative = entry.path().strip_prefix(path).unwrap_or(entry.path());
        if entry.path().is_file() && set.is_match(relative) {
            files.push(entry.path().to_path_buf());
        }
    }
    if files.is_empty() {
        return Err(format!(
            "folder `{}` has no file matching include = [{}]",
            path.display(),
            include
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(files)
}

/// Reads `path` once: its SHA-256, size and characters; an error names the byte offset of the
/// first byte that is not UTF-8.
pub fn scan_text(path: &Path) -> Result<DataFile, String> {
    let mut hasher = sha2::Sha256::new();
    let (mut bytes, mut chars) = (0u64, 0u64);
    // The tail of a block that may be the start of a character the next block ends.
    let mut carry: Vec<u8> = vec![];
    let bad_byte = for_each_block(path, |block| {
        hasher.update(block);
        chars += block.iter().filter(|&&b| (b as i8) >= -0x40).count() as u64;
        let start = bytes - carry.len() as u64;
        carry.extend_from_slice(block);
        bytes += block.len() as u64;
        let keep = match std::str::from_utf8(&carry) {
            Ok(_) => 0,
            Err(e) if e.error_len().is_none() => carry.len() - e.valid_up_to(),
            Err(e) => return ControlFlow::Break(start + e.valid_up_to() as u64),
        };
        carry.drain(..carry.len() - keep);
        ControlFlow::Continue(())
    })
    .map_err(|e| format!("`{}` cannot be read: {e}", path.display()))?;
    if let Some(offset) = bad_byte.or_else(|| (!carry.is_empty()).then(|| bytes - carry.len() as u64)) {
        return Err(not_utf8(path, offset));
    }
    Ok(DataFile {
        path: path.to_path_buf(),
        sha256: crate::fsio::hex(&hasher.finalize()),
        bytes,
        units: chars,
    })
}

fn not_utf8(path: &Path, offset: u64) -> String {
    format!(
        "`{}` is not UTF-8 text (invalid byte at offset {offset})",
        path.display()
    )
}

/// The byte offset of character `n` of a file (its length if it has fewer).
fn byte_of_char(path: &Path, n: u64) -> Result<u64, String> {
    let (mut seen, mut offset) = (0u64, 0u64);
    let found = for_each_block(path, |block| {
        for (i, &b) in block.iter().enumerate() {
            if (b as i8) >= -0x40 {
                if seen == n {
                    return ControlFlow::Break(offset + i as u64);
                }
                seen += 1;
            }
        }
        offset += block.len() as u64;
        ControlFlow::Continue(())
    })
    .map_err(|e| format!("`{}` cannot be read: {e}", path.display()))?;
    Ok(found.unwrap_or(offset))
}

/// A corpus's text, split.
#[derive(Clone, Debug)]
pub struct TextSplit {
    /// Training documents, in order.
    pub train: Vec<Document>,
    /// Validation documents, in order.
    pub val: Vec<Document>,
}

/// The files of a corpus (and of its `val_path`) with their hashes.
#[derive(Clone, Debug)]
pub struct Scanned {
    /// The corpus's files, sorted.
    pub files: Vec<DataFile>,
    /// `val_path`'s files.
    pub val_files: Vec<DataFile>,
}

/// Scans every file in parallel; every unreadable or non-UTF-8 file is reported.
pub fn scan_all(
    paths: &[PathBuf],
    scan: impl Fn(&Path) -> Result<DataFile, String> + Sync,
) -> Result<Vec<DataFile>, Vec<String>> {
    let scanned: Vec<Result<DataFile, String>> = paths.par_iter().map(|p| scan(p)).collect();
    let errors: Vec<String> = scanned.iter().filter_map(|r| r.as_ref().err().cloned()).collect();
    match errors.is_empty() {
        true => Ok(scanned.into_iter().map(Result::unwrap).collect()),
        false => Err(errors),
    }
}

/// The SHA-256 that identifies a set of files: a single file's own (so a corpus of one file
/// is identified as before folders existed), else the hash of `name → hash` lines with each
/// name relative to `root`.
pub fn files_sha256(files: &[DataFile], root: &Path) -> String {
    match files {
        [one] => one.sha256.clone(),
        many => {
            let lines: String = many
                .iter()
                .map(|f| {
                    format!(
                        "{}\t{}\n",
                        f.path.strip_prefix(root).unwrap_or(&f.path).display(),
                        f.sha256
                    )
                })
                .collect();
            crate::fsio::sha256_hex(lines.as_bytes())
        }
    }
}

fn whole(files: &[DataFile], field: &Option<Arc<str>>) -> Vec<Document> {
    files
        .iter()
        .filter(|f| f.bytes > 0)
        .map(|f| Document {
            path: f.path.clone(),
            start: 0,
            end: f.bytes,
            field: field.clone(),
        })
        .collect()
}

/// Splits the text before tokenising, so every tokenizer is scored on the same validation
/// text: with `val_path`, its files; else one file's last `val_fraction` of characters (the
/// cut as before tokenizers existed: `floor(chars · (1 − val_fraction))`), or a folder's last
/// whole documents, taken from the end until they hold at least `val_fraction` of the
/// characters (the first document always trains).
///
/// Of JSON Lines (`field`: the key of each line's text), every line is a document: the last
/// whole lines are held out, across files, until they hold at least `val_fraction` of the
/// characters (the first line always trains).
pub fn split_text(
    scanned: &Scanned,
    val_fraction: f64,
    has_val_path: bool,
    field: Option<Arc<str>>,
) -> Result<TextSplit, String> {
    if has_val_path {
        return Ok(TextSplit {
            train: whole(&scanned.files, &field),
            val: whole(&scanned.val_files, &field),
        });
    }
    let docs = whole(&scanned.files, &field);
    if let Some(field) = field {
        return split_lines(docs, &scanned.files, val_fraction, &field);
    }
    if let [one] = scanned.files.as_slice() {
        let cut_char = ((one.units as f64) * (1.0 - val_fraction)).floor() as u64;
        let cut = byte_of_char(&one.path, cut_char)?;
        let part = |start, end| Document {
            path: one.path.clone(),
            start,
            end,
            field: None,
        };
        return Ok(TextSplit {
            train: vec![part(0, cut)],
            val: vec![part(cut, one.bytes)]
                .into_iter()
                .filter(|d| !d.is_empty())
                .collect(),
        });
    }
    let chars: Vec<u64> = scanned.files.iter().filter(|f| f.bytes > 0).map(|f| f.units).collect();
    let target = chars.iter().sum::<u64>() as f64 * val_fraction;
    let mut first_val = docs.len();
    let mut held = 0u64;
    while first_val > 1 && (held as f64) < target {
        first_val -= 1;
        held += chars[first_val];
    }
    Ok(TextSplit {
        train: docs[..first_val].to_vec(),
        val: docs[first_val..].to_vec(),
    })
}

/// Reads a JSON Lines file once (see [`jsonl::scan`]): its hash, size and characters of text.
pub fn scan_json_lines(path: &Path, field: &str) -> Result<DataFile, String> {
    let found = jsonl::scan(path, field)?;
    Ok(DataFile {
        path: path.to_path_buf(),
        sha256: found.sha256,
        bytes: found.bytes,
        units: found.chars,
    })
}

/// Splits whole-file documents of JSON Lines by whole lines: the last lines, across files,
/// until they hold at least `val_fraction` of the characters (see [`split_text`]).
fn split_lines(docs: Vec<Document>, files: &[DataFile], val_fraction: f64, field: &str) -> Result<TextSplit, String> {
    let chars: Vec<u64> = files.iter().filter(|f| f.bytes > 0).map(|f| f.units).collect();
    let target = chars.iter().sum::<u64>() as f64 * val_fraction;
    let mut held = 0u64;
    for i in (0..docs.len()).rev() {
        if ((held + chars[i]) as f64) < target {
            held += chars[i];
            continue;
        }
        let doc = &docs[i];
        let at = jsonl::cut(doc.range(), field, chars[i], target - held as f64, i == 0)?;
        let part = |start, end| Document {
            start,
            end,
            ..doc.clone()
        };
        let train = docs[..i]
            .iter()
            .cloned()
            .chain((at > doc.start).then(|| part(doc.start, at)));
        let val = (at < doc.end)
            .then(|| part(at, doc.end))
            .into_iter()
            .chain(docs[i + 1..].iter().cloned());
        return Ok(TextSplit {
            train: train.collect(),
            val: val.collect(),
        });
    }
    Ok(TextSplit {
        train: docs,
        val: vec![],
    })
}

/// Calls `f` with the text of `doc` in pieces of about [`crate::fsio::BLOCK`] bytes or more, each ending at
/// a place where tokenising the pieces one by one gives the tokens of the whole (see
/// [`safe_cut`]); the last piece ends at the document's end. A JSON Lines range hands on each
/// line's text whole, with a [`Piece::Boundary`] between two lines.
pub fn for_each_piece(doc: &Document, mut f: impl FnMut(Piece) -> Result<(), String>) -> Result<(), String> {
    if let Some(field) = &doc.field {
        return jsonl::for_each_text(doc.range(), field, |text| f(text.map_or(Piece::Boundary, Piece::Text)));
    }
    let changed = || format!("`{}` changed while it was being read", doc.path.display());
    let mut pending: Vec<u8> = vec![];
    let broke = crate::fsio::for_each_block_in(&doc.path, doc.start..doc.end, |block, last| {
        pending.extend_from_slice(block);
        // Only the new bytes (and the two before them) can hold a new place to cut.
        let from = pending.len().saturating_sub(block.len() + 2);
        let cut = match last {
            true => Some(pending.len()),
            false => safe_cut(&pending[from..]).map(|c| from + c),
        };
        if let Some(cut) = cut {
            let Ok(text) = std::str::from_utf8(&pending[..cut]) else {
                return ControlFlow::Break(changed());
            };
            if let Err(why) = f(Piece::Text(text)) {
                return ControlFlow::Break(why);
            }
            pending.drain(..cut);
        }
        ControlFlow::Continue(())
    })?;
    broke.map_or(Ok(()), Err)
}

/// The last place in `text` before an ASCII space that sits between two ASCII letters: the
/// pre-tokenizers of GPT-2, cl100k and o200k (and whitespace splitters) always split there,
/// the space going with the word after it, so text cut there tokenises as the whole does.
pub fn safe_cut(text: &[u8]) -> Option<usize> {
    (1..text.len().saturating_sub(1))
        .rev()
        .find(|&i| text[i] == b' ' && text[i - 1].is_ascii_alphabetic() && text[i + 1].is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsio::BLOCK;

    #[test]
    fn a_cut_falls_before_a_space_between_letters() {
        assert_eq!(safe_cut(b"ab cd ef"), Some(5));
        assert_eq!(safe_cut(b"ab  cd"), None);
        assert_eq!(safe_cut(b"a. b"), None);
    }

    #[test]
    fn a_file_is_scanned_with_its_hash_characters_and_the_offset_of_a_bad_byte() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.txt");
        std::fs::write(&good, "héllo").unwrap();
        let f = scan_text(&good).unwrap();
        assert_eq!((f.bytes, f.units), (6, 5));
        assert_eq!(f.sha256, crate::fsio::sha256_hex("héllo".as_bytes()));
        let bad = dir.path().join("bad.txt");
        let mut bytes = vec![b'a'; BLOCK + 3];
        bytes[BLOCK + 1] = 0xff;
        std::fs::write(&bad, &bytes).unwrap();
        let why = scan_text(&bad).unwrap_err();
        assert!(why.contains(&format!("offset {}", BLOCK + 1)), "{why}");
        assert_eq!(byte_of_char(&good, 2).unwrap(), 3);
    }

    /// The documents of a JSON Lines range, as text.
    fn texts(doc: &Document) -> Vec<String> {
        let mut out = vec![String::new()];
        for_each_piece(doc, |piece| {
            match piece {
                Piece::Text(t) => out.last_mut().unwrap().push_str(t),
                Piece::Boundary => out.push(String::new()),
            }
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn the_split_holds_out_whole_last_lines_and_the_first_always_trains() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        // Texts of 10, 20, 30 and 40 characters: 10% of 100 is the last line alone, 50% the
        // last two, 95% all but the first.
        let line = |n: usize| format!("{{\"text\": \"{}\"}}\n", "x".repeat(n));
        std::fs::write(&path, [10, 20, 30, 40].map(line).concat()).unwrap();
        let file = scan_json_lines(&path, "text").unwrap();
        let lengths = |docs: &[Document]| -> Vec<usize> { docs.iter().flat_map(texts).map(|t| t.len()).collect() };
        for (fraction, train, val) in [
            (0.1, vec![10, 20, 30], vec![40]),
            (0.5, vec![10, 20], vec![30, 40]),
            (0.9, vec![10], vec![20, 30, 40]),
            // The first line trains even when the rest hold less than asked.
            (0.95, vec![10], vec![20, 30, 40]),
        ] {
            let s = split_lines(
                whole(std::slice::from_ref(&file), &Some("text".into())),
                std::slice::from_ref(&file),
                fraction,
                "text",
            )
            .unwrap();
            assert_eq!(
                (lengths(&s.train), lengths(&s.val)),
                (train, val),
                "val_fraction {fraction}"
            );
        }
    }

    #[test]
    fn lines_are_documents_and_escapes_are_their_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let body = "\u{feff}{\"text\": \"a\\nb\", \"id\": 1}\r\n\n  \n{\"id\": 2, \"text\": \"\\u00e9\\ud83d\\ude00\"}";
        std::fs::write(&path, body).unwrap();
        let file = scan_json_lines(&path, "text").unwrap();
        // "a\nb" is 3 characters, "é😀" 2.
        assert_eq!((file.bytes, file.units), (body.len() as u64, 5));
        assert_eq!(texts(&whole(&[file], &Some("text".into()))[0]), ["a\nb", "é😀"]);
    }
}
