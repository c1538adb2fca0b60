//! Maps dotted keys back to lines of the spec file, so every error can name its line.

use std::ops::Range;

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
