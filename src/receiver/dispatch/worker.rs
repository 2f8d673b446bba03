//! The workers of one policy: its router, which reads each delivery once
//! from the policy's stream and routes it into the lanes of the agents its
//! filters let it go to, and one worker per lane, which calls its agent.
//! Each is a loop of phases — follow the settings, reap finished
//! dispatches, housekeeping (the router promotes due retries and starts the
//! lanes' workers; every worker reclaims a stalled consumer's entries and
//! prunes departed consumers), start dispatches, wait — until stopped, then
//! drain within the grace period. A lane's worker whose agent left the
//! policy dead-letters what is left in it, then retires the lane.
//!
//! How many dispatches start is the pure [`free_slots`]: the kill switch,
//! the agent's own switch and the concurrency, live.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

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
/// How often the router looks in Redis for lanes of agents no longer in
/// the policy (left with deliveries, say by a replica that restarted).
const LANE_SCAN_EVERY: Duration = Duration::from_secs(10);
/// Deliveries a router routes at once: routing calls no agent.
const ROUTING: usize = 16;

/// Dispatches that may start now: none while the policy is disabled (the
/// kill switch); for the router ([`None`]) a batch of routings; for an
/// agent's lane none while the agent is switched off, else what the
/// policy's `concurrency` leaves beside those in flight (a lane whose agent
/// left the policy drains into dead letters at the same pace).
pub fn free_slots(settings: &PolicySettings, lane: Option<&str>, in_flight: usize) -> usize {
    let on = match lane {
        None => return if settings.enabled { ROUTING.saturating_sub(in_flight) } else { 0 },
        Some(agent) => settings.enabled && settings.agents.iter().all(|a| a.name != agent || a.enabled),
    };
    if on { settings.concurrency.saturating_sub(in_flight) } else { 0 }
}

struct Worker {
    dispatcher: Arc<Dispatcher>,
    policy: ObjectRef,
    /// The agent whose lane this worker reads; `None`: the router.
    lane: Option<String>,
    /// The router's lane workers, by agent.
    lanes: Lanes,
    stop: CancellationToken,
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

/// The lane workers a router started, and when it looks for more.
#[derive(Default)]
struct Lanes {
    tasks: JoinSet<String>,
    running: HashSet<String>,
    next_scan: Option<Instant>,
}

/// Runs `policy`'s router, and through it the workers of its lanes.
pub(super) async fn run(dispatcher: Arc<Dispatcher>, policy: ObjectRef, stop: CancellationToken) {
    run_worker(dispatcher, policy, None, stop).await;
}

/// Runs the worker of `policy`'s stream (`lane` none: the router) or of an
/// agent's lane; returns the lane's agent when it ends.
async fn run_worker(
    dispatcher: Arc<Dispatcher>,
    policy: ObjectRef,
    lane: Option<String>,
    stop: CancellationToken,
) -> String {
    let name = lane.clone().unwrap_or_default();
    let Some(mut settings_rx) = dispatcher.registry.subscribe_policy(&policy) else { return name };
    let Some(reader) = connect(&dispatcher, &policy, lane.as_deref(), &stop).await else { return name };
    tracing::info!(%policy, lane, consumer = %dispatcher.config.consumer, "worker started");
    let now = Instant::now();
    let w_is_router = lane.is_none();
    let mut w = Worker {
        label: policy.to_string(),
        dispatcher,
        policy,
        lane,
        lanes: Lanes::default(),
        stop: stop.clone(),
        reader,
        inflight: JoinSet::new(),
        held: VecDeque::new(),
        next_housekeeping: now,
        // NB: only the router promotes; a lane tells it when its retries are due.
        next_promote: if w_is_router { now } else { now + Duration::from_secs(86_400) },
        next_reclaim: now,
        next_prune: now + Duration::from_secs(60),
        series_for: None,
    };
    while !stop.is_cancelled() {
        let settings = settings_rx.borrow_and_update().clone();
        w.follow(&settings);
        w.reap();
        w.housekeeping(&settings).await;
        let free = free_slots(&settings, w.lane.as_deref(), w.inflight.len());
        if free > 0 && !w.held.is_empty() {
            w.start_held(free);
        } else if free > 0 {
            if w.read(free).await == 0 && w.retire(&settings).await {
                break;
            }
        } else {
            tokio::select! {
                _ = stop.cancelled() => {}
                changed = settings_rx.changed() => if changed.is_err() { break },
                Some(done) = w.inflight.join_next(), if !w.inflight.is_empty() => w.finished(done),
                Some(lane) = w.lanes.tasks.join_next(), if !w.lanes.tasks.is_empty() => w.lane_ended(lane),
                _ = tokio::time::sleep_until(w.next_housekeeping.min(w.next_promote)) => {}
            }
        }
    }
    w.drain().await
}

/// The worker's reading connection, with the consumer group in place;
/// `None` when stopped first.
async fn connect(
    d: &Dispatcher,
    policy: &ObjectRef,
    lane: Option<&str>,
    stop: &CancellationToken,
) -> Option<Queue> {
    loop {
        match Queue::connect(&d.config.redis_url, &d.config.redis_prefix).await {
            Ok(q) => match q.ensure_group(policy, lane).await {
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
    /// Follows changed settings: the router starts the lanes of new
    /// agents and keeps the switch gauge and the series of new agents.
    fn follow(&mut self, settings: &Arc<PolicySettings>) {
        if self.lane.is_some() {
            return;
        }
        for agent in &settings.agents {
            self.start_lane(&agent.name);
        }
        let m = &self.dispatcher.metrics;
        m.agents_enabled.with_label_values(&[&self.label]).set(i64::from(settings.enabled));
        if !self.series_for.as_ref().is_some_and(|s| Arc::ptr_eq(s, settings)) {
            self.dispatcher.create_series(&self.label, settings);
            self.series_for = Some(settings.clone());
        }
    }

    /// Starts the worker of `agent`'s lane unless it runs.
    fn start_lane(&mut self, agent: &str) {
        if self.lanes.running.insert(agent.to_owned()) {
            let (d, policy, stop) = (self.dispatcher.clone(), self.policy.clone(), self.stop.child_token());
            self.lanes.tasks.spawn(run_worker(d, policy, Some(agent.to_owned()), stop));
        }
    }

    /// A lane's worker ended (its lane retired, or it was stopped).
    fn lane_ended(&mut self, ended: Result<String, tokio::task::JoinError>) {
        match ended {
            Ok(agent) => {
                self.lanes.running.remove(&agent);
            }
            // NB: a lane whose worker failed is started again by the next scan.
            Err(error) => tracing::error!(policy = %self.policy, %error, "lane worker failed"),
        }
    }

    /// Collects the dispatches (and the router's lane workers) that finished.
    fn reap(&mut self) {
        while let Some(done) = self.inflight.try_join_next() {
            self.finished(done);
        }
        while let Some(ended) = self.lanes.tasks.try_join_next() {
            self.lane_ended(ended);
        }
    }

    /// For a lane whose agent left the policy, with nothing held or in
    /// flight: deletes the lane if it is empty; true when it did.
    async fn retire(&mut self, settings: &PolicySettings) -> bool {
        let Some(agent) = &self.lane else { return false };
        if settings.agents.iter().any(|a| &a.name == agent)
            || !self.held.is_empty()
            || !self.inflight.is_empty()
        {
            return false;
        }
        match self.dispatcher.queue.retire_lane(&self.policy, agent).await {
            Ok(retired) => {
                if retired {
                    tracing::info!(policy = %self.policy, agent, "lane of an agent no longer in the policy retired");
                }
                retired
            }
            Err(error) => {
                tracing::warn!(policy = %self.policy, agent, %error, "could not retire a lane");
                false
            }
        }
    }

    /// A dispatch finished; a retry it scheduled moves the next promotion up.
    fn finished(&mut self, done: Result<Option<u64>, tokio::task::JoinError>) {
        match done {
            Ok(Some(due)) if self.lane.is_some() => self.dispatcher.note_retry(&self.policy, due),
            Ok(retry_due) => self.next_promote = self.next_promote.min(due_instant(retry_due)),
            Err(error) => tracing::error!(policy = %self.policy, %error, "dispatch task failed"),
        }
    }

    async fn housekeeping(&mut self, settings: &PolicySettings) {
        let now = Instant::now();
        let router = self.lane.is_none();
        if router && let Some(due) = self.dispatcher.retry_due(&self.policy) {
            self.next_promote = self.next_promote.min(due_instant(Some(due)));
        }
        if router && (now >= self.next_promote || now >= self.next_housekeeping) {
            self.next_promote = self.dispatcher.promote(&self.policy).await.min(now + HOUSEKEEPING);
        }
        if now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now + HOUSEKEEPING;
        if router && self.lanes.next_scan.is_none_or(|at| now >= at) {
            self.lanes.next_scan = Some(now + LANE_SCAN_EVERY);
            match self.dispatcher.queue.lanes(&self.policy).await {
                Ok(agents) => agents.iter().for_each(|agent| self.start_lane(agent)),
                Err(error) => tracing::warn!(policy = %self.policy, %error, "could not list the lanes"),
            }
        }
        let (d, policy, lane) = (&self.dispatcher, &self.policy, self.lane.as_deref());
        // NB: an agent removed from the policy leaves no breaker behind.
        d.prune_breakers();
        if now >= self.next_prune {
            self.next_prune = now + PRUNE_EVERY;
            match d.queue.prune_consumers(policy, lane, &d.config.consumer, PRUNE_IDLE_MS).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(%policy, removed = n, "pruned consumers of departed replicas"),
                Err(error) => tracing::warn!(%policy, %error, "could not prune consumers"),
            }
        }
        if now >= self.next_reclaim {
            self.next_reclaim = now + RECLAIM_EVERY;
            let idle = d.reclaim_idle(settings).as_millis() as u64;
            match self.reader.reclaim(policy, lane, &d.config.consumer, idle, 100).await {
                Ok(entries) if !entries.is_empty() => {
                    tracing::info!(%policy, lane, count = entries.len(), "reclaimed entries of a stalled consumer");
                    self.held.extend(entries);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%policy, %error, "reclaim failed"),
            }
        }
    }

    fn start_held(&mut self, free: usize) {
        for entry in self.held.drain(..free.min(self.held.len())) {
            let (d, policy, lane) = (self.dispatcher.clone(), self.policy.clone(), self.lane.clone());
            self.inflight.spawn(d.process(policy, lane, entry));
        }
    }

    /// Reads up to `free` new entries, waiting at most until the next
    /// promotion is due; returns how many. Not cancelled midway: entries
    /// read are always either dispatched or held.
    async fn read(&mut self, free: usize) -> usize {
        let d = &self.dispatcher;
        let block = d.config.read_block.min(self.next_promote.saturating_duration_since(Instant::now()));
        // NB: BLOCK 0 would wait forever.
        let block_ms = (block.as_millis() as u64).max(1);
        match self.reader.read(&self.policy, self.lane.as_deref(), &d.config.consumer, free, block_ms).await {
            Ok(entries) => {
                let n = entries.len();
                self.held.extend(entries);
                n
            }
            Err(error) => {
                tracing::warn!(policy = %self.policy, lane = self.lane, %error, "queue read failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                0
            }
        }
    }

    /// Lets in-flight dispatches (and the router's lane workers) finish
    /// within the grace period. Held entries stay pending in Redis: another
    /// replica reclaims them. Returns the lane's agent.
    async fn drain(mut self) -> String {
        let (policy, lane) = (&self.policy, self.lane.as_deref());
        let grace = self.dispatcher.config.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while self.inflight.join_next().await.is_some() {}
            while self.lanes.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(%policy, lane, unfinished = self.inflight.len(), "grace period over; unfinished entries will be reclaimed");
            self.inflight.abort_all();
            self.lanes.tasks.abort_all();
        }
        tracing::info!(%policy, lane, "worker stopped");
        self.lane.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(enabled: bool, concurrency: usize) -> PolicySettings {
        PolicySettings { enabled, concurrency, queue_limit: 10, ..PolicySettings::default() }
    }

    #[test]
    fn the_kill_switch_the_agents_switch_and_concurrency_decide_what_starts() {
        let with_agents = |enabled, concurrency| {
            let agent = |name: &str, enabled| crate::api::Agent {
                enabled,
                ..serde_json::from_value(serde_json::json!({"name": name, "url": "http://a/"})).unwrap()
            };
            PolicySettings {
                agents: vec![agent("on", true), agent("off", false)],
                ..settings(enabled, concurrency)
            }
        };
        let lane = Some("on");
        let cases = [
            ("disabled: nothing new, however idle", settings(false, 8), lane, 0, 0),
            ("disabled with work in flight: still nothing", settings(false, 8), lane, 3, 0),
            ("enabled and idle: the concurrency", with_agents(true, 8), lane, 0, 8),
            ("enabled: what is left beside those in flight", with_agents(true, 8), lane, 5, 3),
            (
                "concurrency lowered below those in flight: none until they finish",
                with_agents(true, 2),
                lane,
                5,
                0,
            ),
            ("an agent switched off: its lane waits", with_agents(true, 8), Some("off"), 0, 0),
            ("an agent that left: its lane drains", with_agents(true, 8), Some("gone"), 0, 8),
            ("the router: a batch of routings", with_agents(true, 1), None, 4, ROUTING - 4),
            ("the router obeys the kill switch", with_agents(false, 8), None, 0, 0),
        ];
        for (what, settings, lane, in_flight, want) in cases {
            assert_eq!(free_slots(&settings, lane, in_flight), want, "{what}");
        }
    }
}
