//! Connections the server can cut: a subscriber that does not read blocks its connection's
//! writes, and neither the HTTP server nor the response body gets a turn to end it. The
//! listener wraps every accepted socket with a switch; cutting it fails the socket's next
//! read or write and wakes the task that waits on it, so the server drops the connection.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::limits::{ConnectionLimit, Open, Slot};

/// The switch of one connection.
#[derive(Debug, Default)]
pub struct Switch {
    cut: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
    /// Its place under the connection limit (busy while a request is answered).
    pub slot: Arc<Slot>,
    /// An answer whose body ended, busy until what it wrote is flushed to the client.
    draining: Mutex<Option<crate::limits::Busy>>,
}

impl Switch {
    /// Keeps `busy` until the connection's next completed flush: the answer whose body
    /// ended may still sit in the server's buffers.
    pub fn drain(&self, busy: crate::limits::Busy) {
        if let Ok(mut d) = self.draining.lock() {
            *d = Some(busy);
        }
    }

    /// Fails the connection's next read and write, now.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.reader.wake();
        self.writer.wake();
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

/// The switches of the open connections, by client address.
#[derive(Debug, Default)]
pub struct Switches {
    open: Mutex<HashMap<SocketAddr, Weak<Switch>>>,
}

impl Switches {
    /// The switch of the connection from `peer`, while it is open.
    pub fn get(&self, peer: &SocketAddr) -> Option<Arc<Switch>> {
        self.open.lock().ok()?.get(peer)?.upgrade()
    }

    fn add(self: &Arc<Self>, peer: SocketAddr, slot: Arc<Slot>) -> Arc<Switch> {
        let s = Arc::new(Switch {
            slot,
            ..Switch::default()
        });
        if let Ok(mut open) = self.open.lock() {
            open.insert(peer, Arc::downgrade(&s));
        }
        s
    }

    fn remove(&self, peer: &SocketAddr) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(peer);
        }
    }
}

/// A TCP listener whose connections have switches.
pub struct Listener {
    inner: TcpListener,
    switches: Arc<Switches>,
    limit: Arc<ConnectionLimit>,
}

impl Listener {
    /// Wraps `inner`; its connections' switches go to `switches`, and a connection over
    /// `limit` is closed as it is accepted.
    pub fn new(inner: TcpListener, switches: Arc<Switches>, limit: Arc<ConnectionLimit>) -> Self {
        Listener {
            inner,
            switches,
            limit,
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((socket, peer)) => {
                    let Some(open) = self.limit.admit() else {
                        tokio::spawn(refuse_http(socket));
                        continue;
                    };
                    let _ = socket.set_nodelay(true);
                    let switch = self.switches.add(peer, open.slot().clone());
                    // closed to make room for a new connection when it waits the longest
                    let cut = Arc::downgrade(&switch);
                    open.slot().on_evict(move || {
                        if let Some(s) = cut.upgrade() {
                            s.cut();
                        }
                    });
                    let stream = Stream {
                        inner: socket,
                        switch,
                        peer,
                        switches: Arc::downgrade(&self.switches),
                        _open: open,
                    };
                    return (stream, peer);
                }
                Err(e) => {
                    // out of file descriptors and the like: wait, as axum's listener does
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Answers a connection over `serve.max_connections` with a 503 and closes it (within a
/// second: a client that does not read is not waited for).
async fn refuse_http(mut socket: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str = "{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many \
        connections are open (serve.max_connections); try again later\"}}";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        socket.write_all(answer.as_bytes()).await?;
        socket.shutdown().await
    })
    .await;
}

/// An accepted socket with its switch.
pub struct Stream {
    inner: TcpStream,
    switch: Arc<Switch>,
    peer: SocketAddr,
    switches: Weak<Switches>,
    /// Its place under the endpoint's connection limit.
    _open: Open,
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(s) = self.switches.upgrade() {
            s.remove(&self.peer);
        }
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the server cut the connection",
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.switch.reader.register(cx.waker());
        if self.switch.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.switch.writer.register(cx.waker());
        if self.switch.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.switch.slot.waiting_for_client(r.is_pending());
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.switch.writer.register(cx.waker());
        if self.switch.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.switch.slot.waiting_for_client(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.switch.writer.register(cx.waker());
        if self.switch.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            // (taken out first: the guard is dropped without the lock)
            let drained = self.switch.draining.lock().ok().and_then(|mut d| d.take());
            drop(drained);
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_cut_connection_fails_its_blocked_write_and_leaves_the_table() {
        let switches = Arc::new(Switches::default());
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let mut listener = Listener::new(
            inner,
            switches.clone(),
            Arc::new(ConnectionLimit::new(16, "HTTP")),
        );
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, peer) = listener.accept().await;
        let switch = switches.get(&peer).expect("registered");
        let writer = tokio::spawn(async move {
            // the client never reads: this blocks once the buffers are full
            let chunk = vec![0u8; 1 << 16];
            loop {
                if let Err(e) = server.write_all(&chunk).await {
                    return e.kind();
                }
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!writer.is_finished(), "the write should be blocked");
        switch.cut();
        let kind = tokio::time::timeout(std::time::Duration::from_secs(5), writer)
            .await
            .expect("the blocked write ends")
            .unwrap();
        assert_eq!(kind, io::ErrorKind::ConnectionAborted);
        assert!(switches.get(&peer).is_none(), "dropped with the stream");
        let mut client = client;
        let mut buf = [0u8; 16];
        let _ = client.read(&mut buf).await;
    }
}
