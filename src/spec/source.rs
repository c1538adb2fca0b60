//! Maps dotted keys back to lines of the spec file, so every error can name its line.

use std::collections::HashMap;
use std::ops::Range;

use super::overrides::join_key;

use toml_edit::{ImDocument, Item, TableLike};

/// One step of a key path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An index into an array (of tables).
    Index(usize),
}

/// Splits `model.n_head` or `phase.0.steps` into segments; numbers become indices.
pub fn segments(dotted: &str) -> Vec<Seg> {
    dotted
        .split('.')
        .map(|s| match s.parse::<usize>() {
            Ok(i) => Seg::Index(i),
            Err(_) => Seg::Key(s.to_string()),
        })
        .collect()
}

/// The dotted key that line `line` (1-based) of `source` assigns, with the table it sits in
/// (`model.n_layer`, `phase.1.steps`), read from the text alone: for a syntax error, where no
/// parsed document exists. `None` when the line is not a plain `key = …`.
pub fn key_at_line(source: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    // Entries seen so far of each array of tables.
    let mut entries: HashMap<String, usize> = HashMap::new();
    for text in source.lines().take(line.checked_sub(1)?) {
        if let Some((name, many)) = header(text) {
            table = if many {
                // `[[phase]]` opens the next entry of that array: `phase.N`.
                let n = entries.entry(name.clone()).and_modify(|n| *n += 1).or_insert(0);
                format!("{name}.{n}")
            } else {
                name
            };
        }
    }
    let (key, _) = source.lines().nth(line - 1)?.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && is_bare(key)).then(|| join_key(&table, key))
}

/// Whether `name` is a bare (possibly dotted) TOML key: letters, digits, `_`, `-` and `.`.
fn is_bare(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A table header line: `[name]` as `(name, false)`, `[[name]]` as `(name, true)`. Names must
/// start with a letter, so a line of an array value (`[1, 2]`) is not taken for one.
fn header(line: &str) -> Option<(String, bool)> {
    let line = line.split('#').next()?.trim();
    let (inner, many) = match line.strip_prefix("[[") {
        Some(rest) => (rest.strip_suffix("]]")?, true),
        None => (line.strip_prefix('[')?.strip_suffix(']')?, false),
    };
    let name = inner.trim();
    let ok = name.starts_with(|c: char| c.is_ascii_alphabetic()) && is_bare(name);
    ok.then(|| (name.to_string(), many))
}

/// The parsed file with spans kept.
pub struct SourceMap {
    doc: ImDocument<String>,
    line_starts: Vec<usize>,
}

impl SourceMap {
    /// Parses `source`; a syntax error comes back with its byte span.
    pub fn parse(source: &str) -> Result<Self, (String, Option<Range<usize>>)> {
        let doc = ImDocument::parse(source.to_string()).map_err(|e| (e.message().to_string(), e.span()))?;
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Ok(Self { doc, line_starts })
    }

    /// 1-based line of a byte offset.
    pub fn line_of_offset(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset)
    }

    /// The line that best locates `path`: the key itself, else the deepest table on the way.
    pub fn line_of(&self, path: &[Seg]) -> Option<usize> {
        let mut best: Option<Range<usize>> = None;
        let mut table: &dyn TableLike = self.doc.as_table();
        let mut i = 0;
        while i < path.len() {
            let Seg::Key(k) = &path[i] else { break };
            let Some(item) = table.get(k) else { break };
            best = table.key(k).and_then(|key| key.span()).or_else(|| item.span()).or(best);
            match item {
                Item::ArrayOfTables(arr) => {
                    let Some(Seg::Index(j)) = path.get(i + 1) else {
                        break;
                    };
                    let Some(t) = arr.get(*j) else { break };
                    best = t.span().or(best);
                    table = t;
                    i += 2;
                }
                Item::Value(toml_edit::Value::Array(arr)) => {
                    if let Some(Seg::Index(j)) = path.get(i + 1)
                        && let Some(v) = arr.get(*j)
                    {
                        best = v.span().or(best);
                        if let Some(t) = v.as_inline_table()
                            && let Some(Seg::Key(k2)) = path.get(i + 2)
                        {
                            best = t.key(k2).and_then(|key| key.span()).or(best);
                        }
                    }
                    break;
                }
                _ => match item.as_table_like() {
                    Some(t) => {
                        table = t;
                        i += 1;
                    }
                    None => break,
                },
            }
        }
        best.map(|r| self.line_of_offset(r.start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_its_key_with_its_table_and_entry() {
        let text = "seed = 1\n[model]\nn_layer = 99999999999999999999\n[[phase]]\nsteps = 1\n\
                    [[phase]]  # second\nsteps = x\n[data]\nlengths = [\n  [1, 2],\n]\nbad line\n";
        assert_eq!(key_at_line(text, 1).as_deref(), Some("seed"));
        assert_eq!(key_at_line(text, 3).as_deref(), Some("model.n_layer"));
        assert_eq!(key_at_line(text, 5).as_deref(), Some("phase.0.steps"));
        assert_eq!(key_at_line(text, 7).as_deref(), Some("phase.1.steps"));
        assert_eq!(key_at_line(text, 9).as_deref(), Some("data.lengths"));
        assert_eq!(key_at_line(text, 10), None, "a line of an array value");
        assert_eq!(key_at_line(text, 12), None, "not `key = value`");
        assert_eq!(key_at_line(text, 0), None);
        assert_eq!(key_at_line(text, 99), None);
    }
}
