//! One Postgres connection: the SSL request answered (no TLS here), then pgwire's message
//! loop over a socket that refuses oversized messages.
//!
//! pgwire accepts frontend messages of up to 1 GiB and buffers each whole before decoding
//! it. [`Limited`] reads the frame headers as the bytes arrive and fails the read as soon as a
//! header announces a message over `serve.max_sql_bytes` (plus a small overhead), before its
//! body is buffered; the client then gets SQLSTATE 54000 and the connection is closed, as
//! PostgreSQL closes one on an invalid message length.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgwire::api::{ClientInfo, DefaultClient, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{process_error, process_message, PgWireMessageServerCodec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Time a client has to finish its startup and authentication.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// A socket whose frontend messages may not exceed a length.
pub struct Limited<S> {
    io: S,
    max: usize,
    /// Past the startup message, frames start with a type byte.
    typed: bool,
    header: [u8; 8],
    have: usize,
    /// Body bytes of the current frame still to come.
    remaining: usize,
    /// The length of the message that broke the limit (0: none did).
    refused: Arc<AtomicUsize>,
    /// The connection's place, told when writes wait for a client that does not read.
    slot: Option<Arc<crate::limits::Slot>>,
}

impl<S> Limited<S> {
    /// `io` at the start of the startup message (after any SSL request).
    pub fn new(io: S, max: usize) -> Self {
        Limited {
            io,
            max,
            typed: false,
            header: [0; 8],
            have: 0,
            remaining: 0,
            refused: Arc::new(AtomicUsize::new(0)),
            slot: None,
        }
    }

    /// Tells `slot` when writes wait for the client (see [`crate::limits::Slot`]).
    pub fn with_slot(mut self, slot: Arc<crate::limits::Slot>) -> Self {
        self.slot = Some(slot);
        self
    }

    fn waited(&self, pending: bool) {
        if let Some(s) = &self.slot {
            s.waiting_for_client(pending);
        }
    }

    /// Where the length of a refused message is recorded.
    pub fn refused(&self) -> Arc<AtomicUsize> {
        self.refused.clone()
    }

    fn header_len(&self) -> usize {
        // startup-phase frames: length and code; later ones: type byte and length
        if self.typed {
            5
        } else {
            8
        }
    }

    /// Follows the frames through `bytes`; `Err(len)` when one is too long.
    fn scan(&mut self, mut bytes: &[u8]) -> Result<(), usize> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len());
                self.remaining -= n;
                bytes = &bytes[n..];
                continue;
            }
            let want = self.header_len() - self.have;
            let n = want.min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < self.header_len() {
                continue;
            }
            self.have = 0;
            let at = if self.typed { 1 } else { 0 };
            let field = [
                self.header[at],
                self.header[at + 1],
                self.header[at + 2],
                self.header[at + 3],
            ];
            let len = u32::from_be_bytes(field) as usize;
            if len > self.max {
                return Err(len);
            }
            // the length counts itself; a startup frame's code was read with the header
            let consumed = if self.typed { 4 } else { 8 };
            self.remaining = len.saturating_sub(consumed);
            if !self.typed {
                let code = u32::from_be_bytes([
                    self.header[4],
                    self.header[5],
                    self.header[6],
                    self.header[7],
                ]);
                self.typed = code != SSL_REQUEST && code != GSSENC_REQUEST;
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            if let Err(len) = this.scan(&buf.filled()[before..]) {
                this.refused.store(len, Ordering::Relaxed);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a message of {len} bytes is over the limit of {}", this.max),
                )));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.waited(r.is_pending());
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.waited(r.is_pending());
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Answers SSL and GSSAPI encryption requests with "no" (the client goes on in plain text);
/// `false` when the client wants TLS straight away, which this endpoint cannot give.
async fn refuse_encryption(socket: &mut TcpStream) -> io::Result<bool> {
    for _ in 0..2 {
        let mut head = [0u8; 8];
        let n = socket.peek(&mut head).await?;
        if n > 0 && head[0] == 0x16 {
            // a TLS ClientHello: direct SSL negotiation
            return Ok(false);
        }
        if n < 8 {
            // a short first packet: not a request of 8 bytes; let the message loop read it
            return Ok(true);
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len != 8 || (code != SSL_REQUEST && code != GSSENC_REQUEST) {
            return Ok(true);
        }
        socket.read_exact(&mut head).await?;
        socket.write_all(b"N").await?;
    }
    Ok(true)
}

/// Serves one connection until the client leaves, a fatal error, a refused message, or
/// `open`'s eviction (the session waited for its client the longest when a new one needed
/// room; it is told so with SQLSTATE 57P05, as an idle-session timeout is).
pub async fn serve_connection<H: PgWireServerHandlers>(
    mut socket: TcpStream,
    peer: SocketAddr,
    handlers: Arc<H>,
    (max_message, max_rows): (usize, usize),
    open: &crate::limits::Open,
) -> io::Result<()> {
    let slot = open.slot();
    socket.set_nodelay(true)?;
    let negotiated = tokio::select! {
        r = tokio::time::timeout(STARTUP_TIMEOUT, refuse_encryption(&mut socket)) => r,
        // (no protocol yet to say why in: the connection is closed)
        _ = slot.evicted() => return Ok(()),
    };
    if !negotiated.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no startup message"))?? {
        return Ok(());
    }
    let limited = Limited::new(socket, max_message).with_slot(slot.clone());
    let refused = limited.refused();
    let client = DefaultClient::new(peer, false);
    let mut framed = Framed::new(limited, PgWireMessageServerCodec::new(client));
    framed.set_state(PgWireConnectionState::AwaitingStartup);
    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();
    let deadline = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(deadline);
    let mut named = Named::default();
    loop {
        let starting = matches!(
            framed.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let next = tokio::select! {
            _ = &mut deadline, if starting => None,
            _ = slot.evicted() => {
                let info = ErrorInfo::new(
                    "FATAL".into(),
                    "57P05".into(),
                    "terminating the idle session: serve.max_connections sessions were open and \
                     a new client came; this one had waited the longest"
                        .into(),
                );
                // (a client that does not read is not waited for)
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    framed.send(PgWireBackendMessage::ErrorResponse(info.into())),
                )
                .await;
                break;
            }
            m = framed.next() => m,
        };
        let _busy = slot.busy();
        let message = match next {
            Some(Ok(m)) => m,
            Some(Err(_)) if refused.load(Ordering::Relaxed) > 0 => {
                let len = refused.load(Ordering::Relaxed);
                let info = ErrorInfo::new(
                    "FATAL".into(),
                    "54000".into(),
                    format!(
                        "a message of {len} bytes is over the limit of {max_message} \
                         (serve.max_sql_bytes plus {} of overhead); send a shorter statement",
                        crate::limits::QueryLimits::MESSAGE_OVERHEAD
                    ),
                );
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    framed.send(PgWireBackendMessage::ErrorResponse(info.into())),
                )
                .await;
                break;
            }
            _ => break,
        };
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        // the message answered (or its error); whether the session goes on
        let answered = async {
            let extended_message = match framed.state() {
                PgWireConnectionState::CopyInProgress(e) => e,
                _ => message.is_extended_query(),
            };
            let is_cancel = matches!(message, PgWireFrontendMessage::CancelRequest(_));
            let (message, stored) = match named.admit(message, &framed.state(), max_rows) {
                Ok(m) => m,
                Err(e) => {
                    process_error(&mut framed, e, extended_message).await?;
                    return Ok::<bool, io::Error>(true);
                }
            };
            let processed = process_message(
                message,
                &mut framed,
                startup.clone(),
                simple.clone(),
                extended.clone(),
                copy.clone(),
                cancel.clone(),
            )
            .await;
            // a statement or portal that was not stored takes no place
            if let (Ok(()), Some(name)) = (&processed, stored) {
                named.record(name);
            }
            if let Err(e) = processed {
                let fatal = e.is_fatal();
                process_error(&mut framed, e, extended_message).await?;
                if fatal {
                    return Ok(false);
                }
            }
            Ok(!is_cancel)
        };
        // (evicted while an answer waits for a client that does not read: closed at once)
        let go_on = tokio::select! {
            r = answered => r?,
            _ = slot.evicted() => false,
        };
        if !go_on {
            break;
        }
        if matches!(framed.state(), PgWireConnectionState::ReadyForQuery) {
            // (past its startup and authentication)
            slot.establish();
        }
    }
    Ok(())
}

/// Answers a connection over `serve.max_connections` as Postgres does ("too many clients",
/// SQLSTATE 53300, FATAL) and closes it, within a second.
pub async fn refuse(mut socket: TcpStream) {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "53300"),
        (
            b'M',
            "too many connections are open (serve.max_connections); try again later",
        ),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    message.extend_from_slice(&body);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        socket.write_all(&message).await?;
        socket.shutdown().await
    })
    .await;
}

/// The most named prepared statements a connection may hold at once.
pub const MAX_STATEMENTS: usize = 256;
/// The most named portals a connection may hold at once: each can hold a suspended result of
/// up to `serve.max_result_mb`.
pub const MAX_PORTALS: usize = 16;

/// The named statements and portals a connection holds (pgwire keeps them without a bound),
/// to refuse more than [`MAX_STATEMENTS`] and [`MAX_PORTALS`]; unnamed ones replace each other.
#[derive(Default)]
struct Named {
    statements: std::collections::HashSet<String>,
    portals: std::collections::HashSet<String>,
}

/// A named statement or portal a message stores once it is processed.
enum Stored {
    Statement(String),
    Portal(String),
}

impl Named {
    /// `message` as it may be processed, with the name it stores if it succeeds, or the
    /// error that refuses it (a statement or portal over the limits). An `Execute` whose row
    /// limit is 0 or below (none, as Postgres reads it), or `max_rows` (a result's most rows,
    /// `serve.max_result_rows`) or more, asks for every row: pgwire makes room for as many
    /// rows as asked, and 2^31 of them would not fit in memory.
    fn admit(
        &mut self,
        message: PgWireFrontendMessage,
        state: &PgWireConnectionState,
        max_rows: usize,
    ) -> Result<(PgWireFrontendMessage, Option<Stored>), PgWireError> {
        use pgwire::messages::extendedquery::{
            TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT,
        };
        // messages after an error are skipped until Sync: they store nothing
        if matches!(state, PgWireConnectionState::AwaitingSync) {
            return Ok((message, None));
        }
        let named = |n: &Option<String>| n.as_deref().filter(|n| !n.is_empty()).map(String::from);
        let too_many = |what: &str, limit: usize| {
            user_error(
                "ERROR",
                "54000",
                format!(
                    "this connection holds {limit} named {what}, the most it may: close one \
                     (a Close message) before making another"
                ),
            )
        };
        let stored = match message {
            PgWireFrontendMessage::Parse(ref p) => match named(&p.name) {
                Some(n)
                    if !self.statements.contains(&n) && self.statements.len() >= MAX_STATEMENTS =>
                {
                    return Err(too_many("prepared statements", MAX_STATEMENTS));
                }
                n => n.map(Stored::Statement),
            },
            PgWireFrontendMessage::Bind(ref b) => match named(&b.portal_name) {
                Some(n) if !self.portals.contains(&n) && self.portals.len() >= MAX_PORTALS => {
                    return Err(too_many("portals", MAX_PORTALS));
                }
                n => n.map(Stored::Portal),
            },
            PgWireFrontendMessage::Close(ref c) => {
                if let Some(n) = named(&c.name) {
                    match c.target_type {
                        TARGET_TYPE_BYTE_STATEMENT => self.statements.remove(&n),
                        TARGET_TYPE_BYTE_PORTAL => self.portals.remove(&n),
                        _ => false,
                    };
                }
                None
            }
            PgWireFrontendMessage::Execute(mut e) => {
                if e.max_rows <= 0 || usize::try_from(e.max_rows).is_ok_and(|n| n >= max_rows) {
                    e.max_rows = 0;
                }
                return Ok((PgWireFrontendMessage::Execute(e), None));
            }
            _ => None,
        };
        Ok((message, stored))
    }

    /// Records what a message stored once it was processed.
    fn record(&mut self, stored: Stored) {
        match stored {
            Stored::Statement(n) => self.statements.insert(n),
            Stored::Portal(n) => self.portals.insert(n),
        };
    }
}

/// An error a handler reports to the client with its SQLSTATE.
pub fn user_error(severity: &str, code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_owned(),
        code.to_owned(),
        message,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, body: usize) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&((body + 4) as u32).to_be_bytes());
        f.extend(std::iter::repeat_n(b'x', body));
        f
    }

    fn startup() -> Vec<u8> {
        let mut f = 16u32.to_be_bytes().to_vec();
        f.extend_from_slice(&196_608u32.to_be_bytes());
        f.extend_from_slice(b"user\0me\0");
        f
    }

    #[test]
    fn frames_within_the_limit_pass_in_any_split() {
        let mut stream = startup();
        stream.extend(frame(b'Q', 100));
        stream.extend(frame(b'P', 1000));
        stream.extend(frame(b'S', 0));
        for chunk in [1, 3, 7, 64, stream.len()] {
            let mut l = Limited::new((), 2000);
            for part in stream.chunks(chunk) {
                assert_eq!(l.scan(part), Ok(()), "chunks of {chunk}");
            }
            assert_eq!((l.have, l.remaining), (0, 0));
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_at_its_header() {
        let mut stream = startup();
        stream.extend(frame(b'Q', 10));
        // the header of a 100 MB query, without its body
        stream.push(b'Q');
        stream.extend_from_slice(&100_000_004u32.to_be_bytes());
        let mut l = Limited::new((), 1 << 20);
        assert_eq!(l.scan(&stream), Err(100_000_004));
    }

    #[test]
    fn an_ssl_request_keeps_the_next_frame_untyped() {
        let mut stream = 8u32.to_be_bytes().to_vec();
        stream.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        stream.extend(startup());
        stream.extend(frame(b'Q', 5));
        let mut l = Limited::new((), 100);
        assert_eq!(l.scan(&stream), Ok(()));
        assert!(l.typed);
        let mut big = startup();
        big.extend_from_slice(&[0; 4]);
        let mut l = Limited::new((), 10);
        assert_eq!(l.scan(&big), Err(16), "a startup message is bounded too");
    }
}
