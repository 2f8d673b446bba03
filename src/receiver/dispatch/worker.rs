//! The worker of one policy: a loop of phases — follow the settings, reap
//! finished dispatches, housekeeping (promote due retries, reclaim a stalled
//! consumer's entries, prune departed consumers), start dispatches, wait —
//! until stopped, then drain within the grace period.
//!
//! How many dispatches start is the pure [`free_slots`]: the kill switch and
//! the concurrency, live.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{Dispatcher, HOUSEKEEPING, due_instant};
use crate::{
    ObjectRef,
    queue::{Entry, Queue},
    receiver::registry::PolicySettings,
};

/// Consumers idle this long with nothing pending are removed from the group.
const PRUNE_IDLE_MS: u64 = 3_600_000;
const PRUNE_EVERY: Duration = Duration::from_secs(300);
const RECLAIM_EVERY: Duration = Duration::from_secs(5);

/// Dispatches that may start now: none while the policy is disabled (the
/// kill switch), else what `concurrency` leaves beside those in flight.
pub fn free_slots(settings: &PolicySettings, in_flight: usize) -> usize {
    if settings.enabled { settings.concurrency.saturating_sub(in_flight) } else { 0 }
}

struct Worker {
    dispatcher: Arc<Dispatcher>,
    policy: ObjectRef,
    label: String,
    /// Its own connection: a blocking XREADGROUP holds it.
    reader: Queue,
    inflight: JoinSet<Option<u64>>,
    /// Read but not started (the switch went off, or no slot was free).
    held: VecDeque<Entry>,
    next_housekeeping: Instant,
    next_promote: Instant,
    next_reclaim: Instant,
    next_prune: Instant,
    /// The settings the metric series were made for.
    series_for: Option<Arc<PolicySettings>>,
}

pub(super) async fn run(dispatcher: Arc<Dispatcher>, policy: ObjectRef, stop: CancellationToken) {
    let Some(mut settings_rx) = dispatcher.registry.subscribe_policy(&policy) else { return };
    let Some(reader) = connect(&dispatcher, &policy, &stop).await else { return };
    tracing::info!(%policy, consumer = %dispatcher.config.consumer, "worker started");
    let now = Instant::now();
    let mut w = Worker {
        label: policy.to_string(),
        dispatcher,
        policy,
        reader,
        inflight: JoinSet::new(),
        held: VecDeque::new(),
        next_housekeeping: now,
        next_promote: now,
        next_reclaim: now,
        next_prune: now + Duration::from_secs(60),
        series_for: None,
    };
    while !stop.is_cancelled() {
        let settings = settings_rx.borrow_and_update().clone();
        w.follow(&settings);
        w.reap();
        w.housekeeping(&settings).await;
        let free = free_slots(&settings, w.inflight.len());
        if free > 0 && !w.held.is_empty() {
            w.start_held(free);
        } else if free > 0 {
            w.read(free).await;
        } else {
            tokio::select! {
                _ = stop.cancelled() => {}
                changed = settings_rx.changed() => if changed.is_err() { break },
                Some(done) = w.inflight.join_next(), if !w.inflight.is_empty() => w.finished(done),
                _ = tokio::time::sleep_until(w.next_housekeeping.min(w.next_promote)) => {}
            }
        }
    }
    w.drain().await;
}

/// The worker's reading connection, with the consumer group in place;
/// `None` when stopped first.
async fn connect(d: &Dispatcher, policy: &ObjectRef, stop: &CancellationToken) -> Option<Queue> {
    loop {
        match Queue::connect(&d.config.redis_url, &d.config.redis_prefix).await {
            Ok(q) => match q.ensure_group(policy).await {
                Ok(()) => return Some(q),
                Err(error) => tracing::warn!(%policy, %error, "cannot create consumer group; retrying"),
            },
            Err(error) => tracing::warn!(%policy, %error, "cannot connect to redis; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

impl Worker {
    /// Follows changed settings: the switch gauge, the series of new agents.
    fn follow(&mut self, settings: &Arc<PolicySettings>) {
        let m = &self.dispatcher.metrics;
        m.agents_enabled.with_label_values(&[&self.label]).set(i64::from(settings.enabled));
        if !self.series_for.as_ref().is_some_and(|s| Arc::ptr_eq(s, settings)) {
            self.dispatcher.create_series(&self.label, settings);
            self.series_for = Some(settings.clone());
        }
    }

    /// Collects the dispatches that finished.
    fn reap(&mut self) {
        while let Some(done) = self.inflight.try_join_next() {
            self.finished(done);
        }
    }

    /// A dispatch finished; a retry it scheduled moves the next promotion up.
    fn finished(&mut self, done: Result<Option<u64>, tokio::task::JoinError>) {
        match done {
            Ok(retry_due) => self.next_promote = self.next_promote.min(due_instant(retry_due)),
            Err(error) => tracing::error!(policy = %self.policy, %error, "dispatch task failed"),
        }
    }

    async fn housekeeping(&mut self, settings: &PolicySettings) {
        let now = Instant::now();
        if now >= self.next_promote || now >= self.next_housekeeping {
            self.next_promote = self.dispatcher.promote(&self.policy).await.min(now + HOUSEKEEPING);
        }
        if now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now + HOUSEKEEPING;
        let (d, policy) = (&self.dispatcher, &self.policy);
        // NB: an agent removed from the policy leaves no breaker behind.
        d.prune_breakers();
        if now >= self.next_prune {
            self.next_prune = now + PRUNE_EVERY;
            match d.queue.prune_consumers(policy, &d.config.consumer, PRUNE_IDLE_MS).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(%policy, removed = n, "pruned consumers of departed replicas"),
                Err(error) => tracing::warn!(%policy, %error, "could not prune consumers"),
            }
        }
        if now >= self.next_reclaim {
            self.next_reclaim = now + RECLAIM_EVERY;
            let idle = d.reclaim_idle(settings).as_millis() as u64;
            match self.reader.reclaim(policy, &d.config.consumer, idle, 100).await {
                Ok(entries) if !entries.is_empty() => {
                    tracing::info!(%policy, count = entries.len(), "reclaimed entries of a stalled consumer");
                    self.held.extend(entries);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%policy, %error, "reclaim failed"),
            }
        }
    }

    fn start_held(&mut self, free: usize) {
        for entry in self.held.drain(..free.min(self.held.len())) {
            self.inflight.spawn(self.dispatcher.clone().process(self.policy.clone(), entry));
        }
    }

    /// Reads up to `free` new entries, waiting at most until the next
    /// promotion is due. Not cancelled midway: entries read are always either
    /// dispatched or held.
    async fn read(&mut self, free: usize) {
        let d = &self.dispatcher;
        let block = d.config.read_block.min(self.next_promote.saturating_duration_since(Instant::now()));
        // NB: BLOCK 0 would wait forever.
        let block_ms = (block.as_millis() as u64).max(1);
        match self.reader.read(&self.policy, &d.config.consumer, free, block_ms).await {
            Ok(entries) => self.held.extend(entries),
            Err(error) => {
                tracing::warn!(policy = %self.policy, %error, "queue read failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// Lets in-flight dispatches finish within the grace period. Held
    /// entries stay pending in Redis: another replica reclaims them.
    async fn drain(mut self) {
        let policy = &self.policy;
        let grace = self.dispatcher.config.shutdown_grace;
        let drained =
            tokio::time::timeout(grace, async { while self.inflight.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(%policy, unfinished = self.inflight.len(), "grace period over; unfinished entries will be reclaimed");
            self.inflight.abort_all();
        }
        tracing::info!(%policy, "worker stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CircuitBreaker, RetryPolicy};

    fn settings(enabled: bool, concurrency: usize) -> PolicySettings {
        PolicySettings {
            enabled,
            concurrency,
            queue_limit: 10,
            reason: String::new(),
            agents: vec![],
            circuit_breaker: CircuitBreaker::default(),
            retry: RetryPolicy::default(),
            filters: Default::default(),
        }
    }

    #[test]
    fn the_kill_switch_and_concurrency_decide_what_starts() {
        let cases = [
            ("disabled: nothing new, however idle", settings(false, 8), 0, 0),
            ("disabled with work in flight: still nothing", settings(false, 8), 3, 0),
            ("enabled and idle: the concurrency", settings(true, 8), 0, 8),
            ("enabled: what is left beside those in flight", settings(true, 8), 5, 3),
            ("concurrency lowered below those in flight: none until they finish", settings(true, 2), 5, 0),
        ];
        for (what, settings, in_flight, want) in cases {
            assert_eq!(free_slots(&settings, in_flight), want, "{what}");
        }
    }
}
