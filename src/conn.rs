//! What a connection to the gRPC port may hold: a slot out of `limits.max_connections`,
//! and until its first byte, no more than `limits.handshake_timeout_ms`. Without these,
//! 20,000 plain TCP connects that send nothing exhausted the file descriptors and the
//! health checks with them. The probes port is served apart and keeps answering.
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Who is on the other end of a connection; in every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// Subject CN of the client certificate (mTLS), when one was presented.
    pub client_subject: Option<String>,
}

/// The address a request's connection comes from.
pub fn peer_ip<T>(req: &tonic::Request<T>) -> Option<std::net::IpAddr> {
    req.remote_addr()
        .or_else(|| req.extensions().get::<PeerInfo>().and_then(|p| p.remote))
        .map(|a| a.ip())
}

/// Admission of connections: a fixed number of slots, a count of refusals, and a log
/// line at most every few seconds while refusing.
pub struct Admission {
    slots: Arc<Semaphore>,
    max: usize,
    refused: prometheus::IntCounter,
    open: prometheus::IntGauge,
    last_warning: Mutex<Option<Instant>>,
}

/// A connection's slot; dropping it frees the slot.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: prometheus::IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Admission {
    pub fn new(max: usize, refused: prometheus::IntCounter, open: prometheus::IntGauge) -> Self {
        Admission {
            slots: Arc::new(Semaphore::new(max)),
            max,
            refused,
            open,
            last_warning: Mutex::new(None),
        }
    }

    /// A slot for a new connection from `peer`, or `None` when all are taken (the caller
    /// closes the connection at once).
    pub fn admit(&self, peer: SocketAddr) -> Option<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                self.open.inc();
                Some(Slot {
                    _permit: permit,
                    open: self.open.clone(),
                })
            }
            Err(_) => {
                self.refused.inc();
                let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    *last = Some(Instant::now());
                    tracing::warn!(max = self.max, peer = %peer, "connection limit reached: refusing new connections (limits.max_connections)");
                }
                None
            }
        }
    }
}

/// An accepted connection (plain TCP, or TLS over it) holding its slot; closed if a first
/// byte is awaited and late.
pub struct Conn<S> {
    inner: S,
    info: PeerInfo,
    _slot: Slot,
    /// Until the first byte arrives (`None`: not awaited, or arrived).
    first_byte: Option<Pin<Box<Sleep>>>,
}

impl<S> Conn<S> {
    /// `inner` from `info`'s peer, holding `slot`; with `first_byte`, closed unless it sends
    /// something within that time.
    pub fn new(inner: S, info: PeerInfo, slot: Slot, first_byte: Option<Duration>) -> Self {
        Conn {
            inner,
            info,
            _slot: slot,
            first_byte: first_byte.map(|d| Box::pin(tokio::time::sleep(d))),
        }
    }
}

impl<S> tonic::transport::server::Connected for Conn<S> {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let me = &mut *self;
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    me.first_byte = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let late = match &mut me.first_byte {
                    Some(deadline) => deadline.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if late {
                    tracing::debug!(peer = ?me.info.remote, "connection sent nothing in time; closed");
                    return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The next connection the admission has a slot for (others are closed at once), with
/// TCP_NODELAY set: without it, Nagle plus delayed ACK put 40 ms tails on Envoy ->
/// Keygate calls.
pub async fn accept(
    listener: &TcpListener,
    admission: &Admission,
) -> (TcpStream, SocketAddr, Slot) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to free.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Some(slot) = admission.admit(remote) {
            let _ = tcp.set_nodelay(true);
            return (tcp, remote, slot);
        }
    }
}

/// Accepts plaintext connections within the admission's slots, each closed if it sends
/// nothing for `first_byte_timeout`. Refused connections are closed at once, so the
/// listen backlog never fills with them.
pub fn incoming(
    listener: TcpListener,
    admission: Arc<Admission>,
    first_byte_timeout: Duration,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote, slot) = tokio::select! {
                a = accept(&listener, &admission) => a,
                _ = tx.closed() => return,
            };
            let info = PeerInfo {
                remote: Some(remote),
                client_subject: None,
            };
            let conn = Conn::new(tcp, info, slot, Some(first_byte_timeout));
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
