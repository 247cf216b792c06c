//! Errors in pipeline files, always with `file:line:column`.

use std::fmt;
use std::sync::Arc;

/// The error under a [`PipelineError`] (a YAML parser's, an I/O error, a schema's...), kept
/// as a value and shared so that the error stays `Clone`.
pub type PipelineCause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A problem with a pipeline file: `file:line:column: message`, then its cause (printed
/// after it by [`weir_engine::error::chain`]; the message never repeats the cause's text).
#[derive(Debug, Clone)]
pub struct PipelineError {
    pub file: String,
    /// 1-based line and column, when known.
    pub line: u64,
    pub column: u64,
    /// What is wrong, or where the cause struck (empty when the cause says it all).
    pub message: String,
    /// The error underneath, when another error caused this one.
    pub cause: Option<PipelineCause>,
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
            cause: None,
        }
    }

    /// This error caused by `e` (`message` says where or what, and does not repeat `e`).
    pub fn caused_by(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(e));
        self
    }

    /// What is wrong without the position: the message followed by its causes, `message:
    /// cause` (the text after `file:line:column: ` in [`Self::chain`]).
    pub fn reason(&self) -> String {
        let Some(cause) = &self.cause else {
            return self.message.clone();
        };
        let cause = weir_engine::error::chain(cause.as_ref()).to_string();
        match self.message.as_str() {
            "" => cause,
            m if m.ends_with(&cause) => m.to_string(),
            m => format!("{m}: {cause}"),
        }
    }

    /// This error followed by its causes, `file:line:column: message: cause`, as the CLI
    /// prints it.
    pub fn chain(&self) -> weir_engine::error::Chain<'_> {
        weir_engine::error::chain(self)
    }
}

impl std::error::Error for PipelineError {
    /// The cause itself (not the `Arc` holding it), so that it downcasts to its type.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)?;
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)?;
        }
        if self.message.is_empty() {
            Ok(())
        } else {
            write!(f, ": {}", self.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_as_a_value_and_printed_once_after_the_message() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = PipelineError::at("p.yaml", 0, 0, "cannot read the pipeline file").caused_by(io);
        assert_eq!(e.to_string(), "p.yaml: cannot read the pipeline file");
        assert_eq!(
            e.chain().to_string(),
            "p.yaml: cannot read the pipeline file: no such file"
        );
        let cause = std::error::Error::source(&e).unwrap();
        assert!(cause.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(e.reason(), "cannot read the pipeline file: no such file");
        // an empty message: the cause says it all
        let e = PipelineError::at("p.yaml", 3, 7, "").caused_by(e.clone());
        assert_eq!(e.to_string(), "p.yaml:3:7");
        assert_eq!(
            e.chain().to_string(),
            "p.yaml:3:7: p.yaml: cannot read the pipeline file: no such file"
        );
        assert_eq!(
            e.reason(),
            "p.yaml: cannot read the pipeline file: no such file"
        );
    }
}
