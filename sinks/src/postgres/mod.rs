//! The PostgreSQL sink: a window's or a view's rows upserted into a table that applications
//! already query.
//!
//! - The table is created on first use from the output's columns, its primary key the key
//!   columns (and `window_start` for a window); an existing table is checked column by column
//!   (every output column present with a type that holds it, a unique index on the key) and
//!   the error names the first mismatch.
//! - Rows are batched (`batch_max_rows`, `flush_interval`), sent with `COPY … (FORMAT csv)`
//!   into a staging table that has the table's types, defaults and `CHECK`/`NOT NULL`
//!   constraints, then merged with one statement: per key its last row, inserted with
//!   `ON CONFLICT (key) DO UPDATE`, or deleted when it is a view's `op = 'delete'`. Writing a
//!   row again (a retry, a restore, a replay) leaves the same table.
//! - Without checkpoints the staging table is a temporary one and each batch is staged and
//!   merged in one transaction: at least once, with idempotent keys.
//! - With checkpoints it is a table beside the target (`_weir_stage_<hash>`): rows are staged
//!   durably with their epoch before the barrier completes (pre-commit), and when the
//!   checkpoint is complete one transaction merges the epoch's rows, removes them from the
//!   staging table and records the epoch in `weir_sink_epochs (pipeline, sink, epoch)`. A
//!   restore finishes that commit when the crash came between the checkpoint and it, and
//!   drops the rows staged after the checkpoint: no epoch is lost or applied twice.
//! - Faults are told apart by SQLSTATE class (see [`errors`]): a dropped connection or a
//!   restarting server fails the call as [`EngineError::Unavailable`] (the engine's retry
//!   policy calls again, the pending rows kept, and reconnects); rows the server refuses for
//!   good (classes 22 and 23) are isolated by halving the batch under savepoints and go to
//!   the dead-letter output with their SQLSTATE and message; anything else fails the run.
//!   Constraints the staging table does not copy (foreign keys, other unique indexes,
//!   triggers) refuse rows at the merge, which is then made again in halves, under
//!   savepoints, until the refused rows stand alone (a few statements per refused row, not
//!   one per row: an epoch of 100,000 rows with one refusal took 300,000); with checkpoints the
//!   merge is tried and rolled back at the barrier, so that those rows are dead letters of
//!   their own epoch and the commit refuses nothing.

pub mod binary;
pub mod ddl;
pub mod encode;
pub mod errors;
mod session;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use sha2::Digest;
use weir_engine::job::{Committable, Sink};
use weir_engine::{EngineError, ErrorInfo, RejectedRow};

pub use ddl::TableName;
use ddl::{Layout, OP_COLUMN};
use encode::Lines;
use errors::Fault;
use session::{Refusal, Session};

/// How the connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS, the server's certificate not verified (unless a CA file is given: then it must
    /// be signed by it).
    Require,
    /// TLS, the certificate signed by the CA file (or a system root) and naming the host.
    VerifyFull,
}

impl TlsMode {
    /// `disable`, `require` or `verify-full`.
    pub fn parse(text: &str) -> Option<TlsMode> {
        match text {
            "disable" => Some(TlsMode::Disable),
            "require" => Some(TlsMode::Require),
            "verify-full" => Some(TlsMode::VerifyFull),
            _ => None,
        }
    }
}

/// What the sink needs to know.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database` (libpq parameters such as `sslmode`
    /// accepted).
    pub url: String,
    pub table: TableName,
    /// Overrides the URL's `sslmode`; `None` keeps it (libpq's default: `prefer`).
    pub tls: Option<TlsMode>,
    /// PEM file of the CA that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Rows per batch.
    pub batch_max_rows: usize,
    /// Rows older than this are sent even when the batch is not full.
    pub flush_interval: Duration,
    /// How long the server may leave a statement of a batch unanswered (connecting,
    /// staging, merging) before the connection is dropped and the batch retried.
    pub timeout: Duration,
    pub pipeline: String,
    /// The window or view written.
    pub output: String,
    /// A view's key columns (`None` for a window).
    pub view_keys: Option<usize>,
    /// The pool worker writing (`--worker`; empty outside a pool): each worker has its own
    /// staging table and epoch sequence in `weir_sink_epochs`.
    pub worker: String,
}

/// Checks that the URL makes connection settings (without connecting); the TLS settings
/// always do.
pub fn check_url(config: &PostgresConfig) -> Result<(), sqlx::Error> {
    session::url_options(config).map(|_| ())
}

/// `host:port/database` of the URL, without its credentials (for `weir validate`).
pub fn server(config: &PostgresConfig) -> String {
    match session::connect_options(config) {
        Ok(o) => format!(
            "{}:{}/{}",
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or("")
        ),
        Err(_) => "?".into(),
    }
}

/// Result rows upserted into a PostgreSQL table.
pub struct PostgresSink {
    name: String,
    config: PostgresConfig,
    layout: Layout,
    /// With checkpoints: the epoch protocol of the module documentation.
    exactly_once: bool,
    /// The process's I/O runtime.
    runtime: &'static tokio::runtime::Runtime,
    session: Option<Session>,
    /// Rows not sent yet, and since when the oldest waits.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    since: Option<Instant>,
    /// The output's columns written, and a view's `op` column.
    columns: Vec<usize>,
    op: Option<usize>,
    /// The next staged row's sequence number.
    seq: i64,
    /// The epoch rows written now belong to.
    epoch: u64,
    /// The failed call was a write whose rows are already pending.
    write_failed: bool,
    rejected: Vec<RejectedRow>,
    /// Rows sent, and the sink's own time: encoding them and the database's calls (logged
    /// at the end).
    sent_rows: u64,
    busy: Duration,
    /// How long a statement may go unanswered: `timeout`, doubled (up to
    /// [`MAX_ANSWER_WAIT_SCALE`] times) each time one went unanswered that long, so that a
    /// merge that takes longer than `timeout` is not abandoned and sent again for ever; back
    /// to `timeout` once a call is answered.
    answer_wait: Duration,
}

/// At most this many times the sink's `timeout` is waited for an answer (see
/// `PostgresSink::answer_wait`).
const MAX_ANSWER_WAIT_SCALE: u32 = 64;

impl PostgresSink {
    /// A sink named `name` for rows of `schema`; nothing is sent until rows come, so an
    /// unreachable server delays the first batch (retried) instead of failing the start.
    pub fn new(
        name: &str,
        config: PostgresConfig,
        schema: &SchemaRef,
        exactly_once: bool,
    ) -> Result<Self, EngineError> {
        // outside a pool the name is the one earlier versions used
        let answer_wait = config.timeout;
        let mut id = format!("{}\0{name}\0{}", config.pipeline, config.table);
        if !config.worker.is_empty() {
            id.push_str(&format!("\0{}", config.worker));
        }
        let hash = sha2::Sha256::digest(id.as_bytes());
        let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
        let staging = if exactly_once {
            config.table.sibling(&format!("_weir_stage_{hex}"))
        } else {
            config.table.sibling("weir_stage")
        };
        let layout = Layout::new(config.table.clone(), staging, schema, config.view_keys)
            .map_err(|e| EngineError::sink_caused(name, "", e))?;
        let columns = layout
            .columns
            .iter()
            .map(|(n, _)| {
                schema
                    .index_of(n)
                    .map_err(|e| EngineError::sink_caused(name, "", e))
            })
            .collect::<Result<_, _>>()?;
        let op = config
            .view_keys
            .and_then(|_| schema.index_of(OP_COLUMN).ok());
        let runtime =
            weir_engine::io::runtime().map_err(|e| EngineError::sink_caused(name, "", e))?;
        Ok(PostgresSink {
            name: name.to_string(),
            config,
            layout,
            exactly_once,
            runtime,
            session: None,
            pending: Vec::new(),
            pending_rows: 0,
            since: None,
            columns,
            op,
            seq: 0,
            epoch: 1,
            write_failed: false,
            rejected: Vec::new(),
            sent_rows: 0,
            busy: Duration::ZERO,
            answer_wait,
        })
    }

    /// The engine's error for a fault; a connection that failed is dropped (the next call
    /// connects again).
    fn fault(&mut self, f: Fault) -> EngineError {
        match f {
            Fault::Retry(m) => {
                self.session = None;
                tracing::warn!(sink = %self.name, error = %m, "postgres unavailable; the batch is retried");
                EngineError::sink(&self.name, m).unavailable()
            }
            Fault::Fatal(m) => {
                self.session = None;
                EngineError::sink(&self.name, m)
            }
            Fault::Refused { sqlstate, message } => {
                self.session = None;
                EngineError::sink(&self.name, format!("{message} (SQLSTATE {sqlstate})"))
            }
        }
    }

    /// The connected session, connecting (and checking or creating the tables) first.
    fn session(&mut self) -> Result<&mut Session, EngineError> {
        if self.session.is_none() {
            let timeout = self.config.timeout;
            let open = Session::open(&self.config, &self.layout, self.exactly_once);
            let s = self
                .runtime
                .block_on(async { tokio::time::timeout(timeout, open).await })
                .unwrap_or_else(|_| {
                    Err(Fault::Retry(format!(
                        "connecting: the server answered nothing for {timeout:?}"
                    )))
                });
            match s {
                Ok(s) => self.session = Some(s),
                Err(f) => return Err(self.fault(f)),
            }
            // the setup waits for the table's locks as any statement (a fault drops the
            // session, so the next call sets it up again)
            self.on_session("setting the tables up", |s| Box::pin(s.setup()))?;
        }
        self.session
            .as_mut()
            .ok_or_else(|| EngineError::Internal("the PostgreSQL session was not opened".into()))
    }

    /// Runs `f` on the session; it fails as retryable when the server answers no statement
    /// for `timeout` (a batch whose refused rows are isolated by halving takes long but
    /// keeps getting answers).
    fn run<T>(
        &mut self,
        what: &str,
        f: impl for<'a> FnOnce(
            &'a mut Session,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, Fault>> + 'a>,
        >,
    ) -> Result<T, EngineError> {
        self.session()?;
        let answered = self.on_session(what, f)?;
        // the statement was answered in time: the next waits `timeout` again (not after the
        // setup of a new connection, which would reset a wait grown for a slow merge)
        self.answer_wait = self.config.timeout;
        Ok(answered)
    }

    /// [`Self::run`] on the session as it is (opened, maybe not set up yet).
    fn on_session<T>(
        &mut self,
        what: &str,
        f: impl for<'a> FnOnce(
            &'a mut Session,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, Fault>> + 'a>,
        >,
    ) -> Result<T, EngineError> {
        let timeout = self.answer_wait;
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| EngineError::Internal("the PostgreSQL session was not opened".into()))?;
        let last = session.last_answer.clone();
        let started = Instant::now();
        if let Ok(mut t) = last.lock() {
            *t = started;
        }
        let tick = timeout.min(Duration::from_millis(250));
        let result = self.runtime.block_on(async {
            let work = f(session);
            tokio::pin!(work);
            loop {
                tokio::select! {
                    r = &mut work => break Some(r),
                    _ = tokio::time::sleep(tick) => {
                        let idle = last.lock().map(|t| t.elapsed()).unwrap_or_default();
                        if idle >= timeout {
                            break None;
                        }
                    }
                }
            }
        });
        self.busy += started.elapsed();
        match result {
            Some(Ok(v)) => Ok(v),
            Some(Err(fault)) => Err(self.fault(fault)),
            None => {
                // a statement that takes this long (a big merge, a lock wait) would time out
                // at every try: the next one waits longer
                self.end_abandoned_statement();
                let most = self.config.timeout * MAX_ANSWER_WAIT_SCALE;
                if timeout < most {
                    self.answer_wait = (timeout * 2).min(most);
                    tracing::warn!(sink = %self.name, waited = ?timeout, next = ?self.answer_wait, "postgres: a statement went unanswered; the next try waits longer (raise the sink's `timeout` if its statements take that long)");
                }
                Err(self.fault(Fault::Retry(format!(
                    "{what}: the server answered nothing for {timeout:?}"
                ))))
            }
        }
    }

    /// Ends, on a connection of its own, the server process of the session whose statement
    /// went unanswered (its locks would hold the next try back); a server that cannot be
    /// reached ends it itself once it sees the connection dropped
    /// (`client_connection_check_interval`).
    fn end_abandoned_statement(&mut self) {
        let Some(backend) = self.session.as_ref().map(|s| s.backend.clone()) else {
            return;
        };
        if backend.pid == 0 {
            return;
        }
        let pid = backend.pid;
        let wait = self.config.timeout.min(Duration::from_secs(5));
        let config = &self.config;
        let ended = self.runtime.block_on(async {
            tokio::time::timeout(wait, session::terminate_backend(config, &backend)).await
        });
        match ended {
            Ok(Ok(true)) => {
                tracing::warn!(sink = %self.name, pid, "postgres: the unanswered statement was ended on the server")
            }
            Ok(Ok(false)) => {}
            Ok(Err(f)) => {
                tracing::warn!(sink = %self.name, pid, error = ?f, "postgres: could not end the unanswered statement; the server ends it once it sees the connection dropped")
            }
            Err(_) => {
                tracing::warn!(sink = %self.name, pid, "postgres: the server did not answer the request to end the unanswered statement; it ends it once it sees the connection dropped")
            }
        }
    }

    /// The pending rows of `epoch`, numbered from the next sequence number: binary tuples
    /// when every column of the table has a binary form for its values, else CSV lines.
    fn encode_pending(&mut self, epoch: u64) -> Result<Lines, EngineError> {
        let wires = self.session()?.wires.clone();
        let mut lines = Lines {
            binary: wires.is_some(),
            ..Lines::default()
        };
        let mut seq = self.seq;
        for b in &self.pending {
            match &wires {
                Some(w) => {
                    binary::encode(b, &self.columns, w, self.op, epoch, &mut seq, &mut lines)
                }
                None => encode::encode(b, &self.columns, self.op, epoch, &mut seq, &mut lines),
            }
            .map_err(|e| EngineError::sink_caused(&self.name, "", e))?;
        }
        // a staged batch merged at once (without checkpoints) skips the merge's sort when
        // its keys are distinct; with checkpoints, rows of several batches are merged
        lines.unique_keys = !self.exactly_once && self.pending_keys_unique();
        Ok(lines)
    }

    /// Whether no key occurs twice among the pending rows.
    fn pending_keys_unique(&self) -> bool {
        use arrow::row::{RowConverter, SortField};
        let keys = &self.columns[..self.layout.keys];
        let Some(first) = self.pending.first() else {
            return true;
        };
        let fields = keys
            .iter()
            .map(|&c| SortField::new(first.column(c).data_type().clone()))
            .collect();
        let Ok(converter) = RowConverter::new(fields) else {
            return false;
        };
        let mut all = Vec::with_capacity(self.pending.len());
        for b in &self.pending {
            let columns: Vec<_> = keys.iter().map(|&c| b.column(c).clone()).collect();
            match converter.convert_columns(&columns) {
                Ok(rows) => all.push(rows),
                Err(_) => return false,
            }
        }
        let mut seen = std::collections::HashSet::with_capacity(self.pending_rows);
        all.iter()
            .flat_map(|rows| rows.iter())
            .all(|row| seen.insert(row.data()))
    }

    /// The pending row at `line` as JSON, for the dead letters.
    fn pending_row_json(&self, mut line: usize) -> Vec<u8> {
        for b in &self.pending {
            if line < b.num_rows() {
                let row = b.slice(line, 1);
                let row = row.project(&self.columns).unwrap_or(row);
                let mut out = Vec::new();
                let mut buf = Vec::new();
                let _ = weir_formats::json_rows::for_each_json_row(&row, &mut buf, |_, j| {
                    out.extend_from_slice(j);
                    Ok(())
                });
                return out;
            }
            line -= b.num_rows();
        }
        Vec::new()
    }

    /// Sends the pending rows: staged durably with their epoch (with checkpoints), or staged
    /// and merged in one transaction (without). The rows stay pending until it succeeded.
    fn send_pending(&mut self, epoch: u64) -> Result<(), EngineError> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let encoding = Instant::now();
        let lines = self.encode_pending(epoch)?;
        self.busy += encoding.elapsed();
        let merge = !self.exactly_once;
        let refused = self.run("sending a batch", |s| {
            Box::pin(async move { s.write_batch(&lines, merge).await })
        })?;
        self.seq += self.pending_rows as i64;
        self.sent_rows += self.pending_rows as u64;
        for r in refused {
            let raw = match r.line {
                Some(line) => self.pending_row_json(line),
                None => r.raw.clone().unwrap_or_default(),
            };
            self.reject(raw, r);
        }
        self.pending.clear();
        self.pending_rows = 0;
        self.since = None;
        Ok(())
    }

    fn reject(&mut self, raw: Vec<u8>, r: Refusal) {
        let mut error = ErrorInfo::new("postgres_refused", r.message);
        error
            .details
            .insert("sqlstate".into(), serde_json::Value::String(r.sqlstate));
        error.details.insert(
            "table".into(),
            serde_json::Value::String(self.config.table.to_string()),
        );
        self.rejected.push(RejectedRow { raw, error });
    }

    /// The epoch sequence the sink commits: (pipeline, sink, worker).
    fn sequence(&self) -> session::Sequence {
        session::Sequence {
            pipeline: self.config.pipeline.clone(),
            sink: self.name.clone(),
            worker: self.config.worker.clone(),
        }
    }

    /// Commits the staged rows of epochs up to `epoch` with the epoch itself.
    fn commit_epoch(&mut self, epoch: u64) -> Result<(), EngineError> {
        let seq = self.sequence();
        let refused = self.run("committing an epoch", |s| {
            Box::pin(async move { s.commit_epoch(&seq, epoch).await })
        })?;
        self.log_kept(epoch, refused);
        Ok(())
    }

    /// Says that `rows` the commit of `epoch` refused wait in `weir_sink_refused`.
    fn log_kept(&self, epoch: u64, rows: usize) {
        if rows > 0 {
            tracing::warn!(sink = %self.name, table = %self.config.table, epoch, rows, "postgres: rows refused at the commit of an epoch (a constraint that changed its verdict since the checkpoint's trial merge) wait in weir_sink_refused for the next checkpoint's dead letters");
        }
    }

    /// The rows commits refused that no complete checkpoint's dead letters hold, as the
    /// dead letters of `epoch`.
    fn report_refused(&mut self, epoch: u64) -> Result<(), EngineError> {
        let seq = self.sequence();
        let refused = self.run("reporting rows a commit refused", |s| {
            Box::pin(async move { s.report_refused(&seq, epoch).await })
        })?;
        for r in refused {
            let raw = r.raw.clone().unwrap_or_default();
            self.reject(raw, r);
        }
        Ok(())
    }
}

impl PostgresSink {
    /// In a worker pool, before restoring partitions from checkpoint `epoch` of another
    /// worker (this sink's `config.worker`), which may have died between the checkpoint and
    /// its commit: commits that epoch's staged rows unless its sequence already has it.
    /// Rows it staged after the epoch stay: they belong to checkpoints that never completed,
    /// and its own restore drops them if it comes back. Rows its commits refused and no
    /// complete checkpoint reported become worker `adopter`'s, whose next checkpoint reports
    /// them. Returns whether it committed.
    pub fn roll_forward(&mut self, epoch: u64, adopter: &str) -> Result<bool, EngineError> {
        let seq = self.sequence();
        let adopter = adopter.to_string();
        let (committed, refused) = self.run("finishing another worker's commit", |s| {
            Box::pin(async move { s.roll_forward(&seq, epoch, &adopter).await })
        })?;
        self.log_kept(epoch, refused);
        Ok(committed)
    }
}

impl Committable for PostgresSink {
    fn flush(&mut self) -> Result<bool, EngineError> {
        self.send_pending(self.epoch)?;
        Ok(!self.exactly_once)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        // with checkpoints, rows after the last barrier are not part of a checkpoint: a
        // restart writes them again (a restore drops them from the staging table)
        if !self.exactly_once {
            self.send_pending(self.epoch)?;
        } else if self.config.worker.is_empty() {
            // rows the last commit refused: no checkpoint follows to report them, so they
            // are this run's last dead letters (marked as the next epoch's: a restart from
            // the last checkpoint reports them again, with that checkpoint's dead letters).
            // A pool worker's job ends at each rebalance: its next job reports them.
            self.report_refused(self.epoch)?;
        }
        let secs = self.busy.as_secs_f64();
        tracing::info!(
            sink = %self.name,
            rows = self.sent_rows,
            busy_ms = self.busy.as_millis() as u64,
            rows_per_s = if secs > 0.0 { (self.sent_rows as f64 / secs) as u64 } else { 0 },
            "postgres sink finished (rows per second of the sink's own time: encoding and the database's calls)"
        );
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<serde_json::Value, EngineError> {
        self.send_pending(epoch)?;
        if self.session()?.merge_can_refuse {
            // (the rows it refuses wait in weir_sink_refused: reported just below)
            let seq = self.sequence();
            self.run("trying the merge", |s| {
                Box::pin(async move { s.trial_merge(&seq, epoch).await })
            })?;
        }
        self.report_refused(epoch)?;
        self.epoch = epoch + 1;
        Ok(serde_json::json!({ "epoch": epoch, "table": self.config.table.to_string() }))
    }

    fn commit(&mut self, epoch: u64) -> Result<(), EngineError> {
        self.commit_epoch(epoch)
    }

    fn recover(&mut self, from: Option<(u64, &serde_json::Value)>) -> Result<(), EngineError> {
        let seq = self.sequence();
        let epoch = from.map(|(e, _)| e);
        let refused = self.run("recovering", |s| {
            Box::pin(async move { s.recover(&seq, epoch).await })
        })?;
        self.log_kept(epoch.unwrap_or(0), refused);
        self.epoch = epoch.unwrap_or(0) + 1;
        self.seq = 0;
        Ok(())
    }
}

impl Sink for PostgresSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        if !std::mem::take(&mut self.write_failed) && batch.num_rows() > 0 {
            self.pending.push(batch.clone());
            self.pending_rows += batch.num_rows();
            self.since.get_or_insert_with(Instant::now);
        }
        let full = self.pending_rows >= self.config.batch_max_rows
            || self
                .since
                .is_some_and(|t| t.elapsed() >= self.config.flush_interval);
        if full {
            if let Err(e) = self.send_pending(self.epoch) {
                // the rows are pending: the retried call only sends them again
                self.write_failed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    fn take_rejected(&mut self) -> Vec<RejectedRow> {
        std::mem::take(&mut self.rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn batch(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("n", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a"; rows])),
                Arc::new(TimestampMillisecondArray::from(vec![0; rows]).with_timezone("UTC")),
                Arc::new(Int64Array::from(vec![1; rows])),
            ],
        )
        .unwrap()
    }

    /// A sink of a server that does not answer (a closed port).
    fn sink(batch_max_rows: usize, flush_interval: Duration) -> PostgresSink {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = PostgresConfig {
            url: format!("postgres://weir@127.0.0.1:{port}/db"),
            table: TableName::parse("public.t").unwrap(),
            tls: Some(TlsMode::Disable),
            ca_file: None,
            batch_max_rows,
            flush_interval,
            timeout: Duration::from_secs(5),
            pipeline: "p".into(),
            output: "w".into(),
            view_keys: None,
            worker: String::new(),
        };
        PostgresSink::new("db", config, &batch(0).schema(), false).unwrap()
    }

    #[test]
    fn rows_wait_for_a_full_batch_and_stay_pending_while_the_server_is_down() {
        let mut s = sink(100, Duration::from_secs(3600));
        // below batch_max_rows nothing is sent (no connection is tried)
        s.write(&batch(60)).unwrap();
        s.write(&batch(30)).unwrap();
        assert_eq!(s.pending_rows, 90);
        // the batch is full: the send fails as retryable, the rows stay pending
        let e = s.write(&batch(20)).unwrap_err();
        assert!(matches!(e, EngineError::Unavailable(_)), "{e}");
        assert_eq!(s.pending_rows, 110);
        // the engine makes the same call again: its rows are not added twice
        assert!(matches!(
            s.write(&batch(20)),
            Err(EngineError::Unavailable(_))
        ));
        assert_eq!(s.pending_rows, 110);
        assert!(matches!(s.flush(), Err(EngineError::Unavailable(_))));
        assert_eq!(s.pending_rows, 110);
        assert!(s.take_rejected().is_empty());
    }

    #[test]
    fn a_partial_batch_is_sent_after_the_flush_interval() {
        let mut s = sink(1000, Duration::from_millis(20));
        s.write(&batch(5)).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        // the interval passed: the next write sends (and fails here, the server being down)
        assert!(matches!(
            s.write(&batch(1)),
            Err(EngineError::Unavailable(_))
        ));
        assert_eq!(s.pending_rows, 6);
    }

    #[test]
    fn a_server_that_answers_nothing_fails_the_batch_as_retryable() {
        // a listener that never answers: the connection opens, the startup gets no reply
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = sink(1, Duration::from_secs(1));
        s.config.url = format!("postgres://weir@{}/db", silent.local_addr().unwrap());
        s.config.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let e = s.write(&batch(3)).unwrap_err();
        assert!(
            e.to_string()
                .contains("the server answered nothing for 300ms"),
            "{e}"
        );
        assert!(matches!(e, EngineError::Unavailable(_)));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(s.pending_rows, 3);
    }

    #[test]
    fn urls_are_checked_and_shown_without_credentials() {
        let s = sink(1, Duration::from_secs(1));
        let mut config = s.config.clone();
        config.url = "postgres://weir:secret@db.example:6543/analytics?sslmode=require".into();
        assert_eq!(server(&config), "db.example:6543/analytics");
        check_url(&config).unwrap();
        config.url = "postgres://weir@h/db?sslmode=sometimes".into();
        assert!(check_url(&config).is_err());
    }
}
