//! Runs read-only SQL on a job's live state with DataFusion, within limits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use tokio::sync::Semaphore;
use weir_engine::live::{LiveKind, LiveState};

use crate::peers::Peers;
use crate::tables::{LiveTable, LocalOnly, Pinned, StatusTable};

/// Limits of one query and of the endpoint.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// A query running longer is cancelled.
    pub timeout: Duration,
    /// Memory a query's operators may hold (sorts, joins, aggregations).
    pub memory_bytes: usize,
    /// Queries running at once; more wait up to `timeout` for a turn, then fail.
    pub max_concurrent: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: Duration::from_secs(30),
            memory_bytes: 512 << 20,
            max_concurrent: 16,
        }
    }
}

/// Why a query failed, with the Postgres SQLSTATE it maps to.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL could not be planned (syntax, unknown table or column, types).
    #[error("{0}")]
    Sql(String),
    /// The statement would change something: weir's SQL is read-only.
    #[error("{0}")]
    ReadOnly(String),
    #[error("the query ran longer than its limit of {0:?} and was cancelled")]
    Timeout(Duration),
    #[error("the query needs more memory than its limit: {0}")]
    Memory(String),
    #[error("too many queries are running ({0} at most); try again")]
    Busy(usize),
    /// Failed while running.
    #[error("{0}")]
    Execution(String),
}

impl QueryError {
    /// A short code for HTTP error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::Sql(_) => "sql_error",
            QueryError::ReadOnly(_) => "read_only",
            QueryError::Timeout(_) => "timeout",
            QueryError::Memory(_) => "memory_limit",
            QueryError::Busy(_) => "busy",
            QueryError::Execution(_) => "execution_error",
        }
    }

    /// The Postgres SQLSTATE.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            QueryError::Sql(m) if m.contains("not found") => "42P01",
            QueryError::Sql(_) => "42601",
            QueryError::ReadOnly(_) => "25006",
            QueryError::Timeout(_) => "57014",
            QueryError::Memory(_) => "53200",
            QueryError::Busy(_) => "53300",
            QueryError::Execution(_) => "XX000",
        }
    }

    fn from_df(e: DataFusionError, phase: Phase) -> Self {
        let e = e.find_root().to_string();
        let message = clean(&e);
        if e.starts_with("Resources exhausted") {
            return QueryError::Memory(message);
        }
        if message.contains("not supported") && read_only_refusal(&message) {
            return QueryError::ReadOnly(format!(
                "weir's SQL is read-only: only queries (SELECT, WITH, EXPLAIN) run here ({message})"
            ));
        }
        match phase {
            Phase::Plan => QueryError::Sql(message),
            Phase::Run => QueryError::Execution(message),
        }
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Plan,
    Run,
}

/// DataFusion's refusals under [`SQLOptions`] that forbid changes.
/// Plans `sql` in `ctx`, refusing anything but queries.
async fn plan_in(ctx: &SessionContext, sql: &str) -> Result<LogicalPlan, QueryError> {
    let plan = ctx
        .state()
        .create_logical_plan(sql)
        .await
        .map_err(|e| QueryError::from_df(e, Phase::Plan))?;
    QueryEngine::options()
        .verify_plan(&plan)
        .map_err(|e| QueryError::from_df(e, Phase::Plan))?;
    Ok(plan)
}

fn read_only_refusal(message: &str) -> bool {
    ["DDL", "DML", "Statement", "statement"]
        .iter()
        .any(|w| message.contains(w))
}

/// DataFusion's message without its error-kind prefixes and backtrace.
fn clean(s: &str) -> String {
    let mut s = s.trim();
    for prefix in [
        "Error during planning: ",
        "Schema error: ",
        "SQL error: ",
        "Execution error: ",
        "This feature is not implemented: ",
        "Resources exhausted: ",
        "Arrow error: ",
        "Internal error: ",
    ] {
        s = s.trim_start_matches(prefix);
    }
    s.lines().next().unwrap_or(s).trim().to_string()
}

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

/// Counters of the endpoint, for `/metrics`.
#[derive(Debug, Default)]
pub struct QueryStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Total time of answered queries, microseconds.
    pub micros: AtomicU64,
    /// Time of each answered query.
    pub duration: weir_engine::stats::Histogram,
}

/// Plans and runs queries on a job's live state.
///
/// Planned queries run on a runtime of their own (CPU-bound DataFusion work), apart from the
/// endpoints' I/O runtime: a long aggregate never holds up accepting connections or answering
/// a point query, which the I/O runtime answers at once (see `point`).
pub struct QueryEngine {
    base: SessionState,
    live: Arc<LiveState>,
    limits: QueryLimits,
    permits: Arc<Semaphore>,
    executor: Executor,
    pub stats: QueryStats,
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
            .with_target_partitions(2);
        // Column names are camelCase (serviceName): keep identifiers as written.
        config.options_mut().sql_parser.enable_ident_normalization = false;
        let base = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(base);
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
        Ok(QueryEngine {
            base: ctx.state(),
            live,
            limits,
            permits,
            executor: Executor::new()?,
            stats: QueryStats::default(),
            pooled: peers.is_some(),
        })
    }

    /// The live state it reads.
    pub fn live(&self) -> &Arc<LiveState> {
        &self.live
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
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_bytes, 1.0)
            .build_arc()
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        let config = self
            .base
            .config()
            .clone()
            // the tables live in the base's default catalog: do not make a new, empty one
            .with_create_default_catalog_and_schema(false)
            .with_extension(Arc::new(Pinned(self.live.current())));
        let config = if local {
            config.with_extension(Arc::new(LocalOnly))
        } else {
            config
        };
        let state = SessionStateBuilder::new_from_existing(self.base.clone())
            .with_config(config)
            .with_runtime_env(runtime)
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    fn options() -> SQLOptions {
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
    }

    /// Plans `sql` (read-only) in a session pinned to the current snapshot.
    pub async fn plan(&self, sql: &str) -> Result<(SessionContext, LogicalPlan), QueryError> {
        let ctx = self.session(false)?;
        let plan = plan_in(&ctx, sql).await?;
        Ok((ctx, plan))
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
        let started = Instant::now();
        let out = self.run(sql, params).await;
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
                tracing::debug!(error = %e, "query failed");
            }
        }
        out
    }

    /// Runs `sql` through DataFusion's planner even when it is a point query (for tests and
    /// benchmarks of the fast path).
    pub async fn query_planned(&self, sql: &str) -> Result<QueryResult, QueryError> {
        self.run_with(sql, None, false, false).await
    }

    /// Runs `sql` over this worker's own state only (another worker of the pool asks).
    pub async fn query_local(&self, sql: &str) -> Result<QueryResult, QueryError> {
        self.run_with(sql, None, true, true).await
    }

    async fn run(&self, sql: &str, params: Option<ParamValues>) -> Result<QueryResult, QueryError> {
        self.run_with(sql, params, true, false).await
    }

    async fn run_with(
        &self,
        sql: &str,
        params: Option<ParamValues>,
        fast_path: bool,
        local: bool,
    ) -> Result<QueryResult, QueryError> {
        let timeout = self.limits.timeout;
        let permit = tokio::time::timeout(timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| QueryError::Busy(self.limits.max_concurrent))?
            .map_err(|_| QueryError::Busy(self.limits.max_concurrent))?;
        // the fast path reads this worker's state alone
        if fast_path && params.is_none() && (local || !self.pooled) {
            if let Some(answer) = crate::point::answer(&self.live, &self.live.current(), sql)? {
                return Ok(answer);
            }
        }
        let ctx = self.session(local)?;
        let sql = sql.to_string();
        let work = async move {
            let plan = plan_in(&ctx, &sql).await?;
            let plan = match params {
                Some(p) => plan
                    .with_param_values(p)
                    .map_err(|e| QueryError::from_df(e, Phase::Plan))?,
                None => plan,
            };
            let df = ctx
                .execute_logical_plan(plan)
                .await
                .map_err(|e| QueryError::from_df(e, Phase::Plan))?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let batches = df
                .collect()
                .await
                .map_err(|e| QueryError::from_df(e, Phase::Run))?;
            Ok(QueryResult { schema, batches })
        };
        let task = self.executor.spawn(work)?;
        let cancel = task.abort_handle();
        let out = match tokio::time::timeout(timeout, task).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => Err(QueryError::Execution(format!("the query failed: {e}"))),
            Err(_) => {
                // stops the plan's streams where they are
                cancel.abort();
                Err(QueryError::Timeout(timeout))
            }
        };
        drop(permit);
        out
    }
}
