//! Dispatch: a router per policy reads its queue through the consumer group,
//! applies the filters and puts a reference into the lane of every agent
//! the delivery is for (`worker`); each lane sends it, as a CloudEvent, to
//! its agent (`Dispatcher::process`, `Dispatcher::call`).
//!
//! Everything obeys the policy's effective settings live: with `enabled:
//! false` nothing is sent (what was read is held, not lost); calls in flight
//! follow `concurrency` as it changes, per agent. Each agent has its own
//! lane, timeout, limits ([`crate::queue::limits`]), circuit breaker
//! ([`breaker`]), retries ([`backoff`]) and dead letters, so one failing
//! agent never holds up another. An entry is settled (acknowledged) only
//! once its agent succeeded, has a retry scheduled in Redis, or has a dead
//! letter, in one atomic step ([`settle()`]).
//!
//! Over 400 lines: the dispatcher's one call path (payload read once for all
//! lanes, credentials, signatures, destinations, the call, its outcome) with
//! the breaker and pruning state it keeps; the pure pieces are in the
//! submodules and `settle`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tracing::Instrument;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

pub mod backoff;
pub mod breaker;
pub mod credentials;
pub mod destinations;
mod settle;
mod worker;

pub use settle::{Failure, RESULTS, settle};

use super::registry::{PolicySettings, Registry};
use crate::{
    ObjectRef,
    api::Agent,
    filter::Verdict,
    now_ms,
    queue::{
        Delivery, Entry, Keep, Queue, QueueError, Settlement,
        limits::{AgentLimits, Permit},
    },
    standard_webhooks,
    telemetry::ReceiverMetrics,
};
use breaker::{Breaker, State};

/// Tuning of the workers.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// Redis URL and key prefix, for each worker's own blocking connection.
    pub redis_url: String,
    pub redis_prefix: String,
    /// This replica's consumer name in the group.
    pub consumer: String,
    /// How long a blocking read waits for new entries.
    pub read_block: Duration,
    /// Entries another consumer left unacknowledged this long beyond the
    /// slowest agent's timeout are taken over.
    pub reclaim_after: Duration,
    /// On shutdown, how long in-flight dispatches may take to finish.
    pub shutdown_grace: Duration,
    /// Where agent calls may not go.
    pub destinations: Arc<destinations::Destinations>,
}

/// A call's slot outlives the agent's timeout by this much before another
/// replica may take it (its holder died mid-call).
const LEASE_MARGIN_S: u64 = 5;

/// Housekeeping (reclaim, prune) and the slowest promotion of retries run this often.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Whether the breaker of `agent` is still needed: its policy (`settings`)
/// is known and lists it.
pub fn keeps_breaker(settings: Option<&PolicySettings>, agent: &str) -> bool {
    settings.is_some_and(|s| s.agents.iter().any(|a| a.name == agent))
}

/// The instant of a wall-clock time `due_ms` (Unix ms); far off when `None`.
fn due_instant(due_ms: Option<u64>) -> Instant {
    match due_ms {
        Some(due) => Instant::now() + Duration::from_millis(due.saturating_sub(now_ms())),
        None => Instant::now() + Duration::from_secs(3600),
    }
}

/// Does `agent` want `event` from `repository`?
pub fn wants(agent: &Agent, event: &str, repository: Option<&str>) -> bool {
    let event_ok = agent.events.is_empty() || agent.events.iter().any(|e| e == "*" || e == event);
    let repo_ok = agent.repositories.is_empty()
        || repository.is_some_and(|repo| {
            // NB: GitHub owner and repository names are case-insensitive.
            agent.repositories.iter().any(|pattern| match pattern.strip_suffix("/*") {
                Some(owner) => repo.split_once('/').is_some_and(|(o, _)| o.eq_ignore_ascii_case(owner)),
                None => pattern.eq_ignore_ascii_case(repo),
            })
        });
    event_ok && repo_ok
}

/// Where one delivery goes.
#[derive(Debug, Default)]
pub struct Targets<'s> {
    /// The agents to call (a name for an agent no longer in the policy).
    pub go: Vec<Result<&'s Agent, String>>,
    /// The agents its filters keep it from, with the verdict.
    pub refused: Vec<(String, Verdict)>,
}

/// The agents a delivery goes to, and those its filters keep it from. A
/// retry or replay is for its one agent, filtered no more. A delivery no
/// agent's `events` and `repositories` take gets one refusal with no agent
/// ([`Verdict::Unwanted`]).
pub fn targets<'s>(settings: &'s PolicySettings, d: &Delivery) -> Targets<'s> {
    if let Some(name) = &d.agent {
        let agent = settings.agents.iter().find(|a| &a.name == name).ok_or_else(|| name.clone());
        return Targets { go: vec![agent], refused: Vec::new() };
    }
    let wanting: Vec<&Agent> =
        settings.agents.iter().filter(|a| wants(a, &d.event, d.repository.as_deref())).collect();
    if wanting.is_empty() {
        return Targets { go: Vec::new(), refused: vec![(String::new(), Verdict::Unwanted)] };
    }
    if settings.filters.is_empty() {
        return Targets { go: wanting.into_iter().map(Ok).collect(), refused: Vec::new() };
    }
    let facts = settings.filters.facts(d);
    let names: Vec<&str> = wanting.iter().map(|a| a.name.as_str()).collect();
    // NB: filters read the body: a large one's parse and checks run apart
    // from the requests' thread.
    let verdicts = crate::cpu::heavy(d.payload.len(), || settings.filters.judge(&names, &facts));
    let mut targets = Targets::default();
    for (agent, (_, verdict)) in wanting.into_iter().zip(verdicts) {
        match verdict {
            Verdict::Pass => targets.go.push(Ok(agent)),
            refusal => targets.refused.push((agent.name.clone(), refusal)),
        }
    }
    targets
}

/// CloudEvents 1.0 binary-mode headers for `delivery`. The delivery GUID is
/// the event id, so an agent can de-duplicate retries and redeliveries.
pub fn cloudevent_headers(delivery: &Delivery) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    put("ce-specversion", "1.0".into());
    put("ce-id", delivery.guid.clone());
    put("ce-source", format!("/hookwarden/{}", delivery.hook));
    let kind = match &delivery.action {
        Some(action) => format!("com.github.{}.{action}", delivery.event),
        None => format!("com.github.{}", delivery.event),
    };
    put("ce-type", kind);
    put("ce-time", rfc3339_ms(delivery.received_ms));
    if let Some(repo) = &delivery.repository {
        put("ce-subject", repo.clone());
    }
    put("content-type", "application/json".into());
    h
}

fn rfc3339_ms(ms: u64) -> String {
    let ts = k8s_openapi::jiff::Timestamp::from_millisecond(ms as i64).unwrap_or_default();
    ts.to_string()
}

/// May an entry naming `hook` be delivered from `policy`'s queue? Only the
/// receivers (and the operator's recovery) write entries, each for its
/// hook's policy; one that names another namespace's hook, or a hook that
/// delivers to another policy, was not written that way (a forged `XADD`,
/// or a hook moved to another policy since): it is dead-lettered, never sent
/// with this policy's signing keys. A hook no longer known (its
/// WebhookConfig deleted after the delivery was queued) in the policy's own
/// namespace is delivered. An App's webhook delivery ([`app_routes`]) goes
/// by the policy's grants as they are now.
pub fn routes(hook: &ObjectRef, policy: &ObjectRef, hook_policy: Option<&ObjectRef>) -> bool {
    hook.namespace == policy.namespace && hook_policy.is_none_or(|p| p == policy)
}

/// May a delivery of App webhook `hook` about `repository` be delivered
/// by a policy with `settings`? Only while its status still grants it (a
/// grant revoked meanwhile stops what was queued under it).
pub fn app_routes(hook: &ObjectRef, repository: Option<&str>, settings: &PolicySettings) -> bool {
    crate::api::AppWebhookRoute::any_takes(&settings.app_webhooks, &hook.name, repository)
}

/// The workers of one receiver replica.
pub struct Dispatcher {
    queue: Queue,
    registry: Arc<Registry>,
    metrics: Arc<ReceiverMetrics>,
    http: reqwest::Client,
    config: DispatchConfig,
    breakers: Mutex<HashMap<(ObjectRef, String), Arc<Breaker>>>,
    /// Per policy, the second (Unix) of its last sample and how many
    /// deliveries were kept among its recent ones in it.
    sampled: Mutex<HashMap<ObjectRef, (u64, u32)>>,
    /// The payloads lanes are dispatching, by policy and entry ([`Dispatcher::payload_of`]).
    payloads: Mutex<HashMap<(ObjectRef, String), std::sync::Weak<SharedPayload>>>,
    /// Per policy, when the earliest retry its lanes scheduled is due (Unix
    /// ms), for its router, which promotes them.
    retries_due: Mutex<HashMap<ObjectRef, u64>>,
}

/// A payload read once for every lane that needs it at the same time.
type SharedPayload = tokio::sync::OnceCell<Option<bytes::Bytes>>;

/// A policy's deliveries are kept for `admin filter-test` at most this many
/// a second per replica: every one at a trickle, a sample under load.
const SAMPLES_PER_SECOND: u32 = 10;

impl Dispatcher {
    pub fn new(
        queue: Queue,
        registry: Arc<Registry>,
        metrics: Arc<ReceiverMetrics>,
        config: DispatchConfig,
    ) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("hookwarden/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(destinations::Resolver(config.destinations.clone())))
            .build()
            .expect("a TLS backend is available");
        let (breakers, sampled, payloads, retries_due) = Default::default();
        Self { queue, registry, metrics, http, config, breakers, sampled, payloads, retries_due }
    }

    /// Forgets the breakers of agents no longer in their policy and of
    /// policies gone, so that the map does not grow with every agent that
    /// ever was (a returning agent starts closed).
    fn prune_breakers(&self) {
        let mut breakers = self.breakers.lock().unwrap();
        breakers.retain(|(policy, agent), _| keeps_breaker(self.registry.policy(policy).as_deref(), agent));
        self.sampled.lock().unwrap().retain(|policy, _| self.registry.policy(policy).is_some());
        self.retries_due.lock().unwrap().retain(|policy, _| self.registry.policy(policy).is_some());
    }

    /// A lane of `policy` scheduled a retry due at `due_ms`.
    fn note_retry(&self, policy: &ObjectRef, due_ms: u64) {
        let mut due = self.retries_due.lock().unwrap();
        let earliest = due.entry(policy.clone()).or_insert(due_ms);
        *earliest = (*earliest).min(due_ms);
    }

    /// The earliest retry `policy`'s lanes scheduled since last asked.
    fn retry_due(&self, policy: &ObjectRef) -> Option<u64> {
        self.retries_due.lock().unwrap().remove(policy)
    }

    /// Is this delivery of `policy` one to keep among its recent ones?
    fn sample(&self, policy: &ObjectRef) -> bool {
        let second = now_ms() / 1000;
        let mut sampled = self.sampled.lock().unwrap();
        let (at, kept) = sampled.entry(policy.clone()).or_insert((second, 0));
        if *at != second {
            (*at, *kept) = (second, 0);
        }
        *kept += 1;
        *kept <= SAMPLES_PER_SECOND
    }

    /// State of every agent's breaker, for the admin API.
    pub fn breaker_states(&self) -> Vec<(ObjectRef, String, State)> {
        let breakers = self.breakers.lock().unwrap();
        breakers.iter().map(|((p, a), b)| (p.clone(), a.clone(), b.state())).collect()
    }

    /// Runs one worker per AgentPolicy until `shutdown`, then lets in-flight
    /// dispatches finish within the grace period.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut policy_set = self.registry.watch_policy_set();
        let mut workers: HashMap<ObjectRef, CancellationToken> = HashMap::new();
        let mut tasks = JoinSet::new();
        loop {
            let current = self.registry.policy_refs();
            for policy in &current {
                if !workers.contains_key(policy) {
                    let stop = shutdown.child_token();
                    workers.insert(policy.clone(), stop.clone());
                    tasks.spawn(worker::run(self.clone(), policy.clone(), stop));
                }
            }
            workers.retain(|policy, stop| {
                let keep = current.contains(policy);
                if !keep {
                    stop.cancel();
                }
                keep
            });
            self.prune_breakers();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = policy_set.changed() => if changed.is_err() { break },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Every series of the policy and its agents, at 0 until something
    /// happens (values already counted are kept), so that dashboards and
    /// alert ratios read 0 rather than "no data".
    fn create_series(&self, policy: &str, settings: &PolicySettings) {
        let m = &self.metrics;
        for label in [&m.queue_length, &m.dead_letters] {
            label.with_label_values(&[policy]);
        }
        for agent in settings.agents.iter().map(|a| a.name.as_str()) {
            m.breaker_open.with_label_values(&[policy, agent]);
            m.duration.with_label_values(&[policy, agent]);
            for result in RESULTS {
                m.processed.with_label_values(&[policy, agent, result]);
            }
            for reason in Failure::REASONS {
                m.errors.with_label_values(&[policy, agent, reason]);
            }
            for reason in crate::filter::REASONS {
                m.filtered.with_label_values(&[policy, agent, reason]);
            }
        }
    }

    /// Idle time after which another consumer's entry is taken over: longer
    /// than any agent may legitimately take.
    fn reclaim_idle(&self, settings: &PolicySettings) -> Duration {
        let slowest = settings.agents.iter().map(|a| a.timeout_seconds.max(1) as u64).max().unwrap_or(10);
        self.config.reclaim_after + Duration::from_secs(slowest)
    }

    /// Moves the retries that are due into the queue; returns when to look again.
    async fn promote(&self, policy: &ObjectRef) -> Instant {
        const BATCH: usize = 100;
        match self.queue.promote_due(policy, now_ms(), BATCH).await {
            // A full batch: more may be due already.
            Ok((moved, _)) if moved as usize == BATCH => Instant::now(),
            Ok((_, next)) => due_instant(next),
            Err(error) => {
                tracing::warn!(%policy, %error, "could not promote due retries");
                Instant::now() + HOUSEKEEPING
            }
        }
    }

    fn breaker(&self, policy: &ObjectRef, agent: &str, settings: &PolicySettings) -> Arc<Breaker> {
        let mut breakers = self.breakers.lock().unwrap();
        let breaker = breakers
            .entry((policy.clone(), agent.to_owned()))
            .or_insert_with(|| Arc::new(Breaker::new(settings.circuit_breaker.clone())));
        breaker.reconfigure(&settings.circuit_breaker);
        breaker.clone()
    }

    /// Routes one entry of the policy's stream (`lane` none) into its
    /// agents' lanes, or dispatches one entry of an agent's lane to it, and
    /// settles it; returns when the earliest retry it scheduled is due (Unix ms).
    async fn process(
        self: Arc<Self>,
        policy: ObjectRef,
        lane: Option<String>,
        mut entry: Entry,
    ) -> Option<u64> {
        // NB: an entry in a lane is for that lane's agent, filtered no more.
        if lane.is_some() {
            entry.delivery.agent = lane.clone();
        }
        // Held while it is dispatched, so that this replica's other lanes share it.
        let _payload = match &entry.origin {
            Some(origin) => match self.payload_of(&policy, origin).await {
                Ok(cell) => match cell.get().cloned().flatten() {
                    Some(payload) => {
                        entry.delivery.payload = payload;
                        Some(cell)
                    }
                    None => return self.let_go(&policy, lane.as_deref(), &entry).await,
                },
                Err(error) => {
                    // Left pending: reclaimed and tried again.
                    tracing::warn!(%policy, lane, %error, "could not read a delivery's payload");
                    return None;
                }
            },
            None => None,
        };
        // Its routing, or one round of calls, in the trace that queued it.
        let guid = &entry.delivery.guid;
        let span = match lane {
            None => tracing::info_span!(target: crate::trace::TARGET, "route",
                policy = %policy, delivery_id = %guid, trace_id = tracing::field::Empty),
            Some(_) => tracing::info_span!(target: crate::trace::TARGET, "dispatch",
                policy = %policy, delivery_id = %guid, trace_id = tracing::field::Empty),
        };
        crate::trace::continue_from(&span, entry.delivery.trace.as_deref());
        self.dispatch(policy, lane, entry).instrument(span).await
    }

    /// The payload of `policy`'s entry `origin`, read from Redis once for
    /// all of this replica's lanes that dispatch it at the same time (a
    /// delivery for 64 agents is held once, not 64 times); `None` inside when
    /// the entry is gone.
    async fn payload_of(&self, policy: &ObjectRef, origin: &str) -> Result<Arc<SharedPayload>, QueueError> {
        let cell = {
            let mut payloads = self.payloads.lock().unwrap();
            payloads.retain(|_, held| held.strong_count() > 0);
            let key = (policy.clone(), origin.to_owned());
            match payloads.get(&key).and_then(std::sync::Weak::upgrade) {
                Some(cell) => cell,
                None => {
                    let cell = Arc::new(SharedPayload::new());
                    payloads.insert(key, Arc::downgrade(&cell));
                    cell
                }
            }
        };
        cell.get_or_try_init(|| self.queue.payload(policy, origin)).await?;
        Ok(cell)
    }

    /// A lane's copy whose delivery is gone from the policy's stream (it
    /// cannot be sent): logged, and let go of.
    async fn let_go(&self, policy: &ObjectRef, lane: Option<&str>, entry: &Entry) -> Option<u64> {
        let guid = &entry.delivery.guid;
        tracing::error!(%policy, lane, delivery_id = %guid, "the delivery a lane refers to is gone; dropped");
        let nothing = Settlement::default();
        if let Err(error) = self.queue.settle(policy, lane, entry, &nothing, now_ms(), Keep::default()).await
        {
            tracing::warn!(%policy, lane, %error, "could not drop a lane's entry; it stays pending");
        }
        None
    }

    async fn dispatch(self: Arc<Self>, policy: ObjectRef, lane: Option<String>, entry: Entry) -> Option<u64> {
        let settings = self.registry.policy(&policy)?;
        let d = &entry.delivery;
        let started = std::time::Instant::now();
        let Targets { go: targets, refused } = targets(&settings, d);
        let policy_label = policy.to_string();
        if !settings.filters.is_empty() && d.agent.is_none() {
            let seconds = started.elapsed().as_secs_f64();
            self.metrics.filter_seconds.with_label_values(&[policy_label.as_str()]).observe(seconds);
        }
        let routed = if d.hook.namespace == crate::api::APP_HOOK_NAMESPACE {
            app_routes(&d.hook, d.repository.as_deref(), &settings)
        } else {
            routes(&d.hook, &policy, self.registry.hook(&d.hook).map(|h| h.policy).as_ref())
        };
        // The router copies a delivery into its agents' lanes; a lane calls its agent.
        let (mut into_lanes, mut outcomes, mut calls) = (Vec::new(), Vec::new(), Vec::new());
        for target in &targets {
            match target {
                Ok(agent) if !routed => {
                    outcomes.push((agent.name.clone(), Err(Failure::Misrouted(d.hook.clone()))))
                }
                Ok(agent) if lane.is_none() => into_lanes.push(agent.name.clone()),
                Ok(agent) => {
                    calls.push(async { (agent.name.clone(), self.call(&policy, agent, &settings, d).await) })
                }
                Err(name) => outcomes.push((name.clone(), Err(Failure::AgentGone))),
            }
        }
        outcomes.extend(futures::future::join_all(calls).await);

        let labels = |agent: &str, result: &str| [policy_label.as_str(), agent, result].map(str::to_owned);
        for (agent, failure) in outcomes.iter().filter_map(|(a, o)| Some((a, o.as_ref().err()?))) {
            self.metrics.errors.with_label_values(&labels(agent, failure.metric_label())).inc();
        }
        let now = now_ms();
        let mut settlement =
            settle(&outcomes, &settings.retry, d.attempt, now, Instant::now(), rand::random());
        settlement.routed = into_lanes;
        for (agent, verdict) in &refused {
            if let (false, Some(reason)) = (agent.is_empty(), verdict.reason()) {
                self.metrics.filtered.with_label_values(&[policy_label.as_str(), agent, reason]).inc();
            }
            settlement.filtered.push((agent.clone(), verdict.detail()));
        }
        // A delivery's first routing (not a retry's or a replay's) keeps it.
        let first = lane.is_none() && d.agent.is_none();
        let keep = Keep {
            sample: first && self.sample(&policy),
            history_ms: if first { settings.history_ms } else { 0 },
        };
        for agent in &settlement.delivered {
            self.metrics.processed.with_label_values(&labels(agent, "success")).inc();
        }
        for r in &settlement.retries {
            let retry_in_ms = r.due_ms.saturating_sub(now);
            tracing::info!(%policy, agent = r.agent, delivery_id = %d.guid, attempts = r.attempts, retry_in_ms, error = r.error, "retry scheduled");
            self.metrics.processed.with_label_values(&labels(&r.agent, "retry")).inc();
        }
        for g in &settlement.dead {
            tracing::warn!(%policy, agent = g.agent, delivery_id = %d.guid, attempts = g.attempts, error = g.error, "dead-lettered");
            self.metrics.processed.with_label_values(&labels(&g.agent, "dead_letter")).inc();
        }
        for attempt in 1..=3 {
            match self.queue.settle(&policy, lane.as_deref(), &entry, &settlement, now, keep).await {
                Ok(()) => return settlement.retries.iter().map(|r| r.due_ms).min(),
                Err(error) => {
                    tracing::warn!(%policy, delivery_id = %d.guid, attempt, %error, "could not settle; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        // Left pending: a later reclaim processes it again (agents see the
        // same CloudEvent id and can de-duplicate).
        tracing::error!(%policy, delivery_id = %d.guid, "could not settle; entry stays pending for reclaim");
        None
    }

    /// Waits for the agent's limits across replicas to allow one call, at
    /// most [`Dispatcher::limit_wait`] (beyond it the delivery is retried
    /// when they allow, without using an attempt); returns the slot's holder.
    async fn slot(&self, policy: &ObjectRef, agent: &Agent, limits: AgentLimits) -> Result<String, Failure> {
        let holder = format!("{}:{:016x}", self.config.consumer, rand::random::<u64>());
        let lease_ms = (agent.timeout_seconds.max(1) as u64 + LEASE_MARGIN_S) * 1000;
        let deadline = Instant::now() + self.limit_wait();
        loop {
            let permit = self.queue.agent_permit(policy, &agent.name, limits, &holder, lease_ms, 0).await;
            let (wait, limit) = match &permit {
                Ok(Permit::Granted) => return Ok(holder),
                Ok(Permit::Paused { ms }) => (Duration::from_millis(*ms), "pause (Retry-After)"),
                // NB: a finished call frees its slot without telling: look again soon.
                Ok(Permit::Full { ms }) => {
                    (Duration::from_millis((*ms).min(rand::random_range(10..30))), "concurrency")
                }
                Ok(Permit::Rate { ms }) => (Duration::from_millis(*ms), "rateLimit"),
                Err(error) => {
                    tracing::warn!(%policy, agent = %agent.name, %error, "cannot read the agent's limits; holding its call");
                    (Duration::from_secs(1), "limits (Redis unavailable)")
                }
            };
            let retry_at = Instant::now() + wait;
            if matches!(permit, Ok(Permit::Paused { .. }) | Err(_)) || retry_at > deadline {
                return Err(Failure::Limited { retry_at, limit });
            }
            tokio::time::sleep_until(retry_at).await;
        }
    }

    /// Gives a call's slot back at once (else it frees when its lease ends).
    async fn release(&self, policy: &ObjectRef, agent: &Agent, slot: Option<String>) {
        let Some(holder) = slot else { return };
        if let Err(error) = self.queue.agent_release(policy, &agent.name, &holder).await {
            tracing::warn!(%policy, agent = %agent.name, %error, "could not release a call's slot; it frees when its lease ends");
        }
    }

    /// How long a dispatch waits in place for an agent's limits: well
    /// within the idle time after which another replica would take the
    /// entry over.
    fn limit_wait(&self) -> Duration {
        (self.config.reclaim_after / 2).min(Duration::from_secs(5))
    }

    async fn call(
        &self,
        policy: &ObjectRef,
        agent: &Agent,
        settings: &PolicySettings,
        d: &Delivery,
    ) -> Result<(), Failure> {
        self.config.destinations.check_url(&agent.url)?;
        let mut headers = cloudevent_headers(d);
        if let Some(secret) = &agent.signing_secret_ref {
            let secret = ObjectRef::new(policy.namespace.clone(), secret.name.clone());
            let keys = self.registry.signing_keys(&secret);
            if keys.is_empty() {
                return Err(Failure::Unsigned(secret));
            }
            for (name, value) in standard_webhooks::headers(&keys, &d.guid, now_ms() / 1000, &d.payload) {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(HeaderName::from_static(name), value);
                }
            }
        }
        if let Some(secret) = &agent.headers_secret_ref {
            let secret = ObjectRef::new(policy.namespace.clone(), secret.name.clone());
            let credentials = self.registry.agent_headers(&secret).ok_or(Failure::NoCredentials(secret))?;
            // NB: after the CloudEvents and signature headers, which it cannot name.
            headers.extend(credentials.iter().map(|(name, value)| (name.clone(), value.clone())));
        }
        let breaker = self.breaker(policy, &agent.name, settings);
        let labels = [policy.to_string(), agent.name.clone()];
        let permit = breaker.acquire().await.map_err(|r| Failure::CircuitOpen { retry_at: r.retry_at })?;
        // NB: after the breaker, so that a slot's lease starts with the call.
        let limits = AgentLimits::of(agent.concurrency, agent.rate_limit.as_ref());
        let slot = match limits.any() {
            false => None,
            true => match self.slot(policy, agent, limits).await {
                Ok(holder) => Some(holder),
                Err(held) => {
                    breaker.forgo(permit);
                    return Err(held);
                }
            },
        };
        // The agent gets this attempt's span as its parent (W3C traceparent).
        let span = tracing::info_span!(
            target: crate::trace::TARGET,
            "attempt",
            otel.kind = "client",
            agent = %agent.name,
            attempt = d.attempt + 1,
            otel.status_code = tracing::field::Empty,
            otel.status_message = tracing::field::Empty,
        );
        if let Some(value) = crate::trace::traceparent(&span).and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(HeaderName::from_static("traceparent"), value);
        }
        let response = self
            .http
            .post(&agent.url)
            .timeout(Duration::from_secs(agent.timeout_seconds.max(1) as u64))
            .headers(headers)
            .body(d.payload.clone())
            .send()
            .instrument(span.clone())
            .await;
        self.release(policy, agent, slot).await;
        let busy = response.as_ref().ok().and_then(|r| {
            let value = r.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok());
            let wait = settle::retry_after(r.status().as_u16(), value, (now_ms() / 1000) as i64)?;
            Some((r.status().as_u16(), wait))
        });
        if let Some((status, wait)) = busy {
            let retry_at = Instant::now() + wait;
            // Busy, not broken: paused, the circuit left as it is.
            breaker.pause(permit, retry_at);
            if limits.any() {
                let ms = wait.as_millis() as u64;
                if let Err(error) = self.queue.agent_pause(policy, &agent.name, ms).await {
                    tracing::warn!(%policy, agent = %agent.name, %error, "could not share the pause with other replicas");
                }
            }
            span.record("otel.status_code", "error").record("otel.status_message", "throttled");
            tracing::info!(%policy, agent = %agent.name, status, "agent asked to retry later; paused");
            return Err(Failure::Throttled { status, retry_at, wait_s: wait.as_secs() });
        }
        let result = match response {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) if r.status().is_redirection() => Err(Failure::Redirect(r.status().as_u16())),
            Ok(r) => Err(Failure::Status(r.status().as_u16())),
            Err(e) if e.is_timeout() => Err(Failure::Timeout),
            Err(e) => Err(match destinations::denied_in(&e) {
                Some(denied) => Failure::Denied(denied),
                None if e.is_connect() => Failure::Transport("could not connect"),
                None => Failure::Transport("the connection failed during the call"),
            }),
        };
        match &result {
            Ok(()) => span.record("otel.status_code", "ok"),
            Err(failure) => {
                span.record("otel.status_code", "error").record("otel.status_message", failure.metric_label())
            }
        };
        breaker.record(permit, result.is_ok());
        let open = breaker.state() != State::Closed;
        self.metrics.breaker_open.with_label_values(&labels).set(i64::from(open));
        let elapsed = now_ms().saturating_sub(d.received_ms) as f64 / 1000.0;
        self.metrics.duration.with_label_values(&labels).observe(elapsed);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(events: &[&str], repositories: &[&str]) -> Agent {
        Agent {
            name: "a".into(),
            url: "http://a/".into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            repositories: repositories.iter().map(|s| s.to_string()).collect(),
            timeout_seconds: 10,
            signing_secret_ref: None,
            filter: None,
            headers_secret_ref: None,
            concurrency: None,
            rate_limit: None,
            enabled: true,
        }
    }

    #[test]
    fn filters_by_event_and_repository() {
        let repo = Some("Octo-Org/Hello-World");
        assert!(wants(&agent(&[], &[]), "push", None));
        assert!(wants(&agent(&["*"], &[]), "push", repo));
        assert!(wants(&agent(&["push", "issues"], &[]), "issues", repo));
        assert!(!wants(&agent(&["push"], &[]), "issues", repo));
        assert!(wants(&agent(&[], &["octo-org/hello-world"]), "push", repo), "names are case-insensitive");
        assert!(wants(&agent(&[], &["octo-org/*"]), "push", repo));
        assert!(!wants(&agent(&[], &["octo-org/other"]), "push", repo));
        assert!(!wants(&agent(&[], &["other/*"]), "push", repo));
        assert!(!wants(&agent(&[], &["octo-org/*"]), "push", None), "no repository, no match");
        assert!(!wants(&agent(&["push"], &["octo-org/*"]), "issues", repo), "both filters must match");
    }

    #[test]
    fn a_delivery_goes_to_the_agents_whose_selectors_and_filters_take_it_and_the_rest_are_told_why() {
        let named = |name: &str, events: &[&str]| Agent { name: name.into(), ..agent(events, &[]) };
        let mut settings = PolicySettings::from_policy(&crate::api::AgentPolicy::new(
            "p",
            serde_json::from_value(serde_json::json!({})).unwrap(),
        ));
        settings.agents = vec![named("opened", &[]), named("drafts", &[]), named("pushes", &["push"])];
        settings.filters.agents.insert("opened".into(), crate::filter::compile("action == 'opened'"));
        settings.filters.agents.insert("drafts".into(), crate::filter::compile("body.pull_request.draft"));
        let hook = ObjectRef::new("team", "repo");
        let pr = |body: &str| {
            Delivery::parse("g", "pull_request", &hook, bytes::Bytes::from(body.to_owned())).unwrap()
        };
        let names = |t: &[Result<&Agent, String>]| {
            t.iter().map(|a| a.as_ref().unwrap().name.clone()).collect::<Vec<_>>()
        };

        let d = pr(r#"{"action":"opened","pull_request":{"draft":false}}"#);
        let Targets { go, refused } = targets(&settings, &d);
        assert_eq!(names(&go), ["opened"]);
        assert_eq!(refused, [("drafts".to_owned(), Verdict::NoMatch { filter: "agent" })]);

        let d = pr(r#"{"action":"closed"}"#);
        let Targets { go, refused } = targets(&settings, &d);
        assert!(go.is_empty());
        assert_eq!(refused[0], ("opened".to_owned(), Verdict::NoMatch { filter: "agent" }));
        assert!(matches!(&refused[1], (a, Verdict::Error { .. }) if a == "drafts"), "{refused:?}");

        // A retry is for its agent, whatever the filters say now.
        let mut retry = pr(r#"{"action":"closed"}"#);
        retry.agent = Some("opened".into());
        assert_eq!(names(&targets(&settings, &retry).go), ["opened"]);

        // Nobody's events: said once, with no agent.
        settings.agents.truncate(2);
        settings.agents.iter_mut().for_each(|a| a.events = vec!["issues".into()]);
        let Targets { go, refused } = targets(&settings, &pr("{}"));
        assert!(go.is_empty());
        assert_eq!(refused.len(), 1);
        assert_eq!(
            (refused[0].0.as_str(), refused[0].1.detail()),
            ("", "no agent's events and repositories take it".to_owned())
        );
    }

    #[test]
    fn only_entries_of_the_policys_own_hooks_are_delivered() {
        let (policy, other) = (ObjectRef::new("team-a", "default"), ObjectRef::new("team-a", "other"));
        let rows = [
            // (hook named by the entry, the policy that hook delivers to now) -> delivered
            (ObjectRef::new("team-a", "repo"), Some(&policy), true),
            (ObjectRef::new("team-a", "gone"), None, true), // deleted since it was queued
            (ObjectRef::new("team-a", "repo"), Some(&other), false),
            (ObjectRef::new("team-b", "repo"), None, false), // another team's hook
            (ObjectRef::new("team-b", "repo"), Some(&policy), false),
        ];
        for (hook, hook_policy, want) in rows {
            assert_eq!(routes(&hook, &policy, hook_policy), want, "{hook} → {hook_policy:?}");
        }
    }

    #[test]
    fn cloudevent_headers_carry_the_delivery() {
        let d = Delivery {
            guid: "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
            event: "pull_request".into(),
            hook: ObjectRef::new("team", "repo"),
            repository: Some("octo-org/hello-world".into()),
            action: Some("opened".into()),
            payload: bytes::Bytes::from_static(b"{}"),
            received_ms: 1_700_000_000_123,
            agent: None,
            attempt: 0,
            trace: None,
        };
        let h = cloudevent_headers(&d);
        let get = |n: &str| h.get(n).unwrap().to_str().unwrap().to_owned();
        assert_eq!(get("ce-specversion"), "1.0");
        assert_eq!(get("ce-id"), d.guid);
        assert_eq!(get("ce-type"), "com.github.pull_request.opened");
        assert_eq!(get("ce-source"), "/hookwarden/team/repo");
        assert_eq!(get("ce-subject"), "octo-org/hello-world");
        assert_eq!(get("ce-time"), "2023-11-14T22:13:20.123Z");
        assert_eq!(get("content-type"), "application/json");
    }
}
