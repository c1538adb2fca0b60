//! JSON Lines corpora (`format = "jsonl"`): one document per line, its text a string field of
//! a JSON object (`text_field`, `"text"` by default). Lines are read in blocks, never a whole
//! file; blank lines are skipped. The text a tokenizer sees is the field's value, so bits per
//! byte count the bytes of that text, not of the JSON around it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::path::Path;

use sha2::Digest;

use super::source::{DataFile, Document, Piece, TextSplit};

/// Bad lines named in one error before the rest are only counted.
const LINES_NAMED: usize = 5;

/// Cuts blocks of bytes into lines (without their `\n`, or a `\r\n`'s `\r`), numbered from 1,
/// with the offset each starts at.
struct Lines {
    pending: Vec<u8>,
    /// Offset of `pending`'s first byte.
    at: u64,
    number: u64,
}

impl Lines {
    fn new(at: u64) -> Self {
        Self {
            pending: vec![],
            at,
            number: 0,
        }
    }

    /// Hands on every line `block` completes.
    fn feed<B>(&mut self, block: &[u8], f: &mut impl FnMut(u64, u64, &[u8]) -> ControlFlow<B>) -> ControlFlow<B> {
        self.pending.extend_from_slice(block);
        let mut from = 0;
        while let Some(n) = self.pending[from..].iter().position(|&b| b == b'\n') {
            self.number += 1;
            let line = &self.pending[from..from + n];
            f(
                self.number,
                self.at + from as u64,
                line.strip_suffix(b"\r").unwrap_or(line),
            )?;
            from += n + 1;
        }
        self.pending.drain(..from);
        self.at += from as u64;
        ControlFlow::Continue(())
    }

    /// Hands on the last line, when the input does not end with a newline.
    fn finish<B>(mut self, f: &mut impl FnMut(u64, u64, &[u8]) -> ControlFlow<B>) -> ControlFlow<B> {
        if self.pending.is_empty() {
            return ControlFlow::Continue(());
        }
        self.number += 1;
        let line = std::mem::take(&mut self.pending);
        f(self.number, self.at, line.strip_suffix(b"\r").unwrap_or(&line))
    }
}

/// The text of one line: `None` for a blank line, else the string `field` of its JSON object,
/// or why the line has none.
fn text_of(line: &[u8], field: &str) -> Result<Option<String>, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        // serde_json says "at line 1 column N" of the one line it was given: the column only.
        let said = e.to_string();
        let what = said.rsplit_once(" at line ").map_or(said.as_str(), |(what, _)| what);
        format!("is not JSON ({what} at column {})", e.column())
    })?;
    let serde_json::Value::Object(mut object) = value else {
        return Err("is not a JSON object".into());
    };
    match object.remove(field) {
        Some(serde_json::Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(format!("has `{field}` = {}, not a string", short(&other.to_string()))),
        None => {
            let keys: Vec<&str> = object.keys().map(String::as_str).take(8).collect();
            Err(format!("has no `{field}` (its keys: {})", keys.join(", ")))
        }
    }
}

fn short(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// Reads `path` once: its SHA-256, size, and the characters of every line's text; an error
/// names the first bad lines (not JSON, not an object, no string `field`) by number.
pub fn scan(path: &Path, field: &str) -> Result<DataFile, String> {
    let mut hasher = sha2::Sha256::new();
    let (mut bytes, mut chars) = (0u64, 0u64);
    let mut bad: Vec<String> = vec![];
    let mut bad_lines = 0usize;
    let mut on_line = |number: u64, _: u64, line: &[u8]| -> ControlFlow<()> {
        match text_of(line, field) {
            Ok(text) => chars += text.map_or(0, |t| t.chars().count() as u64),
            Err(why) => {
                bad_lines += 1;
                if bad.len() < LINES_NAMED {
                    bad.push(format!("line {number} {why}"));
                }
            }
        }
        ControlFlow::Continue(())
    };
    let mut lines = Lines::new(0);
    crate::fsio::for_each_block(path, |block| {
        hasher.update(block);
        bytes += block.len() as u64;
        lines.feed(block, &mut on_line)
    })
    .map_err(|e| format!("`{}` cannot be read: {e}", path.display()))?;
    let _ = lines.finish(&mut on_line);
    if !bad.is_empty() {
        let more = match bad_lines - bad.len() {
            0 => String::new(),
            n => format!("; and {n} more bad lines"),
        };
        return Err(format!(
            "`{}` is not JSON Lines with a string `{field}` on every line: {}{more}",
            path.display(),
            bad.join("; ")
        ));
    }
    Ok(DataFile {
        path: path.to_path_buf(),
        sha256: crate::fsio::hex(&hasher.finalize()),
        bytes,
        units: chars,
    })
}

/// Calls `f` with each line of `doc`'s range (`start` at a line's start): its number from 1,
/// its offset and its bytes.
fn for_each_line(doc: &Document, mut f: impl FnMut(u64, u64, &[u8]) -> ControlFlow<String>) -> Result<(), String> {
    let cannot = |e: std::io::Error| format!("`{}` cannot be read: {e}", doc.path.display());
    let mut file = File::open(&doc.path).map_err(cannot)?;
    file.seek(SeekFrom::Start(doc.start)).map_err(cannot)?;
    let mut lines = Lines::new(doc.start);
    let (mut left, mut buf) = (doc.len(), vec![0u8; 1 << 20]);
    while left > 0 {
        let want = (left as usize).min(buf.len());
        file.read_exact(&mut buf[..want])
            .map_err(|_| format!("`{}` changed while it was being read", doc.path.display()))?;
        left -= want as u64;
        if let ControlFlow::Break(why) = lines.feed(&buf[..want], &mut f) {
            return Err(why);
        }
    }
    match lines.finish(&mut f) {
        ControlFlow::Break(why) => Err(why),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Hands on the text of every line of `doc`, a [`Piece::Boundary`] between two.
pub fn for_each_text(
    doc: &Document,
    field: &str,
    mut f: impl FnMut(Piece) -> Result<(), String>,
) -> Result<(), String> {
    let mut first = true;
    for_each_line(doc, |_, _, line| {
        let mut step = || -> Result<(), String> {
            let Some(text) = text_of(line, field)
                .map_err(|_| format!("`{}` changed while it was being read", doc.path.display()))?
            else {
                return Ok(());
            };
            if !std::mem::take(&mut first) {
                f(Piece::Boundary)?;
            }
            f(Piece::Text(&text))
        };
        match step() {
            Ok(()) => ControlFlow::Continue(()),
            Err(why) => ControlFlow::Break(why),
        }
    })
}

/// The offset of the first line of `doc` (a whole file of `chars` characters of text) to hold
/// out so that at least `want` characters are held out: the last line start from which that
/// many remain. With `keep_first`, the first document stays in training, and when the others
/// hold fewer than `want` they are all held out (as a folder's split does); `doc.end` when
/// there is no other.
fn cut(doc: &Document, field: &str, chars: u64, want: f64, keep_first: bool) -> Result<u64, String> {
    let (mut before, mut found, mut first) = (0u64, doc.end, true);
    for_each_line(doc, |_, offset, line| {
        let Ok(Some(text)) = text_of(line, field) else {
            return ControlFlow::Continue(());
        };
        let (remaining, eligible) = ((chars - before) as f64, !(keep_first && first));
        first = false;
        before += text.chars().count() as u64;
        if eligible && (remaining >= want || found == doc.end) {
            found = offset;
        }
        match eligible && remaining < want {
            true => ControlFlow::Break(String::new()),
            false => ControlFlow::Continue(()),
        }
    })
    .or_else(|why| if why.is_empty() { Ok(()) } else { Err(why) })?;
    Ok(found)
}

/// Splits whole-file documents of JSON Lines by whole lines: the last lines, across files,
/// until they hold at least `val_fraction` of the characters (see
/// [`super::source::split_text`]).
pub fn split(docs: Vec<Document>, files: &[DataFile], val_fraction: f64, field: &str) -> Result<TextSplit, String> {
    let chars: Vec<u64> = files.iter().filter(|f| f.bytes > 0).map(|f| f.units).collect();
    let target = chars.iter().sum::<u64>() as f64 * val_fraction;
    let mut held = 0u64;
    for i in (0..docs.len()).rev() {
        if ((held + chars[i]) as f64) < target {
            held += chars[i];
            continue;
        }
        let at = cut(&docs[i], field, chars[i], target - held as f64, i == 0)?;
        let doc = &docs[i];
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

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(path: &Path) -> Document {
        Document {
            path: path.to_path_buf(),
            start: 0,
            end: std::fs::metadata(path).unwrap().len(),
            field: Some("text".into()),
        }
    }

    fn texts(doc: &Document) -> Vec<String> {
        let mut out = vec![String::new()];
        for_each_text(doc, "text", |piece| {
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
    fn lines_are_documents_and_escapes_are_their_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let body = "{\"text\": \"a\\nb\", \"id\": 1}\r\n\n  \n{\"id\": 2, \"text\": \"\\u00e9\\ud83d\\ude00\"}";
        std::fs::write(&path, body).unwrap();
        let file = scan(&path, "text").unwrap();
        // "a\nb" is 3 characters, "é😀" 2.
        assert_eq!((file.bytes, file.units), (body.len() as u64, 5));
        assert_eq!(texts(&doc(&path)), ["a\nb", "é😀"]);
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let lines = [
            "{\"text\": \"ok\"}",
            "not json",
            "[1]",
            "{\"content\": \"x\"}",
            "{\"text\": 3}",
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let why = scan(&path, "text").unwrap_err();
        for said in [
            "line 2 is not JSON (expected ident at column 2)",
            "line 3 is not a JSON object",
            "line 4 has no `text` (its keys: content)",
            "line 5 has `text` = 3, not a string",
        ] {
            assert!(why.contains(said), "{said:?} in {why}");
        }
        assert!(!why.contains("line 1"), "{why}");
    }

    #[test]
    fn the_split_holds_out_whole_last_lines_and_the_first_always_trains() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        // Texts of 10, 20, 30 and 40 characters: 10% of 100 is the last line alone, 50% the
        // last two, 95% all but the first.
        let line = |n: usize| format!("{{\"text\": \"{}\"}}\n", "x".repeat(n));
        std::fs::write(&path, [10, 20, 30, 40].map(line).concat()).unwrap();
        let file = scan(&path, "text").unwrap();
        let lengths = |docs: &[Document]| -> Vec<usize> { docs.iter().flat_map(texts).map(|t| t.len()).collect() };
        for (fraction, train, val) in [
            (0.1, vec![10, 20, 30], vec![40]),
            (0.5, vec![10, 20], vec![30, 40]),
            (0.9, vec![10], vec![20, 30, 40]),
            // The first line trains even when the rest hold less than asked.
            (0.95, vec![10], vec![20, 30, 40]),
        ] {
            let s = split(vec![doc(&path)], std::slice::from_ref(&file), fraction, "text").unwrap();
            assert_eq!(
                (lengths(&s.train), lengths(&s.val)),
                (train, val),
                "val_fraction {fraction}"
            );
        }
    }
}
