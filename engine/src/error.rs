//! Errors raised while a job runs.

/// What kind of failure an error is, for whoever decides what to do next: the CLI's exit
/// status, a retry policy, a pool worker rejoining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The pipeline file, a setting or the stored state does not fit: fix it; retrying the
    /// same run fails the same way.
    User,
    /// A service was unavailable: the same call may succeed later.
    Retryable,
    /// A pool worker lost a partition to another worker: it joins again.
    Fenced,
    /// Anything else: the run cannot go on.
    Fatal,
}

/// A failure of a running job. Every variant says which part failed and why.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("source `{source_name}`: {message}")]
    Source {
        source_name: String,
        message: String,
    },
    /// `--until-caught-up`: partitions of a source were not read to their end in time.
    #[error("source `{source_name}`: {message}")]
    NotCaughtUp {
        source_name: String,
        message: String,
    },
    #[error("operator `{operator}`: {message}")]
    Operator { operator: String, message: String },
    #[error("sink `{sink}`: {message}")]
    Sink { sink: String, message: String },
    #[error("dead-letter output: {0}")]
    DeadLetter(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A stored checkpoint does not read back intact (a truncated or altered manifest, a
    /// state file missing or whose checksum differs): a restore falls back to an older one.
    #[error("damaged checkpoint: {0}")]
    Damaged(String),
    /// A pool worker lost a partition to another worker (see `crate::pool`).
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("{0}")]
    Internal(String),
    #[error("the run was stopped")]
    Cancelled,
    /// An output could not take a call that changed nothing: the same call can be made again
    /// (see [`crate::retry`]).
    #[error("{0}")]
    Unavailable(Box<EngineError>),
    /// Inside [`EngineError::Unavailable`]: the output asked for the next attempt to wait at
    /// least `at_least` (an HTTP `Retry-After`); the retry policy waits the longer of that
    /// and its own backoff (see [`EngineError::unavailable_for`]).
    #[error("{error}")]
    RetryAfter {
        at_least: std::time::Duration,
        error: Box<EngineError>,
    },
}

impl EngineError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Fenced(_) => ErrorKind::Fenced,
            EngineError::Unavailable(_) | EngineError::RetryAfter { .. } => ErrorKind::Retryable,
            _ => ErrorKind::Fatal,
        }
    }
    /// An error of a named operator.
    pub fn operator(operator: &str, message: impl std::fmt::Display) -> Self {
        EngineError::Operator {
            operator: operator.to_string(),
            message: message.to_string(),
        }
    }
    /// An error of a named sink.
    pub fn sink(sink: &str, message: impl std::fmt::Display) -> Self {
        EngineError::Sink {
            sink: sink.to_string(),
            message: message.to_string(),
        }
    }
    /// This error, marked as one the same call can be retried after (see [`crate::retry`]).
    pub fn unavailable(self) -> Self {
        match self {
            EngineError::Unavailable(_) => self,
            e => EngineError::Unavailable(Box::new(e)),
        }
    }
    /// This error, marked as one the same call can be retried after, but not before
    /// `at_least` (see [`crate::retry`]).
    pub fn unavailable_for(self, at_least: std::time::Duration) -> Self {
        let error = match self {
            EngineError::Unavailable(inner) => inner,
            e => Box::new(e),
        };
        EngineError::Unavailable(Box::new(EngineError::RetryAfter { at_least, error }))
    }
    /// The least wait an unavailable output asked for before the next attempt.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            EngineError::Unavailable(inner) => inner.retry_after(),
            EngineError::RetryAfter { at_least, .. } => Some(*at_least),
            _ => None,
        }
    }
    /// An error of a named source.
    pub fn source(source_name: &str, message: impl std::fmt::Display) -> Self {
        EngineError::Source {
            source_name: source_name.to_string(),
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_variant_not_the_message() {
        let fenced = EngineError::Fenced("unavailable".into());
        assert_eq!(fenced.kind(), ErrorKind::Fenced);
        let busy = EngineError::sink("s", "fenced").unavailable();
        assert_eq!(busy.kind(), ErrorKind::Retryable);
        let later = EngineError::sink("s", "x").unavailable_for(std::time::Duration::from_secs(1));
        assert_eq!(later.kind(), ErrorKind::Retryable);
        assert_eq!(
            EngineError::sink("s", "unavailable").kind(),
            ErrorKind::Fatal
        );
    }
}
