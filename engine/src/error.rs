//! Errors raised while a job runs.
//!
//! An [`EngineError`] says which part failed ([`EngineError::Source`], a sink, an operator…)
//! and keeps the error that caused it as a value (its `cause`, walked by
//! [`std::error::Error::source`]); its own text never repeats the cause's. Print the whole
//! chain with [`EngineError::chain`] (or [`chain`] for any error): `sink `out`: <path>: <the
//! I/O error>`. What to do with a failure is decided by [`EngineError::kind`], never by the
//! text.

use std::fmt;

/// The error an [`EngineError`] wraps, kept as a value so that its chain can be walked and
/// downcast.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

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

/// `": message"`, or nothing for an empty message (the cause then says it all).
struct Tail<'a>(&'a str);

impl fmt::Display for Tail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            "" => Ok(()),
            m => write!(f, ": {m}"),
        }
    }
}

/// A failure of a running job. Every variant says which part failed and why; the variants
/// with a `cause` keep the error underneath as a value.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("source `{source_name}`{}", Tail(.message))]
    Source {
        source_name: String,
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    /// `--until-caught-up`: partitions of a source were not read to their end in time.
    #[error("source `{source_name}`: {message}")]
    NotCaughtUp {
        source_name: String,
        message: String,
    },
    #[error("operator `{operator}`{}", Tail(.message))]
    Operator {
        operator: String,
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    #[error("sink `{sink}`{}", Tail(.message))]
    Sink {
        sink: String,
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    #[error("dead-letter output{}", Tail(.message))]
    DeadLetter {
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    #[error("checkpoint{}", Tail(.message))]
    Checkpoint {
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    /// A stored checkpoint does not read back intact (a truncated or altered manifest, a
    /// state file missing or whose checksum differs): a restore falls back to an older one.
    /// `what` names the file and, without a cause, what is wrong with it.
    #[error("damaged checkpoint: {what}")]
    Damaged {
        what: String,
        #[source]
        cause: Option<Cause>,
    },
    /// A pool worker lost a partition to another worker (see `crate::pool`).
    #[error("fenced: {0}")]
    Fenced(String),
    /// A broken invariant, not an outside failure.
    #[error("{0}")]
    Internal(String),
    /// A broken invariant caused by another error (a thread that cannot start, state that
    /// does not encode), kept as the cause (see [`EngineError::internal_caused`]).
    #[error("{message}")]
    InternalCaused {
        message: String,
        #[source]
        cause: Cause,
    },
    #[error("the run was stopped")]
    Cancelled,
    /// An output could not take a call that changed nothing: the same call can be made again
    /// (see [`crate::retry`]).
    #[error(transparent)]
    Unavailable(Box<EngineError>),
    /// Inside [`EngineError::Unavailable`]: the output asked for the next attempt to wait at
    /// least `at_least` (an HTTP `Retry-After`); the retry policy waits the longer of that
    /// and its own backoff (see [`EngineError::unavailable_for`]).
    #[error(transparent)]
    RetryAfter(Box<Delayed>),
    /// The inner error is the user's to fix: a setting, the pipeline file or stored state
    /// that does not fit (see [`EngineError::user`]); retrying the same run fails the same
    /// way.
    #[error(transparent)]
    User(Box<EngineError>),
}

/// An error after which the output asked for the next attempt to wait at least `at_least`
/// (see [`EngineError::RetryAfter`]). Reads as its error.
#[derive(Debug)]
pub struct Delayed {
    pub at_least: std::time::Duration,
    pub error: EngineError,
}

impl fmt::Display for Delayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Delayed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// An error followed by its causes, `a: b: c`, as the CLI prints it (see [`chain`]).
pub struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut cur = self.0.source();
        while let Some(c) = cur {
            let next = c.to_string();
            // some libraries repeat their cause in their own text: print it once
            if !next.is_empty() && !text.ends_with(&next) {
                text.push_str(": ");
                text.push_str(&next);
            }
            cur = c.source();
        }
        f.write_str(&text)
    }
}

/// `e` followed by its causes, `a: b: c` (a cause whose text ends the text before it is not
/// repeated).
pub fn chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> Chain<'a> {
    Chain(e)
}

fn cause(e: impl Into<Cause>) -> Option<Cause> {
    Some(e.into())
}

impl EngineError {
    /// What kind of failure this is: it follows the variant, never the text.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Fenced(_) => ErrorKind::Fenced,
            EngineError::Unavailable(_) | EngineError::RetryAfter(_) => ErrorKind::Retryable,
            EngineError::User(_) => ErrorKind::User,
            _ => ErrorKind::Fatal,
        }
    }
    /// This error followed by its causes, `a: b: c` (see [`chain`]).
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
    /// A broken invariant caused by `e`; `message` says what failed and does not repeat `e`.
    pub fn internal_caused(message: impl fmt::Display, e: impl Into<Cause>) -> Self {
        EngineError::InternalCaused {
            message: message.to_string(),
            cause: e.into(),
        }
    }
    /// A damaged checkpoint: `what` names the file and what is wrong with it.
    pub fn damaged(what: impl fmt::Display) -> Self {
        EngineError::Damaged {
            what: what.to_string(),
            cause: None,
        }
    }
    /// A damaged checkpoint file (`what`) that `e` says why.
    pub fn damaged_caused(what: impl fmt::Display, e: impl Into<Cause>) -> Self {
        EngineError::Damaged {
            what: what.to_string(),
            cause: cause(e),
        }
    }
    /// What is damaged and why, without the `damaged checkpoint: ` of the error's text
    /// (for the warnings of a checkpoint skipped); `None` for another error.
    pub fn damage(&self) -> Option<String> {
        let EngineError::Damaged { what, cause } = self else {
            return None;
        };
        Some(match cause {
            Some(c) => format!("{what}: {}", chain(c.as_ref())),
            None => what.clone(),
        })
    }
    /// An error of a named operator, with only a message.
    pub fn operator(operator: &str, message: impl fmt::Display) -> Self {
        EngineError::Operator {
            operator: operator.to_string(),
            message: message.to_string(),
            cause: None,
        }
    }
    /// An error of a named operator caused by `e`; `message` says what the operator was
    /// doing (empty when `e` says it all) and does not repeat `e`.
    pub fn operator_caused(
        operator: &str,
        message: impl fmt::Display,
        e: impl Into<Cause>,
    ) -> Self {
        EngineError::Operator {
            operator: operator.to_string(),
            message: message.to_string(),
            cause: cause(e),
        }
    }
    /// An error of a named sink, with only a message.
    pub fn sink(sink: &str, message: impl fmt::Display) -> Self {
        EngineError::Sink {
            sink: sink.to_string(),
            message: message.to_string(),
            cause: None,
        }
    }
    /// An error of a named sink caused by `e` (see [`EngineError::operator_caused`]).
    pub fn sink_caused(sink: &str, message: impl fmt::Display, e: impl Into<Cause>) -> Self {
        EngineError::Sink {
            sink: sink.to_string(),
            message: message.to_string(),
            cause: cause(e),
        }
    }
    /// An error of a named source, with only a message.
    pub fn source(source_name: &str, message: impl fmt::Display) -> Self {
        EngineError::Source {
            source_name: source_name.to_string(),
            message: message.to_string(),
            cause: None,
        }
    }
    /// An error of a named source caused by `e` (see [`EngineError::operator_caused`]).
    pub fn source_caused(
        source_name: &str,
        message: impl fmt::Display,
        e: impl Into<Cause>,
    ) -> Self {
        EngineError::Source {
            source_name: source_name.to_string(),
            message: message.to_string(),
            cause: cause(e),
        }
    }
    /// An error of the dead-letter output, with only a message.
    pub fn dead_letter(message: impl fmt::Display) -> Self {
        EngineError::DeadLetter {
            message: message.to_string(),
            cause: None,
        }
    }
    /// An error of the dead-letter output caused by `e` (see
    /// [`EngineError::operator_caused`]).
    pub fn dead_letter_caused(message: impl fmt::Display, e: impl Into<Cause>) -> Self {
        EngineError::DeadLetter {
            message: message.to_string(),
            cause: cause(e),
        }
    }
    /// An error of the checkpoint store, with only a message.
    pub fn checkpoint(message: impl fmt::Display) -> Self {
        EngineError::Checkpoint {
            message: message.to_string(),
            cause: None,
        }
    }
    /// An error of the checkpoint store caused by `e` (see
    /// [`EngineError::operator_caused`]).
    pub fn checkpoint_caused(message: impl fmt::Display, e: impl Into<Cause>) -> Self {
        EngineError::Checkpoint {
            message: message.to_string(),
            cause: cause(e),
        }
    }
    /// This error, marked as the user's to fix: a setting or stored state that does not fit
    /// (its kind is then [`ErrorKind::User`]).
    pub fn user(self) -> Self {
        match self {
            EngineError::User(_) => self,
            e => EngineError::User(Box::new(e)),
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
            EngineError::Unavailable(inner) => *inner,
            e => e,
        };
        EngineError::Unavailable(Box::new(EngineError::RetryAfter(Box::new(Delayed {
            at_least,
            error,
        }))))
    }
    /// The least wait an unavailable output asked for before the next attempt.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            EngineError::Unavailable(inner) => inner.retry_after(),
            EngineError::RetryAfter(d) => Some(d.at_least),
            _ => None,
        }
    }
    /// The error inside the marks [`EngineError::Unavailable`], [`EngineError::RetryAfter`]
    /// and [`EngineError::User`]: the one that says which part failed.
    pub fn unmarked(&self) -> &EngineError {
        match self {
            EngineError::Unavailable(e) | EngineError::User(e) => e.unmarked(),
            EngineError::RetryAfter(d) => d.error.unmarked(),
            e => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

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
        let user = EngineError::source("s", "retry later").user();
        assert_eq!(user.kind(), ErrorKind::User);
        assert_eq!(user.to_string(), "source `s`: retry later");
        assert!(matches!(user.unmarked(), EngineError::Source { .. }));
        assert_eq!(EngineError::checkpoint("user").kind(), ErrorKind::Fatal);
    }

    fn not_found() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
    }

    #[test]
    fn the_cause_is_kept_as_a_value_and_not_repeated() {
        let e = EngineError::sink_caused("out", "/tmp/a.ndjson", not_found());
        assert_eq!(e.to_string(), "sink `out`: /tmp/a.ndjson");
        let cause = e.source().expect("a cause");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("an I/O error");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(
            e.chain().to_string(),
            "sink `out`: /tmp/a.ndjson: no such file"
        );
        // an empty message: the cause says it all, as `sink(name, e)` did
        let e = EngineError::source_caused("in", "", not_found());
        assert_eq!(e.to_string(), "source `in`");
        assert_eq!(e.chain().to_string(), "source `in`: no such file");
        for e in [
            EngineError::operator_caused("w", "", not_found()),
            EngineError::dead_letter_caused("", not_found()),
            EngineError::checkpoint_caused("", not_found()),
        ] {
            assert!(e.source().unwrap().is::<std::io::Error>(), "{e}");
            assert!(e.chain().to_string().ends_with(": no such file"), "{e}");
        }
    }

    #[test]
    fn marks_keep_the_chain() {
        let e = EngineError::sink_caused("out", "", not_found())
            .unavailable_for(std::time::Duration::from_secs(2));
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(2)));
        assert_eq!(e.to_string(), "sink `out`");
        assert!(e.source().unwrap().is::<std::io::Error>());
        assert_eq!(e.chain().to_string(), "sink `out`: no such file");
        let e = EngineError::source_caused("in", "", not_found()).user();
        assert_eq!(e.chain().to_string(), "source `in`: no such file");
        assert!(matches!(e.unmarked(), EngineError::Source { .. }));
    }

    /// An error whose text repeats its cause's (as some libraries' do).
    #[derive(Debug)]
    struct Repeats(std::io::Error);
    impl fmt::Display for Repeats {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "failed: {}", self.0)
        }
    }
    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_chain_prints_a_repeated_cause_once() {
        let e = EngineError::sink_caused("out", "", Repeats(not_found()));
        assert_eq!(e.chain().to_string(), "sink `out`: failed: no such file");
        // the original error is still reachable, two links down
        let io = e.source().and_then(|c| c.source()).unwrap();
        assert!(io.is::<std::io::Error>());
    }
}
