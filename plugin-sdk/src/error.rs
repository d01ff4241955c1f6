use std::fmt;

/// Why a collection failed. Its text becomes the UNKNOWN status the operator sees,
/// so say what was read and what was wrong with it.
#[derive(Debug)]
pub struct Error {
    message: String,
}

/// Result of a collection step.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with the given text.
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
        }
    }

    /// A parse error: `what` could not be read from `source`.
    pub fn parse(source: &str, what: &str) -> Self {
        Error::new(format!("{source}: cannot parse {what}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::new(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::new(message)
    }
}
