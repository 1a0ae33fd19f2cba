//! Client connection limits Pingora does not have (issue #11 3c): a cap on open client
//! connections, a total time for each request head (slowloris), and an idle time for
//! keep-alive connections.
//!
//! [`Limited`] wraps the proxy application as a Pingora [`ServerApp`]: it sees every client
//! connection of the proxy listeners (plain and TLS, after the TLS handshake) exactly once,
//! counts it for `server.max_connections`, and hands the application a [`Watched`] stream. The
//! stream enforces the head and idle deadlines at the socket: a read past the deadline ends the
//! connection, however Pingora is reading the head, one byte at a time included. The proxy
//! phases tell the stream where a request is: [`head_done`] when its head has been read (the
//! deadline is off while the body and the response run; the body has its own per-read timeout)
//! and [`await_next`] when it is over (the connection is then idle until the next request's
//! first byte, which starts that request's head deadline).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::Server;
use crate::telemetry::Metrics;

/// The limits of one listener set, fixed at start (a reload does not change them: they are
/// properties of connections already open).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most connections open at once; `0` = no limit.
    pub max_connections: usize,
    /// Total time for one request head.
    pub header_timeout: Duration,
    /// Idle time between two requests of a keep-alive connection.
    pub keepalive_timeout: Duration,
}

impl Settings {
    /// From `[server]`.
    pub fn new(server: &Server) -> Settings {
        Settings {
            max_connections: server.max_connections,
            header_timeout: Duration::from_secs(server.header_timeout_secs),
            keepalive_timeout: Duration::from_secs(server.keepalive_timeout_secs),
        }
    }
}

/// The counters a cut or refused connection moves (looked up once, not per connection).
#[derive(Debug, Clone)]
struct Counters {
    header_timeout: IntCounter,
    keepalive_timeout: IntCounter,
    max_connections: IntCounter,
    open: IntGauge,
}

/// A Pingora application (the proxy) behind the connection limits of [`Settings`].
pub struct Limited<A> {
    inner: Arc<A>,
    settings: Settings,
    counters: Counters,
    open: AtomicUsize,
}

impl<A> Limited<A> {
    /// Wraps `inner`; cut and refused connections are counted in `metrics`.
    pub fn new(inner: A, settings: Settings, metrics: &Metrics) -> Limited<A> {
        let counter = |limit: &str| metrics.client_limits.with_label_values(&[limit]);
        Limited {
            inner: Arc::new(inner),
            settings,
            counters: Counters {
                header_timeout: counter("header_timeout"),
                keepalive_timeout: counter("keepalive_timeout"),
                max_connections: counter("max_connections"),
                open: metrics.open_connections.clone(),
            },
            open: AtomicUsize::new(0),
        }
    }
}

/// Gives the connection slot back when the connection ends, however it ends.
struct Slot<'a>(&'a AtomicUsize, &'a IntGauge);

impl<'a> Slot<'a> {
    fn take(open: &'a AtomicUsize, gauge: &'a IntGauge) -> (Slot<'a>, usize) {
        gauge.inc();
        (Slot(open, gauge), open.fetch_add(1, Ordering::AcqRel))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.dec();
    }
}

#[async_trait]
impl<A> ServerApp for Limited<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (_slot, before) = Slot::take(&self.open, &self.counters.open);
        let max = self.settings.max_connections;
        if max > 0 && before >= max {
            // Closed before a byte is read: the cheapest answer, and the one that cannot be
            // misread (a 503 on an HTTP/2 connection would need a handshake first).
            self.counters.max_connections.inc();
            tracing::debug!(max, "max_connections reached: connection closed");
            return None;
        }
        // HTTP/2 multiplexes requests on one connection: a per-request head deadline does not
        // apply there; Pingora's h2 idle timeout (set to keepalive_timeout) bounds it instead.
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let watched = Watched::new(stream, &self.settings, self.counters.clone(), h2);
        // The proxy serves every request of a connection (keep-alive included) inside this
        // call and returns None: the slot is held for the connection's whole life.
        self.inner.process_new(Box::new(watched), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// What the proxy phases said last; read by the stream at its next read.
const NO_NEWS: u8 = 0;
const HEAD_DONE: u8 = 1;
const AWAIT_NEXT: u8 = 2;

/// What the stream is timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head is being read; `started` once a byte of it has arrived.
    Head { started: bool },
    /// Between two requests of a keep-alive connection, nothing of the next one yet.
    Idle,
    /// Body and response: no deadline here (the body has Pingora's per-read timeout).
    Off,
    /// A deadline passed: every further read is the end of the stream.
    Cut,
}

/// A client connection with the head and idle deadlines enforced on its reads.
pub struct Watched {
    inner: Stream,
    news: AtomicU8,
    phase: Phase,
    /// HTTP/2: never timed here (see `process_new`).
    h2: bool,
    header_timeout: Duration,
    keepalive_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    counters: Counters,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl Watched {
    fn new(inner: Stream, settings: &Settings, counters: Counters, h2: bool) -> Watched {
        Watched {
            inner,
            news: AtomicU8::new(NO_NEWS),
            // The first head is timed from the connection's start: a client that connects and
            // sends nothing is as slow as one that sends half a head.
            phase: if h2 {
                Phase::Off
            } else {
                Phase::Head { started: false }
            },
            h2,
            header_timeout: settings.header_timeout,
            keepalive_timeout: settings.keepalive_timeout,
            deadline: Box::pin(tokio::time::sleep(settings.header_timeout)),
            counters,
        }
    }

    /// Applies what the proxy phases reported since the last read.
    fn take_news(&mut self) {
        match self.news.swap(NO_NEWS, Ordering::AcqRel) {
            HEAD_DONE if self.phase != Phase::Cut => self.phase = Phase::Off,
            AWAIT_NEXT if self.phase != Phase::Cut && !self.h2 => {
                self.phase = Phase::Idle;
                self.deadline
                    .as_mut()
                    .reset(Instant::now() + self.keepalive_timeout);
            }
            _ => {}
        }
    }

    /// The deadline passed: counts it once and says how the read ends. A connection that
    /// sent nothing ends like a client's close (Pingora closes it quietly); one that sent part
    /// of a head ends with a timeout error.
    fn cut(&mut self) -> Poll<std::io::Result<()>> {
        let phase = self.phase;
        self.phase = Phase::Cut;
        match phase {
            Phase::Idle => {
                self.counters.keepalive_timeout.inc();
                tracing::debug!("idle keep-alive connection closed (keepalive_timeout_secs)");
                Poll::Ready(Ok(()))
            }
            Phase::Head { started } => {
                self.counters.header_timeout.inc();
                tracing::debug!(
                    started,
                    "request head not complete in time (header_timeout_secs): connection closed"
                );
                if started {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request head not complete within server.header_timeout_secs",
                    )))
                } else {
                    Poll::Ready(Ok(()))
                }
            }
            Phase::Off | Phase::Cut => Poll::Ready(Ok(())),
        }
    }
}

fn watched(session: &Session) -> Option<&Watched> {
    session
        .as_downstream()
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<Watched>())
}

/// Called when a request's head has been read: its deadline no longer applies.
pub fn head_done(session: &Session) {
    if let Some(w) = watched(session) {
        w.news.store(HEAD_DONE, Ordering::Release);
    }
}

/// Called when a request is over: the connection is idle until the next request's first
/// byte (then that head is timed), for at most `keepalive_timeout_secs`.
pub fn await_next(session: &Session) {
    if let Some(w) = watched(session) {
        w.news.store(AWAIT_NEXT, Ordering::Release);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.take_news();
        match this.phase {
            Phase::Off => return Pin::new(&mut this.inner).poll_read(cx, buf),
            Phase::Cut => return Poll::Ready(Ok(())),
            Phase::Head { .. } | Phase::Idle => {}
        }
        if this.deadline.is_elapsed() {
            return this.cut();
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    match this.phase {
                        Phase::Idle => {
                            this.phase = Phase::Head { started: true };
                            this.deadline
                                .as_mut()
                                .reset(Instant::now() + this.header_timeout);
                        }
                        Phase::Head { .. } => this.phase = Phase::Head { started: true },
                        Phase::Off | Phase::Cut => {}
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => this.cut(),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Watched {
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

#[async_trait]
impl Shutdown for Watched {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Watched {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Watched {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Watched {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Watched {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Watched {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Watched {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
