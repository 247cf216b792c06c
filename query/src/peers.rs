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

/// The schema metadata of a worker's own rows (an Arrow IPC answer) that names the
/// partitions whose state they are ([`owned_metadata`]): a query over the pool adds the
/// workers' rows only when every partition is held by exactly one of the answers
/// ([`check_coverage`]). In the body, not a header: a proxy between workers may cap
/// headers at a few KiB, and a pool may have thousands of partitions.
pub const OWNED_METADATA: &str = "weir.owned";

/// The partitions (`source`, `partition`) whose state one worker's answer holds.
pub type Owned = weir_engine::live::Owned;

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
    /// The answers do not hold every partition exactly once: one is moving between workers,
    /// or its worker is gone and no other has taken it over yet.
    #[error("{0}")]
    Uncovered(String),
    /// A partition is held by no worker that answers, and this worker has ended (it read
    /// its partitions to their end and keeps serving them): asking again will not help.
    #[error("{0}")]
    Ended(String),
    /// It did not answer, or answered something else.
    #[error("worker `{worker}` of the pool ({addr}) did not answer for table {table}: {cause}; its partitions may be moving to other workers, try again")]
    Unanswered {
        worker: String,
        addr: String,
        table: String,
        cause: String,
    },
}

/// What one worker answered: its rows and the partitions they hold (`None` from a worker of
/// an earlier version), or whether it refused as being between two jobs.
enum Answered {
    Rows(Vec<RecordBatch>, Option<Owned>),
    Rebalancing,
}

/// Another worker's rows of a table, and the partitions whose state they are (`None`: a
/// worker of an earlier version, which does not say).
#[derive(Debug)]
pub struct PeerRows {
    pub worker: String,
    pub rows: Vec<RecordBatch>,
    pub owned: Option<Owned>,
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
    pub async fn fetch(&self, table: &str) -> Result<Vec<PeerRows>, PeerError> {
        let sql = format!("SELECT * FROM \"{}\"", table.replace('"', "\"\""));
        let asks = (self.addresses)().into_iter().map(|(worker, addr)| {
            let sql = sql.clone();
            async move {
                match self.fetch_from(&addr, &sql).await {
                    Ok(Answered::Rows(rows, owned)) => Ok(PeerRows {
                        worker,
                        rows,
                        owned,
                    }),
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
        futures::future::join_all(asks).await.into_iter().collect()
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
        let owned = match reader.schema().metadata().get(OWNED_METADATA) {
            Some(v) => Some(parse_owned(v).map_err(|e| format!("its {OWNED_METADATA}: {e}"))?),
            None => None,
        };
        reader
            .collect::<Result<Vec<_>, _>>()
            .map(|rows| Answered::Rows(rows, owned))
            .map_err(|e| e.to_string())
    }
}

/// `owned` as the schema metadata of an answer: [`OWNED_METADATA`] =
/// JSON `{"source": ["partition", ...]}`.
pub fn owned_metadata(owned: &Owned) -> std::collections::HashMap<String, String> {
    let mut by_source: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (source, partition) in owned {
        by_source.entry(source).or_default().push(partition);
    }
    for partitions in by_source.values_mut() {
        partitions.sort_unstable();
    }
    let json = serde_json::to_string(&by_source).unwrap_or_default();
    [(OWNED_METADATA.to_string(), json)].into_iter().collect()
}

/// The partitions an [`OWNED_METADATA`] value names.
fn parse_owned(value: &str) -> Result<Owned, String> {
    let by_source: std::collections::BTreeMap<String, Vec<String>> =
        serde_json::from_str(value).map_err(|e| e.to_string())?;
    Ok(by_source
        .into_iter()
        .flat_map(|(s, ps)| ps.into_iter().map(move |p| (s.clone(), p)))
        .collect())
}

/// Checks that the answers of a query over the pool hold the state of every partition of
/// `partitions` (the job's, every source's) exactly once: this worker's (`local`) and the
/// others' (`peers`). An owned partition covers its lanes (`partition/lane`). Answers of
/// workers of an earlier version, which do not say what they hold, are not checked. With
/// `ended` (this worker's state is final), a partition nobody holds will not come back.
pub fn check_coverage<'a>(
    partitions: impl IntoIterator<Item = (&'a str, &'a str)>,
    local: Option<&Owned>,
    peers: &[PeerRows],
    ended: bool,
) -> Result<(), PeerError> {
    let Some(local) = local else {
        return Ok(());
    };
    let mut holders: std::collections::HashMap<(&str, &str), Vec<&str>> = Default::default();
    let mut answers = vec![("this worker", local)];
    for p in peers {
        match &p.owned {
            Some(owned) => answers.push((p.worker.as_str(), owned)),
            None => return Ok(()),
        }
    }
    for (worker, owned) in answers {
        for (source, partition) in owned {
            holders
                .entry((source.as_str(), partition.as_str()))
                .or_default()
                .push(worker);
        }
    }
    for (source, partition) in partitions {
        // the partition itself, or the owned partition whose lane it is
        let mut held: Vec<&str> = Vec::new();
        let mut key = partition;
        loop {
            if let Some(w) = holders.get(&(source, key)) {
                held.extend(w);
            }
            match key.rsplit_once('/') {
                Some((parent, _)) => key = parent,
                None => break,
            }
        }
        match held.as_slice() {
            [_] => {}
            [] if ended => {
                return Err(PeerError::Ended(format!(
                    "no worker still answering holds partition {partition} of source {source}: \
                     this worker read its own partitions to their end and answers for them \
                     only, and the worker that read that one has ended; query a pool whose \
                     workers all keep serving (`--keep-serving`)"
                )))
            }
            [] => {
                return Err(PeerError::Uncovered(format!(
                    "no worker that answered holds partition {partition} of source {source}"
                )))
            }
            [first, second, ..] => {
                return Err(PeerError::Uncovered(format!(
                    "partition {partition} of source {source} is held by two workers that \
                     answered, `{first}` and `{second}`"
                )))
            }
        }
    }
    Ok(())
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

    fn ask(addr: String) -> Result<Vec<PeerRows>, PeerError> {
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

    fn owned(pairs: &[(&str, &str)]) -> Owned {
        pairs
            .iter()
            .map(|(s, p)| (s.to_string(), p.to_string()))
            .collect()
    }

    fn answer(worker: &str, pairs: Option<&[(&str, &str)]>) -> PeerRows {
        PeerRows {
            worker: worker.into(),
            rows: Vec::new(),
            owned: pairs.map(owned),
        }
    }

    #[test]
    fn the_owned_partitions_travel_in_the_answer_s_schema() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field, Schema};
        let o = owned(&[("évènements", "t/1"), ("events", "t/0"), ("events", "t/10")]);
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1]))])
            .unwrap();
        let result = crate::engine::QueryResult {
            schema,
            batches: vec![batch],
        };
        let body =
            crate::encode::arrow_stream_with(&result, 1 << 20, Some(&owned_metadata(&o))).unwrap();
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None).unwrap();
        let got = parse_owned(&reader.schema().metadata()[OWNED_METADATA]).unwrap();
        assert_eq!(got, o);
        let rows: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(rows[0].num_rows(), 1);
        assert!(parse_owned("[1, 2]").is_err());
    }

    #[test]
    fn a_pool_answer_must_hold_every_partition_exactly_once() {
        let all = [("e", "t/0"), ("e", "t/1"), ("e", "t/2")];
        let local = owned(&[("e", "t/0")]);
        let whole = [answer("b", Some(&[("e", "t/1"), ("e", "t/2")]))];
        assert!(check_coverage(all, Some(&local), &whole, false).is_ok());
        // a worker gone, its partitions not taken over yet: the sum would miss them
        let missing = [answer("b", Some(&[("e", "t/1")]))];
        let e = check_coverage(all, Some(&local), &missing, false).unwrap_err();
        assert!(e.to_string().contains("partition t/2 of source e"), "{e}");
        // a worker still answering from the state of a partition another one took over
        let twice = [
            answer("b", Some(&[("e", "t/1"), ("e", "t/2")])),
            answer("c", Some(&[("e", "t/2")])),
        ];
        let e = check_coverage(all, Some(&local), &twice, false).unwrap_err();
        assert!(e.to_string().contains("`b` and `c`"), "{e}");
        // lanes of an owned partition (a repartitioned topic) are held by its owner
        let lanes = [("e", "r/0/0"), ("e", "r/0/1"), ("e", "r/1/0")];
        let local = owned(&[("e", "r/0")]);
        assert!(check_coverage(
            lanes,
            Some(&local),
            &[answer("b", Some(&[("e", "r/1")]))],
            false
        )
        .is_ok());
        assert!(check_coverage(lanes, Some(&local), &[answer("b", Some(&[]))], false).is_err());
        // outside a pool, or a worker of an earlier version that does not say: unchecked
        assert!(check_coverage(all, None, &missing, false).is_ok());
        assert!(check_coverage(all, Some(&local), &[answer("b", None)], false).is_ok());
        // a worker that ended alone: the partition will not come back, asking again is vain
        let ended = check_coverage(all, Some(&local), &missing, true).unwrap_err();
        assert!(matches!(ended, PeerError::Ended(_)), "{ended}");
    }
}
