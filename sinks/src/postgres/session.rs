//! One connection of the PostgreSQL sink and the transactions it runs: the tables' setup,
//! staging a batch (rows the server refuses isolated under savepoints), the merge, the
//! commit of an epoch and the recovery after a crash.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{ConnectOptions, Connection};

use super::binary::{self, Wire};
use super::ddl::{self, Layout, TableColumn, TableName};
use super::encode::Lines;
use super::errors::{classify, Fault};
use super::{PostgresConfig, TlsMode};

/// The advisory lock that serializes the setup of sinks writing beside each other (two
/// sinks of a pipeline creating `weir_sink_epochs` at once).
const SETUP_LOCK: i64 = 0x0077_6569_725f_7067;

/// How often, in milliseconds, the server looks whether the sink is still connected while
/// one of its statements runs (`client_connection_check_interval`).
const CLIENT_CHECK_INTERVAL_MS: u32 = 1000;

/// A connection's server process.
#[derive(Debug, Clone, Default)]
pub struct Backend {
    pub pid: i32,
    /// Its `backend_start`, so that a process id the server gave to another session since
    /// (the server restarted) is not ended.
    pub started: Option<String>,
}

/// Ends the server process `backend` (a connection whose statement went unanswered, which
/// the sink drops): without it, the statement would go on holding its locks, and the batch
/// sent again would wait behind it. Only the sink's own process is ended: same process id,
/// same start, `application_name` weir's. Returns whether the server ended it.
pub async fn terminate_backend(config: &PostgresConfig, backend: &Backend) -> Result<bool, Fault> {
    let opts = connect_options(config)?;
    let mut conn = PgConnection::connect_with(&opts).await.map_err(fault)?;
    let ended: Option<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE pid = $1 AND backend_start::text IS NOT DISTINCT FROM $2 \
         AND application_name = 'weir'",
    )
    .bind(backend.pid)
    .bind(&backend.started)
    .fetch_optional(&mut conn)
    .await
    .map_err(strict)?;
    let _ = conn.close().await;
    Ok(ended.unwrap_or(false))
}

/// How many of a sink's newest committed epochs `weir_sink_epochs` keeps.
const KEEP_EPOCHS: i64 = 1000;

/// One epoch sequence in `weir_sink_epochs`: a sink of a pipeline, written by one worker
/// of a pool (`worker` empty outside a pool).
#[derive(Debug, Clone)]
pub struct Sequence {
    pub pipeline: String,
    pub sink: String,
    pub worker: String,
}

impl Sequence {
    /// The advisory lock that serializes the commits of this sequence (a worker's own, and
    /// another worker finishing it after taking its partitions over).
    fn lock(&self, epochs: &TableName) -> i64 {
        use sha2::Digest;
        let id = format!(
            "{}\0{}\0{}\0{}",
            epochs.sql(),
            self.pipeline,
            self.sink,
            self.worker
        );
        let hash = sha2::Sha256::digest(id.as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&hash[..8]);
        i64::from_be_bytes(bytes)
    }
}

/// A row the server refused for good.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Its line in the batch staged, when refused while staged.
    pub line: Option<usize>,
    /// The row as JSON, when refused while merged.
    pub raw: Option<Vec<u8>>,
    /// Its sequence number, when refused while merged.
    pub seq: Option<i64>,
    pub sqlstate: String,
    pub message: String,
}

/// A connection with the tables set up.
pub struct Session {
    conn: PgConnection,
    layout: Layout,
    /// The staging table is a temporary one (no checkpoints).
    temporary: bool,
    epochs: TableName,
    /// `weir_sink_refused`, where rows a commit refused wait for the dead letters (see
    /// [`ddl::create_refused`]).
    refused: TableName,
    /// The table has constraints the staging table does not copy (foreign keys, unique
    /// indexes besides the key, exclusion constraints, triggers): a merge can refuse rows.
    pub merge_can_refuse: bool,
    /// The table has deferrable constraints (or constraint triggers): transactions check
    /// them at each statement (see [`Self::begin`]).
    deferrable: bool,
    /// How each column is sent in binary `COPY`; `None`: as CSV (a column type without a
    /// binary form for the output's values, see [`binary::wire`]).
    pub wires: Option<Vec<Wire>>,
    /// When the server last answered a statement (see [`Self::stepped`]).
    pub last_answer: std::sync::Arc<std::sync::Mutex<std::time::Instant>>,
    /// [`Self::warn_keys_equal_to_the_table`] warned.
    warned_equal_keys: bool,
    /// The server process of the connection (`pg_backend_pid()`) and when it started
    /// (`backend_start`), ended by [`terminate_backend`] when a statement of it goes
    /// unanswered.
    pub backend: Backend,
}

fn fault(e: sqlx::Error) -> Fault {
    classify(&e)
}

/// SQLSTATE 21000: an `ON CONFLICT DO UPDATE` reached the same row twice.
fn is_cardinality_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("21000"))
}

/// A fault where no row can be refused (DDL, bookkeeping): a refusal fails the run.
fn strict(e: sqlx::Error) -> Fault {
    match classify(&e) {
        Fault::Refused { sqlstate, message } => {
            Fault::Fatal(format!("{message} (SQLSTATE {sqlstate})"))
        }
        f => f,
    }
}

/// The connection settings of the URL alone (what `weir validate` checks).
pub fn url_options(config: &PostgresConfig) -> Result<PgConnectOptions, sqlx::Error> {
    PgConnectOptions::from_str(&config.url)
}

/// The connection settings of `config`.
pub fn connect_options(config: &PostgresConfig) -> Result<PgConnectOptions, Fault> {
    let mut opts = url_options(config).map_err(|e| Fault::Fatal(format!("`url`: {e}")))?;
    if let Some(tls) = config.tls {
        opts = opts.ssl_mode(match tls {
            TlsMode::Disable => PgSslMode::Disable,
            TlsMode::Require if config.ca_file.is_some() => PgSslMode::VerifyCa,
            TlsMode::Require => PgSslMode::Require,
            TlsMode::VerifyFull => PgSslMode::VerifyFull,
        });
    }
    if let Some(ca) = &config.ca_file {
        opts = opts.ssl_root_cert(ca);
    }
    Ok(opts
        .application_name("weir")
        // the sink's `timeout` governs its waits (see `answer_wait`): a server's or a role's
        // `statement_timeout` shorter than a merge would fail every try of it alike
        .options([
            ("TimeZone", "UTC"),
            ("client_min_messages", "warning"),
            ("statement_timeout", "0"),
        ])
        .disable_statement_logging())
}

impl Session {
    /// Connects; [`Self::setup`] then sets the tables up.
    pub async fn open(
        config: &PostgresConfig,
        layout: &Layout,
        exactly_once: bool,
    ) -> Result<Session, Fault> {
        let opts = connect_options(config)?;
        let conn = PgConnection::connect_with(&opts).await.map_err(fault)?;
        let mut s = Session {
            conn,
            layout: layout.clone(),
            temporary: !exactly_once,
            epochs: layout.table.sibling("weir_sink_epochs"),
            refused: layout.table.sibling("weir_sink_refused"),
            merge_can_refuse: false,
            deferrable: false,
            wires: None,
            last_answer: std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
            warned_equal_keys: false,
            backend: Backend::default(),
        };
        let found: Result<Option<(i32, Option<String>)>, _> = sqlx::query_as(
            "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .fetch_optional(&mut s.conn)
        .await;
        match found {
            Ok(Some((pid, started))) => s.backend = Backend { pid, started },
            // (a compatible server without it: an unanswered statement is not ended, the
            // connection is only dropped)
            Ok(None) | Err(sqlx::Error::Database(_)) => {}
            Err(e) => return Err(fault(e)),
        }
        s.check_the_client_while_running().await?;
        Ok(s)
    }

    /// Has the server look whether the sink is still connected while a statement runs
    /// (PostgreSQL 14 and later; older servers do not have the setting), so that a
    /// statement the sink gave up on (its connection dropped) ends, even when the sink
    /// could not reach the server to end it ([`terminate_backend`]).
    async fn check_the_client_while_running(&mut self) -> Result<(), Fault> {
        let r = self
            .exec(&format!(
                "SET client_connection_check_interval = {}",
                CLIENT_CHECK_INTERVAL_MS
            ))
            .await;
        match r {
            // a server without the setting (before 14: 42704), or one that cannot look
            // (22023 where it cannot see a closed socket), or a compatible server that
            // refuses it: the sink goes on without it
            Err(sqlx::Error::Database(db)) => {
                tracing::debug!(code = ?db.code(), error = %db.message(), "postgres: client_connection_check_interval not set");
                Ok(())
            }
            r => r.map(|_| ()).map_err(fault),
        }
    }

    /// Starts a transaction whose constraints are all checked at each statement: a deferred
    /// one (a foreign key `DEFERRABLE INITIALLY DEFERRED`, a constraint trigger) would
    /// otherwise refuse a row only at the `COMMIT`, where no row can be told apart from the
    /// others and set aside (the run failed, and failed again at every restart).
    async fn begin(&mut self) -> Result<(), Fault> {
        // (only then: servers that speak the protocol without `SET CONSTRAINTS` work on)
        let sql = if self.deferrable {
            "BEGIN; SET CONSTRAINTS ALL IMMEDIATE"
        } else {
            "BEGIN"
        };
        self.exec(sql).await.map_err(strict)?;
        Ok(())
    }

    async fn exec(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        let r = sqlx::raw_sql(sql)
            .execute(&mut self.conn)
            .await
            .map(|r| r.rows_affected());
        self.stepped();
        r
    }

    /// Warns, once per session, that output keys distinct in the engine are one key to the
    /// table.
    fn warn_keys_equal_to_the_table(&mut self) {
        if !std::mem::replace(&mut self.warned_equal_keys, true) {
            tracing::warn!(table = %self.layout.table, "postgres: keys distinct in the output are equal to the table (its key columns pad or compare case-insensitively): the later row of such keys replaces the earlier; give the table's key columns types that compare as the output's values do (`text`) to keep them apart");
        }
    }

    /// The server answered: a long batch (refused rows isolated by halving) is not idle.
    fn stepped(&self) {
        if let Ok(mut t) = self.last_answer.lock() {
            *t = std::time::Instant::now();
        }
    }

    async fn exists(&mut self, table: &str) -> Result<bool, Fault> {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(table)
            .fetch_one(&mut self.conn)
            .await
            .map_err(strict)?;
        Ok(found.is_some())
    }

    /// Sets the tables up: the table created or checked, and the staging table (a
    /// temporary one without checkpoints) and `weir_sink_epochs` created.
    pub async fn setup(&mut self) -> Result<(), Fault> {
        self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SETUP_LOCK)
            .execute(&mut self.conn)
            .await
            .map_err(strict)?;
        let table = self.layout.table.sql();
        if self.exists(&table).await? {
            self.check_table(&table).await?;
            let others: i64 = sqlx::query_scalar(ddl::MERGE_CONSTRAINTS_QUERY)
                .bind(&table)
                .fetch_one(&mut self.conn)
                .await
                .map_err(strict)?;
            self.merge_can_refuse = others > 0;
            let deferrable: i64 = sqlx::query_scalar(ddl::DEFERRABLE_QUERY)
                .bind(&table)
                .fetch_one(&mut self.conn)
                .await
                .map_err(strict)?;
            self.deferrable = deferrable > 0;
        } else {
            let create = self.layout.create_table();
            self.exec(&create).await.map_err(strict)?;
            tracing::info!(table = %self.layout.table, "postgres table created");
        }
        if !self.temporary {
            let create = ddl::create_epochs(&self.epochs);
            self.exec(&create).await.map_err(strict)?;
            self.add_worker_column().await?;
            let (table, index, create_index) = ddl::create_refused(&self.refused);
            self.exec(&table).await.map_err(strict)?;
            if !self.exists(&index).await? {
                self.exec(&create_index).await.map_err(strict)?;
            }
            if !self.exists(&self.layout.staging.sql()).await? {
                let create = self.layout.create_staging(false);
                self.exec(&create).await.map_err(strict)?;
            }
        }
        // rows are copied into the staging table: its columns' types say how to encode them
        // (a lasting staging table keeps the types it was made with, which an `ALTER TABLE`
        // of the table since does not change; the temporary one is made like the table)
        if !self.temporary {
            let staging = self.layout.staging.sql();
            self.load_wires(&staging).await?;
        }
        self.exec("COMMIT").await.map_err(strict)?;
        if self.temporary {
            let create = self.layout.create_staging(true);
            self.exec(&create).await.map_err(strict)?;
            let staging = self.layout.staging_sql(true);
            self.load_wires(&staging).await?;
        }
        Ok(())
    }

    /// How each column is encoded in `COPY`, from the types of `table`'s columns (the table
    /// the rows are copied into).
    async fn load_wires(&mut self, table: &str) -> Result<(), Fault> {
        let columns = self.columns(table).await?;
        self.wires = self
            .layout
            .columns
            .iter()
            .map(|(name, t)| {
                let c = columns.iter().find(|c| &c.name == name)?;
                binary::wire(t, &c.type_name)
            })
            .collect();
        Ok(())
    }

    /// A `weir_sink_epochs` created by an earlier version has no `worker` column: it is
    /// added (empty for the rows there) and made part of the primary key.
    async fn add_worker_column(&mut self) -> Result<(), Fault> {
        let epochs = self.epochs.sql();
        let has: bool = sqlx::query_scalar(ddl::HAS_WORKER_QUERY)
            .bind(&epochs)
            .fetch_one(&mut self.conn)
            .await
            .map_err(strict)?;
        if has {
            return Ok(());
        }
        let key: Option<String> = sqlx::query_scalar(ddl::PRIMARY_KEY_QUERY)
            .bind(&epochs)
            .fetch_optional(&mut self.conn)
            .await
            .map_err(strict)?;
        let mut alter = format!("ALTER TABLE {epochs} ADD COLUMN worker text NOT NULL DEFAULT ''");
        if let Some(k) = key {
            alter.push_str(&format!(", DROP CONSTRAINT {}", ddl::ident(&k)));
        }
        alter.push_str(", ADD PRIMARY KEY (pipeline, sink, worker, epoch)");
        self.exec(&alter).await.map_err(strict)?;
        tracing::info!(table = %self.epochs, "postgres: weir_sink_epochs has a worker column now (one epoch sequence per pool worker)");
        Ok(())
    }

    /// Takes the lock of `seq`'s commits until the transaction ends.
    async fn lock_sequence(&mut self, seq: &Sequence) -> Result<(), Fault> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(seq.lock(&self.epochs))
            .execute(&mut self.conn)
            .await
            .map_err(strict)?;
        Ok(())
    }

    /// The newest epoch `seq` committed.
    async fn committed(&mut self, seq: &Sequence) -> Result<Option<i64>, Fault> {
        sqlx::query_scalar(&format!(
            "SELECT max(epoch) FROM {} WHERE pipeline = $1 AND sink = $2 AND worker = $3",
            self.epochs.sql()
        ))
        .bind(&seq.pipeline)
        .bind(&seq.sink)
        .bind(&seq.worker)
        .fetch_one(&mut self.conn)
        .await
        .map_err(strict)
    }

    /// The table's columns, as the catalog describes them.
    async fn columns(&mut self, table: &str) -> Result<Vec<TableColumn>, Fault> {
        let rows: Vec<(String, String, String, bool, bool)> = sqlx::query_as(ddl::COLUMNS_QUERY)
            .bind(table)
            .fetch_all(&mut self.conn)
            .await
            .map_err(strict)?;
        Ok(rows
            .into_iter()
            .map(
                |(name, type_name, display, not_null, has_default)| TableColumn {
                    name,
                    type_name,
                    display,
                    not_null,
                    has_default,
                },
            )
            .collect())
    }

    /// Checks an existing table column by column.
    async fn check_table(&mut self, table: &str) -> Result<(), Fault> {
        let columns = self.columns(table).await?;
        let unique: Vec<ddl::UniqueIndex> = sqlx::query_as(ddl::UNIQUE_QUERY)
            .bind(table)
            .fetch_all(&mut self.conn)
            .await
            .map_err(strict)?;
        ddl::check_table(&self.layout, &columns, &unique).map_err(|e| Fault::Fatal(e.to_string()))
    }

    /// `COPY`s lines `range` into the staging table.
    async fn copy(
        &mut self,
        lines: &Lines,
        range: std::ops::Range<usize>,
    ) -> Result<(), sqlx::Error> {
        let sql = self.layout.copy_in(self.temporary, lines.binary);
        let mut copy = self.conn.copy_in_raw(&sql).await?;
        if lines.binary {
            copy.send(&binary::HEADER[..]).await?;
        }
        copy.send(lines.slice(range)).await?;
        if lines.binary {
            copy.send(&binary::TRAILER[..]).await?;
        }
        let r = copy.finish().await.map(|_| ());
        self.stepped();
        r
    }

    /// Stages `lines`, each try under a savepoint: a batch the server refuses is halved
    /// until the rows it refuses are found; they are returned, the others staged.
    async fn stage(&mut self, lines: &Lines) -> Result<Vec<Refusal>, Fault> {
        let mut refused = Vec::new();
        // ranges of lines still to stage, the next on top
        let mut todo = Vec::new();
        todo.push(0..lines.len());
        while let Some(range) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            self.exec("SAVEPOINT weir_stage").await.map_err(strict)?;
            match self.copy(lines, range.clone()).await {
                Ok(()) => {
                    self.exec("RELEASE SAVEPOINT weir_stage")
                        .await
                        .map_err(strict)?;
                }
                Err(e) => match fault(e) {
                    Fault::Refused { sqlstate, message } => {
                        self.exec("ROLLBACK TO SAVEPOINT weir_stage; RELEASE SAVEPOINT weir_stage")
                            .await
                            .map_err(strict)?;
                        if range.len() == 1 {
                            refused.push(Refusal {
                                line: Some(range.start),
                                raw: None,
                                seq: None,
                                sqlstate,
                                message,
                            });
                        } else {
                            let mid = range.start + range.len() / 2;
                            todo.push(mid..range.end);
                            todo.push(range.start..mid);
                        }
                    }
                    f => return Err(f),
                },
            }
        }
        Ok(refused)
    }

    /// Merges the staged rows of epochs up to `upto` into the table; when the server
    /// refuses the merge, merges them in parts and returns the rows it refuses.
    /// `unique_keys`: no key is staged twice; `deletes`: some rows may delete their key
    /// (see [`Layout::merge`]).
    async fn merge(
        &mut self,
        upto: i64,
        unique_keys: bool,
        deletes: bool,
    ) -> Result<Vec<Refusal>, Fault> {
        self.exec("SAVEPOINT weir_merge").await.map_err(strict)?;
        // keys distinct in Arrow may be equal to the table (`char(n)` padding, a
        // case-insensitive collation): the merge then touches a row twice (SQLSTATE 21000),
        // and is made again with the staged rows deduplicated by the table's own equality
        // (`DISTINCT ON`, the later row winning); if even that is refused (a unique index
        // whose collation differs from its column's), the rows are merged in parts
        let tries: &[bool] = if unique_keys {
            &[true, false]
        } else {
            &[false]
        };
        for &unique in tries {
            let all = self.layout.merge(self.temporary, unique, deletes);
            let first = sqlx::query(&all).bind(upto).execute(&mut self.conn).await;
            self.stepped();
            let touched_twice = first.as_ref().err().is_some_and(is_cardinality_violation);
            match first.map_err(fault) {
                Ok(_) => {
                    self.exec("RELEASE SAVEPOINT weir_merge")
                        .await
                        .map_err(strict)?;
                    return Ok(Vec::new());
                }
                Err(Fault::Refused { .. }) => {
                    self.exec("ROLLBACK TO SAVEPOINT weir_merge")
                        .await
                        .map_err(strict)?;
                    break;
                }
                Err(_) if touched_twice => {
                    self.exec("ROLLBACK TO SAVEPOINT weir_merge")
                        .await
                        .map_err(strict)?;
                    self.warn_keys_equal_to_the_table();
                }
                Err(f) => return Err(f),
            }
        }
        for statement in self.layout.merge_parts_table(self.temporary, upto) {
            self.exec(&statement).await.map_err(strict)?;
        }
        let seqs: Vec<i64> = sqlx::query_scalar(&self.layout.merge_part_seqs(self.temporary))
            .fetch_all(&mut self.conn)
            .await
            .map_err(strict)?;
        let refused = self.merge_in_parts(&seqs, deletes).await?;
        self.exec(&format!(
            "DROP TABLE {}",
            self.layout.parts_sql(self.temporary)
        ))
        .await
        .map_err(strict)?;
        self.exec("RELEASE SAVEPOINT weir_merge")
            .await
            .map_err(strict)?;
        Ok(refused)
    }

    /// After the server refused the merge of the rows `seqs` of [`Layout::parts_sql`] (one
    /// per key, in the order they were staged): merges them again in parts, each under a
    /// savepoint (released also after a rollback: nested savepoints slow the whole server
    /// past 64), halving a part the server refuses (or one that touches a table row twice:
    /// keys distinct here but equal by the table's own equality) until the refused rows
    /// stand alone; returns those. The parts are merged in `seqs`' order, so a later row still wins. About four
    /// statements per refused row and halving, where a merge row by row made three per row.
    async fn merge_in_parts(&mut self, seqs: &[i64], deletes: bool) -> Result<Vec<Refusal>, Fault> {
        let some = self.layout.merge_part(self.temporary, deletes);
        let mut refused = Vec::new();
        // parts still to merge, the next on top (the whole was just refused)
        let mut todo = Vec::new();
        let mid = seqs.len() / 2;
        todo.push(mid..seqs.len());
        todo.push(0..mid);
        while let Some(part) = todo.pop() {
            if part.is_empty() {
                continue;
            }
            self.exec("SAVEPOINT weir_part").await.map_err(strict)?;
            let r = sqlx::query(&some)
                .bind(&seqs[part.clone()])
                .execute(&mut self.conn)
                .await;
            self.stepped();
            let touched_twice = r.as_ref().err().is_some_and(is_cardinality_violation);
            match r.map_err(fault) {
                Ok(_) => {
                    self.exec("RELEASE SAVEPOINT weir_part")
                        .await
                        .map_err(strict)?;
                }
                Err(Fault::Refused { sqlstate, message }) if part.len() == 1 => {
                    self.exec("ROLLBACK TO SAVEPOINT weir_part; RELEASE SAVEPOINT weir_part")
                        .await
                        .map_err(strict)?;
                    let seq = seqs[part.start];
                    let raw: Option<String> =
                        sqlx::query_scalar(&self.layout.part_row_json(self.temporary))
                            .bind(seq)
                            .fetch_optional(&mut self.conn)
                            .await
                            .map_err(strict)?;
                    refused.push(Refusal {
                        line: None,
                        raw: Some(raw.unwrap_or_default().into_bytes()),
                        seq: Some(seq),
                        sqlstate,
                        message,
                    });
                }
                // (a part of one row cannot touch a table row twice)
                Err(f)
                    if matches!(f, Fault::Refused { .. }) || (touched_twice && part.len() > 1) =>
                {
                    self.exec("ROLLBACK TO SAVEPOINT weir_part; RELEASE SAVEPOINT weir_part")
                        .await
                        .map_err(strict)?;
                    let mid = part.start + part.len() / 2;
                    todo.push(mid..part.end);
                    todo.push(part.start..mid);
                }
                Err(f) => return Err(f),
            }
        }
        Ok(refused)
    }

    /// One transaction: stages `lines` and, when `merge`, merges them (the temporary
    /// staging table empties itself at the commit). Returns the rows refused.
    pub async fn write_batch(&mut self, lines: &Lines, merge: bool) -> Result<Vec<Refusal>, Fault> {
        self.begin().await?;
        let mut refused = self.stage(lines).await?;
        if merge {
            refused.extend(
                self.merge(i64::MAX, lines.unique_keys, lines.deletes)
                    .await?,
            );
        }
        self.exec("COMMIT").await.map_err(strict)?;
        Ok(refused)
    }

    /// Before the checkpoint of `epoch` completes (a table whose merge can refuse rows): tries
    /// the merge of the rows staged up to it and rolls it back, then moves the rows of this
    /// epoch it refused from staging to `weir_sink_refused`, in the same transaction, for
    /// [`Self::report_refused`] to return as dead letters of this epoch (so that the commit
    /// after the checkpoint refuses nothing). Were the rows returned instead, a COMMIT whose
    /// answer was lost would leave them nowhere: the trial made again finds them gone from
    /// staging. Rows of earlier epochs it refuses stay: they belong to a checkpoint that may
    /// complete without this one, and their commit keeps what it refuses (see
    /// [`Self::apply_epoch`]). A restore from before `epoch` drops what it kept (its
    /// `refused_in` is `epoch`), as it drops the epoch's staged rows. Returns how many.
    pub async fn trial_merge(&mut self, seq: &Sequence, epoch: u64) -> Result<usize, Fault> {
        self.begin().await?;
        self.exec("SAVEPOINT weir_trial").await.map_err(strict)?;
        let mut refused = self.merge(epoch as i64, false, self.layout.view).await?;
        self.exec("ROLLBACK TO SAVEPOINT weir_trial")
            .await
            .map_err(strict)?;
        let seqs: Vec<i64> = refused.iter().filter_map(|r| r.seq).collect();
        if !seqs.is_empty() {
            let delete = format!(
                "DELETE FROM {} WHERE weir_seq = ANY($1) AND weir_epoch = $2 RETURNING weir_seq",
                self.layout.staging_sql(false)
            );
            let removed: Vec<i64> = sqlx::query_scalar(&delete)
                .bind(&seqs)
                .bind(epoch as i64)
                .fetch_all(&mut self.conn)
                .await
                .map_err(strict)?;
            refused.retain(|r| r.seq.is_some_and(|s| removed.contains(&s)));
        } else {
            refused.clear();
        }
        self.keep_refused(seq, epoch as i64, &refused).await?;
        self.exec("COMMIT").await.map_err(strict)?;
        Ok(refused.len())
    }

    /// Merges, removes from staging and records epochs up to `epoch`, without a
    /// transaction of its own. The rows the merge refuses are kept in `weir_sink_refused`
    /// (reported by the next [`Self::report_refused`]); those reported stay there as long as
    /// the epochs' history (a restore from an older checkpoint reports them again), and
    /// older ones go. Returns how many it refused.
    async fn apply_epoch(&mut self, seq: &Sequence, epoch: u64) -> Result<usize, Fault> {
        let upto = epoch as i64;
        let refused = self.merge(upto, false, self.layout.view).await?;
        self.keep_refused(seq, upto, &refused).await?;
        let reported = format!(
            "DELETE FROM {} WHERE pipeline = $1 AND sink = $2 AND worker = $3 AND reported <= $4",
            self.refused.sql()
        );
        self.on_sequence(&reported, seq, upto - KEEP_EPOCHS).await?;
        let delete = format!(
            "DELETE FROM {} WHERE weir_epoch <= $1",
            self.layout.staging_sql(false)
        );
        sqlx::query(&delete)
            .bind(upto)
            .execute(&mut self.conn)
            .await
            .map_err(strict)?;
        let record = format!(
            "INSERT INTO {} (pipeline, sink, worker, epoch) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            self.epochs.sql()
        );
        self.on_sequence(&record, seq, upto).await?;
        // a restore needs only the newest; the last KEEP_EPOCHS stay as a history
        let prune = format!(
            "DELETE FROM {} WHERE pipeline = $1 AND sink = $2 AND worker = $3 AND epoch <= $4",
            self.epochs.sql()
        );
        self.on_sequence(&prune, seq, upto - KEEP_EPOCHS).await?;
        Ok(refused.len())
    }

    /// Runs `sql`, a statement on `seq`'s rows (`$1`-`$3` its pipeline, sink and worker, `$4`
    /// `value`); how many rows it touched.
    async fn on_sequence(&mut self, sql: &str, seq: &Sequence, value: i64) -> Result<u64, Fault> {
        let done = sqlx::query(sql)
            .bind(&seq.pipeline)
            .bind(&seq.sink)
            .bind(&seq.worker)
            .bind(value)
            .execute(&mut self.conn)
            .await
            .map_err(strict)?;
        Ok(done.rows_affected())
    }

    /// Keeps `refused`, rows the commit of `epoch` refused, in `weir_sink_refused`.
    async fn keep_refused(
        &mut self,
        seq: &Sequence,
        epoch: i64,
        refused: &[Refusal],
    ) -> Result<(), Fault> {
        if refused.is_empty() {
            return Ok(());
        }
        let sqlstates: Vec<&str> = refused.iter().map(|r| r.sqlstate.as_str()).collect();
        let messages: Vec<&str> = refused.iter().map(|r| r.message.as_str()).collect();
        let raws: Vec<String> = refused
            .iter()
            .map(|r| String::from_utf8_lossy(r.raw.as_deref().unwrap_or_default()).into_owned())
            .collect();
        let keep = format!(
            "INSERT INTO {} (pipeline, sink, worker, refused_in, sqlstate, message, raw) \
             SELECT $1, $2, $3, $4, s, m, r FROM unnest($5::text[], $6::text[], $7::text[]) AS u(s, m, r)",
            self.refused.sql()
        );
        sqlx::query(&keep)
            .bind(&seq.pipeline)
            .bind(&seq.sink)
            .bind(&seq.worker)
            .bind(epoch)
            .bind(&sqlstates)
            .bind(&messages)
            .bind(&raws)
            .execute(&mut self.conn)
            .await
            .map_err(strict)?;
        Ok(())
    }

    /// The rows a commit refused that no complete checkpoint's dead letters hold yet, marked
    /// as the dead letters of `epoch` (a checkpoint in the making, or the end of the run) and
    /// returned. Asked again for the same epoch, it returns them again.
    pub async fn report_refused(
        &mut self,
        seq: &Sequence,
        epoch: u64,
    ) -> Result<Vec<Refusal>, Fault> {
        let report = format!(
            "UPDATE {} SET reported = $4 WHERE pipeline = $1 AND sink = $2 AND worker = $3 \
             AND (reported IS NULL OR reported = $4) RETURNING sqlstate, message, raw",
            self.refused.sql()
        );
        let rows: Vec<(String, String, String)> = sqlx::query_as(&report)
            .bind(&seq.pipeline)
            .bind(&seq.sink)
            .bind(&seq.worker)
            .bind(epoch as i64)
            .fetch_all(&mut self.conn)
            .await
            .map_err(strict)?;
        self.stepped();
        Ok(rows
            .into_iter()
            .map(|(sqlstate, message, raw)| Refusal {
                line: None,
                raw: Some(raw.into_bytes()),
                seq: None,
                sqlstate,
                message,
            })
            .collect())
    }

    /// The commit of a complete checkpoint: the staged rows of epochs up to `epoch` merged
    /// and the epoch recorded, in one transaction. Making it again changes nothing.
    pub async fn commit_epoch(&mut self, seq: &Sequence, epoch: u64) -> Result<usize, Fault> {
        self.begin().await?;
        self.lock_sequence(seq).await?;
        let refused = self.apply_epoch(seq, epoch).await?;
        self.exec("COMMIT").await.map_err(strict)?;
        Ok(refused)
    }

    /// Another worker's `epoch` (a checkpoint this one restores partitions from) committed
    /// unless `seq` has it already, under the sequence's lock (its worker, if alive, may be
    /// committing it at the same moment). The rows its commits refused that no complete
    /// checkpoint's dead letters hold become `adopter`'s, reported by its next checkpoint.
    /// Returns whether it committed, and how many rows that commit refused.
    pub async fn roll_forward(
        &mut self,
        seq: &Sequence,
        epoch: u64,
        adopter: &str,
    ) -> Result<(bool, usize), Fault> {
        self.begin().await?;
        self.lock_sequence(seq).await?;
        let committed = self.committed(seq).await?;
        let todo = committed.is_none_or(|c| c < epoch as i64);
        let refused = if todo {
            self.apply_epoch(seq, epoch).await?
        } else {
            0
        };
        // those reported up to `epoch` are in its dead letters (finished with the checkpoint);
        // `refused_in` 0: no restore of the adopter's own drops them as its later commits'.
        // Those refused after `epoch` (a trial merge of an epoch that never completed) stay:
        // the adopter replays that epoch and refuses them again
        let adopt = format!(
            "UPDATE {} SET worker = $4, reported = NULL, refused_in = 0 \
             WHERE pipeline = $1 AND sink = $2 AND worker = $3 \
             AND (reported IS NULL OR reported > $5) AND refused_in <= $5",
            self.refused.sql()
        );
        sqlx::query(&adopt)
            .bind(&seq.pipeline)
            .bind(&seq.sink)
            .bind(&seq.worker)
            .bind(adopter)
            .bind(epoch as i64)
            .execute(&mut self.conn)
            .await
            .map_err(strict)?;
        self.exec("COMMIT").await.map_err(strict)?;
        Ok((todo, refused))
    }

    /// Before a checkpointed run writes, from checkpoint `epoch` (`None`: from nothing):
    /// commits the epoch if the crash came before its commit, drops the rows staged after
    /// it and the epochs recorded after it, and re-creates the (now empty) staging table so
    /// that it has the table's current constraints. Rows its commits refused that are not in
    /// the checkpoint's dead letters are reported again; those of commits after it are
    /// dropped (the epochs are written again). Returns how many rows the epoch's commit
    /// refused, when it made it.
    pub async fn recover(&mut self, seq: &Sequence, epoch: Option<u64>) -> Result<usize, Fault> {
        let staging = self.layout.staging_sql(false);
        let epochs = self.epochs.sql();
        self.begin().await?;
        self.lock_sequence(seq).await?;
        let mut refused = 0;
        let from = epoch.map_or(0, |e| e as i64);
        if let Some(e) = epoch {
            let committed = self.committed(seq).await?;
            if committed.is_none_or(|c| c < from) {
                refused = self.apply_epoch(seq, e).await?;
                tracing::info!(table = %self.layout.table, epoch = e, "postgres: committed the epoch a crash interrupted");
            }
        }
        let dropped = sqlx::query(&format!("DELETE FROM {staging} WHERE weir_epoch > $1"))
            .bind(from)
            .execute(&mut self.conn)
            .await
            .map_err(strict)?
            .rows_affected();
        let later = format!(
            "DELETE FROM {epochs} WHERE pipeline = $1 AND sink = $2 AND worker = $3 AND epoch > $4"
        );
        let later = self.on_sequence(&later, seq, from).await?;
        if later > 0 {
            tracing::warn!(table = %self.layout.table, epochs = later, "postgres: epochs committed after the checkpoint restored are written again");
        }
        let undone = format!(
            "DELETE FROM {} WHERE pipeline = $1 AND sink = $2 AND worker = $3 AND refused_in > $4",
            self.refused.sql()
        );
        let unreported = format!(
            "UPDATE {} SET reported = NULL WHERE pipeline = $1 AND sink = $2 AND worker = $3 \
             AND reported > $4",
            self.refused.sql()
        );
        for sql in [undone, unreported] {
            self.on_sequence(&sql, seq, from).await?;
        }
        if dropped > 0 {
            tracing::info!(table = %self.layout.table, rows = dropped, "postgres: rows staged after the checkpoint were dropped");
        }
        self.exec(&format!("DROP TABLE {staging}"))
            .await
            .map_err(strict)?;
        let create = self.layout.create_staging(false);
        self.exec(&create).await.map_err(strict)?;
        // made like the table as it is now: its types may have changed since
        self.load_wires(&staging).await?;
        self.exec("COMMIT").await.map_err(strict)?;
        Ok(refused)
    }
}
