//! Errors raised while a job runs.

/// A failure of a running job. Every variant says which part failed and why.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("source `{source_name}`: {message}")]
    Source {
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
    #[error("{0}")]
    Internal(String),
    #[error("the run was stopped")]
    Cancelled,
}

impl EngineError {
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
    /// An error of a named source.
    pub fn source(source_name: &str, message: impl std::fmt::Display) -> Self {
        EngineError::Source {
            source_name: source_name.to_string(),
            message: message.to_string(),
        }
    }
}
