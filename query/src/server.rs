//! Starting and stopping the SQL endpoints of a run.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use weir_engine::live::LiveState;
use weir_engine::stats::CurrentStats;

use crate::engine::{QueryEngine, QueryLimits};
use crate::http::{router, HttpState};
use crate::metrics::Metrics;
use crate::pg::PgServer;

/// What to serve, from a pipeline's `serve` section.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    /// `host:port` of the HTTP endpoint.
    pub http: Option<String>,
    /// `host:port` of the Postgres-wire endpoint.
    pub postgres: Option<String>,
    /// Bearer token HTTP clients must send.
    pub token: Option<String>,
    /// Password Postgres clients must give.
    pub password: Option<String>,
    /// Serve on a non-loopback address without authentication.
    pub insecure: bool,
    pub limits: QueryLimits,
    /// In a worker pool: the other workers, whose rows every query reads too.
    pub peers: Option<Arc<crate::peers::Peers>>,
    /// The pipeline's graph, shown by the web console.
    pub graph: crate::console::Graph,
}

/// Why the endpoints could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting the user must change.
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr} ({what}): {error}; is another process using it?")]
    Bind {
        addr: String,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("cannot start the SQL endpoints: {0}")]
    Runtime(String),
}

fn resolve(addr: &str, what: &'static str) -> Result<SocketAddr, ServeError> {
    addr.to_socket_addrs()
        .map_err(|e| {
            ServeError::Config(format!("serve.{what}: `{addr}` is not a host:port ({e})"))
        })?
        .next()
        .ok_or_else(|| ServeError::Config(format!("serve.{what}: `{addr}` resolves to nothing")))
}

/// Refuses a non-loopback address without authentication unless `insecure`.
fn check_auth(
    addr: &SocketAddr,
    what: &str,
    secret: &Option<String>,
    setting: &str,
    insecure: bool,
) -> Result<(), ServeError> {
    if addr.ip().is_loopback() || insecure || secret.as_deref().is_some_and(|s| !s.is_empty()) {
        return Ok(());
    }
    Err(ServeError::Config(format!(
        "serve.{what} listens on {addr}, which other machines can reach, without authentication: \
         set serve.{setting} (e.g. `{setting}: ${{WEIR_SQL_{}}}`), bind to 127.0.0.1, or pass \
         --insecure to serve it open",
        setting.to_uppercase()
    )))
}

/// Running SQL endpoints; dropping it (or [`SqlServer::shutdown`]) stops them.
pub struct SqlServer {
    runtime: Option<tokio::runtime::Runtime>,
    stop: watch::Sender<bool>,
    /// The addresses bound (a port 0 in the settings becomes the real port).
    pub http: Option<SocketAddr>,
    pub postgres: Option<SocketAddr>,
}

impl SqlServer {
    /// Binds the configured endpoints and serves `live` on them.
    pub fn start(
        config: &ServeConfig,
        live: Arc<LiveState>,
        stats: impl Into<CurrentStats>,
    ) -> Result<Self, ServeError> {
        let stats: CurrentStats = stats.into();
        let http_addr = config
            .http
            .as_deref()
            .map(|a| resolve(a, "http"))
            .transpose()?;
        let pg_addr = config
            .postgres
            .as_deref()
            .map(|a| resolve(a, "postgres"))
            .transpose()?;
        if let Some(a) = &http_addr {
            check_auth(a, "http", &config.token, "token", config.insecure)?;
        }
        if let Some(a) = &pg_addr {
            check_auth(a, "postgres", &config.password, "password", config.insecure)?;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-sql")
            // point queries and the Postgres protocol parse SQL on these threads
            .thread_stack_size(crate::limits::SQL_THREAD_STACK)
            .enable_all()
            .build()
            .map_err(|e| ServeError::Runtime(e.to_string()))?;
        let engine = Arc::new(
            QueryEngine::with_peers(live, config.limits.clone(), config.peers.clone())
                .and_then(|e| e.with_dead_letters(stats.clone(), config.peers.clone()))
                .map_err(|e| ServeError::Runtime(e.to_string()))?,
        );
        let (stop, stopped) = watch::channel(false);
        let mut server = SqlServer {
            runtime: None,
            stop,
            http: None,
            postgres: None,
        };
        if let Some(addr) = http_addr {
            let listener =
                runtime
                    .block_on(TcpListener::bind(addr))
                    .map_err(|error| ServeError::Bind {
                        addr: addr.to_string(),
                        what: "serve.http",
                        error,
                    })?;
            server.http = listener.local_addr().ok();
            let state = Arc::new(HttpState {
                engine: engine.clone(),
                token: config.token.clone().filter(|t| !t.is_empty()),
                metrics: Arc::new(Metrics::new(stats.clone(), engine.clone())),
                subscriptions: crate::subscribe::Hub::new(
                    engine.clone(),
                    config.limits.subscribe.clone(),
                ),
                graph: config.graph.clone(),
                peers: config.peers.clone(),
                sessions: crate::console::sessions::Sessions::new(
                    server.http.map_or(0, |a| a.port()),
                ),
            });
            // connections the subscription hub can cut (a subscriber that does not read)
            let listener = crate::subscribe::Listener::new(
                listener,
                state.subscriptions.switches.clone(),
                // subscriptions hold a connection each, under their own limit
                Arc::new(crate::limits::ConnectionLimit::new(
                    config
                        .limits
                        .max_connections
                        .saturating_add(config.limits.subscribe.max_subscriptions),
                    "HTTP",
                )),
            )
            .tap_io(|_| ());
            let mut stopped = stopped.clone();
            runtime.spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(
                    listener,
                    router(state).into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(shutdown)
                .await
                {
                    tracing::error!(error = %e, "the HTTP endpoint stopped");
                }
            });
            tracing::info!(address = ?server.http, "serving SQL over HTTP");
        }
        if let Some(addr) = pg_addr {
            let listener =
                runtime
                    .block_on(TcpListener::bind(addr))
                    .map_err(|error| ServeError::Bind {
                        addr: addr.to_string(),
                        what: "serve.postgres",
                        error,
                    })?;
            server.postgres = listener.local_addr().ok();
            let handlers = Arc::new(PgServer::new(
                engine.clone(),
                config.password.clone().filter(|p| !p.is_empty()),
            ));
            let max_message = config.limits.max_message_bytes();
            let max_rows = config.limits.max_result_rows;
            let limit =
                crate::limits::ConnectionLimit::new(config.limits.max_connections, "Postgres");
            let mut stopped = stopped.clone();
            runtime.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stopped.changed() => break,
                        accepted = listener.accept() => match accepted {
                            Ok((socket, peer)) => {
                                let Some(open) = limit.admit() else {
                                    tokio::spawn(crate::pg_conn::refuse(socket));
                                    continue;
                                };
                                let h = handlers.clone();
                                tokio::spawn(async move {
                                    let served = crate::pg_conn::serve_connection(
                                        socket, peer, h, (max_message, max_rows), &open,
                                    )
                                    .await;
                                    if let Err(e) = served {
                                        tracing::debug!(error = %e, "postgres connection ended");
                                    }
                                });
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "postgres accept failed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
            });
            tracing::info!(
                address = ?server.postgres,
                "serving SQL over the Postgres wire protocol"
            );
        }
        server.runtime = Some(runtime);
        Ok(server)
    }

    /// Stops accepting, lets running requests finish for a moment, and stops.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for SqlServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}
