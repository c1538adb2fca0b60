//! JSON Lines corpora (`format = "jsonl"`): one document per line, its text a string field of
//! a JSON object (`text_field`, `"text"` by default). Lines are read in blocks, never a whole
//! file; blank lines are skipped. The text a tokenizer sees is the field's value, so bits per
//! byte count the bytes of that text, not of the JSON around it.

use std::ops::ControlFlow;
use std::path::Path;

use sha2::Digest;

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
        // What is pending holds no newline (it is the start of a line): only the new bytes are
        // searched, or a line of many blocks would be searched again with each.
        let mut searched = self.pending.len();
        self.pending.extend_from_slice(block);
        let mut from = 0;
        while let Some(n) = self.pending[searched..].iter().position(|&b| b == b'\n') {
            let end = searched + n;
            self.number += 1;
            let line = &self.pending[from..end];
            f(
                self.number,
                self.at + from as u64,
                line.strip_suffix(b"\r").unwrap_or(line),
            )?;
            from = end + 1;
            searched = from;
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
    // A byte-order mark (some Windows tools write one before the first line) is not JSON.
    let line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        // serde_json says "at line 1 column N" of the one line it was given: the column only.
        let said = e.to_string();
        let what = said.rsplit_once(" at line ").map_or(said.as_str(), |(what, _)| what);
        format!("is not JSON ({what} at column {})", e.column())
    })?;
    let mut object = match value {
        serde_json::Value::Object(object) => object,
        // A JSON file of one array of documents is the likeliest mistake.
        serde_json::Value::Array(_) => {
            return Err("is a JSON array, not an object (JSON Lines has one object per line)".into());
        }
        _ => return Err("is not a JSON object".into()),
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

/// What [`scan`] finds of a file.
#[derive(Debug)]
pub struct Scanned {
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Characters of the text of all its lines.
    pub chars: u64,
}

/// Reads `path` once: its SHA-256, size, and the characters of every line's text; an error
/// names the first bad lines (not JSON, not an object, no string `field`) by number.
pub fn scan(path: &Path, field: &str) -> Result<Scanned, String> {
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
    Ok(Scanned {
        sha256: crate::fsio::hex(&hasher.finalize()),
        bytes,
        chars,
    })
}

/// A byte range of a JSON Lines file that starts at a line's start.
#[derive(Clone, Copy, Debug)]
pub struct Range<'a> {
    /// The file.
    pub path: &'a Path,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Calls `f` with each line of `range`: its number from 1, its offset and its bytes.
fn for_each_line(range: Range, mut f: impl FnMut(u64, u64, &[u8]) -> ControlFlow<String>) -> Result<(), String> {
    let mut lines = Lines::new(range.start);
    let read = crate::fsio::for_each_block_in(range.path, range.start..range.end, |block, _| lines.feed(block, &mut f));
    if let Some(why) = read? {
        return Err(why);
    }
    match lines.finish(&mut f) {
        ControlFlow::Break(why) => Err(why),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Hands on the text of every line of `range` (`Some`), with `None` between two.
pub fn for_each_text(
    range: Range,
    field: &str,
    mut f: impl FnMut(Option<&str>) -> Result<(), String>,
) -> Result<(), String> {
    let mut first = true;
    for_each_line(range, |_, _, line| {
        let mut step = || -> Result<(), String> {
            let Some(text) = text_of(line, field)
                .map_err(|_| format!("`{}` changed while it was being read", range.path.display()))?
            else {
                return Ok(());
            };
            if !std::mem::take(&mut first) {
                f(None)?;
            }
            f(Some(&text))
        };
        match step() {
            Ok(()) => ControlFlow::Continue(()),
            Err(why) => ControlFlow::Break(why),
        }
    })
}

/// The offset of the first line of `file` (a whole file of `chars` characters of text) to
/// hold out so that at least `want` characters are held out: the last line start from which
/// that many remain. With `keep_first`, the first document stays in training, and when the
/// others hold fewer than `want` they are all held out (as a folder's split does); the file's
/// end when there is no other.
pub fn cut(file: Range, field: &str, chars: u64, want: f64, keep_first: bool) -> Result<u64, String> {
    let (mut before, mut found, mut first) = (0u64, file.end, true);
    for_each_line(file, |_, offset, line| {
        let Ok(Some(text)) = text_of(line, field) else {
            return ControlFlow::Continue(());
        };
        let (remaining, eligible) = ((chars - before) as f64, !(keep_first && first));
        first = false;
        before += text.chars().count() as u64;
        if eligible && (remaining >= want || found == file.end) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_named_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let lines = [
            "{\"text\": \"ok\"}",
            "not json",
            "\"text\"",
            "{\"content\": \"x\"}",
            "{\"text\": 3}",
            "[{\"text\": \"a\"}]",
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let why = scan(&path, "text").unwrap_err();
        for said in [
            "line 2 is not JSON (expected ident at column 2)",
            "line 3 is not a JSON object",
            "line 4 has no `text` (its keys: content)",
            "line 5 has `text` = 3, not a string",
            "line 6 is a JSON array, not an object (JSON Lines has one object per line)",
        ] {
            assert!(why.contains(said), "{said:?} in {why}");
        }
        assert!(!why.contains("line 1"), "{why}");
    }
}
