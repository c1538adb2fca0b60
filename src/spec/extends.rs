//! `extends = "base.toml"`: a spec merged over the spec it names (a path relative to the
//! extending file), down a chain. Tables merge key by key; any other value, arrays included
//! (`[[phase]]`, `[[run]]`), is the extending file's when it has one. Each base keeps its own
//! text, so an error names the file and line where the offending value was written.

use std::path::{Path, PathBuf};

use super::error::{Origin, SpecError};
use super::source::{Seg, SourceMap, key_at_line};

/// One spec a file extends, with what it wrote itself.
pub(super) struct Base {
    /// Its path.
    pub path: PathBuf,
    /// Its text's positions.
    pub map: SourceMap,
    /// Its own table (before its own bases are merged under it).
    pub table: toml::Table,
    /// SHA-256 of its bytes.
    pub sha256: String,
}

/// Whether `table` itself holds the value at `path`.
pub(super) fn contains(table: &toml::Table, path: &[Seg]) -> bool {
    let mut value: Option<&toml::Value> = None;
    for (i, seg) in path.iter().enumerate() {
        value = match (seg, value) {
            (Seg::Key(k), None) if i == 0 => table.get(k),
            (Seg::Key(k), Some(toml::Value::Table(t))) => t.get(k),
            (Seg::Index(j), Some(toml::Value::Array(a))) => a.get(*j),
            _ => None,
        };
        if value.is_none() {
            return false;
        }
    }
    !path.is_empty()
}

/// A spec's text parsed: its positions and its table, or the syntax error on its line.
pub(super) fn parse_toml(path: &Path, text: &str) -> Result<(SourceMap, toml::Table), Box<SpecError>> {
    let syntax = |origin, message| {
        // The key the line assigns, when it is one (a number too large, a bad value).
        let key = match &origin {
            Origin::Line(line) => key_at_line(text, *line),
            _ => None,
        };
        Box::new(SpecError {
            file: path.to_path_buf(),
            origin,
            key,
            run: None,
            message,
            io: false,
        })
    };
    let map = SourceMap::parse(text).map_err(|(msg, span)| {
        let origin = span.map_or(Origin::File, |s| {
            Origin::Line(text[..s.start.min(text.len())].matches('\n').count() + 1)
        });
        syntax(origin, format!("invalid TOML: {}", msg.trim().replace('\n', "; ")))
    })?;
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let origin = e
            .span()
            .map_or(Origin::File, |s| Origin::Line(map.line_of_offset(s.start)));
        syntax(origin, e.message().to_string())
    })?;
    Ok((map, table))
}

/// `over` merged onto `under`: tables key by key, every other value replaced.
pub(super) fn merge(mut under: toml::Table, over: toml::Table) -> toml::Table {
    for (k, v) in over {
        match (under.remove(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => {
                under.insert(k, toml::Value::Table(merge(a, b)));
            }
            (_, v) => {
                under.insert(k, v);
            }
        }
    }
    under
}

fn error(file: &Path, origin: Origin, message: String) -> Box<SpecError> {
    Box::new(SpecError {
        file: file.to_path_buf(),
        origin,
        key: Some("extends".into()),
        run: None,
        message,
        io: false,
    })
}

/// Takes `extends` out of `table` (the file at `path`, whose text is mapped by `map`) and
/// merges the chain it names under it: the merged table and the bases, nearest first.
/// `seen` holds the files of the chain so far, to refuse a cycle.
pub(super) fn resolve(
    path: &Path,
    map: &SourceMap,
    mut table: toml::Table,
    seen: &mut Vec<PathBuf>,
) -> Result<(toml::Table, Vec<Base>), Box<SpecError>> {
    let Some(value) = table.remove("extends") else {
        return Ok((table, vec![]));
    };
    let at = || {
        map.line_of(&[Seg::Key("extends".into())])
            .map_or(Origin::File, Origin::Line)
    };
    let Some(name) = value.as_str() else {
        return Err(error(
            path,
            at(),
            format!("must be the path of a spec file, not {value}"),
        ));
    };
    let base_path = path.parent().unwrap_or(Path::new(".")).join(name);
    let canonical = std::fs::canonicalize(&base_path).unwrap_or_else(|_| base_path.clone());
    if seen.contains(&canonical) {
        let chain: Vec<String> = seen
            .iter()
            .chain([&canonical])
            .map(|p| p.display().to_string())
            .collect();
        return Err(error(
            path,
            at(),
            format!("the specs extend each other in a cycle: {}", chain.join(" → ")),
        ));
    }
    let text = crate::fsio::read_text_capped_or_why(&base_path, crate::fsio::MAX_SPEC_BYTES)
        .map_err(|why| error(path, at(), format!("the base spec `{}` {why}", base_path.display())))?;
    let (base_map, own) = parse_toml(&base_path, &text)?;
    seen.push(canonical);
    let (merged_base, mut further) = resolve(&base_path, &base_map, own.clone(), seen)?;
    let mut own_written = own;
    own_written.remove("extends");
    let mut bases = vec![Base {
        sha256: crate::fsio::sha256_hex(text.as_bytes()),
        path: base_path,
        map: base_map,
        table: own_written,
    }];
    bases.append(&mut further);
    Ok((merge(merged_base, table), bases))
}
