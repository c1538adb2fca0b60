//! The library's error at the command-line boundary, and the exit code each kind maps to.

use crate::spec::SpecErrors;

/// A failure of a whole command.
#[derive(Debug)]
pub enum Error {
    /// The spec (or a `--set`) is wrong: every problem, with file, line and key. Exit 2.
    Spec(SpecErrors),
    /// Something else went wrong: I/O, a run that cannot resume, a device. Exit 1.
    Runtime(anyhow::Error),
}

impl Error {
    /// The process exit code for this failure (see the README's table).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Spec(_) => 2,
            Error::Runtime(_) => 1,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Spec(e) => write!(f, "{e}"),
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
