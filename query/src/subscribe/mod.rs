//! Live subscriptions: `GET /subscribe?table=NAME` streams a window's or view's changes over
//! a WebSocket or Server-Sent Events, on the HTTP endpoint and token of `/sql`.
//!
//! A hub (one thread, [`hub`]) notices every snapshot the engine publishes (every
//! `serve.refresh`) and, for each table that has subscribers (or had some within a minute),
//! computes the changes
//! from the previous snapshot ([`diff`]) into the table's change log ([`log`]): view keys
//! new or changed (`upsert`) and gone (`delete`), window rows emitted (`insert`), open window
//! rows new or changed (`update`). Each change gets the table's next *position*, and its
//! message is encoded once for every subscriber.
//!
//! **Positions.** A run numbers the changes of each table from `1000 × its start time (Unix
//! ms) + 1` on, one by one. They stay below 2^53 (exact as JavaScript numbers) until the
//! year 2255, and a run's positions start above every position of an earlier run of the same
//! process as long as that run gave fewer than 1,000 changes per millisecond of its life
//! (a million a second), so a position from before a restart is refused as unknown or
//! expired instead of resuming at a wrong place.
//!
//! **Retention.** The log keeps the newest `subscription_retain` changes and at most
//! `subscription_retain_mb` MiB of them per table (the newest snapshot's changes always); a
//! client resumes with `from=P` while every change after `P` is kept, else it gets HTTP 410
//! and must subscribe again with `snapshot=true`.
//!
//! **Backpressure.** A subscriber reads the shared log at its own pace; the hub never waits
//! for it. One that, when a snapshot's changes are appended, has still not read more than
//! `subscription_buffer` changes of the snapshots before (it always gets one refresh interval
//! to read the newest snapshot's changes, however many), or whose unread changes left the log,
//! gets a final `{"error":{"code":"fell_behind",...}}` message, and its connection is cut
//! [`CUT_AFTER`] later if it has not read it by then.

#![warn(missing_docs)]

mod conn;
pub mod diff;
mod filter;
pub mod hub;
pub mod log;
mod route;
mod sse;
mod stats;
mod ws;

use std::time::Duration;

use axum::http::StatusCode;

pub use conn::{Listener, Switch, Switches};
pub use hub::{Hub, Subscription};
pub use route::handler;
pub use stats::SubscriptionStats;

/// How long a subscriber that fell behind has to read its final message before its
/// connection is cut.
pub const CUT_AFTER: Duration = Duration::from_secs(1);

/// How often an idle subscription sends a heartbeat (an SSE comment, a WebSocket ping).
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The limits of subscriptions (`serve:` in a pipeline file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeLimits {
    /// Subscriptions open at once, in all (`max_subscriptions`).
    pub max_subscriptions: usize,
    /// Subscriptions open at once per token, or per client address when no token is set
    /// (`max_subscriptions_per_token`).
    pub max_per_client: usize,
    /// Changes of earlier snapshots a subscriber may leave unread when a snapshot's changes
    /// are appended, before it is dropped (`subscription_buffer`).
    pub buffer: usize,
    /// Changes kept per table for subscribers and resumes (`subscription_retain`).
    pub retain_changes: usize,
    /// Bytes of changes kept per table (`subscription_retain_mb`).
    pub retain_bytes: usize,
}

impl Default for SubscribeLimits {
    fn default() -> Self {
        SubscribeLimits {
            max_subscriptions: 1000,
            max_per_client: 1000,
            buffer: 10_000,
            retain_changes: 100_000,
            retain_bytes: 64 << 20,
        }
    }
}

/// Why a subscription was refused or ended.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The request's parameters are wrong.
    #[error("{0}")]
    BadRequest(String),
    /// No window or view has this name.
    #[error("no window or view is named `{name}`; the tables to subscribe to: {tables}")]
    UnknownTable {
        /// The name asked for.
        name: String,
        /// The tables there are, comma-separated.
        tables: String,
    },
    /// The `where` predicate does not parse or plan (the database's message).
    #[error("where: {0}")]
    Where(String),
    /// The `where` text is over `max_sql_bytes` or `max_sql_terms`.
    #[error("where: {0}")]
    TooComplex(#[from] crate::limits::TextLimit),
    #[error(
        "too many subscriptions ({max} open, serve.max_subscriptions); try again later or \
         raise the limit"
    )]
    /// `max_subscriptions` are open.
    TooMany {
        /// The limit.
        max: usize,
    },
    #[error(
        "too many subscriptions of this client ({max} open with one token, or from one \
         address without a token: serve.max_subscriptions_per_token)"
    )]
    /// `max_subscriptions_per_token` of this client are open.
    TooManyForClient {
        /// The limit.
        max: usize,
    },
    #[error(
        "position {position} has expired: changes after it are no longer kept (the oldest \
         position to resume from is {oldest}; serve.subscription_retain); subscribe again \
         with snapshot=true"
    )]
    /// Changes after the position were dropped from the log.
    Expired {
        /// The position asked for.
        position: u64,
        /// The oldest position a client may resume from.
        oldest: u64,
    },
    #[error(
        "position {position} was not given by this run (its newest is {head}; positions of a \
         run before a restart are not kept); subscribe again with snapshot=true"
    )]
    /// The position is not one of this run's.
    Unknown {
        /// The position asked for.
        position: u64,
        /// The table's newest position.
        head: u64,
    },
    /// The snapshot is over `max_result_rows` or `max_result_mb`.
    #[error("{0}")]
    SnapshotTooLarge(String),
    /// The job restored state from a checkpoint and has not published it yet: a snapshot
    /// would be empty, and the restored rows would follow as if they were changes.
    #[error("the pipeline is starting: the state it restored from its checkpoint is not published yet; subscribe again in a moment")]
    Starting,
    /// A bug or an Arrow failure.
    #[error("{0}")]
    Internal(String),
}

impl SubscribeError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            SubscribeError::BadRequest(_)
            | SubscribeError::Where(_)
            | SubscribeError::TooComplex(_) => StatusCode::BAD_REQUEST,
            SubscribeError::UnknownTable { .. } => StatusCode::NOT_FOUND,
            SubscribeError::TooMany { .. } | SubscribeError::Starting => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            SubscribeError::TooManyForClient { .. } => StatusCode::TOO_MANY_REQUESTS,
            SubscribeError::Expired { .. } | SubscribeError::Unknown { .. } => StatusCode::GONE,
            SubscribeError::SnapshotTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            SubscribeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error.code` of the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            SubscribeError::BadRequest(_) => "bad_request",
            SubscribeError::UnknownTable { .. } => "unknown_table",
            SubscribeError::Where(_) => "sql_error",
            SubscribeError::TooComplex(_) => "statement_too_complex",
            SubscribeError::TooMany { .. } => "too_many_subscriptions",
            SubscribeError::TooManyForClient { .. } => "too_many_subscriptions_per_token",
            SubscribeError::Expired { .. } => "position_expired",
            SubscribeError::Unknown { .. } => "position_unknown",
            SubscribeError::SnapshotTooLarge(_) => "result_too_large",
            SubscribeError::Starting => "starting",
            SubscribeError::Internal(_) => "internal",
        }
    }
}

/// What a client asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The window or view.
    pub table: String,
    /// A SQL predicate on the table's columns.
    pub filter: Option<String>,
    /// Send the current rows first.
    pub snapshot: bool,
    /// Resume after this position.
    pub from: Option<u64>,
    /// Windows: also send updates of open windows (and open rows in the snapshot).
    pub open: bool,
}

impl Request {
    /// The request of the query parameters; `last_event_id` (the SSE `Last-Event-ID` header
    /// a reconnecting `EventSource` sends) resumes, in place of `snapshot`.
    pub fn parse<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
        last_event_id: Option<&str>,
    ) -> Result<Self, SubscribeError> {
        let bad = |m: String| SubscribeError::BadRequest(m);
        let flag = |k: &str, v: &str| match v {
            "" | "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(bad(format!("{k}={v}: give true or false"))),
        };
        let position = |k: &str, v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| bad(format!("{k}={v}: a position is a whole number")))
        };
        let mut r = Request::default();
        for (k, v) in params {
            match k {
                "table" => r.table = v.to_string(),
                "where" => r.filter = Some(v.to_string()).filter(|w| !w.trim().is_empty()),
                "snapshot" => r.snapshot = flag(k, v)?,
                "open" => r.open = flag(k, v)?,
                "from" => r.from = Some(position(k, v)?),
                _ => {
                    return Err(bad(format!(
                        "unknown parameter `{k}` (table, where, snapshot, from, open)"
                    )))
                }
            }
        }
        if r.table.is_empty() {
            return Err(bad("give the table: /subscribe?table=NAME".into()));
        }
        if r.snapshot && r.from.is_some() {
            return Err(bad(
                "give snapshot=true (start from the current rows) or from=POSITION (resume), \
                 not both"
                    .into(),
            ));
        }
        if let (None, Some(id)) = (r.from, last_event_id) {
            r.from = Some(position("Last-Event-ID", id)?);
            r.snapshot = false;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_conflicts_are_refused() {
        let r = Request::parse(
            [("table", "v"), ("where", "n > 1"), ("snapshot", "true")],
            None,
        )
        .unwrap();
        assert_eq!(r.filter.as_deref(), Some("n > 1"));
        assert!(r.snapshot && !r.open && r.from.is_none());
        assert!(Request::parse([("where", "x")], None).is_err());
        assert!(Request::parse([("table", "v"), ("from", "-1")], None).is_err());
        assert!(
            Request::parse([("table", "v"), ("snapshot", "true"), ("from", "5")], None).is_err()
        );
        assert!(Request::parse([("table", "v"), ("bogus", "1")], None).is_err());
        // a reconnecting EventSource resumes where it was
        let r = Request::parse([("table", "v"), ("snapshot", "true")], Some("77")).unwrap();
        assert_eq!((r.from, r.snapshot), (Some(77), false));
    }

    #[test]
    fn errors_have_their_status() {
        assert_eq!(
            SubscribeError::Expired {
                position: 1,
                oldest: 2
            }
            .status(),
            StatusCode::GONE
        );
        assert_eq!(
            SubscribeError::TooMany { max: 1 }.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            SubscribeError::TooManyForClient { max: 1 }.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}
