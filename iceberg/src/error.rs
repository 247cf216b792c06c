//! The Iceberg sink's errors: each keeps the error underneath as a value (its `cause`) and
//! says its kind ([`IcebergError::kind`]) from its variant and the types in its cause chain
//! (an I/O error's kind, sqlx's error, an HTTP client's connect or timeout flag), never from
//! the text.

use std::error::Error as StdError;
use std::fmt;

use weir_engine::error::Cause;
use weir_engine::{EngineError, ErrorKind};

/// An Iceberg sink's failure.
#[derive(Debug, thiserror::Error)]
pub enum IcebergError {
    /// The output does not fit the table, or a type has no Iceberg equivalent: the pipeline
    /// or the table must change.
    #[error("{message}")]
    Schema {
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    /// The catalog refused or could not be reached.
    #[error("catalog {uri}")]
    Catalog {
        uri: String,
        #[source]
        cause: Cause,
    },
    /// Reading or writing data files or metadata failed; `message` says what weir was doing.
    #[error("{message}")]
    Write {
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    /// Another writer committed to the table first.
    #[error("{0}")]
    Conflict(String),
    /// A configuration weir cannot run.
    #[error("{message}")]
    Config {
        message: String,
        #[source]
        cause: Option<Cause>,
    },
    /// The process's I/O runtime could not start.
    #[error(transparent)]
    Runtime(#[from] weir_engine::io::IoRuntimeError),
}

impl IcebergError {
    /// A failure to read or write files or metadata while doing `what`, caused by `e`.
    pub(crate) fn write(what: impl fmt::Display, e: impl Into<Cause>) -> Self {
        IcebergError::Write {
            message: what.to_string(),
            cause: Some(e.into()),
        }
    }

    /// A failure to read or write files or metadata that only a message describes.
    pub(crate) fn write_msg(message: impl fmt::Display) -> Self {
        IcebergError::Write {
            message: message.to_string(),
            cause: None,
        }
    }

    /// A mapper of errors to [`IcebergError::Write`] while doing `what` (for `map_err`).
    pub(crate) fn writing<E: Into<Cause>>(what: &'static str) -> impl FnOnce(E) -> Self {
        move |e| IcebergError::write(what, e)
    }

    /// The output does not fit the table.
    pub(crate) fn schema(message: impl fmt::Display) -> Self {
        IcebergError::Schema {
            message: message.to_string(),
            cause: None,
        }
    }

    /// The output does not fit the table, as `e` (caused while doing `what`) says.
    pub(crate) fn schema_caused(what: impl fmt::Display, e: impl Into<Cause>) -> Self {
        IcebergError::Schema {
            message: what.to_string(),
            cause: Some(e.into()),
        }
    }

    /// A configuration weir cannot run.
    pub(crate) fn config(message: impl fmt::Display) -> Self {
        IcebergError::Config {
            message: message.to_string(),
            cause: None,
        }
    }

    /// A configuration weir cannot run, as `e` says.
    pub(crate) fn config_caused(what: impl fmt::Display, e: impl Into<Cause>) -> Self {
        IcebergError::Config {
            message: what.to_string(),
            cause: Some(e.into()),
        }
    }

    /// The catalog at `uri` failed with `e`.
    pub(crate) fn catalog(uri: String, e: impl Into<Cause>) -> Self {
        IcebergError::Catalog {
            uri,
            cause: e.into(),
        }
    }

    /// What kind of failure this is:
    /// - [`ErrorKind::Retryable`]: a commit refused because another writer committed first,
    ///   or a catalog or storage that could not be reached or timed out (a refused or reset
    ///   connection, a pool or request timeout, a server shutting down, a busy SQLite file);
    /// - [`ErrorKind::User`]: a configuration weir cannot run;
    /// - [`ErrorKind::Fatal`]: anything else, among them an output the table cannot take
    ///   (the run fails; change the pipeline or write to another table).
    pub fn kind(&self) -> ErrorKind {
        match self {
            IcebergError::Conflict(_) => ErrorKind::Retryable,
            IcebergError::Config { .. } => ErrorKind::User,
            IcebergError::Catalog { cause, .. }
            | IcebergError::Write {
                cause: Some(cause), ..
            } if transient(cause.as_ref()) => ErrorKind::Retryable,
            _ => ErrorKind::Fatal,
        }
    }

    /// The engine's error of sink `sink` for this failure of a call that changed nothing
    /// (opening, recovering, committing), marked by [`Self::kind`]: a retryable one as
    /// [`EngineError::unavailable`] (the engine's retry policy makes the call again), a
    /// user's as [`EngineError::user`].
    pub fn into_sink_error(self, sink: &str) -> EngineError {
        let kind = self.kind();
        let e = EngineError::sink_caused(sink, "", self);
        match kind {
            ErrorKind::Retryable => e.unavailable(),
            ErrorKind::User => e.user(),
            ErrorKind::Fenced | ErrorKind::Fatal => e,
        }
    }
}

impl IcebergError {
    /// Whether this failure is the table's own files, which no retry mends: a file the table
    /// lists is missing from the storage (removed as an orphan, deleted by hand), or is not
    /// Parquet that can be read (corrupt, cut short). Found by the types of the cause chain:
    /// object_store's `NotFound`, a Parquet error, or iceberg-rust's `DataInvalid` (which its
    /// local file system gives for any file it cannot read, without the I/O error).
    pub fn is_broken_table(&self) -> bool {
        let mut cur: Option<&(dyn StdError + 'static)> = Some(self);
        while let Some(e) = cur {
            if matches!(
                e.downcast_ref::<object_store::Error>(),
                Some(object_store::Error::NotFound { .. })
            ) {
                return true;
            }
            if e.downcast_ref::<iceberg::Error>()
                .is_some_and(|e| e.kind() == iceberg::ErrorKind::DataInvalid)
            {
                return true;
            }
            match e.downcast_ref::<parquet::errors::ParquetError>() {
                // (an external error is what the reader met: its own cause tells)
                Some(parquet::errors::ParquetError::External(_)) | None => {}
                Some(_) => return true,
            }
            // a corrupt page met while the batches are read: the Parquet reader's error,
            // carried by arrow's variant for it
            if matches!(
                e.downcast_ref::<arrow::error::ArrowError>(),
                Some(arrow::error::ArrowError::ParquetError(_))
            ) {
                return true;
            }
            cur = e.source();
        }
        false
    }
}

/// Whether the first error of `e`'s chain that tells (an I/O error, sqlx's, an HTTP
/// client's, an Iceberg error marked retryable) says that the service could not be reached
/// or answer in time.
pub(crate) fn transient(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(verdict) = verdict(e) {
            return verdict;
        }
        cur = e.source();
    }
    false
}

/// What one error of a chain says, when its type tells.
fn verdict(e: &(dyn StdError + 'static)) -> Option<bool> {
    if let Some(e) = e.downcast_ref::<iceberg::Error>() {
        // iceberg-rust marks the faults its own callers may retry (a REST commit conflict);
        // otherwise its cause tells
        return e.retryable().then_some(true);
    }
    if let Some(e) = e.downcast_ref::<sqlx::Error>() {
        return Some(sqlx_transient(e));
    }
    if let Some(e) = e.downcast_ref::<std::io::Error>() {
        return Some(io_transient(e.kind()));
    }
    if let Some(e) = e.downcast_ref::<reqwest::Error>() {
        if e.is_connect() || e.is_timeout() {
            return Some(true);
        }
        if let Some(status) = e.status() {
            return Some(status.is_server_error() || status.as_u16() == 429);
        }
        return None;
    }
    if let Some(e) = e.downcast_ref::<object_store::client::HttpError>() {
        use object_store::client::HttpErrorKind as K;
        return match e.kind() {
            K::Connect | K::Request | K::Timeout | K::Interrupted => Some(true),
            _ => None,
        };
    }
    None
}

/// Whether an I/O error of kind `kind` is the network's or a timeout.
fn io_transient(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::Interrupted
            | K::UnexpectedEof
            | K::AddrNotAvailable
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
    )
}

/// Whether a catalog database's error is an outage: the connection (refused, reset, timed
/// out; as the PostgreSQL sink decides), PostgreSQL's SQLSTATE classes of connections,
/// rollbacks, resources and shutdowns, or a busy or locked SQLite file.
fn sqlx_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes
                let code = db.code().and_then(|c| c.parse::<i32>().ok());
                return code.is_some_and(|c| matches!(c & 0xff, 5 | 6));
            }
            let code = db.code();
            let class = code.as_deref().and_then(|c| c.get(..2)).unwrap_or("");
            matches!(class, "08" | "40" | "53" | "57" | "58")
        }
        // a certificate the server's TLS does not pass (rustls reports it as invalid data)
        sqlx::Error::Io(io) => !matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
        ),
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn io_err(kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, "x")
    }

    /// An error as iceberg-rust wraps its clients' (`with_source`).
    fn wrapped(e: impl Into<anyhow::Error>) -> iceberg::Error {
        iceberg::Error::new(iceberg::ErrorKind::Unexpected, "failed").with_source(e)
    }

    fn catalog(e: impl Into<Cause>) -> IcebergError {
        IcebergError::catalog("sqlite:///c.db".into(), e)
    }

    #[test]
    fn an_unreachable_catalog_or_storage_is_retryable() {
        let refused = sqlx::Error::Io(io_err(io::ErrorKind::ConnectionRefused));
        assert_eq!(catalog(refused).kind(), ErrorKind::Retryable);
        // through iceberg-rust's SQL catalog, which keeps sqlx's error as its source
        assert_eq!(
            catalog(wrapped(sqlx::Error::PoolTimedOut)).kind(),
            ErrorKind::Retryable
        );
        let reset = wrapped(io_err(io::ErrorKind::ConnectionReset));
        assert_eq!(
            IcebergError::write("writing data files", reset).kind(),
            ErrorKind::Retryable
        );
        let timeout = io_err(io::ErrorKind::TimedOut);
        assert_eq!(catalog(timeout).kind(), ErrorKind::Retryable);
        // a REST catalog's commit conflict, which iceberg-rust marks retryable
        let conflict = iceberg::Error::new(iceberg::ErrorKind::CatalogCommitConflicts, "c")
            .with_retryable(true);
        assert_eq!(catalog(conflict).kind(), ErrorKind::Retryable);
    }

    #[test]
    fn a_conflict_is_retried_as_commits_always_were() {
        assert_eq!(
            IcebergError::Conflict("table t changed".into()).kind(),
            ErrorKind::Retryable
        );
    }

    #[test]
    fn refusals_and_broken_files_fail_the_run() {
        let missing = wrapped(iceberg::Error::new(iceberg::ErrorKind::TableNotFound, "t"));
        assert_eq!(catalog(missing).kind(), ErrorKind::Fatal);
        let denied = sqlx::Error::Io(io_err(io::ErrorKind::PermissionDenied));
        assert_eq!(
            IcebergError::write("x", io_err(io::ErrorKind::PermissionDenied)).kind(),
            ErrorKind::Fatal
        );
        // sqlx's I/O error of a connection is retried, as the PostgreSQL sink does, but not a
        // certificate the server's TLS refuses
        assert_eq!(catalog(denied).kind(), ErrorKind::Retryable);
        let cert = sqlx::Error::Io(io_err(io::ErrorKind::InvalidData));
        assert_eq!(catalog(cert).kind(), ErrorKind::Fatal);
        let tls = sqlx::Error::Tls("invalid peer certificate".into());
        assert_eq!(catalog(tls).kind(), ErrorKind::Fatal);
        assert_eq!(
            IcebergError::write_msg("unreadable").kind(),
            ErrorKind::Fatal
        );
        // the text says nothing: "timed out" in a message is not a timeout
        let text = iceberg::Error::new(iceberg::ErrorKind::Unexpected, "connection timed out");
        assert_eq!(catalog(text).kind(), ErrorKind::Fatal);
        assert_eq!(
            IcebergError::schema("table t cannot take this output").kind(),
            ErrorKind::Fatal
        );
        assert_eq!(IcebergError::config("x").kind(), ErrorKind::User);
    }

    /// A file the table lists that is gone or not Parquet is the table's breakage (no retry
    /// mends it); a connection reset is not.
    #[test]
    fn a_missing_or_corrupt_file_is_a_broken_table() {
        let missing = object_store::Error::NotFound {
            path: "t/data/f.parquet".into(),
            source: "gone".into(),
        };
        assert!(IcebergError::write("reading", missing).is_broken_table());
        let corrupt = parquet::errors::ParquetError::General("invalid magic".into());
        assert!(IcebergError::write("reading", corrupt).is_broken_table());
        let local = iceberg::Error::new(iceberg::ErrorKind::DataInvalid, "cannot read");
        assert!(IcebergError::write("reading", local).is_broken_table());
        let page = arrow::error::ArrowError::ParquetError("bad page header".into());
        assert!(IcebergError::write("reading", page).is_broken_table());
        let reset = io_err(io::ErrorKind::ConnectionReset);
        assert!(!IcebergError::write("reading", reset).is_broken_table());
        let external =
            parquet::errors::ParquetError::External(Box::new(io_err(io::ErrorKind::TimedOut)));
        assert!(!IcebergError::write("reading", external).is_broken_table());
    }

    #[test]
    fn the_sink_error_keeps_the_chain_and_carries_the_kind() {
        let e = catalog(wrapped(io_err(io::ErrorKind::ConnectionRefused)));
        let engine = e.into_sink_error("lake");
        assert_eq!(engine.kind(), ErrorKind::Retryable);
        let chain = engine.chain().to_string();
        assert!(
            chain.starts_with("sink `lake`: catalog sqlite:///c.db: "),
            "{chain}"
        );
        // the I/O error is still a value at the end of the chain
        let mut cur: Option<&(dyn StdError + 'static)> = Some(&engine);
        let mut last = None;
        while let Some(c) = cur {
            last = Some(c);
            cur = c.source();
        }
        assert!(last.unwrap().is::<io::Error>());
        let user = IcebergError::config("a view's table needs a SQL catalog").into_sink_error("v");
        assert_eq!(user.kind(), ErrorKind::User);
        let fatal = IcebergError::schema("no").into_sink_error("v");
        assert_eq!(fatal.kind(), ErrorKind::Fatal);
    }
}
