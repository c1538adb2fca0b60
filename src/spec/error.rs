//! Errors that point at the spec: file, line, key, and the run they concern.

use std::fmt;
use std::path::PathBuf;

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line of the spec file (1-based).
    Line(usize),
    /// The file, without a known line (e.g. a default value).
    File,
    /// A command-line override, e.g. `--set model.n_head=5`.
    Cli(String),
    /// A line of a base spec the file `extends` (directly or down the chain).
    Base(PathBuf, usize),
}

/// One problem with a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The spec file.
    pub file: PathBuf,
    /// Where in it (or on the command line).
    pub origin: Origin,
    /// Dotted key, e.g. `model.n_head`, when the problem is about one.
    pub key: Option<String>,
    /// The run the problem arises in, when it is specific to one.
    pub run: Option<String>,
    /// What is wrong, and what would be right.
    pub message: String,
    /// The machine's problem, not the spec's: the disk under a key's folder is full. Then the
    /// command exits 1, as for any I/O failure, when no other problem is the spec's.
    pub io: bool,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Line(l) => write!(f, "{}:{l}", self.file.display())?,
            Origin::File => write!(f, "{}", self.file.display())?,
            Origin::Cli(arg) => write!(f, "{} (from {arg})", self.file.display())?,
            Origin::Base(base, l) => write!(f, "{}:{l} (extended by {})", base.display(), self.file.display())?,
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(run) = &self.run {
            write!(f, " (in run `{run}`)")?;
        }
        Ok(())
    }
}

/// All problems found in one spec, reported together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl SpecErrors {
    /// Whether every problem is the machine's (a full disk), none the spec's.
    pub fn all_io(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|e| e.io)
    }

    /// Reports an error that several runs share once, naming the runs (or none, when all share it).
    pub fn merge_shared(self, n_runs: usize) -> Self {
        let mut merged: Vec<(SpecError, Vec<String>)> = vec![];
        for e in self.0 {
            let same = merged
                .iter_mut()
                .find(|(m, _)| m.origin == e.origin && m.key == e.key && m.message == e.message);
            match same {
                // One run can meet the same problem more than once (in each of its phases).
                Some((_, runs)) => runs.extend(e.run.filter(|r| !runs.contains(r))),
                None => {
                    let runs = e.run.iter().cloned().collect();
                    merged.push((e, runs));
                }
            }
        }
        SpecErrors(
            merged
                .into_iter()
                .map(|(mut e, runs)| {
                    e.run = match runs.len() {
                        0 => None,
                        n if n == n_runs && n_runs > 1 => None,
                        _ => Some(runs.join("`, `")),
                    };
                    e
                })
                .collect(),
        )
    }
}

impl std::error::Error for SpecErrors {}

impl From<SpecError> for SpecErrors {
    fn from(e: SpecError) -> Self {
        SpecErrors(vec![e])
    }
}

/// Other tools' names for gptlab's keys, for "did you mean".
const ALIASES: &[(&str, &str)] = &[
    ("learning_rate", "lr"),
    ("n_heads", "n_head"),
    ("num_heads", "n_head"),
    ("num_attention_heads", "n_head"),
    ("n_layers", "n_layer"),
    ("num_layers", "n_layer"),
    ("num_hidden_layers", "n_layer"),
    ("n_embed", "n_embd"),
    ("d_model", "n_embd"),
    ("hidden_size", "n_embd"),
    ("n_kv_heads", "n_kv_head"),
    ("num_kv_heads", "n_kv_head"),
    ("num_key_value_heads", "n_kv_head"),
    ("batch", "batch_size"),
    ("max_steps", "steps"),
    ("iters", "steps"),
    ("block_size", "seq_len"),
    ("context_length", "seq_len"),
    ("pos_encoding", "position"),
    ("position_encoding", "position"),
];

/// Levenshtein distance between two short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The key of `known` that `unknown` most likely means: another tool's name for it, or a
/// spelling within a third of its length.
pub fn did_you_mean<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    if let Some((_, to)) = ALIASES.iter().find(|(from, _)| *from == unknown)
        && let Some(k) = known.iter().find(|k| *k == to)
    {
        return Some(k);
    }
    known
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .filter(|(d, k)| *d <= (k.len().max(unknown.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// serde's message in the spec's words: Rust type names become what to write, and an
/// unknown key gets a did-you-mean.
pub fn humanize(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (unknown, rest) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
        return match did_you_mean(unknown, &known) {
            Some(k) => format!("unknown key `{unknown}`; did you mean `{k}`?"),
            None if known.is_empty() => format!("unknown key `{unknown}`"),
            None => format!("unknown key `{unknown}`; the keys here are {}", known.join(", ")),
        };
    }
    let words = [
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected a sequence", "expected an array, e.g. [1, 2]"),
        ("expected a string", "expected a string in quotes"),
    ];
    let mut out = message.to_string();
    for (rust, spec) in words {
        out = out.replace(rust, spec);
    }
    if let Some(i) = out.find("expected struct ") {
        out.replace_range(i.., "expected a table (a [section] or { key = value })");
    }
    out.replace("invalid type: ", "wrong type: got ")
        .replace("invalid value: ", "got ")
}

#[cfg(test)]
mod humanize_tests {
    use super::*;

    #[test]
    fn misspellings_and_other_tools_names_find_the_key() {
        let model = ["n_layer", "n_embd", "n_head", "n_kv_head", "position", "dropout"];
        assert_eq!(did_you_mean("n_heads", &model), Some("n_head"));
        assert_eq!(did_you_mean("postion", &model), Some("position"));
        assert_eq!(did_you_mean("hidden_size", &model), Some("n_embd"));
        assert_eq!(
            did_you_mean("learning_rate", &["batch_size", "lr", "beta1"]),
            Some("lr")
        );
        assert_eq!(did_you_mean("colour", &model), None);
    }

    #[test]
    fn rust_words_become_spec_words() {
        let m = humanize("unknown field `n_heads`, expected one of `n_layer`, `n_head`");
        assert_eq!(m, "unknown key `n_heads`; did you mean `n_head`?");
        let m = humanize("invalid type: string \"six\", expected usize");
        assert_eq!(m, "wrong type: got string \"six\", expected a whole number (0 or more)");
        let m = humanize("invalid type: integer `3`, expected struct PhaseSection");
        assert!(m.contains("expected a table") && !m.contains("PhaseSection"), "{m}");
    }

    #[test]
    fn a_shared_problem_names_each_of_its_runs_once() {
        let at = |run: &str| SpecError {
            file: "a.toml".into(),
            origin: Origin::Line(3),
            key: Some("phase.0.foo".into()),
            run: Some(run.into()),
            message: "unknown key `foo`".into(),
            io: false,
        };
        let merged = SpecErrors(vec![at("abs"), at("abs"), at("rope")]).merge_shared(3);
        assert_eq!(merged.0.len(), 1);
        assert_eq!(merged.0[0].run.as_deref(), Some("abs`, `rope"));
        let all = SpecErrors(vec![at("abs"), at("rope"), at("abs")]).merge_shared(2);
        assert_eq!(all.0[0].run, None, "a problem of every run names none");
    }
}
