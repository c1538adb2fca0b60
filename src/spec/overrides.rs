//! Dotted keys: `--set` arguments, flattening tables into leaf keys, and setting a leaf.

use std::str::FromStr;

/// A `--set key=value` argument. The value is read as TOML (`16`, `5e-4`, `"rope"`,
/// `[1, 2]`); anything that is not valid TOML is taken as a bare string (`rope`).
#[derive(Clone, Debug, PartialEq)]
pub struct SetArg {
    /// Dotted key, e.g. `train.batch_size` or `phase.0.steps`.
    pub key: String,
    /// The parsed value.
    pub value: toml::Value,
    /// The argument as given, for error messages.
    pub raw: String,
}

impl FromStr for SetArg {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let (key, value) = raw
            .split_once('=')
            .ok_or_else(|| format!("`{raw}` is not key=value (e.g. train.batch_size=16)"))?;
        let key = key.trim();
        if key.contains(['[', ']']) {
            // `phase[0].steps` is how some tools index; here arrays are indexed like tables.
            let dotted = dotted_index(key);
            return Err(format!("`{key}`: index an array with a dotted number: `{dotted}`"));
        }
        if key.is_empty() || key.split('.').any(|s| s.trim().is_empty()) {
            return Err(format!("`{key}` is not a dotted key (e.g. model.n_head)"));
        }
        let value = value.trim();
        let value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
            Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(value.to_string())),
            Err(_) => toml::Value::String(value.to_string()),
        };
        Ok(Self {
            key: key.to_string(),
            value,
            raw: raw.to_string(),
        })
    }
}

/// `phase[0].steps` as this crate writes it, `phase.0.steps`: serde's paths and some tools
/// index arrays with brackets, gptlab's keys with a dotted number.
pub fn dotted_index(key: &str) -> String {
    key.replace('[', ".").replace(']', "")
}

/// `prefix.key`, or `key` alone at the top level (an empty `prefix`).
pub fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Leaf keys of `table` (arrays are leaves), as `(dotted key, value)` in file order.
pub fn flatten(table: &toml::Table, prefix: &str) -> Vec<(String, toml::Value)> {
    let mut out = vec![];
    for (k, v) in table {
        let key = join_key(prefix, k);
        match v {
            toml::Value::Table(t) => out.extend(flatten(t, &key)),
            other => out.push((key, other.clone())),
        }
    }
    out
}

/// Sets the leaf at `dotted` (creating tables on the way; numeric segments index arrays).
pub fn set_dotted(table: &mut toml::Table, dotted: &str, value: toml::Value) -> Result<(), String> {
    let segs: Vec<&str> = dotted.split('.').collect();
    let (last, parents) = segs.split_last().ok_or("empty key")?;
    let mut cur: &mut toml::Value = table_entry(table, parents.first().copied().unwrap_or(last));
    if parents.is_empty() {
        *cur = value;
        return Ok(());
    }
    for (i, seg) in parents
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, s)| (i, *s))
        .chain(std::iter::once((parents.len(), *last)))
    {
        let here = segs[..i].join(".");
        cur = match cur {
            toml::Value::Table(t) => table_entry(t, seg),
            toml::Value::Array(a) => {
                let idx: usize = seg
                    .parse()
                    .map_err(|_| format!("`{here}` is an array: index it with a number, e.g. {here}.0"))?;
                let len = a.len();
                a.get_mut(idx).ok_or_else(|| {
                    format!(
                        "`{here}` has {len} {}, so index {idx} does not exist",
                        if len == 1 { "entry" } else { "entries" }
                    )
                })?
            }
            _ => {
                return Err(format!("`{here}` is a value, not a table, so `{dotted}` cannot be set"));
            }
        };
    }
    *cur = value;
    Ok(())
}

/// Removes the leaf at `dotted` (numeric segments index arrays); whether it was there.
pub fn remove_dotted(table: &mut toml::Table, dotted: &str) -> bool {
    let segs: Vec<&str> = dotted.split('.').collect();
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let Some((first, rest)) = parents.split_first() else {
        return table.remove(*last).is_some();
    };
    let mut cur = match table.get_mut(*first) {
        Some(v) => v,
        None => return false,
    };
    for seg in rest {
        cur = match cur {
            toml::Value::Table(t) => match t.get_mut(*seg) {
                Some(v) => v,
                None => return false,
            },
            toml::Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match cur {
        toml::Value::Table(t) => t.remove(*last).is_some(),
        toml::Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

fn table_entry<'a>(t: &'a mut toml::Table, key: &str) -> &'a mut toml::Value {
    t.entry(key.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
}

/// A value as it appears in a run name: strings unquoted, numbers as written.
pub fn value_label(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The names of one `[sweep]` axis's values inside run names, which are folder names: each
/// value as [`value_label`] writes it, except that a path (a string with `/` or `\`) is named
/// by its last components joined with `-`, as few as tell the axis's values apart
/// (`corpora/wiki.txt` → `wiki.txt`; `a/train.txt`, `b/train.txt` → `a-train.txt`, `b-train.txt`),
/// and a table by its values in key order (`{ train = "bpe", vocab_size = 512 }` → `bpe-512`).
/// Values that stay alike however many components are kept are named as written (and refused
/// as folder names if they hold a separator).
pub fn axis_labels(values: &[toml::Value]) -> Vec<String> {
    let depth = values.iter().map(path_depth).max().unwrap_or(0).max(1);
    (1..=depth)
        .map(|d| values.iter().map(|v| folder_label(v, d)).collect::<Vec<_>>())
        .find(|labels| labels.iter().enumerate().all(|(i, l)| !labels[..i].contains(l)))
        .unwrap_or_else(|| values.iter().map(value_label).collect())
}

/// `v` with each path inside it written the one way (`./c/x/` and `c\x` are `c/x`): two sweep
/// values equal so are one point written twice.
pub fn normalized(v: &toml::Value) -> toml::Value {
    match v {
        toml::Value::String(s) if is_path(s) => {
            let root = if s.starts_with(['/', '\\']) { "/" } else { "" };
            toml::Value::String(format!("{root}{}", path_components(s).join("/")))
        }
        toml::Value::Table(t) => toml::Value::Table(t.iter().map(|(k, v)| (k.clone(), normalized(v))).collect()),
        other => other.clone(),
    }
}

/// A path's components, without empty ones and `.` (`./a//b` is `a`, `b`).
fn path_components(s: &str) -> Vec<&str> {
    s.split(['/', '\\']).filter(|c| !c.is_empty() && *c != ".").collect()
}

fn is_path(s: &str) -> bool {
    s.contains(['/', '\\'])
}

/// The most components any path inside `v` has.
fn path_depth(v: &toml::Value) -> usize {
    match v {
        toml::Value::String(s) if is_path(s) => path_components(s).len(),
        toml::Value::Table(t) => t.values().map(path_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// `v` as a part of a folder name, with each path inside it cut to its last `depth` components.
fn folder_label(v: &toml::Value, depth: usize) -> String {
    match v {
        toml::Value::String(s) if is_path(s) => {
            let parts = path_components(s);
            parts[parts.len().saturating_sub(depth)..].join("-")
        }
        toml::Value::Table(t) => {
            let mut keys: Vec<&String> = t.keys().collect();
            keys.sort();
            keys.iter()
                .map(|k| folder_label(&t[*k], depth))
                .collect::<Vec<_>>()
                .join("-")
        }
        other => value_label(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_arg_reads_toml_or_bare_strings() {
        let a: SetArg = "train.batch_size=16".parse().unwrap();
        assert_eq!(a.value, toml::Value::Integer(16));
        let b: SetArg = "model.position=rope".parse().unwrap();
        assert_eq!(b.value, toml::Value::String("rope".into()));
        assert!("noequals".parse::<SetArg>().is_err());
        assert!("a..b=1".parse::<SetArg>().is_err());
        let bracket = "phase[0].steps=5".parse::<SetArg>().unwrap_err();
        assert!(bracket.contains("`phase.0.steps`"), "{bracket}");
    }

    #[test]
    fn set_dotted_creates_tables_and_indexes_arrays() {
        let mut t: toml::Table = toml::from_str("[[phase]]\nsteps = 1\n").unwrap();
        set_dotted(&mut t, "model.n_head", toml::Value::Integer(3)).unwrap();
        set_dotted(&mut t, "phase.0.steps", toml::Value::Integer(7)).unwrap();
        assert_eq!(t["model"]["n_head"].as_integer(), Some(3));
        assert_eq!(t["phase"][0]["steps"].as_integer(), Some(7));
        assert!(
            set_dotted(&mut t, "phase.3.steps", toml::Value::Integer(7))
                .unwrap_err()
                .contains("1 entry,")
        );
        assert!(set_dotted(&mut t, "model.n_head.x", toml::Value::Integer(7)).is_err());
    }

    fn labels(values: &str) -> Vec<String> {
        let t: toml::Table = toml::from_str(&format!("v = {values}")).unwrap();
        axis_labels(t["v"].as_array().unwrap())
    }

    #[test]
    fn sweep_values_are_named_as_folder_names() {
        // Plain values as written; a path by its file name when that tells them apart.
        assert_eq!(labels("[1, 2.5, \"rope\"]"), ["1", "2.5", "rope"]);
        assert_eq!(labels("[\"corpora/wiki.txt\", \"code.txt\"]"), ["wiki.txt", "code.txt"]);
        // Alike file names: as many folders as tell them apart, whatever the separator.
        assert_eq!(
            labels("[\"x/a/train.txt\", \"x/b/train.txt\", \"c\\\\train.txt\"]"),
            ["a-train.txt", "b-train.txt", "c-train.txt"]
        );
        assert_eq!(labels("[\"./a//t.txt\", \"b/t.txt\"]"), ["a-t.txt", "b-t.txt"]);
        // A table by its values in key order, its paths cut alike.
        assert_eq!(
            labels("[\"char\", { vocab_size = 512, train = \"bpe\" }, { file = \"t/x.json\" }]"),
            ["char", "bpe-512", "x.json"]
        );
        // Values no number of components tells apart keep their separators (and are refused as
        // folder names), never two runs named alike.
        assert_eq!(labels("[\"a/t.txt\", \"/a/t.txt\"]"), ["a/t.txt", "/a/t.txt"]);
    }

    #[test]
    fn a_path_written_another_way_is_the_same_value() {
        let s = |v: &str| normalized(&toml::Value::String(v.into()));
        assert_eq!(s("./c//x/"), s("c\\x"));
        assert_ne!(s("/c/x"), s("c/x"), "absolute and relative are other paths");
        assert_eq!(s("rope"), toml::Value::String("rope".into()));
        let t: toml::Table = toml::from_str("a = { file = \"./t/x.json\" }\nb = { file = \"t/x.json\" }").unwrap();
        assert_eq!(normalized(&t["a"]), normalized(&t["b"]));
    }
}
