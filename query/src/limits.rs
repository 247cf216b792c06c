//! The limits of the SQL endpoints, and the checks a query's text passes before it is parsed.
//!
//! The SQL runs in the process that ingests, so no query may take it down. Deep expression
//! trees are the first danger: sqlparser parses a chain of binary operators (`1+1+…`, `a = 1
//! OR a = 2 OR …`) in a loop, building a tree as deep as the chain is long, and every later
//! step that walks the tree recursively (DataFusion's planner and optimizer, `Clone`, `Hash`,
//! `Display`, `Drop`) needs stack in proportion. DataFusion's `recursive_protection` grows
//! the stack of its own recursive walks on the heap; the derived ones still use the thread's
//! stack, so the SQL threads get large stacks ([`SQL_THREAD_STACK`]) and a statement may hold
//! at most [`QueryLimits::max_sql_terms`] operators, counted on its tokens before anything
//! builds a tree. Nesting by parentheses, function calls, `CASE` and subqueries is bounded
//! by the parser's own recursion limit (DataFusion's `sql_parser.recursion_limit`, 50).

use std::path::PathBuf;
use std::time::Duration;

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// Stack of every thread that parses, plans, runs or drops a SQL tree: at
/// [`QueryLimits::max_sql_terms`] operators the deepest tree needs far less (debug builds,
/// whose frames are largest, planned 8,000-operator chains on it); the rest is margin for
/// raised limits. Untouched stack costs no memory.
pub const SQL_THREAD_STACK: usize = 64 << 20;

/// Limits of one query and of the endpoints (`serve:` in a pipeline file).
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// A query running longer is cancelled (`query_timeout`).
    pub timeout: Duration,
    /// Memory a query's operators may hold: sorts, joins, aggregations (`query_memory_mb`);
    /// also the largest value a size-setting function (`repeat`, `lpad`, `range`…) may make.
    pub memory_bytes: usize,
    /// Queries running at once; more wait up to `timeout` for a turn, then fail
    /// (`max_queries`).
    pub max_concurrent: usize,
    /// Connections each endpoint keeps open at once (`max_connections`; HTTP also takes
    /// `max_subscriptions` more, one per subscription); one more is answered "too many" and
    /// closed as it is accepted, so that clients cannot take every file descriptor of the
    /// process (which its checkpoints, files and brokers need).
    pub max_connections: usize,
    /// Longest SQL text accepted, in bytes (`max_sql_bytes`); Postgres messages and HTTP
    /// bodies may be [`QueryLimits::MESSAGE_OVERHEAD`] longer.
    pub max_sql_bytes: usize,
    /// Most operators (`+`, `=`, `AND`, `OR`, `||`, `LIKE`…) one statement may hold
    /// (`max_sql_terms`): a bound on the depth of its expression trees, and on planning
    /// time, which grows faster than the depth (DataFusion 53 plans a chain of 1,000 `OR`
    /// in about 0.1 s, of 4,000 in about 1 s; planning cannot be cancelled part-way).
    pub max_sql_terms: usize,
    /// Most rows a result may have (`max_result_rows`).
    pub max_result_rows: usize,
    /// Largest result, in bytes, as Arrow arrays and as sent (`max_result_mb`).
    pub max_result_bytes: usize,
    /// Where sorts and aggregations that outgrow `memory_bytes` may spill (`spill_dir`);
    /// `None`: they fail instead.
    pub spill_dir: Option<PathBuf>,
    /// Most bytes all queries' spill files may take at once (`spill_max_mb`).
    pub spill_max_bytes: u64,
    /// Failed logins (wrong password or token) one client address may make before it must
    /// wait (`max_failed_logins`).
    pub max_failed_logins: u32,
    /// Longest wait imposed on an address after repeated failed logins (`login_lockout`).
    pub max_lockout: Duration,
    /// Limits of live subscriptions (`GET /subscribe`).
    pub subscribe: crate::subscribe::SubscribeLimits,
}

impl QueryLimits {
    /// What a Postgres message or an HTTP body may hold beyond the SQL text (a statement
    /// name, parameter types and values, a JSON wrapper).
    pub const MESSAGE_OVERHEAD: usize = 64 << 10;

    /// Largest Postgres message or HTTP body accepted.
    pub fn max_message_bytes(&self) -> usize {
        self.max_sql_bytes.saturating_add(Self::MESSAGE_OVERHEAD)
    }
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: Duration::from_secs(30),
            memory_bytes: 512 << 20,
            max_concurrent: 16,
            max_connections: 256,
            max_sql_bytes: 1 << 20,
            max_sql_terms: 2_000,
            max_result_rows: 1_000_000,
            max_result_bytes: 64 << 20,
            spill_dir: None,
            spill_max_bytes: 1 << 30,
            max_failed_logins: 5,
            max_lockout: Duration::from_secs(60),
            subscribe: Default::default(),
        }
    }
}

/// The connections an endpoint has open, up to a limit: each accepted one holds an [`Open`]
/// until it closes. When every place is taken, the connection that has waited for its client
/// the longest (an idle keep-alive or Postgres session, or one that never finished its
/// request or startup) is closed to make room; only when every connection is answering is
/// the new one refused. So clients that open connections and sit on them can delay others
/// but never keep them out, health probes included.
#[derive(Debug)]
pub struct ConnectionLimit {
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
    endpoint: &'static str,
    /// The places taken, to choose one to close (pruned of closed ones as they are scanned).
    slots: std::sync::Mutex<Vec<std::sync::Weak<Slot>>>,
    /// When the last refusal or eviction was logged (one warning a second at most).
    logged: std::sync::Mutex<Option<std::time::Instant>>,
}

/// An open connection of a [`ConnectionLimit`], counted until dropped.
#[derive(Debug)]
pub struct Open {
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    slot: std::sync::Arc<Slot>,
}

impl Open {
    /// The connection's place: mark it busy while answering, learn when it is evicted.
    pub fn slot(&self) -> &std::sync::Arc<Slot> {
        &self.slot
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Milliseconds since the first call, a clock to compare idle times by.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// One connection's place under a [`ConnectionLimit`]: idle (waiting for its client) unless
/// something holds a [`Busy`] of it; busy but waiting for its client too while the client
/// does not take what is written to it.
#[derive(Default)]
pub struct Slot {
    /// Requests or messages being answered.
    busy: std::sync::atomic::AtomicUsize,
    /// When it last became idle ([`now_ms`]).
    idle_since: std::sync::atomic::AtomicU64,
    /// Since when, while busy, it waits for its client: for a request body's bytes, or to
    /// read what is written to it ([`now_ms`] + 1; 0: it does not).
    stalled_since: std::sync::atomic::AtomicU64,
    /// It completed a request or its startup: closed only after connections that did not.
    established: std::sync::atomic::AtomicBool,
    /// It was upgraded (a WebSocket): it is no longer the server's to close for room.
    upgraded: std::sync::atomic::AtomicBool,
    /// It was chosen to be closed.
    evicted: std::sync::atomic::AtomicBool,
    /// Wakes the connection's task once evicted.
    notify: tokio::sync::Notify,
    /// What else closes the connection (an HTTP connection's switch).
    on_evict: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::sync::atomic::Ordering;
        f.debug_struct("Slot")
            .field("busy", &self.busy.load(Ordering::Relaxed))
            .field("idle_since", &self.idle_since.load(Ordering::Relaxed))
            .field("evicted", &self.evicted.load(Ordering::Relaxed))
            .finish()
    }
}

/// A connection answering: its [`Slot`] is busy until this is dropped.
#[derive(Debug)]
pub struct Busy(std::sync::Arc<Slot>);

impl Drop for Busy {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.0.idle_since.store(now_ms(), Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slot {
    /// Marks the connection busy until the guard is dropped.
    pub fn busy(self: &std::sync::Arc<Self>) -> Busy {
        self.busy.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Busy(self.clone())
    }

    /// The connection completed a request (HTTP) or its startup (Postgres).
    pub fn establish(&self) {
        self.established
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The connection was upgraded (a WebSocket): never evicted.
    pub fn upgrade(&self) {
        self.upgraded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// A read of the client's bytes or a write to it could not go on (`true`: nothing came,
    /// or the buffers are full as the client does not read) or went on (`false`).
    pub fn waiting_for_client(&self, stalled: bool) {
        use std::sync::atomic::Ordering;
        if stalled {
            let _ = self.stalled_since.compare_exchange(
                0,
                now_ms() + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        } else if self.stalled_since.load(Ordering::Relaxed) != 0 {
            self.stalled_since.store(0, Ordering::Release);
        }
    }

    /// Sets what closes the connection when it is evicted (besides [`Self::evicted`]).
    pub fn on_evict(&self, close: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_evict.set(Box::new(close));
    }

    /// Completes once the connection was chosen to make room.
    pub async fn evicted(&self) {
        self.notify.notified().await;
    }

    /// Whether it may be closed now: (established, since when it waits for its client).
    fn idle(&self) -> Option<(bool, u64)> {
        use std::sync::atomic::Ordering;
        if self.evicted.load(Ordering::Acquire) || self.upgraded.load(Ordering::Acquire) {
            return None;
        }
        let since = if self.busy.load(Ordering::Acquire) == 0 {
            self.idle_since.load(Ordering::Acquire)
        } else {
            match self.stalled_since.load(Ordering::Acquire) {
                0 => return None,
                s => s - 1,
            }
        };
        Some((self.established.load(Ordering::Acquire), since))
    }

    fn evict(&self) {
        self.evicted
            .store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_one();
        if let Some(close) = self.on_evict.get() {
            close();
        }
    }
}

impl ConnectionLimit {
    /// At most `max` connections of `endpoint` (`HTTP`, `Postgres`, for the log).
    pub fn new(max: usize, endpoint: &'static str) -> Self {
        ConnectionLimit {
            open: Default::default(),
            max: max.max(1),
            endpoint,
            slots: Default::default(),
            logged: std::sync::Mutex::new(None),
        }
    }

    /// A place for one more connection. When `max` are open, the one idle the longest is
    /// closed to make room (it stays counted until it is gone, so the count can pass `max`
    /// by the connections being closed); when none is idle, `None` (logged): the caller
    /// refuses the new one.
    pub fn admit(&self) -> Option<Open> {
        use std::sync::atomic::Ordering;
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            if !self.evict_idlest() {
                self.log("a connection over serve.max_connections is refused: every open one is answering");
                return None;
            }
            self.open.fetch_add(1, Ordering::AcqRel);
            self.log("a connection that waited for its client the longest was closed to make room for a new one (serve.max_connections)");
        }
        let slot = std::sync::Arc::new(Slot::default());
        slot.idle_since.store(now_ms(), Ordering::Release);
        if let Ok(mut slots) = self.slots.lock() {
            // closed connections' entries go now and then (at most `max` open ones stay)
            if slots.len() >= 2 * self.max {
                slots.retain(|s| s.strong_count() > 0);
            }
            slots.push(std::sync::Arc::downgrade(&slot));
        }
        Some(Open {
            count: self.open.clone(),
            slot,
        })
    }

    /// Evicts the open connection that waits for its client the longest, those that never
    /// completed a request or startup first; whether there was one.
    fn evict_idlest(&self) -> bool {
        let Ok(mut slots) = self.slots.lock() else {
            return false;
        };
        slots.retain(|s| s.strong_count() > 0);
        let idlest = slots
            .iter()
            .filter_map(|s| s.upgrade())
            .filter_map(|s| s.idle().map(|since| (since, s)))
            .min_by_key(|(since, _)| *since);
        match idlest {
            Some((_, slot)) => {
                slot.evict();
                true
            }
            None => false,
        }
    }

    fn log(&self, what: &'static str) {
        if let Ok(mut last) = self.logged.lock() {
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *last = Some(std::time::Instant::now());
                tracing::warn!(endpoint = self.endpoint, max = self.max, "{what}");
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Why a query's text is refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextLimit {
    #[error(
        "the SQL text is {len} bytes, over the limit of {max} (serve.max_sql_bytes); send a \
         shorter statement (an IN list of many values can often be a join or a range)"
    )]
    TooLong { len: usize, max: usize },
    #[error(
        "the statement has more than {max} operators (serve.max_sql_terms), which would make \
         its expression tree too deep; write long OR chains as `x IN (...)`, or raise the limit"
    )]
    TooManyTerms { max: usize },
}

/// Checks `sql` against the size and operator limits, without building a tree.
pub fn check_text(sql: &str, limits: &QueryLimits) -> Result<(), TextLimit> {
    if sql.len() > limits.max_sql_bytes {
        return Err(TextLimit::TooLong {
            len: sql.len(),
            max: limits.max_sql_bytes,
        });
    }
    // Text that does not tokenize gets the parser's own error message later.
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return Ok(());
    };
    let terms = tokens.iter().filter(|t| is_operator(t)).count();
    if terms > limits.max_sql_terms {
        return Err(TextLimit::TooManyTerms {
            max: limits.max_sql_terms,
        });
    }
    Ok(())
}

/// A token that joins two expressions (or negates one), making the tree one level deeper.
fn is_operator(token: &Token) -> bool {
    match token {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::BETWEEN
                | Keyword::REGEXP
                | Keyword::RLIKE
                | Keyword::IN
                | Keyword::AT
                | Keyword::COLLATE
                | Keyword::OVERLAPS
        ),
        Token::EOF
        | Token::Number(..)
        | Token::Char(_)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::TripleSingleQuotedString(_)
        | Token::TripleDoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::DoubleQuotedByteStringLiteral(_)
        | Token::TripleSingleQuotedByteStringLiteral(_)
        | Token::TripleDoubleQuotedByteStringLiteral(_)
        | Token::SingleQuotedRawStringLiteral(_)
        | Token::DoubleQuotedRawStringLiteral(_)
        | Token::TripleSingleQuotedRawStringLiteral(_)
        | Token::TripleDoubleQuotedRawStringLiteral(_)
        | Token::NationalStringLiteral(_)
        | Token::QuoteDelimitedStringLiteral(_)
        | Token::NationalQuoteDelimitedStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::Comma
        | Token::Whitespace(_)
        | Token::LParen
        | Token::RParen
        | Token::Period
        | Token::SemiColon
        | Token::LBracket
        | Token::RBracket
        | Token::Placeholder(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_limit_closes_the_connection_idle_the_longest_and_never_a_busy_one() {
        let limit = ConnectionLimit::new(3, "HTTP");
        let open: Vec<Open> = (0..3).map(|_| limit.admit().expect("a place")).collect();
        let closed: Vec<std::sync::Arc<std::sync::atomic::AtomicBool>> = open
            .iter()
            .map(|o| {
                let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let f = flag.clone();
                o.slot()
                    .on_evict(move || f.store(true, std::sync::atomic::Ordering::SeqCst));
                flag
            })
            .collect();
        let is_closed = |i: usize| closed[i].load(std::sync::atomic::Ordering::SeqCst);
        // 0 answers; 2 answered and is idle again, after 1 (which never asked): 1 goes first
        let _answering = open[0].slot().busy();
        std::thread::sleep(Duration::from_millis(5));
        drop(open[2].slot().busy());
        let fourth = limit.admit().expect("room made");
        assert!(is_closed(1) && !is_closed(0) && !is_closed(2));
        assert_eq!(limit.open(), 4, "the closed one counts until it is gone");
        // 1 is being closed, not chosen again: 2 is next
        let fifth = limit.admit().expect("room made");
        assert!(is_closed(2) && !is_closed(0));
        // every other connection answers (or is being closed): the next is refused
        let _busy = (fourth.slot().busy(), fifth.slot().busy());
        assert!(limit.admit().is_none(), "no idle connection to close");
        drop(open);
        assert_eq!(limit.open(), 2);
        assert!(limit.admit().is_some(), "places freed");
    }

    #[test]
    fn connections_that_never_completed_a_request_go_first_then_busy_ones_that_wait() {
        let limit = ConnectionLimit::new(4, "Postgres");
        let open: Vec<Open> = (0..4).map(|_| limit.admit().expect("a place")).collect();
        let slot = |i: usize| open[i].slot();
        // 0: an established session, idle the longest; 1: never completed its startup;
        // 2: busy, its writes waiting for a client that does not read; 3: upgraded
        slot(0).establish();
        std::thread::sleep(Duration::from_millis(5));
        slot(2).establish();
        let _writing = slot(2).busy();
        slot(2).waiting_for_client(true);
        slot(3).upgrade();
        let evicted = |i: usize| slot(i).evicted.load(std::sync::atomic::Ordering::SeqCst);
        // (each new one answers at once, as a client's first request does)
        let a = limit.admit().expect("room made");
        let _a = a.slot().busy();
        assert!(
            evicted(1) && !evicted(0),
            "the one that never started goes first"
        );
        let b = limit.admit().expect("room made");
        let _b = b.slot().busy();
        assert!(
            evicted(0) && !evicted(2),
            "then the established one idle the longest"
        );
        let c = limit.admit().expect("room made");
        assert!(evicted(2), "then the one whose client does not read");
        // c waited for its client, and then its client took what was written
        let _c = c.slot().busy();
        c.slot().waiting_for_client(true);
        c.slot().waiting_for_client(false);
        assert!(limit.admit().is_none(), "every other one answers");
        assert!(
            !evicted(3),
            "an upgraded connection is never closed for room"
        );
    }

    #[tokio::test]
    async fn an_evicted_connection_is_woken_even_if_it_waits_later() {
        let limit = ConnectionLimit::new(1, "Postgres");
        let first = limit.admit().unwrap();
        let _second = limit.admit().expect("the idle one makes room");
        // the eviction came before the connection waited for it: the wait ends at once
        tokio::time::timeout(Duration::from_secs(1), first.slot().evicted())
            .await
            .expect("woken");
    }

    fn limits(bytes: usize, terms: usize) -> QueryLimits {
        QueryLimits {
            max_sql_bytes: bytes,
            max_sql_terms: terms,
            ..QueryLimits::default()
        }
    }

    #[test]
    fn long_text_is_refused_by_its_length() {
        let sql = format!("SELECT '{}'", "x".repeat(100));
        assert_eq!(
            check_text(&sql, &limits(50, 100)),
            Err(TextLimit::TooLong { len: 109, max: 50 })
        );
        assert_eq!(check_text(&sql, &limits(200, 100)), Ok(()));
    }

    #[test]
    fn operator_chains_count_their_operators_and_lists_do_not() {
        let chain = format!("SELECT 1{}", "+1".repeat(600));
        assert_eq!(
            check_text(&chain, &limits(1 << 20, 599)),
            Err(TextLimit::TooManyTerms { max: 599 })
        );
        assert_eq!(check_text(&chain, &limits(1 << 20, 600)), Ok(()));
        let ors = (0..1000)
            .map(|i| format!("k = 'a{i}'"))
            .collect::<Vec<_>>()
            .join(" OR ");
        // 1,000 `=` and 999 OR
        let sql = format!("SELECT k FROM t WHERE {ors}");
        assert!(check_text(&sql, &limits(1 << 20, 1998)).is_err());
        assert_eq!(check_text(&sql, &limits(1 << 20, 1999)), Ok(()));
        let list = (0..100_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!("SELECT * FROM t WHERE k IN ({list})");
        assert_eq!(check_text(&sql, &limits(1 << 20, 10)), Ok(()));
    }

    #[test]
    fn operators_inside_strings_and_names_are_not_counted() {
        let sql = "SELECT \"a+b\", 'x OR y AND z' FROM t -- + + +";
        assert_eq!(check_text(sql, &limits(1 << 20, 0)), Ok(()));
    }

    #[test]
    fn text_that_does_not_tokenize_is_left_to_the_parser() {
        assert_eq!(check_text("SELECT 'unterminated", &limits(100, 0)), Ok(()));
    }
}
