//! The connection plumbing shared by weir's NATS source, sink and generator: how to reach a
//! server ([`NatsEndpoint`]: one or several URLs, credentials, TLS) and [`NatsEndpoint::connect`],
//! which reconnects forever once connected (the client buffers and retries; callers bound
//! their own waits) and reports connection changes through `tracing`; and [`OwnedClient`],
//! which closes a client's connection when its owner drops it.
//!
//! How async-nats (0.51) ends a client's background tasks, on whatever runtime it was
//! connected on: the connection task ends once every handle that can send it commands is
//! gone (clients, subscriptions, JetStream contexts and consumers) or once a `drain` is done,
//! but only while it is connected: a client reconnecting to a server that is away keeps
//! trying until one answers (with `max_reconnects(None)`, for ever). A JetStream context's
//! acknowledgement task ends once every clone of the context and every publish awaiting
//! its acknowledgement is gone; a pull consumer's message stream aborts its task when
//! dropped. On the process's shared runtime nothing else ends them: [`OwnedClient`] drains.

use std::path::PathBuf;
use std::time::Duration;

/// How a client proves who it is (at most one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsCredentials {
    /// No credentials (or those embedded in the URL, `nats://user:password@host`).
    #[default]
    None,
    /// `user` and `password`.
    UserPassword { user: String, password: String },
    /// An authentication token.
    Token(String),
    /// A `.creds` file (a user JWT and its NKey seed), as `nsc` writes it.
    CredsFile(PathBuf),
    /// An NKey seed (`SU…`).
    NKeySeed(String),
}

/// TLS settings; without them, TLS is used when the server asks for it or a URL is `tls://`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// Refuse a connection without TLS.
    pub required: bool,
    /// PEM file of the certificate authorities to trust (besides the system's).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Where a NATS server is and how to connect to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsEndpoint {
    /// Server URLs (`nats://host:port`, `tls://host:port`); the client picks one and fails over.
    pub servers: Vec<String>,
    pub credentials: NatsCredentials,
    pub tls: NatsTls,
    /// The connection's name as the server shows it (`weir-<pipeline>-<connector>`).
    pub name: String,
    /// How long the first connection may take before [`NatsEndpoint::connect`] fails.
    pub connect_timeout: Duration,
}

/// Default bound on the first connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages a subscription buffers by default (the client's own default).
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 64 * 1024;

/// A NATS connection failure.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// A server URL that does not parse.
    #[error("invalid NATS server URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The `.creds` file could not be read.
    #[error("cannot read the NATS credentials file {}", path.display())]
    CredentialsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No server accepted the connection in time (down, unreachable, or credentials refused).
    #[error(
        "cannot connect to NATS at {servers} (is the server up and are the credentials right?)"
    )]
    Connect {
        servers: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

impl NatsError {
    /// Whether trying again later can succeed (a server down), rather than a configuration
    /// error that needs a fix.
    pub fn is_retryable(&self) -> bool {
        match self {
            NatsError::Connect { source, .. } => !matches!(
                source.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::Authentication
                    | async_nats::ConnectErrorKind::Tls
                    | async_nats::ConnectErrorKind::ServerParse
            ),
            _ => false,
        }
    }
}

/// `url` with any password (or token in the user part) replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(mut u) if !u.username().is_empty() => {
            let _ = u.set_username("***");
            u.to_string()
        }
        _ => url.to_string(),
    }
}

impl NatsEndpoint {
    /// An endpoint at `servers` with no credentials, no TLS settings and the default timeout.
    pub fn new(servers: Vec<String>, name: impl Into<String>) -> NatsEndpoint {
        NatsEndpoint {
            servers,
            credentials: NatsCredentials::None,
            tls: NatsTls::default(),
            name: name.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The servers, comma-separated and redacted, for messages.
    pub fn describe_servers(&self) -> String {
        let redacted: Vec<String> = self.servers.iter().map(|s| redact_url(s)).collect();
        redacted.join(",")
    }

    /// Checks the URLs (a pipeline file's error, before anything runs).
    pub fn validate(&self) -> Result<(), NatsError> {
        for url in &self.servers {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| NatsError::InvalidUrl {
                    url: redact_url(url),
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Connects (within `connect_timeout`); once connected, the client reconnects without
    /// limit and logs disconnections and reconnections.
    pub async fn connect(&self) -> Result<async_nats::Client, NatsError> {
        self.connect_with_capacity(DEFAULT_SUBSCRIPTION_CAPACITY)
            .await
    }

    /// [`Self::connect`], each subscription buffering up to `subscription_capacity` messages
    /// (the client drops what arrives past it: a reader sizes it above what its pull requests
    /// can bring at once).
    pub async fn connect_with_capacity(
        &self,
        subscription_capacity: usize,
    ) -> Result<async_nats::Client, NatsError> {
        self.validate()?;
        let addrs: Vec<async_nats::ServerAddr> =
            self.servers.iter().filter_map(|u| u.parse().ok()).collect();
        let mut options = async_nats::ConnectOptions::new()
            .name(&self.name)
            .connection_timeout(self.connect_timeout)
            .max_reconnects(None::<usize>)
            .subscription_capacity(subscription_capacity.max(1))
            .require_tls(self.tls.required);
        options = match &self.credentials {
            NatsCredentials::None => options,
            NatsCredentials::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            NatsCredentials::Token(token) => options.token(token.clone()),
            NatsCredentials::NKeySeed(seed) => options.nkey(seed.clone()),
            NatsCredentials::CredsFile(path) => {
                options.credentials_file(path).await.map_err(|source| {
                    NatsError::CredentialsFile {
                        path: path.clone(),
                        source,
                    }
                })?
            }
        };
        if let Some(ca) = &self.tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let servers = self.describe_servers();
        let name = self.name.clone();
        options = options.event_callback(move |event| {
            let name = name.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(connection = %name, "NATS connected")
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(connection = %name, "NATS disconnected; reconnecting")
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(connection = %name, subscription = sid, "NATS: a subscription's buffer was full and the client dropped messages (a reader notices and reads them again)")
                    }
                    other => tracing::debug!(connection = %name, event = %other, "NATS event"),
                }
            }
        });
        options
            .connect(addrs)
            .await
            .map_err(|source| NatsError::Connect { servers, source })
    }
}

/// A client that its owner closes by dropping this: the connection is drained (what the
/// client buffered is written, its subscriptions end, the connection closes and its tasks
/// end), whatever other handles to it (subscriptions, JetStream contexts, consumers) still
/// exist. The drain is sent from a task on `runtime` and is not waited for. A client whose
/// server is away at that moment ends once it reconnects (async-nats cannot stop a client
/// that is reconnecting).
#[derive(Debug)]
pub struct OwnedClient {
    client: async_nats::Client,
    runtime: tokio::runtime::Handle,
}

impl OwnedClient {
    /// Owns `client`, connected on `runtime`.
    pub fn new(client: async_nats::Client, runtime: tokio::runtime::Handle) -> Self {
        OwnedClient { client, runtime }
    }

    /// The client (clones share its connection, and end with it).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

impl Drop for OwnedClient {
    fn drop(&mut self) {
        let client = self.client.clone();
        self.runtime.spawn(async move {
            // an error: the connection task has ended already
            if let Err(e) = client.drain().await {
                tracing::debug!(error = %e, "NATS: the connection was closed already");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_are_redacted() {
        assert_eq!(
            redact_url("nats://u:secret@127.0.0.1:4222"),
            "nats://u:***@127.0.0.1:4222"
        );
        assert_eq!(
            redact_url("nats://tok@127.0.0.1:4222"),
            "nats://***@127.0.0.1:4222"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

    #[test]
    fn a_bad_url_is_a_configuration_error() {
        let e = NatsEndpoint::new(vec!["http://[::1".into()], "t");
        let err = e.validate().unwrap_err();
        assert!(matches!(err, NatsError::InvalidUrl { .. }));
        assert!(!err.is_retryable());
    }

    #[test]
    fn a_server_that_is_down_is_retryable_and_bounded() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut e = NatsEndpoint::new(vec![format!("nats://127.0.0.1:{port}")], "t");
        e.connect_timeout = Duration::from_millis(300);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let err = rt.block_on(e.connect()).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
        assert!(err.is_retryable(), "{err:?}");
    }
}
