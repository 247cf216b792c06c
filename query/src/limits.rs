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
/// until it closes.
#[derive(Debug)]
pub struct ConnectionLimit {
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
    endpoint: &'static str,
    /// When the last refusal was logged (one warning a second at most).
    logged: std::sync::Mutex<Option<std::time::Instant>>,
}

/// An open connection of a [`ConnectionLimit`], counted until dropped.
#[derive(Debug)]
pub struct Open(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl ConnectionLimit {
    /// At most `max` connections of `endpoint` (`HTTP`, `Postgres`, for the log).
    pub fn new(max: usize, endpoint: &'static str) -> Self {
        ConnectionLimit {
            open: Default::default(),
            max: max.max(1),
            endpoint,
            logged: std::sync::Mutex::new(None),
        }
    }

    /// A place for one more connection, or `None` (logged) when `max` are open: the caller
    /// closes it.
    pub fn admit(&self) -> Option<Open> {
        use std::sync::atomic::Ordering;
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if taken {
            return Some(Open(self.open.clone()));
        }
        if let Ok(mut last) = self.logged.lock() {
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *last = Some(std::time::Instant::now());
                tracing::warn!(
                    endpoint = self.endpoint,
                    max = self.max,
                    "a connection over serve.max_connections is closed"
                );
            }
        }
        None
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
