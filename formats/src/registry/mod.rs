//! The Confluent schema registry: its HTTP client ([`client`], writer schemas by id and
//! registering a subject's schema, shared by the Kafka source and sink) and the writer schemas
//! of Avro records by id, fetched once and cached in a bounded cache; an id the registry
//! refused is asked again after [`MISS_TTL`]; an unreachable registry is waited for (see
//! [`SchemaRegistry::schema`]).

pub mod client;

pub use client::{redact_url, redact_urls, RegistryClient, RegistryError, TOKEN_ENV};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::avro::AvroType;

/// Writer schemas kept at most (ids are whatever producers send: bounded).
pub const MAX_CACHED: usize = 1000;

/// How long an id the registry refused (or whose schema does not parse) stays refused before
/// it is asked again.
pub const MISS_TTL: Duration = Duration::from_secs(60);

/// The first wait before asking an unreachable registry again; it doubles up to
/// [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// The longest wait between two attempts at an unreachable registry.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A cached answer: a schema, or why the id is bad, and when it was asked.
type Entry = (Result<Arc<AvroType>, String>, Instant);

/// Writer schemas from a registry.
pub struct SchemaRegistry {
    client: RegistryClient,
    cache: Mutex<HashMap<u32, Entry>>,
    /// Why records wait, while the registry cannot be reached (for `/ready`).
    waiting: Arc<Mutex<Option<String>>>,
}

impl SchemaRegistry {
    /// A client of the registry at `url` (see [`RegistryClient::new`]).
    pub fn new(url: &str) -> Result<Self, RegistryError> {
        Ok(SchemaRegistry {
            client: RegistryClient::new(url)?,
            cache: Mutex::new(HashMap::new()),
            waiting: Arc::new(Mutex::new(None)),
        })
    }

    /// Set, with the reason, while records wait for an unreachable registry.
    pub fn waiting(&self) -> Arc<Mutex<Option<String>>> {
        self.waiting.clone()
    }

    /// The writer schema with `id`. A refused id (or a schema that does not parse) is an
    /// error, remembered for [`MISS_TTL`]. An unreachable registry is not: the call waits,
    /// asking again with back-off ([`FIRST_BACKOFF`] doubling to [`MAX_BACKOFF`]), until it
    /// answers, so that the records of the batch are neither dead-lettered nor passed (their
    /// offsets are not committed or checkpointed meanwhile: the batch is not done); the
    /// reason is in [`Self::waiting`] and logged.
    pub fn schema(&self, id: u32) -> Result<Arc<AvroType>, String> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.lookup(id) {
                Err(e) if e.is_retryable() => {
                    let why = e.to_string();
                    tracing::warn!(
                        schema_id = id,
                        retry_in_ms = backoff.as_millis() as u64,
                        "records wait for the schema registry: {why}"
                    );
                    if let Ok(mut w) = self.waiting.lock() {
                        *w = Some(why);
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                other => {
                    if let Ok(mut w) = self.waiting.lock() {
                        *w = None;
                    }
                    return other.map_err(|e| e.to_string());
                }
            }
        }
    }

    /// One lookup: the cache, else the registry.
    fn lookup(&self, id: u32) -> Result<Arc<AvroType>, LookupError> {
        if let Some((r, at)) = self.cache.lock().ok().and_then(|c| c.get(&id).cloned()) {
            if r.is_ok() || at.elapsed() < MISS_TTL {
                return r.map_err(LookupError::Bad);
            }
        }
        let result = match self.client.schema_text(id) {
            Ok(text) => AvroType::parse(&text)
                .map(Arc::new)
                .map_err(|e| format!("schema registry {}: schema {id}: {e}", self.client.url())),
            Err(e) if e.is_retryable() => return Err(LookupError::Registry(e)),
            Err(e) => Err(e.to_string()),
        };
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= MAX_CACHED && !c.contains_key(&id) {
                // make room: a refused id first, else the oldest entry
                let victim = c
                    .iter()
                    .min_by_key(|(_, (r, at))| (r.is_ok(), *at))
                    .map(|(k, _)| *k);
                if let Some(k) = victim {
                    c.remove(&k);
                }
            }
            c.insert(id, (result.clone(), Instant::now()));
        }
        result.map_err(LookupError::Bad)
    }
}

/// Why a lookup failed.
enum LookupError {
    /// The registry was not reached: ask again later.
    Registry(RegistryError),
    /// The id is bad (refused, or its schema does not parse).
    Bad(String),
}

impl LookupError {
    fn is_retryable(&self) -> bool {
        matches!(self, LookupError::Registry(_))
    }
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookupError::Registry(e) => write!(f, "{e}"),
            LookupError::Bad(e) => f.write_str(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serves one response per connection (the client's test server).
    fn serve(responses: Vec<&'static str>) -> u16 {
        super::client::tests::serve(responses).0
    }

    #[test]
    fn fetches_once_dechunks_and_explains_errors() {
        let port = serve(vec![
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n{\"schema\":\"\\\"long\r\n4\r\n\\\"\"}\r\n0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 20\r\n\r\n{\"error_code\":40403}",
        ]);
        let r = SchemaRegistry::new(&format!("http://127.0.0.1:{port}/")).unwrap();
        let first = r.schema(1);
        assert!(matches!(first.as_deref(), Ok(AvroType::Long)), "{first:?}");
        // cached: the server would not answer a second time
        assert!(matches!(*r.schema(1).unwrap(), AvroType::Long));
        let e = r.schema(2).unwrap_err();
        assert!(e.contains("404") && e.contains("40403"), "{e}");
        // a refused id is remembered (the server would not answer again)
        assert_eq!(r.schema(2).unwrap_err(), e);
        assert!(SchemaRegistry::new("ftp://x").is_err());
    }

    /// An unreachable registry is waited for (with back-off, the reason shown), not turned
    /// into bad records: once it answers, the record decodes.
    #[test]
    fn an_unreachable_registry_is_waited_for_not_a_bad_record() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let r = Arc::new(SchemaRegistry::new(&format!("http://u:pw@127.0.0.1:{port}")).unwrap());
        let waiting = r.waiting();
        let asking = {
            let r = r.clone();
            std::thread::spawn(move || r.schema(1).map(|t| matches!(*t, AvroType::Long)))
        };
        let started = Instant::now();
        let why = loop {
            if let Some(w) = waiting.lock().unwrap().clone() {
                break w;
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(why.contains("cannot reach"), "{why}");
        assert!(!why.contains("pw"), "{why}");
        // the registry comes up
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 21\r\n\r\n{\"schema\":\"\\\"long\\\"\"}",
            )
            .unwrap();
        });
        assert_eq!(asking.join().unwrap(), Ok(true));
        assert!(waiting.lock().unwrap().is_none());
    }

    /// Refused credentials and a page that is not a registry's answer (a proxy's login page)
    /// say nothing of the schema: records wait for them, and decode once the registry
    /// answers, none dead-lettered.
    #[test]
    fn refused_credentials_and_a_foreign_page_are_waited_for_not_bad_records() {
        let port = serve(vec![
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}",
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n{}",
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n<html></html>",
            "HTTP/1.1 200 OK\r\nContent-Length: 21\r\n\r\n{\"schema\":\"\\\"long\\\"\"}",
        ]);
        let r = SchemaRegistry::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let started = Instant::now();
        let t = r.schema(1).expect("the schema, once the registry answers");
        assert!(matches!(*t, AvroType::Long));
        // three waits (0.2 + 0.4 + 0.8 s) at least
        assert!(
            started.elapsed() >= FIRST_BACKOFF * 7,
            "{:?}",
            started.elapsed()
        );
    }

    /// A 403 whose registry error code denies the subject to these credentials (role-based
    /// access, 40301) refuses that id for good: its records are bad, the others go on.
    #[test]
    fn a_subject_denied_to_the_credentials_refuses_its_id() {
        let port = serve(vec![
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 62\r\n\r\n{\"error_code\":40301,\"message\":\"User is denied operation Read\"}",
        ]);
        let r = SchemaRegistry::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let e = r.schema(1).unwrap_err();
        assert!(e.contains("403") && e.contains("40301"), "{e}");
    }
}
