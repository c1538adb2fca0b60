//! The library's error at the command-line boundary, and the exit code each kind maps to.

use crate::spec::SpecErrors;

/// A failure of a whole command.
#[derive(Debug)]
pub enum Error {
    /// The spec (or a `--set`) is wrong: every problem, with file, line and key. Exit 2 (1 when
    /// every problem is the machine's: a full disk under the token cache).
    Spec(SpecErrors),
    /// A bad command-line argument (a run that does not exist, a device this build lacks, a
    /// value out of range): one line saying why. Exit 2.
    Usage(String),
    /// Something else went wrong: I/O, a run that cannot resume, a result that would be stale.
    /// Exit 1.
    Runtime(anyhow::Error),
}

impl Error {
    /// The process exit code for this failure (see the README's table).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Spec(e) if e.all_io() => 1,
            Error::Spec(_) | Error::Usage(_) => 2,
            Error::Runtime(_) => 1,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Spec(e) => write!(f, "{e}"),
            Error::Usage(why) => write!(f, "error: {why}"),
            Error::Runtime(e) => write!(f, "error: {e:#}"),
        }
    }
}

impl From<SpecErrors> for Error {
    fn from(e: SpecErrors) -> Self {
        Error::Spec(e)
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error::Runtime(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Origin, SpecError};

    #[test]
    fn spec_errors_exit_2_unless_every_one_is_a_full_disk() {
        let problem = |io| SpecError {
            file: "a.toml".into(),
            origin: Origin::Line(6),
            key: Some("data.cache_dir".into()),
            run: None,
            message: "writing the token cache: No space left on device".into(),
            io,
        };
        let code = |errors| Error::Spec(SpecErrors(errors)).exit_code();
        assert_eq!(code(vec![problem(true)]), 1);
        assert_eq!(code(vec![problem(true), problem(false)]), 2);
        assert_eq!(code(vec![problem(false)]), 2);
    }
}
