//! Recovery of the deliveries GitHub failed to deliver: the backstop for
//! every receiver outage, since GitHub never retries by itself.
//!
//! A pass reads the hook's deliveries newest first, page by page, down to
//! `status.recovery.settledThrough`, and recovers every GUID that has no
//! successful attempt, one of two ways:
//! - **fetched** (the default when the operator has Redis): `GET
//!   .../deliveries/{id}` returns the original payload, which goes straight
//!   into the policy's queue. A read: not paced like a mutation, and it works
//!   while GitHub cannot reach the receivers at all (a broken Ingress, an
//!   expired certificate, DNS).
//! - **redelivered**: `POST .../deliveries/{id}/attempts` asks GitHub to send
//!   it again: one mutation a second, and only once the receivers are
//!   reachable again.
//!
//! The position lives in status, so a restarted or newly elected operator
//! goes on where the last one stopped: a pass never advances past a page
//! before every failure on it is recovered, pages it had no time for wait in
//! `status.recovery.scan`, and a recovery that fails is tried again with
//! backoff. The receivers' de-duplication on the GUID makes recovering the
//! same delivery twice harmless.
//!
//! The decisions ([`to_recover`], [`scan_done`], [`due`], [`after_pass`],
//! [`oldest_pending`]) are pure functions of the facts and `now`.
//!
//! Over 400 lines: the pass and its pure decisions (about 440 lines), then
//! their table tests.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{FutureExt, StreamExt, future::BoxFuture, stream};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, runtime::events::EventType};

use super::{HookRef, publish};
use crate::{
    ObjectRef,
    api::{AgentPolicy, AppWebhook, AppWebhookRoute, RecoveryScan, RecoveryStatus, WebhookConfig},
    github::{self, Delivery, RateLimit},
    operator::Context,
    queue::{self, Enqueued, QueueError},
};

/// Whose hook is recovered: a WebhookConfig's (its deliveries go to its
/// AgentPolicy), or an App's own webhook (each delivery to every policy
/// the grants route it to).
#[derive(Clone, Copy)]
pub enum Owner<'a> {
    Hook(&'a WebhookConfig),
    App(&'a AppWebhook),
}

impl Owner<'_> {
    /// The reference deliveries carry as their hook (and memos are kept under).
    fn hook_ref(&self) -> ObjectRef {
        match self {
            Self::Hook(whc) => ObjectRef::of(*whc),
            Self::App(awh) => crate::api::app_hook_ref(&awh.name_any()),
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Hook(whc) => whc.name_any(),
            Self::App(awh) => awh.name_any(),
        }
    }

    /// The namespace label of the metrics (none for an App's webhook).
    fn namespace(&self) -> String {
        match self {
            Self::Hook(whc) => whc.namespace().unwrap_or_default(),
            Self::App(_) => String::new(),
        }
    }

    async fn publish(&self, ctx: &Context, reason: &str, note: String) {
        match self {
            Self::Hook(whc) => publish(ctx, whc, EventType::Normal, reason, note).await,
            Self::App(awh) => crate::operator::app_webhook::publish(ctx, awh, reason, note).await,
        }
    }

    /// The policies this pass may queue recovered deliveries for (read once
    /// per pass): a WebhookConfig's one policy, or every policy in the
    /// operator's reach with its current grants.
    async fn destinations(&self, ctx: &Context) -> Result<Vec<Destination>, Failure> {
        match self {
            Self::Hook(whc) => {
                let ns = whc.namespace().unwrap_or_default();
                let name = whc.spec.agent_policy.clone();
                let api: Api<AgentPolicy> = Api::namespaced(ctx.client.clone(), &ns);
                // NB: a policy not there yet takes the default limit.
                let limit = match api.get_opt(&name).await {
                    Ok(Some(p)) => p.effective_queue_limit(),
                    _ => crate::api::DEFAULT_QUEUE_LIMIT,
                };
                Ok(vec![Destination { policy: ObjectRef::new(ns, name), limit, routes: None }])
            }
            Self::App(_) => {
                let api = crate::scoped_api::<AgentPolicy>(&ctx.client, ctx.namespace.as_deref());
                // NB: unlike a missing policy, an unanswered list is not
                // "nobody": the recovery fails and is tried again.
                let policies =
                    api.list(&kube::api::ListParams::default()).await.map_err(Failure::Policies)?;
                Ok(policies
                    .items
                    .into_iter()
                    .filter(|p| p.status.as_ref().is_some_and(|s| !s.app_webhooks.is_empty()))
                    .map(|p| Destination {
                        policy: ObjectRef::of(&p),
                        limit: p.effective_queue_limit(),
                        routes: p.status.map(|s| s.app_webhooks),
                    })
                    .collect())
            }
        }
    }
}

/// A policy recovered deliveries may be queued for.
pub struct Destination {
    policy: ObjectRef,
    limit: u64,
    /// Its App webhook routes; `None`: it takes every delivery (a hook's policy).
    routes: Option<Vec<AppWebhookRoute>>,
}

impl Destination {
    /// Does a delivery of `hook` about `repository` go here?
    fn takes(&self, hook: &ObjectRef, repository: Option<&str>) -> bool {
        self.routes.as_deref().is_none_or(|routes| AppWebhookRoute::any_takes(routes, &hook.name, repository))
    }
}

/// GitHub keeps deliveries (and serves them) for 3 days.
pub const RETENTION_SECS: i64 = 3 * 24 * 3600;
/// A delivery this close to leaving GitHub is not worth a call.
const RETENTION_MARGIN_SECS: i64 = 60;
/// Pages one pass reads at most (100 deliveries each) before it lets other
/// work in; the rest waits in `status.recovery.scan` for the next pass.
const MAX_PAGES_PER_PASS: usize = 5;
/// Deliveries fetched at once.
const FETCH_CONCURRENCY: usize = 8;
/// Evidence of a failure (GitHub's `last_response`) starts a pass early,
/// but not more often than this.
const EVIDENCE_GAP: Duration = Duration::from_secs(5);
/// A pass that stopped with work left runs again this soon.
const MORE_WORK_GAP: Duration = Duration::from_secs(1);
/// Backoff after a failed pass: doubling from the first step to the cap.
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_CAP: Duration = Duration::from_secs(600);

/// How failed deliveries are brought back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Read from GitHub's API and queued by the operator.
    Fetch,
    /// GitHub asked to deliver again.
    Redeliver,
}

impl Way {
    pub fn label(self) -> &'static str {
        match self {
            Self::Fetch => "fetched",
            Self::Redeliver => "redelivered",
        }
    }
}

/// The failed deliveries of one page to recover, oldest first: for each GUID
/// newer than `settled` with no successful attempt on this page nor among
/// `succeeded` (GUIDs that succeeded on newer pages), its newest attempt.
/// Pings are not recovered (nothing dispatches them), nor deliveries about
/// to leave GitHub.
pub fn to_recover<'a>(
    page: &'a [Delivery],
    settled: i64,
    succeeded: &HashSet<String>,
    now: i64,
) -> Vec<&'a Delivery> {
    let ok: HashSet<&str> = page.iter().filter(|d| d.succeeded()).map(|d| d.guid.as_str()).collect();
    let mut seen = HashSet::new();
    let mut failed: Vec<&Delivery> = page
        .iter()
        .filter(|d| d.id > settled && !d.succeeded())
        .filter(|d| !ok.contains(d.guid.as_str()) && !succeeded.contains(&d.guid))
        .filter(|d| d.event != "ping")
        .filter(|d| d.delivered_unix() > now - RETENTION_SECS + RETENTION_MARGIN_SECS)
        // Newest first: the first attempt seen of a GUID is its newest.
        .filter(|d| seen.insert(d.guid.as_str()))
        .collect();
    failed.sort_by_key(|d| d.id);
    failed
}

/// Has a read reached what an earlier pass settled (or GitHub's end)?
pub fn scan_done(page: &[Delivery], settled: i64, next_cursor: Option<&str>) -> bool {
    next_cursor.is_none() || page.iter().any(|d| d.id <= settled)
}

/// Is GitHub's budget high enough to spend on recovery? A tenth of it stays
/// for registering, repairing and rotating.
pub fn budget_allows(rate_limit: Option<RateLimit>) -> bool {
    rate_limit.is_none_or(|r| r.remaining > r.limit / 10)
}

/// The timing of one hook's passes, kept in memory: only the position
/// needs to survive a restart (it is in status), a new leader just runs a
/// pass at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memo {
    pub last_pass: Instant,
    pub next_pass: Instant,
    /// Passes that failed in a row.
    pub failures: u32,
    /// The last pass ran while GitHub said the latest delivery failed: that
    /// evidence was acted on, and starts no early pass again until it went
    /// away (a hook whose URL stays down is looked at every interval, not
    /// every few seconds).
    pub acted_on_evidence: bool,
}

/// How a pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Read down to what was settled: nothing left.
    Done,
    /// Stopped with pages left to read.
    MoreWork,
    /// GitHub's budget is low until `Duration` from now.
    Throttled(Duration),
    /// A call failed; tried again with backoff.
    Failed,
}

/// `None` when a pass is due now, else how long until it is. A pass is due
/// at its time, or early on new evidence that deliveries fail (not while
/// backing off after failed passes, nor for evidence a pass acted on).
pub fn due(now: Instant, memo: Option<&Memo>, evidence: bool) -> Option<Duration> {
    let memo = memo?;
    let mut at = memo.next_pass;
    if evidence && memo.failures == 0 && !memo.acted_on_evidence {
        at = at.min(memo.last_pass + EVIDENCE_GAP);
    }
    (now < at).then(|| at - now)
}

/// When the next pass is due after one that ended so (`evidence`: GitHub
/// said the latest delivery failed when it ran).
pub fn after_pass(
    now: Instant,
    previous: Option<&Memo>,
    ended: Ended,
    interval: Duration,
    evidence: bool,
) -> Memo {
    let failures = previous.map_or(0, |m| m.failures);
    let (wait, failures) = match ended {
        Ended::Done => (interval, 0),
        Ended::MoreWork => (MORE_WORK_GAP, 0),
        Ended::Throttled(until) => (until.max(MORE_WORK_GAP), failures),
        Ended::Failed => (BACKOFF_FIRST.saturating_mul(1 << failures.min(10)).min(BACKOFF_CAP), failures + 1),
    };
    Memo { last_pass: now, next_pass: now + wait, failures, acted_on_evidence: evidence }
}

/// No failed delivery still to recover is older than this (Unix seconds):
/// the oldest of `failed` (read and not recovered), and, while a read is
/// under way, anything newer than what was settled (GitHub's whole
/// retention when nothing was). `None` when nothing is pending.
pub fn oldest_pending(recovery: &RecoveryStatus, failed: &[Delivery], now: i64) -> Option<i64> {
    let unread = recovery
        .scan
        .as_ref()
        .map(|_| recovery.settled_through_time.as_ref().map_or(now - RETENTION_SECS, |t| t.0.as_second()));
    failed.iter().map(|d| d.delivered_unix()).chain(unread).min()
}

/// Runs a pass when one is due; records the position in `status`. A pass
/// that fails does not fail the reconcile: it says why in status and an
/// Event, and is tried again with backoff. Returns how soon to look again
/// and the newest delivery read.
pub(crate) async fn run(
    owner: Owner<'_>,
    ctx: &Context,
    hook: &HookRef<'_>,
    recovery: &mut Option<RecoveryStatus>,
    evidence: bool,
) -> (Option<Duration>, Option<Delivery>) {
    let Some(interval) = ctx.redelivery_interval else { return (None, None) };
    let key = (owner.hook_ref(), hook.id);
    let now = Instant::now();
    let memo = {
        let mut memos = ctx.recovery.lock().unwrap();
        // Evidence gone (a delivery succeeded since): the next one is new.
        if let Some(m) = memos.get_mut(&key).filter(|_| !evidence) {
            m.acted_on_evidence = false;
        }
        memos.get(&key).copied()
    };
    if let Some(wait) = due(now, memo.as_ref(), evidence) {
        return (Some(wait), None);
    }
    let mut state = recovery.clone().unwrap_or_default();
    let mut pass = Pass { owner, ctx, hook, recovered: Vec::new(), newest: None };
    let (ended, failed) = pass.read(&mut state).await;
    let now_unix = Timestamp::now().as_second();
    let oldest = oldest_pending(&state, &failed, now_unix);
    state.pending = failed.len() as i64;
    state.oldest_pending_time = oldest.map(|t| Time(Timestamp::from_second(t).unwrap_or_default()));
    if ended != Ended::Done || !pass.recovered.is_empty() {
        tracing::info!(
            owner = %owner.name(),
            hook = hook.id,
            ended = ?ended,
            recovered = pass.recovered.len(),
            settled_through = state.settled_through,
            reading = state.scan.is_some(),
            "recovery pass"
        );
    }
    pass.announce().await;
    *recovery = Some(state);
    let now = Instant::now();
    let next = after_pass(now, memo.as_ref(), ended, interval, evidence);
    ctx.recovery.lock().unwrap().insert(key, next);
    (Some(due(now, Some(&next), evidence).unwrap_or(MORE_WORK_GAP)), pass.newest)
}

/// Sets the WebhookConfig's pending-age gauge: the oldest failed delivery
/// not recovered yet among all its hooks' `recoveries`, as of `now` (Unix
/// seconds); 0 when none.
pub(crate) fn report_pending_age<'a>(
    ctx: &Context,
    whc: &WebhookConfig,
    recoveries: impl IntoIterator<Item = &'a Option<RecoveryStatus>>,
    now: i64,
) {
    let oldest = recoveries
        .into_iter()
        .flatten()
        .filter_map(|r| r.oldest_pending_time.as_ref().map(|t| t.0.as_second()))
        .min();
    let ns = whc.namespace().unwrap_or_default();
    ctx.metrics
        .recovery_pending_age
        .with_label_values(&[&ns, &whc.name_any()])
        .set(oldest.map_or(0, |t| (now - t).max(0)));
}

/// Forgets a hook's timing and metrics (its WebhookConfig is gone).
pub(super) fn forget(ctx: &Context, whc: &WebhookConfig) {
    let whc_ref = ObjectRef::of(whc);
    ctx.recovery.lock().unwrap().retain(|(r, _), _| *r != whc_ref);
    let _ = ctx.metrics.recovery_pending_age.remove_label_values(&[&whc_ref.namespace, &whc_ref.name]);
}

/// Forgets the recovery memos of `whc`'s hooks other than `hooks` (one
/// moved, was recreated or left the list): they would never be read again.
pub(super) fn forget_except(ctx: &Context, whc: &WebhookConfig, hooks: &[i64]) {
    let whc_ref = ObjectRef::of(whc);
    ctx.recovery.lock().unwrap().retain(|(r, id), _| *r != whc_ref || hooks.contains(id));
}

/// One pass over one hook.
struct Pass<'a> {
    owner: Owner<'a>,
    ctx: &'a Context,
    hook: &'a HookRef<'a>,
    /// GUIDs recovered, by way.
    recovered: Vec<(Way, String)>,
    /// The newest delivery read.
    newest: Option<Delivery>,
}

/// Why one recovery failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    GitHub(#[from] github::Error),
    #[error("the queue refused it: {0}")]
    Queue(#[from] QueueError),
    #[error("Redis is not reachable yet")]
    NoQueue,
    #[error("could not list AgentPolicies: {0}")]
    Policies(#[source] kube::Error),
}

impl Pass<'_> {
    /// Reads pages and recovers their failures until the read is done, the
    /// pass has read its share, the budget is low or a call fails. Returns
    /// how it ended and the failures read but not recovered.
    async fn read(&mut self, state: &mut RecoveryStatus) -> (Ended, Vec<Delivery>) {
        let mut succeeded = HashSet::new();
        let mut cursor = state.scan.as_ref().map(|s| s.cursor.clone());
        for _ in 0..MAX_PAGES_PER_PASS {
            let github = self.hook.github;
            let rate_limit = github.rate_limit();
            if !budget_allows(rate_limit) {
                let reset = rate_limit.map_or(0, |r| r.reset);
                let wait = (reset - Timestamp::now().as_second()).clamp(1, 3600);
                state.last_error = Some("GitHub's rate-limit budget is low; waiting for its reset".into());
                return (Ended::Throttled(Duration::from_secs(wait as u64)), vec![]);
            }
            let page = match github.deliveries_page(self.hook.target, self.hook.id, cursor.as_deref()).await {
                Ok(page) => page,
                Err(error) => return self.failed(state, &error.into(), vec![]),
            };
            if cursor.is_none() {
                self.newest = page.deliveries.first().cloned();
            }
            // A new read starts at the newest delivery now.
            let scan = match (&state.scan, page.deliveries.first()) {
                (Some(scan), _) => scan.clone(),
                (None, Some(newest)) if newest.id > state.settled_through => RecoveryScan {
                    from: newest.id,
                    from_time: Time(Timestamp::from_second(newest.delivered_unix()).unwrap_or_default()),
                    cursor: String::new(),
                },
                // Nothing newer than what is settled.
                (None, _) => {
                    state.last_error = None;
                    return (Ended::Done, vec![]);
                }
            };
            let now = Timestamp::now().as_second();
            let failed = to_recover(&page.deliveries, state.settled_through, &succeeded, now);
            succeeded.extend(page.deliveries.iter().filter(|d| d.succeeded()).map(|d| d.guid.clone()));
            let failed: Vec<Delivery> = failed.into_iter().cloned().collect();
            if let Err((error, left)) = self.recover(&failed).await {
                // NB: a read that failed on its first page starts over from
                // the newest page next time; a later page is read again.
                return self.failed(state, &error, left);
            }
            let next = match page.next_cursor {
                Some(next) if !scan_done(&page.deliveries, state.settled_through, Some(&next)) => next,
                _ => {
                    state.settled_through = scan.from;
                    state.settled_through_time = Some(scan.from_time);
                    state.scan = None;
                    state.last_error = None;
                    return (Ended::Done, vec![]);
                }
            };
            state.scan = Some(RecoveryScan { cursor: next.clone(), ..scan });
            cursor = Some(next);
        }
        state.last_error = None;
        (Ended::MoreWork, vec![])
    }

    fn failed(
        &self,
        state: &mut RecoveryStatus,
        error: &Failure,
        left: Vec<Delivery>,
    ) -> (Ended, Vec<Delivery>) {
        tracing::warn!(owner = %self.owner.name(), hook = self.hook.id, %error, "recovery pass stopped");
        state.last_error = Some(error.to_string());
        // GitHub said when to come back: that, not a guess.
        let ended = match error {
            Failure::GitHub(e) => e.retry_after().map_or(Ended::Failed, Ended::Throttled),
            _ => Ended::Failed,
        };
        (ended, left)
    }

    /// Recovers `failed` (oldest first); on the first failure, returns the
    /// error and what is left.
    async fn recover(&mut self, failed: &[Delivery]) -> Result<(), (Failure, Vec<Delivery>)> {
        let way = self.ctx.recovery_way;
        let destinations = match way {
            Way::Fetch if !failed.is_empty() => match self.owner.destinations(self.ctx).await {
                Ok(d) => d,
                Err(error) => return Err((error, failed.to_vec())),
            },
            _ => vec![],
        };
        let this = &*self;
        // NB: boxed, so the compiler can see the stream is Send.
        let attempts: Vec<BoxFuture<'_, (&Delivery, Result<Way, Failure>)>> = failed
            .iter()
            .map(|d| {
                let destinations = &destinations;
                async move {
                    let result = match way {
                        Way::Fetch => this.fetch(d, destinations).await,
                        Way::Redeliver => this.redeliver(d).await.map(|()| Way::Redeliver),
                    };
                    (d, result)
                }
                .boxed()
            })
            .collect();
        let results: Vec<(&Delivery, Result<Way, Failure>)> = stream::iter(attempts)
            .buffered(if way == Way::Fetch { FETCH_CONCURRENCY } else { 1 })
            .collect()
            .await;
        let mut left = Vec::new();
        let mut error = None;
        for (d, result) in results {
            match result {
                Ok(way) => {
                    let ns = self.owner.namespace();
                    self.ctx.metrics.redeliveries.with_label_values(&[&ns, way.label()]).inc();
                    self.recovered.push((way, d.guid.clone()));
                }
                Err(e) => {
                    error.get_or_insert(e);
                    left.push(d.clone());
                }
            }
        }
        match error {
            None => Ok(()),
            Some(e) => Err((e, left)),
        }
    }

    /// Queues `d` as GitHub recorded it, for each policy it goes to; asks
    /// GitHub to redeliver it instead when GitHub no longer shows its payload.
    async fn fetch(&self, d: &Delivery, destinations: &[Destination]) -> Result<Way, Failure> {
        let queue = self.ctx.queue.get().ok_or(Failure::NoQueue)?;
        let Some(request) = self.hook.github.delivery(self.hook.target, self.hook.id, d.id).await? else {
            return Ok(Way::Fetch); // gone from GitHub: nothing left to recover
        };
        let Some(payload) = request.payload else {
            return self.redeliver(d).await.map(|()| Way::Redeliver);
        };
        let hook = self.owner.hook_ref();
        // NB: the payload is whatever the API answered. One that is not an
        // event (not an object: `"x"`, `[]`) is not queued as GitHub's word;
        // GitHub is asked to send it again, through the receiver's checks.
        let parsed = serde_json::to_vec(&payload)
            .ok()
            .and_then(|b| queue::Delivery::parse(&request.guid, &request.event, &hook, Bytes::from(b)).ok());
        let Some(delivery) = parsed else {
            tracing::warn!(owner = %self.owner.name(), guid = %request.guid, "GitHub showed a payload that is not an event; asking for a redelivery");
            return self.redeliver(d).await.map(|()| Way::Redeliver);
        };
        let repository = delivery.repository.as_deref();
        for to in destinations.iter().filter(|to| to.takes(&hook, repository)) {
            // NB: fetched from GitHub's API, not signed: no replay check (None).
            match queue.enqueue(&to.policy, &delivery, to.limit, None).await? {
                Enqueued::Queued(_) | Enqueued::Duplicate | Enqueued::Replay => {}
            }
        }
        Ok(Way::Fetch)
    }

    async fn redeliver(&self, d: &Delivery) -> Result<(), Failure> {
        match self.hook.github.redeliver(self.hook.target, self.hook.id, d.id).await {
            // GitHub no longer has it (or refuses it): nothing to retry.
            Ok(()) | Err(github::Error::NotFound(_) | github::Error::Invalid(_)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// One Event per way for what this pass recovered.
    async fn announce(&self) {
        for (way, reason, verb) in [
            (Way::Fetch, "Recovered", "fetched from GitHub and queued"),
            (Way::Redeliver, "Redelivered", "asked GitHub to redeliver"),
        ] {
            let guids: Vec<&str> =
                self.recovered.iter().filter(|(w, _)| *w == way).map(|(_, g)| g.as_str()).collect();
            if guids.is_empty() {
                continue;
            }
            let shown = guids.iter().take(10).copied().collect::<Vec<_>>().join(", ");
            let more =
                if guids.len() > 10 { format!(" and {} more", guids.len() - 10) } else { String::new() };
            let note = format!("{verb} {} failed deliveries: {shown}{more}", guids.len());
            self.owner.publish(self.ctx, reason, note).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> String {
        Timestamp::from_second(secs).unwrap().to_string()
    }

    fn d(id: i64, guid: &str, code: i64, secs: i64) -> Delivery {
        Delivery {
            id,
            guid: guid.into(),
            delivered_at: at(secs),
            redelivery: false,
            status_code: code,
            event: "push".into(),
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn ids(v: Vec<&Delivery>) -> Vec<i64> {
        v.into_iter().map(|d| d.id).collect()
    }

    #[test]
    fn what_a_page_asks_to_recover() {
        let none = HashSet::new();
        let page = vec![
            d(9, "g5", 0, NOW - 10),   // failed, newest attempt of g5
            d(8, "g4", 200, NOW - 20), // succeeded on redelivery...
            d(7, "g4", 502, NOW - 30), // ...so not recovered
            d(6, "g5", 0, NOW - 40),   // older attempt of g5
            d(5, "g3", 404, NOW - 50),
            d(4, "g2", 200, NOW - 60),
            d(3, "g1", 0, NOW - 70),
        ];
        let cases: Vec<(&str, i64, HashSet<String>, Vec<i64>)> = vec![
            ("every failed GUID once, newest attempt, oldest first", 0, none.clone(), vec![3, 5, 9]),
            ("nothing at the settled mark", 3, none.clone(), vec![5, 9]),
            ("nothing below the settled mark", 5, none.clone(), vec![9]),
            ("a GUID that succeeded on a newer page", 3, ["g5".to_owned()].into(), vec![5]),
            ("everything settled", 9, none.clone(), vec![]),
        ];
        for (what, settled, succeeded, want) in cases {
            assert_eq!(ids(to_recover(&page, settled, &succeeded, NOW)), want, "{what}");
        }
    }

    #[test]
    fn pings_and_deliveries_about_to_leave_github_are_not_recovered() {
        let mut ping = d(3, "p", 0, NOW - 5);
        ping.event = "ping".into();
        let page = vec![ping, d(2, "old", 0, NOW - RETENTION_SECS + 30), d(1, "ok", 0, NOW - 3600)];
        assert_eq!(ids(to_recover(&page, 0, &HashSet::new(), NOW)), vec![1]);
    }

    #[test]
    fn a_read_is_done_at_the_settled_mark_or_githubs_end() {
        let page = vec![d(12, "a", 0, NOW), d(11, "b", 0, NOW)];
        let cases = [
            ("more pages, nothing settled reached", 10, Some("c"), false),
            ("the settled mark is on this page", 11, Some("c"), true),
            ("GitHub has no older page", 0, None, true),
        ];
        for (what, settled, next, want) in cases {
            assert_eq!(scan_done(&page, settled, next), want, "{what}");
        }
    }

    #[test]
    fn budget_keeps_a_tenth_for_registration() {
        let rl = |remaining| Some(RateLimit { limit: 5000, remaining, reset: 0 });
        assert!(budget_allows(None));
        assert!(budget_allows(rl(501)));
        assert!(!budget_allows(rl(500)));
        assert!(!budget_allows(rl(0)));
    }

    #[test]
    fn when_passes_run() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let memo = |next: u64, failures| Memo {
            last_pass: t0,
            next_pass: t0 + s(next),
            failures,
            acted_on_evidence: false,
        };
        let acted = |next: u64| Memo { acted_on_evidence: true, ..memo(next, 0) };
        let cases = [
            ("never ran: now", None, t0, false, None),
            ("not yet", Some(memo(30, 0)), t0 + s(10), false, Some(s(20))),
            ("its time", Some(memo(30, 0)), t0 + s(30), false, None),
            ("evidence of failure: early", Some(memo(30, 0)), t0 + s(6), true, None),
            ("evidence, but a pass just ran", Some(memo(30, 0)), t0 + s(2), true, Some(s(3))),
            ("evidence, but backing off", Some(memo(30, 2)), t0 + s(6), true, Some(s(24))),
            ("evidence a pass already acted on: the interval", Some(acted(30)), t0 + s(6), true, Some(s(24))),
        ];
        for (what, memo, now, evidence, want) in cases {
            assert_eq!(due(now, memo.as_ref(), evidence), want, "{what}");
        }
    }

    #[test]
    fn after_a_pass() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let i = s(30);
        let failing = |failures| Memo { last_pass: t0, next_pass: t0, failures, acted_on_evidence: false };
        let cases = [
            ("done: the interval", None, Ended::Done, s(30), 0),
            ("done resets failures", Some(failing(3)), Ended::Done, s(30), 0),
            ("work left: at once", None, Ended::MoreWork, s(1), 0),
            ("throttled: until the reset", None, Ended::Throttled(s(900)), s(900), 0),
            ("first failure", None, Ended::Failed, s(5), 1),
            ("third failure doubles twice", Some(failing(2)), Ended::Failed, s(20), 3),
            ("backoff is capped", Some(failing(30)), Ended::Failed, s(600), 31),
        ];
        for (what, previous, ended, wait, failures) in cases {
            let m = after_pass(t0, previous.as_ref(), ended, i, false);
            assert_eq!((m.next_pass - t0, m.failures), (wait, failures), "{what}");
        }
        let m = after_pass(t0, None, Ended::Done, i, true);
        assert!(m.acted_on_evidence, "a pass run on evidence remembers it acted on it");
        assert_eq!(due(t0 + s(6), Some(&m), true), Some(s(24)), "the same evidence starts no early pass");
    }

    #[test]
    fn the_oldest_pending_bound() {
        let settled_at = Some(Time(Timestamp::from_second(NOW - 600).unwrap()));
        let scan = Some(RecoveryScan { from: 50, from_time: Time(Timestamp::now()), cursor: "c".into() });
        let status = |settled_through_time: Option<Time>, scan: Option<RecoveryScan>| RecoveryStatus {
            settled_through: 10,
            settled_through_time,
            scan,
            ..RecoveryStatus::default()
        };
        let failed = d(20, "f", 0, NOW - 300);
        let cases = [
            ("all read, nothing failed", status(settled_at.clone(), None), vec![], None),
            (
                "all read, one not recovered",
                status(settled_at.clone(), None),
                vec![failed.clone()],
                Some(NOW - 300),
            ),
            (
                "pages unread: newer than the settled mark",
                status(settled_at.clone(), scan.clone()),
                vec![failed.clone()],
                Some(NOW - 600),
            ),
            (
                "nothing ever settled: GitHub's whole retention",
                status(None, scan),
                vec![],
                Some(NOW - RETENTION_SECS),
            ),
        ];
        for (what, status, failed, want) in cases {
            assert_eq!(oldest_pending(&status, &failed, NOW), want, "{what}");
        }
    }
}
