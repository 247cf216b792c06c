//! Errors in pipeline files, always with `file:line:column`.

use std::fmt;

/// A problem with a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PipelineError {
    pub file: String,
    /// 1-based line and column, when known.
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl PipelineError {
    /// Always a user error: the file must change.
    pub fn kind(&self) -> weir_engine::ErrorKind {
        weir_engine::ErrorKind::User
    }

    /// An error at a position.
    pub fn at(file: &str, line: u64, column: u64, message: impl Into<String>) -> Self {
        PipelineError {
            file: file.to_string(),
            line,
            column,
            message: message.into(),
        }
    }
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}
