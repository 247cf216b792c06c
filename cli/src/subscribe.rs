//! `weir subscribe`: follows a window's or view's changes over Server-Sent Events and prints
//! each message as one JSON line, until Ctrl-C or the server ends the subscription.

use std::io::{BufRead, BufReader, Write};

use clap::Args;

/// The arguments of `weir subscribe`.
#[derive(Args)]
pub struct SubscribeArgs {
    /// The window or view.
    table: String,
    /// Only rows matching this SQL predicate, e.g. "status <> 'HEALTHY'".
    #[arg(long = "where")]
    filter: Option<String>,
    /// Print the current rows first (one `snapshot` message).
    #[arg(long, conflicts_with = "from")]
    snapshot: bool,
    /// Resume after this position (from an earlier message's `position`).
    #[arg(long)]
    from: Option<u64>,
    /// Windows: also print updates of open windows.
    #[arg(long)]
    open: bool,
    /// The engine's HTTP endpoint (`serve.http`).
    #[arg(long, env = "WEIR_SQL_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Bearer token of the endpoint (`serve.token`).
    #[arg(long, env = "WEIR_SQL_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Why `weir subscribe` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The server refused the subscription: unknown table, bad `where`, expired position,
    /// limits (4xx, the user's to fix); or it could not take one (5xx: starting after a
    /// restore, too many subscriptions, after [`weir_query::client::UNAVAILABLE_PATIENCE`] of
    /// retries of a 503).
    #[error("{status}: {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The server ended the subscription with an error message (fell behind).
    #[error("the server ended the subscription: {0}")]
    Ended(String),
    #[error("cannot reach {url}: {error}; is `weir run` serving there (serve.http)?")]
    Unreachable { url: String, error: String },
    #[error("reading the subscription: {0}")]
    Io(#[from] std::io::Error),
}

impl SubscribeError {
    /// Whether the user must change something (rather than the server or network failing).
    pub fn is_user(&self) -> bool {
        matches!(self, SubscribeError::Refused { status, .. } if *status < 500)
    }
}

/// Runs the subscription, printing messages to stdout.
pub fn run(a: SubscribeArgs) -> Result<(), SubscribeError> {
    let url = format!("{}/subscribe", a.server.trim_end_matches('/'));
    let mut query: Vec<(&str, String)> = vec![("table", a.table.clone())];
    if let Some(w) = &a.filter {
        query.push(("where", w.clone()));
    }
    if a.snapshot {
        query.push(("snapshot", "true".into()));
    }
    if let Some(p) = a.from {
        query.push(("from", p.to_string()));
    }
    if a.open {
        query.push(("open", "true".into()));
    }
    let unreachable = |e: reqwest::Error| SubscribeError::Unreachable {
        url: url.clone(),
        error: e.to_string(),
    };
    let client = reqwest::blocking::Client::builder()
        // a subscription has no end; the server sends a heartbeat every 15 s
        .timeout(None)
        .build()
        .map_err(unreachable)?;
    // a 503 (starting, too many subscriptions) is asked again, as `weir sql` does
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(100);
    let resp = loop {
        let mut req = client
            .get(&url)
            .query(&query)
            .header("accept", "text/event-stream");
        if let Some(t) = &a.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().map_err(unreachable)?;
        let again = resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && started.elapsed() + pause < weir_query::client::UNAVAILABLE_PATIENCE;
        if !again {
            break resp;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_secs(2));
    };
    let status = resp.status();
    if !status.is_success() {
        let body: serde_json::Value = resp.json().unwrap_or_default();
        return Err(SubscribeError::Refused {
            status: status.as_u16(),
            code: body["error"]["code"]
                .as_str()
                .unwrap_or("error")
                .to_string(),
            message: body["error"]["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string(),
        });
    }
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(resp).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data:") else {
            // ids, heartbeats, event separators
            continue;
        };
        let data = data.trim_start();
        if let Err(e) = writeln!(out, "{data}").and_then(|()| out.flush()) {
            // a reader that went away (`weir subscribe v | head`) ends it quietly
            return match e.kind() {
                std::io::ErrorKind::BrokenPipe => Ok(()),
                _ => Err(e.into()),
            };
        }
        if data.starts_with("{\"error\"") {
            return Err(SubscribeError::Ended(data.to_string()));
        }
    }
    Ok(())
}
