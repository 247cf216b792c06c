//! A client of a Confluent-compatible schema registry over HTTP or HTTPS (reqwest, rustls with
//! the system's roots): writer schemas by id, and registering a subject's schema.
//!
//! Its calls block the calling thread (an Avro decoder's worker thread, the Kafka sink's
//! output thread) while the request runs on the process's I/O runtime
//! ([`weir_engine::io::runtime`]): the client starts no thread of its own. Never call it
//! from inside an asynchronous task (`block_on` would panic there).
//!
//! `schema_registry` is one URL or several separated by commas (`https://a:8081,https://b:8081`),
//! tried in order until one answers. Basic auth comes from a URL's user info
//! (`https://user:password@host`), a bearer token from the environment variable
//! [`TOKEN_ENV`]. Passwords and tokens are never part of an error or a log line: URLs are
//! shown without their user info.

use std::time::Duration;

/// The environment variable holding a bearer token for the registry (sent as
/// `Authorization: Bearer …` when set and no URL carries a user).
pub const TOKEN_ENV: &str = "WEIR_SCHEMA_REGISTRY_TOKEN";

/// Time to connect to one registry address.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time for one whole request to one registry address.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure of the schema registry, by kind: whether asking again later may help is told by
/// the kind, never by the message. A variant caused by another error keeps it as its
/// source and also prints it (as the client always did; a chain prints it once).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No address answered what was asked (no connection, a timeout, a 5xx answer, or a
    /// 4xx that is not about the request: credentials refused, a proxy, too many
    /// requests): retryable.
    #[error("schema registry {url}: cannot reach it: {message}")]
    Unreachable { url: String, message: String },
    /// The registry refused the request itself (400, 404 such as an unknown schema id, 409,
    /// 422): final.
    #[error("schema registry {url}: status {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// The answer is not what a registry answers.
    #[error("schema registry {url}: {message}")]
    Invalid { url: String, message: String },
    /// The answer to `what` (`schema 7`, ``registering `t-value` ``) is not JSON.
    #[error("schema registry {url}: {what}: not JSON: {source}")]
    NotJson {
        url: String,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The registry's URL is not usable.
    #[error("schema registry `{url}`: {message}")]
    Config { url: String, message: String },
    /// One of the registry's URLs (`address`, without user info) does not parse.
    #[error("schema registry `{url}`: {address} is not a URL: {source}")]
    BadUrl {
        url: String,
        address: String,
        #[source]
        source: url::ParseError,
    },
    /// The HTTP client could not be built (its TLS roots).
    #[error("schema registry `{url}`: cannot start an HTTP client: {source}")]
    HttpClient {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The process's I/O runtime, on which requests run, could not start (the operating
    /// system refused its threads): neither the user's to fix nor worth asking again.
    #[error("schema registry `{url}`: no runtime for its requests")]
    Runtime {
        url: String,
        #[source]
        source: weir_engine::io::IoRuntimeError,
    },
}

impl RegistryError {
    /// Whether the same request may succeed later: the registry was not reached, or what
    /// answered was not a registry's answer (a proxy's or a login page), which says nothing
    /// about the schema asked for.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RegistryError::Unreachable { .. }
                | RegistryError::NotJson { .. }
                | RegistryError::Invalid { .. }
        )
    }
}

/// One registry address.
#[derive(Clone)]
struct Endpoint {
    /// `scheme://host[:port][/prefix]`, without user info and trailing `/`.
    base: String,
    user: Option<(String, String)>,
}

/// A schema registry at one or several URLs.
#[derive(Clone)]
pub struct RegistryClient {
    endpoints: Vec<Endpoint>,
    bearer: Option<String>,
    http: reqwest::Client,
    /// The process's I/O runtime, which runs the requests.
    runtime: &'static tokio::runtime::Runtime,
    /// The URLs without user info, for messages.
    shown: String,
}

impl std::fmt::Debug for RegistryClient {
    /// The URLs without user info: no password or token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.shown)
            .field("bearer", &self.bearer.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Decodes `%XX` escapes (a URL's user info).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `url` without its user info (a password never shows).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        // not a URL: drop what could be user info
        Err(_) => match url.rsplit_once('@') {
            Some((_, host)) => host.to_string(),
            None => url.to_string(),
        },
    }
}

/// A list of URLs separated by commas, each without its user info.
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| redact_url(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

impl RegistryClient {
    /// A client of the registry at `urls` (`http(s)://[user:password@]host[:port][/prefix]`,
    /// several separated by commas); a bearer token is read from [`TOKEN_ENV`].
    pub fn new(urls: &str) -> Result<Self, RegistryError> {
        let bearer = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        Self::with_bearer(urls, bearer)
    }

    /// [`Self::new`] with the bearer token given.
    pub fn with_bearer(urls: &str, bearer: Option<String>) -> Result<Self, RegistryError> {
        let shown = redact_urls(urls);
        let config = |message: String| RegistryError::Config {
            url: shown.clone(),
            message,
        };
        let mut endpoints = Vec::new();
        for raw in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let u = url::Url::parse(raw).map_err(|source| RegistryError::BadUrl {
                url: shown.clone(),
                address: redact_url(raw),
                source,
            })?;
            if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                return Err(config(format!(
                    "{}: use http:// or https://host",
                    redact_url(raw)
                )));
            }
            let user = (!u.username().is_empty()).then(|| {
                (
                    percent_decode(u.username()),
                    percent_decode(u.password().unwrap_or("")),
                )
            });
            endpoints.push(Endpoint {
                base: redact_url(raw),
                user,
            });
        }
        if endpoints.is_empty() {
            return Err(config("no URL".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|source| RegistryError::HttpClient {
                url: shown.clone(),
                source,
            })?;
        let runtime = weir_engine::io::runtime().map_err(|source| RegistryError::Runtime {
            url: shown.clone(),
            source,
        })?;
        Ok(RegistryClient {
            endpoints,
            bearer,
            http,
            runtime,
            shown,
        })
    }

    /// The registry's URLs, without user info.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// The text of the schema with `id`.
    pub fn schema_text(&self, id: u32) -> Result<String, RegistryError> {
        let body = self.request(reqwest::Method::GET, &format!("/schemas/ids/{id}"), None)?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| self.not_json(format!("schema {id}"), e))?;
        v.get("schema")
            .and_then(|s| s.as_str())
            .map(String::from)
            .ok_or_else(|| self.invalid(format!("schema {id}: no `schema`")))
    }

    /// Registers `schema` (Avro schema text) under `subject`; returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let body = serde_json::json!({ "schema": schema }).to_string();
        let answer = self.request(
            reqwest::Method::POST,
            &format!("/subjects/{subject}/versions"),
            Some(body),
        )?;
        let v: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|e| self.not_json(format!("registering `{subject}`"), e))?;
        v.get("id")
            .and_then(|i| i.as_u64())
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| self.invalid(format!("registering `{subject}`: no `id` in {v}")))
    }

    fn not_json(&self, what: String, source: serde_json::Error) -> RegistryError {
        RegistryError::NotJson {
            url: self.shown.clone(),
            what,
            source,
        }
    }

    fn invalid(&self, message: String) -> RegistryError {
        RegistryError::Invalid {
            url: self.shown.clone(),
            message,
        }
    }

    /// Sends the request to each address in turn until one answers; a 4xx answer is final.
    /// Blocks the calling thread while the request runs on the I/O runtime.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Vec<u8>, RegistryError> {
        self.runtime.block_on(self.send(method, path, body))
    }

    /// [`Self::request`], on the runtime.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut failures = Vec::new();
        for e in &self.endpoints {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", e.base))
                .header(
                    "Accept",
                    "application/vnd.schemaregistry.v1+json, application/json",
                );
            if let Some(b) = &body {
                req = req
                    .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                    .body(b.clone());
            }
            req = match (&e.user, &self.bearer) {
                (Some((user, password)), _) => req.basic_auth(user, Some(password)),
                (None, Some(token)) => req.bearer_auth(token),
                (None, None) => req,
            };
            let answer = match req.send().await {
                Ok(r) => {
                    let status = r.status();
                    r.bytes().await.map(|b| (status, b))
                }
                Err(err) => Err(err),
            };
            match answer {
                Ok((status, bytes)) if status.is_success() => return Ok(bytes.to_vec()),
                Ok((status, bytes)) if refuses_the_request(status, &bytes) => {
                    return Err(RegistryError::Refused {
                        url: e.base.clone(),
                        status: status.as_u16(),
                        message: format!(
                            "{method} {path}: {}",
                            String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
                        ),
                    });
                }
                Ok((status, _)) => failures.push(format!("{}: status {status}", e.base)),
                // reqwest's errors name the URL it was given, which has no user info
                Err(err) => failures.push(format!("{}: {}", e.base, error_chain(&err))),
            }
        }
        Err(RegistryError::Unreachable {
            url: self.shown.clone(),
            message: failures.join("; "),
        })
    }
}

/// Whether an answer refuses the request itself, for good: a bad request, an unknown subject
/// or schema id, a conflict, a schema the registry does not take, or a 403 whose registry
/// error code (40301) denies this subject to these credentials (role-based access). Other 4xx
/// answers (401 and other 403s: the credentials, which an operator renews; 407, 408, 429: a
/// proxy, a timeout, a rate limit) say nothing of the schema, and are retried like a 5xx.
fn refuses_the_request(status: reqwest::StatusCode, body: &[u8]) -> bool {
    match status.as_u16() {
        400 | 404 | 409 | 422 => true,
        403 => {
            serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("error_code")?.as_i64())
                == Some(40301)
        }
        _ => false,
    }
}

/// An error with its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serves one response per connection, each in turn; returns the port and the requests.
    pub(in crate::registry) fn serve(
        responses: Vec<&'static str>,
    ) -> (u16, std::sync::mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for r in responses {
                let (mut s, _) = l.accept().unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let _ = tx.send(String::from_utf8_lossy(&request).into_owned());
                // one response per connection, said so: a client that kept the connection for
                // its next request found it closed by then (a flaky "connection reset")
                let r = r.replacen("\r\n", "\r\nConnection: close\r\n", 1);
                s.write_all(r.as_bytes()).unwrap();
            }
        });
        (port, rx)
    }

    #[test]
    fn every_address_is_tried_with_basic_auth_and_no_secret_shows() {
        // a closed port first, then the registry
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap().port();
        drop(closed);
        let (port, requests) = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 21\r\n\r\n{\"schema\":\"\\\"long\\\"\"}",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 20\r\n\r\n{\"error_code\":40403}",
        ]);
        let c = RegistryClient::with_bearer(
            &format!("http://u:s3cret@127.0.0.1:{dead},http://u:s3cret@127.0.0.1:{port}/"),
            None,
        )
        .unwrap();
        assert!(!c.url().contains("s3cret"), "{}", c.url());
        assert_eq!(c.schema_text(1).unwrap(), "\"long\"");
        let request = requests.recv().unwrap().to_ascii_lowercase();
        // base64("u:s3cret")
        assert!(
            request.contains("authorization: basic dtpzm2nyzxq="),
            "{request}"
        );
        let e = c.schema_text(2).unwrap_err();
        assert!(
            matches!(e, RegistryError::Refused { status: 404, .. }),
            "{e}"
        );
        assert!(!e.is_retryable());
        assert!(!e.to_string().contains("s3cret"), "{e}");
        // nothing answers: retryable, and still no secret
        let c = RegistryClient::with_bearer(&format!("http://u:s3cret@127.0.0.1:{dead}"), None)
            .unwrap();
        let e = c.schema_text(1).unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(!format!("{e} {e:?}").contains("s3cret"), "{e:?}");
        assert!(RegistryClient::new("ftp://x").is_err());
        // a URL that does not parse keeps the parser's error, without the password
        let e = RegistryClient::with_bearer("http://u:s3cret@[::1", None).unwrap_err();
        assert!(matches!(e, RegistryError::BadUrl { .. }), "{e:?}");
        let cause = std::error::Error::source(&e).expect("the parser's error");
        assert!(cause.is::<url::ParseError>());
        assert!(
            e.to_string().ends_with(&format!("is not a URL: {cause}")),
            "{e}"
        );
        assert_eq!(
            redact_urls("https://u:p@a:8081/x/, http://b"),
            "https://a:8081/x,http://b"
        );
    }

    #[test]
    fn a_bearer_token_is_sent_when_no_user_is_given() {
        let (port, requests) = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"id\":7}",
        ]);
        let c =
            RegistryClient::with_bearer(&format!("http://127.0.0.1:{port}"), Some("tok".into()))
                .unwrap();
        assert_eq!(c.register("t-value", "\"long\"").unwrap(), 7);
        let request = requests.recv().unwrap();
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: bearer tok"),
            "{request}"
        );
        assert!(
            request.starts_with("POST /subjects/t-value/versions"),
            "{request}"
        );
    }
}
