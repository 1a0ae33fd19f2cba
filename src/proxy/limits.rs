//! Client connection limits Pingora does not have: a cap on open client connections (in all
//! and per client address), a deadline for the TLS handshake, a total time for each request
//! head (slowloris) and for an HTTP/2 connection's preface, and an idle time for keep-alive
//! connections.
//!
//! [`Limited`] wraps the proxy application as a Pingora [`ServerApp`]: it admits every client
//! connection of the proxy listeners (plain and TLS) as soon as it is accepted, before the TLS
//! handshake, counts it for `server.max_connections` and `server.max_connections_per_ip` until
//! it closes, bounds the handshake by `server.header_timeout_secs` (through the hooks of our
//! pingora-core patch), and hands the application a [`Watched`] stream. The
//! stream enforces the head and idle deadlines at the socket: a read past the deadline ends the
//! connection, however Pingora is reading the head, one byte at a time included. The proxy
//! phases tell the stream where a request is: [`head_done`] when its head has been read (the
//! deadline is off while the body and the response run; the body has its own per-read timeout)
//! and [`await_next`] when it is over (the connection is then idle until the next request's
//! first byte, which starts that request's head deadline).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{ConnectionGuard, ServerApp};
use pingora::protocols::l4::socket::SocketAddr;
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
    /// Most connections open at once from one client address; `0` = no limit.
    pub max_connections_per_ip: usize,
    /// Total time for one request head, for the TLS handshake, and for an HTTP/2 preface.
    pub header_timeout: Duration,
    /// Idle time between two requests of a keep-alive connection.
    pub keepalive_timeout: Duration,
}

impl Settings {
    /// From `[server]`.
    pub fn new(server: &Server) -> Settings {
        Settings {
            max_connections: server.max_connections,
            max_connections_per_ip: server.max_connections_per_ip,
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
    max_connections_per_ip: IntCounter,
    handshake_timeout: IntCounter,
    handshake_errors: IntCounter,
    open: IntGauge,
}

/// Open connections, in all and by client address.
#[derive(Debug, Default)]
struct Open {
    total: AtomicUsize,
    /// Only kept when `max_connections_per_ip` is set; an address leaves when its last
    /// connection closes, so the map holds at most the open connections' addresses.
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A Pingora application (the proxy) behind the connection limits of [`Settings`].
pub struct Limited<A> {
    inner: Arc<A>,
    settings: Settings,
    counters: Counters,
    open: Arc<Open>,
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
                max_connections_per_ip: counter("max_connections_per_ip"),
                handshake_timeout: counter("handshake_timeout"),
                handshake_errors: metrics.tls_handshake_errors.clone(),
                open: metrics.open_connections.clone(),
            },
            open: Arc::new(Open::default()),
        }
    }

    /// Takes a slot for a connection from `ip`, or says which limit refuses it.
    fn admit(&self, ip: Option<IpAddr>) -> Result<Slot, &'static str> {
        let mut slot = Slot {
            open: self.open.clone(),
            gauge: self.counters.open.clone(),
            ip: None,
        };
        self.counters.open.inc();
        let before = self.open.total.fetch_add(1, Ordering::AcqRel);
        let max = self.settings.max_connections;
        if max > 0 && before >= max {
            return Err("max_connections");
        }
        let per_ip = self.settings.max_connections_per_ip;
        match ip {
            Some(ip) if per_ip > 0 => {
                let mut by_ip = self.open.by_ip.lock().unwrap_or_else(|e| e.into_inner());
                let n = by_ip.entry(ip).or_insert(0);
                if *n >= per_ip {
                    return Err("max_connections_per_ip");
                }
                *n += 1;
                slot.ip = Some(ip);
                Ok(slot)
            }
            _ => Ok(slot),
        }
    }
}

/// Gives the connection slot back when the connection ends, however it ends (also when it
/// was refused: the count was taken before the check).
struct Slot {
    open: Arc<Open>,
    gauge: IntGauge,
    /// Counted in `by_ip` under this address.
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.total.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
        if let Some(ip) = self.ip {
            let mut by_ip = self.open.by_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
    }
}

#[async_trait]
impl<A> ServerApp for Limited<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    fn accepted(&self, peer: Option<&SocketAddr>) -> Option<ConnectionGuard> {
        match self.admit(peer.and_then(|p| p.as_inet()).map(|a| a.ip())) {
            Ok(slot) => Some(Box::new(slot)),
            Err(limit) => {
                // Closed before a byte is read (the TLS handshake included): the cheapest
                // answer, and the one that cannot be misread.
                match limit {
                    "max_connections" => self.counters.max_connections.inc(),
                    _ => self.counters.max_connections_per_ip.inc(),
                }
                tracing::debug!(limit, "connection limit reached: connection closed");
                None
            }
        }
    }

    fn handshake_timeout(&self) -> Duration {
        self.settings.header_timeout
    }

    fn handshake_failed(&self, _peer: Option<&SocketAddr>, error: Option<&pingora::Error>) {
        // A scanner, a plain-HTTP probe or an aborted client: counted, logged below ERROR so
        // that nobody can flood the log with handshakes.
        match error {
            Some(e) => {
                self.counters.handshake_errors.inc();
                tracing::debug!(error = %e, "TLS handshake failed");
            }
            None => {
                self.counters.handshake_timeout.inc();
                tracing::debug!("TLS handshake not complete in time (header_timeout_secs)");
            }
        }
    }

    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // The connection's slot is held by the listener task since `accepted`.
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let watched = Watched::new(stream, &self.settings, self.counters.clone(), h2);
        // The proxy serves every request of a connection (keep-alive included) inside this
        // call and returns None.
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
    /// A request head (on HTTP/2: the connection preface and the first SETTINGS frame) is
    /// being read; `started` once a byte of it has arrived.
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
    /// HTTP/2: only the opening is timed here; then Pingora's h2 idle timeout applies.
    h2: bool,
    /// HTTP/2: how far the opening has arrived.
    opening: H2Opening,
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
            // The first head is timed from the connection's start (after the TLS handshake,
            // which has its own deadline): a client that connects and sends nothing is as slow
            // as one that sends half a head. On HTTP/2 the "head" is the connection's opening:
            // without this deadline a client that completes TLS and sends nothing would hold
            // its connection slot forever (h2's idle timeout starts after the preface).
            phase: Phase::Head { started: false },
            h2,
            opening: H2Opening::default(),
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

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE_LEN: usize = 24;
/// An HTTP/2 frame header: 24-bit length, type, flags, stream id.
const H2_FRAME_HEADER_LEN: usize = 9;

/// How much of an HTTP/2 client's opening (the preface, then its first frame, which must be
/// SETTINGS) has arrived; the content is Pingora's to check, only the length matters here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct H2Opening {
    /// Bytes seen so far.
    seen: usize,
    /// The first frame header's bytes, as they arrive.
    frame_header: [u8; H2_FRAME_HEADER_LEN],
}

impl H2Opening {
    /// Takes the next bytes read; true once the whole opening has arrived.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if let Some(i) = self.seen.checked_sub(H2_PREFACE_LEN)
                && let Some(slot) = self.frame_header.get_mut(i)
            {
                *slot = b;
            }
            self.seen += 1;
            if self.complete() {
                return true;
            }
        }
        self.complete()
    }

    fn complete(&self) -> bool {
        let header_end = H2_PREFACE_LEN + H2_FRAME_HEADER_LEN;
        if self.seen < header_end {
            return false;
        }
        let [a, b, c, ..] = self.frame_header;
        let payload = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
        self.seen >= header_end + payload
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
                        Phase::Head { .. } if this.h2 => {
                            this.phase = if this.opening.feed(&buf.filled()[before..]) {
                                Phase::Off
                            } else {
                                Phase::Head { started: true }
                            };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's opening: the preface, then a SETTINGS frame with `payload` bytes.
    fn opening(payload: usize) -> Vec<u8> {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let len = (payload as u32).to_be_bytes();
        bytes.extend_from_slice(&[len[1], len[2], len[3], 0x04, 0, 0, 0, 0, 0]);
        bytes.extend(std::iter::repeat_n(0u8, payload));
        bytes
    }

    #[test]
    fn the_h2_opening_is_complete_after_the_preface_and_the_whole_first_frame() {
        for payload in [0, 6, 18, 300] {
            let bytes = opening(payload);
            // All at once, and one byte at a time: complete exactly at the last byte.
            let mut whole = H2Opening::default();
            assert!(whole.feed(&bytes), "{payload}");
            let mut trickled = H2Opening::default();
            for (i, b) in bytes.iter().enumerate() {
                let done = trickled.feed(&[*b]);
                assert_eq!(done, i == bytes.len() - 1, "payload {payload}, byte {i}");
            }
        }
        // The preface alone, or with half a frame header, is not an opening yet.
        let mut part = H2Opening::default();
        assert!(!part.feed(&opening(6)[..24]));
        assert!(!part.feed(&opening(6)[24..28]));
        assert!(part.feed(&opening(6)[28..]));
    }
}
