//! Runs read-only SQL on a job's live state with DataFusion, within limits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::DataType;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManager, DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::execute_stream;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::parser::ParserError;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_engine::live::{LiveKind, LiveSnapshot, LiveState};

use crate::deadline::with_deadline;
pub use crate::limits::QueryLimits;
use crate::limits::{check_text, TextLimit, SQL_THREAD_STACK};
use crate::logins::FailedLogins;
use crate::peers::Peers;
use crate::tables::{LiveTable, LocalOnly, Pinned, StatusTable};

/// Why a query failed, with the Postgres SQLSTATE it maps to.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL could not be planned (syntax, unknown column, types).
    #[error("{0}")]
    Sql(String),
    /// The SQL names a table that does not exist (found in the catalog, not in the message).
    #[error("{0}")]
    UndefinedTable(String),
    /// The statement would change something: weir's SQL is read-only.
    #[error("{0}")]
    ReadOnly(String),
    #[error("the query ran longer than its limit of {0:?} and was cancelled")]
    Timeout(Duration),
    #[error("the query needs more memory than its limit: {0}")]
    Memory(String),
    #[error("too many queries are running ({0} at most); try again")]
    Busy(usize),
    /// The text is too long or its expressions too deep to be planned safely.
    #[error("{0}")]
    TooComplex(String),
    /// The result has more rows or bytes than the endpoint sends.
    #[error("{0}")]
    ResultTooLarge(String),
    /// Failed while running.
    #[error("{0}")]
    Execution(String),
    /// A value the query computed is out of range (an integer overflow: SQLSTATE 22003) or
    /// divided by zero (22012): the data, not the engine, makes it fail.
    #[error("{message}")]
    DataException {
        sqlstate: &'static str,
        message: String,
    },
    /// A pool worker is between two jobs (a rebalance moves partitions): its last state may
    /// hold rows another worker holds now.
    #[error("this worker of the pool is between two jobs (partitions are moving between workers); try again in a moment")]
    Rebalancing,
    /// In a pool, the workers that answered do not hold every partition's state exactly once
    /// (a partition is moving, or its worker is gone and nobody has taken it over yet): the
    /// sum of their rows would be wrong.
    #[error("{0}; partitions are moving between the workers of the pool, try again in a moment")]
    PartitionsMoving(String),
    /// The job restored state from a checkpoint and has not published it yet: the tables
    /// would answer without it.
    #[error("the pipeline is starting: the state it restored from its checkpoint is not queryable yet; try again in a moment")]
    Starting,
}

impl QueryError {
    /// A short code for HTTP error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::Sql(_) | QueryError::UndefinedTable(_) => "sql_error",
            QueryError::ReadOnly(_) => "read_only",
            QueryError::Timeout(_) => "timeout",
            QueryError::Memory(_) => "memory_limit",
            QueryError::Busy(_) => "busy",
            QueryError::TooComplex(_) => "statement_too_complex",
            QueryError::ResultTooLarge(_) => "result_too_large",
            QueryError::Execution(_) | QueryError::DataException { .. } => "execution_error",
            QueryError::Rebalancing | QueryError::PartitionsMoving(_) => "rebalancing",
            QueryError::Starting => "starting",
        }
    }

    /// Whether a limit of the endpoint refused the query (rather than its SQL or data).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            QueryError::Timeout(_)
                | QueryError::Memory(_)
                | QueryError::Busy(_)
                | QueryError::TooComplex(_)
                | QueryError::ResultTooLarge(_)
                | QueryError::Rebalancing
                | QueryError::PartitionsMoving(_)
                | QueryError::Starting
        )
    }

    /// The Postgres SQLSTATE.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            QueryError::UndefinedTable(_) => "42P01",
            QueryError::Sql(_) => "42601",
            QueryError::ReadOnly(_) => "25006",
            QueryError::Timeout(_) => "57014",
            QueryError::Memory(_) => "53200",
            QueryError::Busy(_) => "53300",
            QueryError::TooComplex(_) => "54001",
            QueryError::ResultTooLarge(_) => "54000",
            QueryError::Execution(_) => "XX000",
            QueryError::DataException { sqlstate, .. } => sqlstate,
            // serialization_failure: what clients retry, without dropping the connection; a
            // worker of a pool meets it at every rebalance (poolers take 57P03,
            // cannot_connect_now, for a server going away, and drop the connection)
            QueryError::Rebalancing | QueryError::PartitionsMoving(_) => "40001",
            // cannot_connect_now: what PostgreSQL answers while it starts up; once, after a
            // restart (a pooler dropping the connection connects again at once)
            QueryError::Starting => "57P03",
        }
    }

    fn from_df(e: DataFusionError, phase: Phase) -> Self {
        let root = e.find_root();
        let message = clean(root);
        if matches!(root, DataFusionError::ResourcesExhausted(_)) {
            return QueryError::Memory(message);
        }
        if let DataFusionError::ArrowError(e, _) = root {
            let sqlstate = match e.as_ref() {
                arrow::error::ArrowError::ArithmeticOverflow(_) => Some("22003"),
                arrow::error::ArrowError::DivideByZero => Some("22012"),
                _ => None,
            };
            if let Some(sqlstate) = sqlstate {
                return QueryError::DataException { sqlstate, message };
            }
        }
        if let DataFusionError::External(e) = root {
            match e.downcast_ref() {
                Some(crate::peers::PeerError::Rebalancing { .. }) => {
                    return QueryError::Rebalancing
                }
                // a worker that does not answer is gone or going: its partitions move
                Some(
                    moving @ (crate::peers::PeerError::Uncovered(_)
                    | crate::peers::PeerError::Unanswered { .. }),
                ) => return QueryError::PartitionsMoving(moving.to_string()),
                _ => {}
            }
        }
        match phase {
            Phase::Plan => QueryError::Sql(message),
            Phase::Run => QueryError::Execution(message),
        }
    }

    /// A statement that would change something, refused with DataFusion's reason.
    fn read_only(e: &DataFusionError) -> Self {
        QueryError::ReadOnly(format!(
            "weir's SQL is read-only: only queries (SELECT, WITH, EXPLAIN) run here ({})",
            clean(e)
        ))
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Plan,
    Run,
}

/// Plans `sql` in `ctx`, refusing anything but queries. A failure is classified from the
/// statement and the catalog, never from DataFusion's message: a statement that is not a
/// query is refused as read-only, one naming a table the catalog lacks gets
/// [`QueryError::UndefinedTable`], anything else is a SQL error.
async fn plan_in(ctx: &SessionContext, sql: &str) -> Result<LogicalPlan, QueryError> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state
        .sql_to_statement(sql, &dialect)
        .map_err(|e| QueryError::from_df(e, Phase::Plan))?;
    let plan = match state.statement_to_plan(statement.clone()).await {
        Ok(plan) => plan,
        Err(e) if !reads_only(&statement) => return Err(QueryError::read_only(&e)),
        Err(e) => {
            return Err(match missing_table(ctx, &state, &statement) {
                true => QueryError::UndefinedTable(clean(&e)),
                false => QueryError::from_df(e, Phase::Plan),
            })
        }
    };
    // what the statement does is in the plan: its refusals are all read-only ones
    QueryEngine::options()
        .verify_plan(&plan)
        .map_err(|e| QueryError::read_only(&e))?;
    Ok(plan)
}

/// Whether a statement only reads: a query, `EXPLAIN` of one, `SHOW` or `DESCRIBE`.
fn reads_only(statement: &DfStatement) -> bool {
    match statement {
        DfStatement::Statement(s) => sql_reads_only(s),
        DfStatement::Explain(e) => reads_only(&e.statement),
        _ => false,
    }
}

fn sql_reads_only(statement: &SqlStatement) -> bool {
    match statement {
        SqlStatement::Explain { statement, .. } => sql_reads_only(statement),
        SqlStatement::Query(_)
        | SqlStatement::ExplainTable { .. }
        | SqlStatement::ShowTables { .. }
        | SqlStatement::ShowColumns { .. }
        | SqlStatement::ShowVariable { .. }
        | SqlStatement::ShowVariables { .. }
        | SqlStatement::ShowFunctions { .. }
        | SqlStatement::ShowSchemas { .. }
        | SqlStatement::ShowViews { .. } => true,
        _ => false,
    }
}

/// Whether `statement` names a table (not a table function) that the catalog does not hold.
fn missing_table(ctx: &SessionContext, state: &SessionState, statement: &DfStatement) -> bool {
    let Ok(tables) = state.resolve_table_references(statement) else {
        return false;
    };
    tables.into_iter().any(|t| {
        !state.table_functions().contains_key(t.table()) && matches!(ctx.table_exist(t), Ok(false))
    })
}

/// DataFusion's message: the innermost DataFusion error's own text (no error-kind prefix,
/// no backtrace), first line only. A parser's error is its text alone (DataFusion prints it
/// in its `Debug` form, `ParserError("…")`).
pub(crate) fn clean(e: &DataFusionError) -> String {
    let message = match e.find_root() {
        DataFusionError::SQL(parser, _) => std::borrow::Cow::Owned(parser_message(parser)),
        root => root.message(),
    };
    message
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The text of a SQL parser's error, as a user reads it.
fn parser_message(e: &ParserError) -> String {
    match e {
        ParserError::TokenizerError(text) | ParserError::ParserError(text) => text.clone(),
        ParserError::RecursionLimitExceeded => {
            "the statement nests too deeply (the parser's recursion limit)".to_string()
        }
    }
}

/// Rows per batch of planned queries (DataFusion's default is 8,192).
const SQL_BATCH_ROWS: usize = 1024;

/// The rows of an answered query.
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// How an answer is encoded, inside the query's time and size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Rows only (the Postgres endpoint encodes them as the client fetches).
    Rows,
    /// A JSON array of objects.
    Json,
    /// An Arrow IPC stream.
    Arrow,
}

/// An answered query: its rows, and their encoding when one was asked for.
pub struct Answer {
    pub result: QueryResult,
    pub body: Option<Vec<u8>>,
}

/// Counters of the endpoint, for `/metrics`.
#[derive(Debug, Default)]
pub struct QueryStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Total time of answered queries, microseconds.
    pub micros: AtomicU64,
    /// Time of each answered query.
    pub duration: weir_engine::stats::Histogram,
    /// Queries refused by a limit (text, result size, memory, time, concurrency).
    pub refused: AtomicU64,
    /// Live subscriptions (`GET /subscribe`).
    pub subscriptions: crate::subscribe::SubscriptionStats,
}

/// Plans and runs queries on a job's live state.
///
/// Planned queries run on a runtime of their own (CPU-bound DataFusion work), apart from the
/// endpoints' I/O runtime: a long aggregate never holds up accepting connections or answering
/// a point query, which the I/O runtime answers at once (see `point`). A query holds its
/// permit (one of `max_queries`) until its work has really stopped, also after a time-out.
pub struct QueryEngine {
    base: SessionState,
    live: Arc<LiveState>,
    limits: QueryLimits,
    permits: Arc<Semaphore>,
    executor: Executor,
    /// Spill files of every query, under one size cap (or none: spilling off).
    disk: Arc<DiskManager>,
    pub stats: QueryStats,
    /// Failed logins by client address, shared by both endpoints.
    pub logins: FailedLogins,
    /// A pool worker's engine: queries read the other workers' rows too.
    pooled: bool,
}

/// The runtime planned queries execute on; shut down in the background when dropped (it may
/// be dropped on an async thread, where a blocking shutdown is not allowed).
struct Executor(Option<tokio::runtime::Runtime>);

impl Executor {
    fn new() -> Result<Self, QueryError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-sql-exec")
            .thread_stack_size(SQL_THREAD_STACK)
            .on_thread_start(lower_priority)
            // IO too: a pool worker's scans read the other workers over HTTP
            .enable_all()
            .build()
            .map(|r| Executor(Some(r)))
            .map_err(|e| QueryError::Execution(format!("starting the query runtime: {e}")))
    }

    fn spawn<F>(&self, work: F) -> Result<tokio::task::JoinHandle<F::Output>, QueryError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0
            .as_ref()
            .map(|r| r.spawn(work))
            .ok_or_else(|| QueryError::Execution("the query runtime has stopped".into()))
    }
}

/// Lowers the calling thread's CPU priority (nice 5): when the machine is busy, ingestion and
/// the endpoints' I/O go first, and long queries take what is left.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its integer arguments; on Linux, `who = 0` with
    // PRIO_PROCESS names the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 5);
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.shutdown_background();
        }
    }
}

/// The spill files' manager: off without `spill_dir`, else that folder under its size cap.
fn disk_manager(limits: &QueryLimits) -> Result<Arc<DiskManager>, QueryError> {
    let mode = match &limits.spill_dir {
        Some(dir) => DiskManagerMode::Directories(vec![dir.clone()]),
        None => DiskManagerMode::Disabled,
    };
    DiskManagerBuilder::default()
        .with_mode(mode)
        .with_max_temp_directory_size(limits.spill_max_bytes)
        .build()
        .map(Arc::new)
        .map_err(|e| QueryError::Execution(format!("serve.spill_dir: {e}")))
}

/// Bytes of a batch's rows (a slice counts only its rows, not the buffers it shares).
fn sliced_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}

/// What a collected result may hold.
#[derive(Clone)]
struct ResultCaps {
    rows: usize,
    bytes: usize,
    /// Schema metadata of an Arrow answer (a pool worker's partitions, for another worker).
    arrow_metadata: Option<std::collections::HashMap<String, String>>,
}

impl ResultCaps {
    fn too_many_rows(&self) -> QueryError {
        QueryError::ResultTooLarge(format!(
            "the result has more than {} rows (serve.max_result_rows); add a LIMIT or a WHERE, \
             or aggregate",
            self.rows
        ))
    }

    fn too_many_bytes(&self) -> QueryError {
        QueryError::ResultTooLarge(format!(
            "the result is larger than {} bytes (serve.max_result_mb); select fewer columns or \
             rows",
            self.bytes
        ))
    }

    /// Encodes `result` as asked, failing once the encoding passes the byte cap.
    fn encode(
        &self,
        result: &QueryResult,
        encoding: Encoding,
    ) -> Result<Option<Vec<u8>>, QueryError> {
        let out = match encoding {
            Encoding::Rows => return Ok(None),
            Encoding::Json => crate::encode::json_rows(result, self.bytes),
            Encoding::Arrow => {
                crate::encode::arrow_stream_with(result, self.bytes, self.arrow_metadata.as_ref())
            }
        };
        match out {
            Ok(body) => Ok(Some(body)),
            Err(crate::encode::EncodeError::TooLarge) => Err(self.too_many_bytes()),
            Err(crate::encode::EncodeError::Arrow(e)) => {
                Err(QueryError::Execution(format!("encoding the result: {e}")))
            }
        }
    }
}

/// Runs a planned query, collecting its rows under the caps, and encodes them; its operators
/// stop at `deadline` (see `deadline`).
async fn collect(
    ctx: SessionContext,
    plan: LogicalPlan,
    caps: ResultCaps,
    encoding: Encoding,
    deadline: (Instant, Duration),
) -> Result<Answer, QueryError> {
    let df = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| QueryError::from_df(e, Phase::Plan))?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let run_error = |e: DataFusionError| {
        if Instant::now() >= deadline.0 {
            QueryError::Timeout(deadline.1)
        } else {
            QueryError::from_df(e, Phase::Run)
        }
    };
    let physical = df
        .create_physical_plan()
        .await
        .map_err(|e| QueryError::from_df(e, Phase::Plan))?;
    let physical = with_deadline(physical, deadline.0).map_err(run_error)?;
    let mut stream = execute_stream(physical, ctx.task_ctx()).map_err(run_error)?;
    let (mut batches, mut rows, mut bytes) = (Vec::new(), 0usize, 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(run_error)?;
        rows += batch.num_rows();
        if rows > caps.rows {
            return Err(caps.too_many_rows());
        }
        bytes += sliced_bytes(&batch);
        if bytes > caps.bytes {
            return Err(caps.too_many_bytes());
        }
        batches.push(batch);
    }
    let result = QueryResult { schema, batches };
    let body = caps.encode(&result, encoding)?;
    Ok(Answer { result, body })
}

impl QueryEngine {
    /// An engine with one table per window and view of `live`, and `weir_status`.
    pub fn new(live: Arc<LiveState>, limits: QueryLimits) -> Result<Self, QueryError> {
        Self::with_peers(live, limits, None)
    }

    /// An engine of a pool worker: its tables read the other workers' rows too.
    pub fn with_peers(
        live: Arc<LiveState>,
        limits: QueryLimits,
        peers: Option<Arc<Peers>>,
    ) -> Result<Self, QueryError> {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(2)
            // a nested-loop join computes a batch of probe rows against its whole build side
            // before it looks at its deadline again: smaller batches stop it sooner
            .with_batch_size(SQL_BATCH_ROWS);
        // Column names are camelCase (serviceName): keep identifiers as written.
        config.options_mut().sql_parser.enable_ident_normalization = false;
        let base = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            // integer arithmetic fails on overflow rather than answering a wrapped number
            .with_analyzer_rule(Arc::new(crate::checked::CheckedArithmetic))
            .build();
        let ctx = SessionContext::new_with_state(base);
        crate::bounded::register(&ctx, limits.memory_bytes);
        // integer sums fail on overflow rather than answering a wrapped number
        ctx.register_udaf(crate::checked_sum::checked_sum());
        for (i, def) in live.tables.iter().enumerate() {
            let keys = def.keys.clone();
            ctx.register_table(
                def.name.as_str(),
                Arc::new(LiveTable::new(live.clone(), i, keys, peers.clone())),
            )
            .map_err(|e| QueryError::Sql(e.to_string()))?;
        }
        ctx.register_table(
            "weir_status",
            Arc::new(StatusTable::new(live.clone(), peers.clone())),
        )
        .map_err(|e| QueryError::Sql(e.to_string()))?;
        let permits = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        // a pool worker's queries read the others' rows, or check it holds every partition
        let pooled = peers.is_some() || live.worker().is_some();
        Ok(QueryEngine {
            base: ctx.state(),
            live,
            disk: disk_manager(&limits)?,
            logins: FailedLogins::new(limits.max_failed_logins, limits.max_lockout),
            limits,
            permits,
            executor: Executor::new()?,
            stats: QueryStats::default(),
            pooled,
        })
    }

    /// Adds `weir_dead_letters`: the newest dead letters of `stats` (kept in memory by the
    /// run), and in a pool those of the other workers.
    pub fn with_dead_letters(
        mut self,
        stats: impl Into<weir_engine::stats::CurrentStats>,
        peers: Option<Arc<Peers>>,
    ) -> Result<Self, QueryError> {
        let ctx = SessionContext::new_with_state(self.base.clone());
        let table =
            crate::console::dead_letters::DeadLettersTable::new(stats, self.live.clone(), peers);
        ctx.register_table(crate::console::dead_letters::TABLE, Arc::new(table))
            .map_err(|e| QueryError::Sql(e.to_string()))?;
        self.base = ctx.state();
        Ok(self)
    }

    /// The live state it reads.
    pub fn live(&self) -> &Arc<LiveState> {
        &self.live
    }

    /// The limits it keeps.
    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// The tables, with what they hold (for `weir sql` and docs).
    pub fn tables(&self) -> Vec<(String, &'static str)> {
        let mut out: Vec<(String, &'static str)> = self
            .live
            .tables
            .iter()
            .map(|t| {
                let what = match t.kind {
                    LiveKind::Window { .. } => "window",
                    LiveKind::View => "view",
                };
                (t.name.clone(), what)
            })
            .collect();
        out.push(("weir_status".into(), "status"));
        out
    }

    /// A session pinned to the current snapshot, with the per-query memory limit; `local`
    /// reads this worker's own state only (another pool worker asks).
    fn session(&self, local: bool) -> Result<SessionContext, QueryError> {
        self.session_on(self.live.current(), local)
    }

    /// A session pinned to `snapshot` (see [`QueryEngine::session`]).
    fn session_on(
        &self,
        snapshot: Arc<LiveSnapshot>,
        local: bool,
    ) -> Result<SessionContext, QueryError> {
        let mut runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_bytes, 1.0)
            .build()
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        runtime.disk_manager = self.disk.clone();
        let config = self
            .base
            .config()
            .clone()
            // the tables live in the base's default catalog: do not make a new, empty one
            .with_create_default_catalog_and_schema(false)
            .with_extension(Arc::new(Pinned(snapshot)));
        let config = if local {
            config.with_extension(Arc::new(LocalOnly))
        } else {
            config
        };
        let state = SessionStateBuilder::new_from_existing(self.base.clone())
            .with_config(config)
            .with_runtime_env(Arc::new(runtime))
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    fn options() -> SQLOptions {
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
    }

    fn caps(&self) -> ResultCaps {
        ResultCaps {
            rows: self.limits.max_result_rows,
            bytes: self.limits.max_result_bytes,
            arrow_metadata: None,
        }
    }

    /// Refuses text over the size and operator limits, before anything parses it.
    fn check_text(&self, sql: &str) -> Result<(), QueryError> {
        check_text(sql, &self.limits).map_err(|e: TextLimit| QueryError::TooComplex(e.to_string()))
    }

    /// One of the `max_queries` turns, waited for up to the time limit.
    async fn permit(&self) -> Result<OwnedSemaphorePermit, QueryError> {
        tokio::time::timeout(self.limits.timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| QueryError::Busy(self.limits.max_concurrent))?
            .map_err(|_| QueryError::Busy(self.limits.max_concurrent))
    }

    /// Runs `work` on the query runtime within the time limit; the permit is released when
    /// the work has stopped (finished, failed or cancelled).
    async fn in_executor<T, F>(
        &self,
        permit: OwnedSemaphorePermit,
        work: F,
    ) -> Result<T, QueryError>
    where
        F: std::future::Future<Output = Result<T, QueryError>> + Send + 'static,
        T: Send + 'static,
    {
        let timeout = self.limits.timeout;
        let task = self.executor.spawn(async move {
            let out = work.await;
            drop(permit);
            out
        })?;
        let cancel = task.abort_handle();
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) if e.is_panic() => {
                tracing::error!(error = %e, "a query panicked; the engine goes on");
                Err(QueryError::Execution(
                    "the query failed inside DataFusion (a panic, logged); the engine goes on"
                        .into(),
                ))
            }
            Ok(Err(e)) => Err(QueryError::Execution(format!("the query failed: {e}"))),
            Err(_) => {
                // stops the plan's streams at their next await
                cancel.abort();
                Err(QueryError::Timeout(timeout))
            }
        }
    }

    /// The parameter types (`$1`, `$2`…) and the result schema of `sql`, for the Postgres
    /// endpoint's Parse and Describe: planned under a permit and the time limit.
    pub async fn describe(&self, sql: &str) -> Result<(Vec<DataType>, SchemaRef), QueryError> {
        self.check_text(sql)?;
        let permit = self.permit().await?;
        let ctx = self.session(false)?;
        let sql = sql.to_string();
        self.in_executor(permit, async move {
            let plan = plan_in(&ctx, &sql).await?;
            let types = plan
                .get_parameter_types()
                .map_err(|e| QueryError::from_df(e, Phase::Plan))?;
            let mut params: Vec<(usize, DataType)> = types
                .into_iter()
                .filter_map(|(name, t)| {
                    let n: usize = name.trim_start_matches('$').parse().ok()?;
                    Some((n, t.unwrap_or(DataType::Utf8)))
                })
                .collect();
            params.sort_by_key(|(n, _)| *n);
            let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
            Ok((params.into_iter().map(|(_, t)| t).collect(), schema))
        })
        .await
    }

    /// Runs `sql` and collects its rows.
    pub async fn query(&self, sql: &str) -> Result<QueryResult, QueryError> {
        self.query_with(sql, None).await
    }

    /// Runs `sql` with values for its `$1`, `$2`... placeholders.
    pub async fn query_with(
        &self,
        sql: &str,
        params: Option<ParamValues>,
    ) -> Result<QueryResult, QueryError> {
        self.answer(sql, params, Encoding::Rows, false)
            .await
            .map(|a| a.result)
    }

    /// Runs `sql` (over this worker's own state only when `local`: another worker of the
    /// pool asks) and encodes its rows as asked, all within the limits.
    pub async fn answer(
        &self,
        sql: &str,
        params: Option<ParamValues>,
        encoding: Encoding,
        local: bool,
    ) -> Result<Answer, QueryError> {
        let started = Instant::now();
        let out = self.run_with(sql, params, true, local, encoding).await;
        let s = &self.stats;
        match &out {
            Ok(_) => {
                s.ok.fetch_add(1, Ordering::Relaxed);
                let took = started.elapsed();
                s.micros
                    .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                s.duration.observe(took.as_secs_f64());
            }
            Err(e) => {
                s.failed.fetch_add(1, Ordering::Relaxed);
                if e.is_limit() {
                    s.refused.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(error = %e, "query failed");
            }
        }
        out
    }

    /// Runs `sql` through DataFusion's planner even when it is a point query (for tests and
    /// benchmarks of the fast path).
    pub async fn query_planned(&self, sql: &str) -> Result<QueryResult, QueryError> {
        self.run_with(sql, None, false, false, Encoding::Rows)
            .await
            .map(|a| a.result)
    }

    /// Runs `sql` over this worker's own state only (another worker of the pool asks).
    pub async fn query_local(&self, sql: &str) -> Result<QueryResult, QueryError> {
        self.answer(sql, None, Encoding::Rows, true)
            .await
            .map(|a| a.result)
    }

    async fn run_with(
        &self,
        sql: &str,
        params: Option<ParamValues>,
        fast_path: bool,
        local: bool,
        encoding: Encoding,
    ) -> Result<Answer, QueryError> {
        self.check_text(sql)?;
        if self.live.between_jobs() {
            return Err(QueryError::Rebalancing);
        }
        if self.live.starting() {
            return Err(QueryError::Starting);
        }
        let permit = self.permit().await?;
        let mut caps = self.caps();
        let snapshot = self.live.current();
        // another worker asking checks that the pool's answers hold every partition once
        if local {
            if let Some(owned) = &snapshot.owned {
                caps.arrow_metadata = Some(crate::peers::owned_metadata(owned));
            }
        }
        // the fast path reads this worker's state alone
        if fast_path && params.is_none() && (local || !self.pooled) {
            if let Some(result) = crate::point::answer(&self.live, &snapshot, sql)? {
                if result.num_rows() > caps.rows {
                    return Err(caps.too_many_rows());
                }
                let body = caps.encode(&result, encoding)?;
                return Ok(Answer { result, body });
            }
        }
        let ctx = self.session_on(snapshot, local)?;
        let sql = sql.to_string();
        let deadline = (Instant::now() + self.limits.timeout, self.limits.timeout);
        self.in_executor(permit, async move {
            let plan = plan_in(&ctx, &sql).await?;
            let plan = match params {
                Some(p) => plan
                    .with_param_values(p)
                    .map_err(|e| QueryError::from_df(e, Phase::Plan))?,
                None => plan,
            };
            collect(ctx, plan, caps, encoding, deadline).await
        })
        .await
    }
}

#[cfg(test)]
mod rebalancing_tests {
    use super::*;

    #[test]
    fn a_peer_between_two_jobs_makes_the_query_a_rebalancing_refusal() {
        let peer = crate::peers::PeerError::Rebalancing {
            worker: "w2".into(),
            addr: "127.0.0.1:1".into(),
        };
        let e = DataFusionError::Context(
            "scanning".into(),
            Box::new(DataFusionError::External(Box::new(peer))),
        );
        let q = QueryError::from_df(e, Phase::Run);
        assert!(matches!(q, QueryError::Rebalancing), "{q:?}");
        assert_eq!((q.code(), q.sqlstate()), ("rebalancing", "40001"));
    }

    #[tokio::test]
    async fn a_restored_state_not_published_yet_is_refused_as_starting() {
        let live = Arc::new(LiveState::new("p", Vec::new()));
        live.restoring();
        let engine = QueryEngine::new(live.clone(), QueryLimits::default()).unwrap();
        let Err(refused) = engine.query("SELECT 1").await else {
            panic!("answered while starting");
        };
        assert!(matches!(refused, QueryError::Starting), "{refused:?}");
        assert_eq!((refused.code(), refused.sqlstate()), ("starting", "57P03"));
        assert!(refused.is_limit());
        // its first snapshot shows what it restored: answered from then on
        live.publish(LiveSnapshot {
            seq: 1,
            ..Default::default()
        });
        assert!(!live.starting());
        assert!(engine.query("SELECT 1").await.is_ok());
        // a placeholder (seq 0) of a job that restores after snapshots were published
        // changes nothing
        live.restoring();
        assert!(!live.starting());
    }

    /// An integer overflow, of an operator or of a `sum`, is the data's error (22003), never
    /// a wrapped number.
    #[tokio::test]
    async fn integer_overflow_in_arithmetic_and_sums_is_a_data_exception() {
        let live = Arc::new(LiveState::new("p", Vec::new()));
        let engine = QueryEngine::new(live, QueryLimits::default()).unwrap();
        let values = "(VALUES (9223372036854775807, 1), (1, 1)) AS s(v, g)";
        for sql in [
            format!("SELECT v + 1 FROM {values}"),
            format!("SELECT sum(v) FROM {values}"),
            format!("SELECT g, sum(v) FROM {values} GROUP BY g"),
        ] {
            let Err(e) = engine.query(&sql).await else {
                panic!("{sql}: answered");
            };
            assert!(
                matches!(e, QueryError::DataException { .. }),
                "{sql}: {e:?}"
            );
            assert_eq!(e.sqlstate(), "22003", "{sql}");
        }
        assert!(engine
            .query(&format!("SELECT sum(v - 2) FROM {values}"))
            .await
            .is_ok());
    }
}
