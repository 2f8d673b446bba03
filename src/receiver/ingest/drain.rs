//! Draining: from SIGTERM until the webhook listener closes.
//!
//! Kubernetes sends SIGTERM and takes the pod out of the Service at the same
//! time, but the rules that route to it (kube-proxy's, an ingress
//! controller's) catch up later, by a moment on an idle node and by seconds
//! on a loaded one; until they do, new connections still arrive, and a closed
//! port would make GitHub record a failed delivery. So a draining receiver is
//! not ready, answers every request with `Connection: close`, and keeps
//! accepting deliveries for the shutdown delay, and past it for as long as
//! deliveries still arrive: it closes the listener once none came for
//! [`QUIET`], at the latest at twice the delay.

use std::{
    sync::{Mutex, OnceLock},
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// No delivery for this long after the delay: nothing routes here any more.
pub const QUIET: Duration = Duration::from_secs(1);

/// When a receiver that began draining at `since`, with shutdown delay
/// `delay`, stops accepting connections, given when the last delivery
/// arrived while draining: at the end of the delay, or `QUIET` after the
/// last delivery if that is later, but no later than twice the delay.
pub fn stop_accepting_at(since: Instant, delay: Duration, last_delivery: Option<Instant>) -> Instant {
    let end_of_delay = since + delay;
    let quiet = last_delivery.map_or(end_of_delay, |last| (last + QUIET).max(end_of_delay));
    quiet.min(since + delay * 2)
}

/// One receiver's drain, shared by the listener and the handlers.
#[derive(Debug, Default)]
pub struct Drain {
    started: CancellationToken,
    since: OnceLock<Instant>,
    last_delivery: Mutex<Option<Instant>>,
}

impl Drain {
    /// SIGTERM: from now on not ready, and every answer closes its connection.
    pub fn begin(&self) {
        self.since.get_or_init(Instant::now);
        self.started.cancel();
    }

    /// An atomic load: asked on every answer (a token's own check takes a lock).
    pub fn is_draining(&self) -> bool {
        self.since.get().is_some()
    }

    /// A delivery arrived (counts only while draining).
    pub fn saw_delivery(&self) {
        if self.is_draining() {
            *self.last_delivery.lock().unwrap() = Some(Instant::now());
        }
    }

    /// Completes when the listener may close (see the module header), with
    /// how long the drain took; pending until the drain begins.
    pub async fn settled(&self, delay: Duration) -> Duration {
        self.started.cancelled().await;
        let since = *self.since.get().expect("set before the token is cancelled");
        loop {
            let at = stop_accepting_at(since, delay, *self.last_delivery.lock().unwrap());
            if Instant::now() >= at {
                return since.elapsed();
            }
            tokio::time::sleep_until(at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_closes_after_the_delay_once_deliveries_stop_coming() {
        let since = Instant::now();
        let delay = Duration::from_secs(5);
        let s = |secs: f64| since + Duration::from_secs_f64(secs);
        // (last delivery while draining, when the listener closes)
        let table = [
            (None, s(5.0)),           // nothing came: at the end of the delay
            (Some(s(1.0)), s(5.0)),   // traffic stopped early on
            (Some(s(3.9)), s(5.0)),   // quiet for QUIET by the end of the delay
            (Some(s(4.5)), s(5.5)),   // still coming near the end: QUIET after the last
            (Some(s(7.25)), s(8.25)), // routed here past the delay: wait until it stops
            (Some(s(9.5)), s(10.0)),  // never quiet: at twice the delay
        ];
        for (last, expected) in table {
            assert_eq!(stop_accepting_at(since, delay, last), expected, "last delivery {last:?}");
        }
        assert_eq!(stop_accepting_at(since, Duration::ZERO, Some(since)), since, "no delay: at once");
    }

    #[tokio::test(start_paused = true)]
    async fn settled_waits_for_quiet_past_the_delay() {
        let drain = std::sync::Arc::new(Drain::default());
        drain.saw_delivery();
        assert!(drain.last_delivery.lock().unwrap().is_none(), "a delivery before the drain does not count");
        drain.begin();
        let start = Instant::now();
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.settled(Duration::from_secs(2)).await }
        });
        tokio::time::sleep(Duration::from_millis(1_800)).await;
        drain.saw_delivery();
        let drained = waiter.await.unwrap();
        let waited = start.elapsed();
        assert!(
            (Duration::from_millis(2_800)..Duration::from_millis(2_900)).contains(&waited),
            "settled after {waited:?}, expected QUIET after the last delivery at 1.8 s"
        );
        assert_eq!(drained, waited, "it says how long it drained");
    }
}
