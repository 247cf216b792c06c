//! SQL over a worker pool: the other workers whose live tables a query reads too.
//!
//! Every worker of a pool holds the state of the partitions it owns; a query to any worker
//! reads its own snapshot and asks every other live worker for its rows of the tables the
//! query reads (`POST /sql` with [`SCOPE_HEADER`]` = local`, as an Arrow IPC stream), so that
//! DataFusion runs the query over the union: a view's keys are spread over the workers, each
//! key in one, so the union is the whole view.

use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;

use crate::http::ARROW_STREAM;

/// The header that asks a worker for its own rows only (no fan-out).
pub const SCOPE_HEADER: &str = "x-weir-scope";

/// The addresses (`host:port` of their HTTP endpoints) of the other live workers.
pub type PeerAddresses = Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>;

/// The other workers of a pool.
pub struct Peers {
    /// (worker id, HTTP address) of every other live worker.
    addresses: PeerAddresses,
    token: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

/// Why another worker gave no rows.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// It is between two jobs (a rebalance): asking again in a moment succeeds.
    #[error("worker `{worker}` of the pool ({addr}) is between two jobs (partitions are moving between workers); try again in a moment")]
    Rebalancing { worker: String, addr: String },
    /// It did not answer, or answered something else.
    #[error("worker `{worker}` of the pool ({addr}) did not answer for table {table}: {cause}; its partitions may be moving to other workers, try again")]
    Unanswered {
        worker: String,
        addr: String,
        table: String,
        cause: String,
    },
}

/// What one worker answered: its rows, or whether it refused as being between two jobs.
enum Answered {
    Rows(Vec<RecordBatch>),
    Rebalancing,
}

/// How long a worker waits for another's rows.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

impl Peers {
    /// Peers found by `addresses`, asked with `token` (the pool's shared `serve.token`).
    pub fn new(addresses: PeerAddresses, token: Option<String>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(PEER_TIMEOUT).build()?;
        Ok(Peers {
            addresses,
            token: token.filter(|t| !t.is_empty()),
            client,
        })
    }

    /// (worker id, HTTP address) of every other live worker.
    pub fn members(&self) -> Vec<(String, String)> {
        (self.addresses)()
    }

    /// Every other worker's rows of `table` (their own state only), or why a worker did not
    /// give them.
    pub async fn fetch(&self, table: &str) -> Result<Vec<RecordBatch>, PeerError> {
        let sql = format!("SELECT * FROM \"{}\"", table.replace('"', "\"\""));
        let asks = (self.addresses)().into_iter().map(|(worker, addr)| {
            let sql = sql.clone();
            async move {
                match self.fetch_from(&addr, &sql).await {
                    Ok(Answered::Rows(rows)) => Ok(rows),
                    Ok(Answered::Rebalancing) => Err(PeerError::Rebalancing { worker, addr }),
                    Err(cause) => Err(PeerError::Unanswered {
                        worker,
                        addr,
                        table: table.to_string(),
                        cause,
                    }),
                }
            }
        });
        let mut out = Vec::new();
        for rows in futures::future::join_all(asks).await {
            out.extend(rows?);
        }
        Ok(out)
    }

    async fn fetch_from(&self, addr: &str, sql: &str) -> Result<Answered, String> {
        let mut req = self
            .client
            .post(format!("http://{addr}/sql"))
            .header("accept", ARROW_STREAM)
            .header("content-type", "application/json")
            .header(SCOPE_HEADER, "local")
            .body(serde_json::json!({ "query": sql }).to_string());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            // the error body's code says what it is (`{"error": {"code": ...}}`)
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
            // a worker starting restores partitions it was just given: a rebalance too
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                && matches!(code.as_deref(), Some("rebalancing" | "starting"))
            {
                return Ok(Answered::Rebalancing);
            }
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
            .map_err(|e| e.to_string())?;
        reader
            .collect::<Result<Vec<_>, _>>()
            .map(Answered::Rows)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A worker at a local port answering one request with `status` and `body`.
    fn answering(status: &str, body: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let status = status.to_string();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes());
        });
        addr
    }

    fn ask(addr: String) -> Result<Vec<RecordBatch>, PeerError> {
        let peers = Peers::new(Arc::new(move || vec![("w2".into(), addr.clone())]), None).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(peers.fetch("service_status"))
    }

    #[test]
    fn a_worker_between_two_jobs_is_told_apart_from_one_that_does_not_answer() {
        let body = r#"{"error": {"code": "rebalancing", "message": "between two jobs"}}"#;
        let got = ask(answering("503 Service Unavailable", body));
        assert!(matches!(got, Err(PeerError::Rebalancing { .. })), "{got:?}");
        // a worker starting restores partitions it was just given: a rebalance too
        let body = r#"{"error": {"code": "starting", "message": "restoring"}}"#;
        let got = ask(answering("503 Service Unavailable", body));
        assert!(matches!(got, Err(PeerError::Rebalancing { .. })), "{got:?}");
        let body = r#"{"error": {"code": "busy", "message": "too many"}}"#;
        let got = ask(answering("503 Service Unavailable", body));
        assert!(matches!(got, Err(PeerError::Unanswered { .. })), "{got:?}");
    }
}
