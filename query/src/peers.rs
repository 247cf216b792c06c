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
    pub async fn fetch(&self, table: &str) -> Result<Vec<RecordBatch>, String> {
        let sql = format!("SELECT * FROM \"{}\"", table.replace('"', "\"\""));
        let asks = (self.addresses)().into_iter().map(|(worker, addr)| {
            let sql = sql.clone();
            async move {
                self.fetch_from(&addr, &sql).await.map_err(|e| {
                    format!(
                        "worker `{worker}` of the pool ({addr}) did not answer for table {table}: \
                         {e}; its partitions may be moving to other workers, try again"
                    )
                })
            }
        });
        let mut out = Vec::new();
        for rows in futures::future::join_all(asks).await {
            out.extend(rows?);
        }
        Ok(out)
    }

    async fn fetch_from(&self, addr: &str, sql: &str) -> Result<Vec<RecordBatch>, String> {
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
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
            .map_err(|e| e.to_string())?;
        reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    }
}
