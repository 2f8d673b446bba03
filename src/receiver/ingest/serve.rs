//! The webhook listener's front door: how much of the receiver one client
//! may hold. `axum::serve` has no header timeout and no cap on connections,
//! so a few thousand slow clients could exhaust a receiver; this serves each
//! connection with hyper itself (HTTP/1.1, which GitHub speaks):
//!
//! - a request's headers must arrive within `header_timeout`, counted from
//!   its first byte (a slow client trickling headers is cut off);
//! - a kept-alive connection may stay idle between requests for
//!   `idle_timeout`, longer than a load balancer or proxy in front keeps its
//!   own idle connections to the receiver (60 s for AWS ALB and ingress-nginx,
//!   600 s for Google's): a server that closes an idle connection first races
//!   the proxy's next request on it, and that request fails (a 502 GitHub
//!   records as a failed delivery). hyper's own header timeout counts from
//!   when it starts waiting for a request, idle time included, so it is set
//!   to `idle_timeout` and the header deadline is kept here (`HeadClock`);
//! - the body must arrive within `body_timeout` (408, in `http::accept`);
//! - at most `max_connections` connections are open: one more is answered
//!   503 and closed at once;
//! - at most `max_in_flight` deliveries are handled at a time: one more is
//!   answered 503 with `Retry-After`, before anything is read or verified
//!   (in `http::router`; probes and metrics are not limited).
//!
//! On shutdown it closes the listener, so that a connection still routed
//! here is refused at once rather than left unanswered, and open connections
//! finish the request they are in and close (hyper's graceful shutdown).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpListener,
    sync::Semaphore,
    time::Instant,
};

use crate::telemetry::ReceiverMetrics;

/// What one client may hold; see the module header.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_in_flight: usize,
    /// Bytes of bodies held before their signature is checked, across
    /// every connection (see [`super::body_budget`]).
    pub unauthenticated_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(620),
            body_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_in_flight: 1024,
            unauthenticated_bytes: super::body_budget::DEFAULT_UNAUTHENTICATED_BYTES,
        }
    }
}

/// The answer to a connection beyond `max_connections`, written before the
/// request is even read.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\n\
content-type: application/json\r\ncontent-length: 46\r\n\r\n{\"error\":\"too many connections; retry later\"}\n";

/// Serves `app` on `listener` within `limits` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<ReceiverMetrics>,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // NB: e.g. out of file descriptors; keep serving the open ones.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // NB: an answer goes out at once, not after the client's delayed ACK
        // of the one before (Nagle's algorithm; Node's http server sets this too).
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics.rejected.with_label_values(&["too_many_connections"]).inc();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(TOO_MANY_CONNECTIONS))
                    .await;
            });
            continue;
        };
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(limits.idle_timeout);
        let clock = Arc::new(HeadClock::default());
        // The peer's address, for the per-source failure limit.
        let app = app.clone().layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let app = TowerToHyperService::new(app);
        let marks = clock.clone();
        // The head is read once the router has the request; idle again once it answered.
        let service = hyper::service::service_fn(move |request| {
            marks.set(PAST_HEAD);
            let answer = hyper::service::Service::call(&app, request);
            let marks = marks.clone();
            async move {
                let answer = answer.await;
                marks.set(IDLE);
                answer
            }
        });
        let io = TokioIo::new(Clocked { inner: stream, clock: clock.clone() });
        let connection = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            // A closed or timed-out connection is the client's business;
            // one whose headers are late is dropped, which closes it.
            tokio::select! {
                _ = connection => {}
                () = clock.expired(limits.header_timeout) => {}
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Where one connection is in its current request, for the header deadline:
/// idle, reading a request's head since its first byte, or past the head
/// (its body and answer are bounded elsewhere). Marking costs an atomic
/// store; nothing is woken per request: the watch ([`HeadClock::expired`])
/// looks every `header_timeout`, which finds any head before its deadline.
#[derive(Debug)]
struct HeadClock {
    /// `IDLE`, `PAST_HEAD`, or when the head's first byte arrived (µs after `epoch`, + 1).
    state: AtomicU64,
    epoch: Instant,
}

const IDLE: u64 = 0;
const PAST_HEAD: u64 = u64::MAX;

impl Default for HeadClock {
    fn default() -> Self {
        Self { state: AtomicU64::new(IDLE), epoch: Instant::now() }
    }
}

impl HeadClock {
    /// Bytes arrived: if the connection was idle, a request's head begins.
    fn bytes_arrived(&self) {
        if self.state.load(Ordering::Relaxed) == IDLE {
            let now = self.epoch.elapsed().as_micros() as u64 + 1;
            let _ = self.state.compare_exchange(IDLE, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn set(&self, state: u64) {
        self.state.store(state, Ordering::Relaxed);
    }

    /// Completes when a request's head has been arriving for `limit`: a head
    /// that began after one look is seen at the next, `limit` later, before
    /// its deadline, which is then awaited exactly.
    async fn expired(&self, limit: Duration) {
        loop {
            match self.state.load(Ordering::Relaxed) {
                IDLE | PAST_HEAD => tokio::time::sleep(limit).await,
                began => {
                    let deadline = self.epoch + Duration::from_micros(began - 1) + limit;
                    tokio::time::sleep_until(deadline).await;
                    if self.state.load(Ordering::Relaxed) == began {
                        return;
                    }
                }
            }
        }
    }
}

/// A connection's socket that tells its [`HeadClock`] when bytes arrive.
struct Clocked<S> {
    inner: S,
    clock: Arc<HeadClock>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Clocked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_arrived();
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Clocked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
