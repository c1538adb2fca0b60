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
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        match &self.origin {
            Origin::Line(l) => write!(f, ":{l}")?,
            Origin::File => {}
            Origin::Cli(arg) => write!(f, " (from {arg})")?,
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
    /// Reports an error that several runs share once, naming the runs (or none, when all share it).
    pub fn merge_shared(self, n_runs: usize) -> Self {
        let mut merged: Vec<(SpecError, Vec<String>)> = vec![];
        for e in self.0 {
            let same = merged
                .iter_mut()
                .find(|(m, _)| m.origin == e.origin && m.key == e.key && m.message == e.message);
            match same {
                Some((_, runs)) => runs.extend(e.run),
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
