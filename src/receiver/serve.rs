//! The webhook listener's front door: how much of the receiver one client
//! may hold. `axum::serve` has no header timeout and no cap on connections,
//! so a few thousand slow clients could exhaust a receiver; this serves each
//! connection with hyper itself (HTTP/1.1, which GitHub speaks):
//!
//! - the request's headers must arrive within `header_timeout`, counted from
//!   when the receiver starts waiting for them, so the same limit closes a
//!   kept-alive connection left idle that long (hyper's header read timeout);
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

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{io::AsyncWriteExt, net::TcpListener, sync::Semaphore};

use crate::telemetry::ReceiverMetrics;

/// What one client may hold; see the module header.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_in_flight: 1024,
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
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics.rejected.with_label_values(&["too_many_connections"]).inc();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(TOO_MANY_CONNECTIONS))
                    .await;
            });
            continue;
        };
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
        // The peer's address, for the per-source failure limit.
        let app = app.clone().layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app)));
        tokio::spawn(async move {
            // A closed or timed-out connection is the client's business.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
