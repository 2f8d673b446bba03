//! `GET /admin/stream`: the live view as Server-Sent Events.
//!
//! First a `snapshot` (what `GET /admin/policies` answers), then, as they
//! happen: each `delivery` line of the activity log (queued, duplicate,
//! delivered, retry, dead letter), each `policy` change (the kill switch,
//! the concurrency) and each `circuit` change of an agent; a comment every
//! 15 s keeps proxies from closing it. Filters: `?policy=NS/NAME`,
//! `?event=E`.
//!
//! Every `delivery` carries an id: where the stream stands in each
//! policy's log (`ns/a@1700000000000-0,ns/b@...`). A client that reconnects
//! with it as `Last-Event-ID` gets what came after, no gap and no repeat, as
//! long as the log still holds it (its last 10,000 lines per policy). The
//! log is read every [`TICK`]; rejections (kept in each receiver's memory,
//! not in Redis) are not streamed.

use std::{collections::BTreeMap, convert::Infallible, time::Duration};

use axum::{
    Extension,
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    access::{Caller, Capability},
    state::{AdminError, AdminState, circuit, policies_view},
};
use crate::{ObjectRef, now_ms, queue::Delivery};

/// How often the logs and the policies are looked at.
pub const TICK: Duration = Duration::from_millis(300);

/// Where a stream stands in each policy's activity log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<String, String>);

impl Cursor {
    /// From `Last-Event-ID`; `None` when it is not one of ours.
    pub fn parse(text: &str) -> Option<Self> {
        let mut map = BTreeMap::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (policy, id) = part.rsplit_once('@')?;
            if !policy.contains('/') || crate::queue::stream_id(id).is_none() {
                return None;
            }
            map.insert(policy.to_owned(), id.to_owned());
        }
        Some(Self(map))
    }

    pub fn encode(&self) -> String {
        self.0.iter().map(|(p, id)| format!("{p}@{id}")).collect::<Vec<_>>().join(",")
    }

    /// Where to read `policy` from: its position, or — for a policy the
    /// cursor has not seen — the newest time it knows (`since_ms` if none).
    pub fn position(&self, policy: &str, since_ms: u64) -> String {
        self.0.get(policy).cloned().unwrap_or_else(|| {
            let newest = self.0.values().filter_map(|id| id.split_once('-')?.0.parse::<u64>().ok()).max();
            // NB: exclusive reads: `{ms}-0` itself was never written by Redis for `ms - 1`.
            format!("{}-0", newest.unwrap_or(since_ms).saturating_sub(1))
        })
    }
}

/// What the stream shows of a policy: its switch, concurrency and circuits.
pub type PolicyState = (Value, Value, BTreeMap<String, String>);

/// The events that tell a viewer how `now` differs from `before`.
pub fn changes(
    before: &BTreeMap<String, PolicyState>,
    now: &BTreeMap<String, PolicyState>,
) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    for (policy, (enabled, concurrency, circuits)) in now {
        let old = before.get(policy);
        if old.is_none_or(|(e, c, _)| e != enabled || c != concurrency) {
            out.push(("policy", json!({ "policy": policy, "enabled": enabled, "concurrency": concurrency })));
        }
        for (agent, state) in circuits {
            if old.and_then(|(_, _, c)| c.get(agent)).is_none_or(|s| s != state) {
                out.push(("circuit", json!({ "policy": policy, "agent": agent, "circuit": state })));
            }
        }
    }
    out
}

#[derive(Deserialize)]
pub struct Filter {
    policy: Option<String>,
    event: Option<String>,
}

/// NB: what a caller may view is decided when it connects; a right taken
/// away shows on its next connection.
pub async fn stream(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Query(filter): Query<Filter>,
    headers: HeaderMap,
) -> Response {
    let since_ms = now_ms();
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let mut cursor = match last.map(Cursor::parse) {
        Some(Some(cursor)) => cursor,
        Some(None) => {
            return AdminError::BadRequest("Last-Event-ID is not one this stream sent".into())
                .into_response();
        }
        None => Cursor::default(),
    };
    let viewable = match s.viewable(&caller).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let snapshot = match policies_view(&s, &viewable).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        let wanted = |p: &str| {
            filter.policy.as_deref().is_none_or(|f| f == p)
                && p.split_once('/').is_some_and(|(ns, _)| viewable.contains(ns))
        };
        // The policies of a view the filter wants.
        let only_wanted = |view: Value| -> Vec<Value> {
            let all = match view {
                Value::Array(all) => all,
                _ => vec![],
            };
            all.into_iter().filter(|p| wanted(p["policy"].as_str().unwrap_or(""))).collect()
        };
        let snapshot = only_wanted(snapshot);
        let mut known = states(&s, &wanted);
        if tx.send(Event::default().event("snapshot").data(Value::from(snapshot).to_string())).await.is_err()
        {
            return;
        }
        loop {
            tokio::time::sleep(TICK).await;
            // Policies and circuits (in memory: no Redis round trip).
            let now = states(&s, &wanted);
            for (kind, data) in changes(&known, &now) {
                if tx.send(Event::default().event(kind).data(data.to_string())).await.is_err() {
                    return;
                }
            }
            known = now;
            // Deliveries, oldest first across policies.
            let mut fresh = Vec::new();
            for policy in s.registry.queue_policies().into_iter().filter(|p| wanted(&p.to_string())) {
                let key = policy.to_string();
                let from = cursor.position(&key, since_ms);
                match s.queue.activity_after(&policy, &from, 500).await {
                    Ok(entries) => fresh.extend(entries.into_iter().map(|(id, a)| (key.clone(), id, a))),
                    Err(error) => tracing::warn!(%policy, %error, "stream: cannot read the activity log"),
                }
            }
            fresh.sort_by_key(|(_, _, a)| a.at_ms);
            for (policy, id, activity) in fresh {
                cursor.0.insert(policy, id);
                if filter.event.as_deref().is_some_and(|e| e != activity.event) {
                    continue;
                }
                let data = serde_json::to_string(&activity).expect("activity serialises");
                let event = Event::default().event("delivery").id(cursor.encode()).data(data);
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    });
    sse(rx)
}

/// How long a follower keeps a policy's tap on without renewing it; renewed
/// every third of that while it follows.
const TAP_HOLD: Duration = Duration::from_secs(60);

/// `GET /admin/policies/{ns}/{name}/tap`: the deliveries queued for a policy
/// from now on, payload included, as Server-Sent Events (`delivery`, whose
/// id is its place in the tap); what `hookwarden forward` follows.
///
/// The tap is written only while someone follows (the queue copies a queued
/// delivery to it while the tap's switch, renewed here, exists) and keeps the
/// last [`TAP_LEN`](crate::queue::TAP_LEN) deliveries: a client that reconnects
/// with `Last-Event-ID` gets what came after, no gap and no repeat, or a
/// `gap` event first when more than that arrived while it was away.
///
/// `?sinceMs=T` starts earlier, from the policy's history (`spec.history`):
/// first every kept delivery received from `T` on (ids `h<history id>`, so a
/// reconnect resumes there exactly; in the order they were routed, which
/// concurrent routing may swap from the order received), then the tap. The tap is switched on before the
/// history is read, and the history is read until routing has passed the
/// tap's start by [`SEAM`]; deliveries routed after the tap went on that the
/// history sent are skipped in the tap by GUID: none is missed, none comes
/// twice, as long as routing keeps up within [`SEAM`] (a delivery queued
/// before the tap went on and routed after the history phase ended would
/// be in neither).
pub async fn tap(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
    Query(from): Query<TapFrom>,
    headers: HeaderMap,
) -> Response {
    let policy = ObjectRef::new(ns, name);
    if let Err(refused) = s.may(&caller, Capability::Payloads, &policy).await {
        return refused.into_response();
    }
    let Some(settings) = s.registry.policy(&policy) else {
        return AdminError::NotFound(format!("no AgentPolicy {policy} (or not loaded yet)")).into_response();
    };
    let start = now_ms();
    let mut after = format!("{}-0", start.saturating_sub(1));
    // Where the history phase starts: a kept delivery's history id to go on
    // after, or `sinceMs`; none: the tap only.
    let mut history: Option<(u64, Option<String>)> = from.since_ms.map(|since| (since, None));
    match headers.get("last-event-id").map(|v| v.to_str().unwrap_or_default()) {
        None => {}
        Some(id) if crate::queue::stream_id(id).is_some() => {
            after = id.to_owned();
            history = None;
        }
        Some(id) if id.strip_prefix('h').and_then(crate::queue::stream_id).is_some() => {
            history = Some((0, Some(id[1..].to_owned())));
        }
        Some(_) => {
            return AdminError::BadRequest("Last-Event-ID is not one this tap sent".into()).into_response();
        }
    }
    if history.is_some() && settings.history_ms == 0 {
        let message =
            format!("policy {policy} keeps no history: set spec.history (for example 24h) to start earlier");
        return AdminError::BadRequest(message).into_response();
    }
    if let Err(e) = s.queue.tap_on(&policy, TAP_HOLD).await {
        return AdminError::Unavailable(e.to_string()).into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let mut renewed = tokio::time::Instant::now();
        let renew = async |renewed: &mut tokio::time::Instant| {
            if renewed.elapsed() >= TAP_HOLD / 3 {
                match s.queue.tap_on(&policy, TAP_HOLD).await {
                    Ok(()) => *renewed = tokio::time::Instant::now(),
                    Err(error) => tracing::warn!(%policy, %error, "tap: cannot renew"),
                }
            }
        };
        let send = async |id: String, d: &Delivery| {
            let data = serde_json::to_string(&Tapped::from(d)).expect("serialises");
            tx.send(Event::default().event("delivery").id(id).data(data)).await.is_ok()
        };
        // GUIDs the history sent that the tap may hold too.
        let mut seam = std::collections::HashSet::new();
        if let Some((since, mut kept_after)) = history {
            loop {
                renew(&mut renewed).await;
                let page = match s.queue.history(&policy, since, kept_after.as_deref(), 100).await {
                    Ok(page) => page,
                    Err(error) => {
                        tracing::warn!(%policy, %error, "tap: cannot read the history");
                        tokio::time::sleep(TICK).await;
                        continue;
                    }
                };
                let full = page.len() == 100;
                let mut passed = false;
                for (id, d) in page {
                    kept_after = Some(id.clone());
                    passed |= d.received_ms >= start + SEAM.as_millis() as u64;
                    if d.received_ms < since {
                        continue;
                    }
                    // NB: only what was queued after the tap went on can be in
                    // it, and that is routed after: the history id says when.
                    let routed_ms =
                        id.split('-').next().and_then(|ms| ms.parse::<u64>().ok()).unwrap_or(u64::MAX);
                    if routed_ms + SEAM.as_millis() as u64 >= start {
                        seam.insert(d.guid.clone());
                    }
                    if !send(format!("h{id}"), &d).await {
                        return;
                    }
                }
                if passed || (!full && now_ms() >= start + SEAM.as_millis() as u64) {
                    break;
                }
                if !full {
                    tokio::time::sleep(TICK).await;
                }
            }
        }
        loop {
            renew(&mut renewed).await;
            match s.queue.tap_after(&policy, &after, 100).await {
                Ok((deliveries, trimmed)) => {
                    // NB: told once: the deliveries read with it are newer than
                    // anything trimmed, and the next read starts after them.
                    if trimmed {
                        let message = format!(
                            "more than {} deliveries arrived while this follower was away; the oldest of them are gone from the tap",
                            crate::queue::TAP_LEN
                        );
                        let gap =
                            Event::default().event("gap").data(json!({ "message": message }).to_string());
                        if tx.send(gap).await.is_err() {
                            return;
                        }
                    }
                    let full = deliveries.len() == 100;
                    for (id, delivery) in deliveries {
                        after = id.clone();
                        if seam.remove(&delivery.guid) {
                            continue;
                        }
                        if !send(id, &delivery).await {
                            return;
                        }
                    }
                    if full {
                        continue;
                    }
                }
                Err(error) => tracing::warn!(%policy, %error, "tap: cannot read"),
            }
            tokio::time::sleep(TICK).await;
        }
    });
    sse(rx)
}

/// Where a tap starts: `?sinceMs=` (Unix milliseconds) to begin with the
/// policy's history.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TapFrom {
    pub since_ms: Option<u64>,
}

/// How far past the tap's start routing must be before the history phase
/// ends: more than a receiver takes between stamping a delivery and queueing it.
pub const SEAM: Duration = Duration::from_secs(2);

/// The events a task sends on `rx`, as a Server-Sent Events response with a
/// heartbeat comment every 15 s (proxies close idle connections).
fn sse(rx: tokio::sync::mpsc::Receiver<Event>) -> Response {
    let events =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) },
        );
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("heartbeat"))
        .into_response()
}

/// A delivery as the tap sends it (and `hookwarden forward` reads it): its
/// headers' values and its payload, byte for byte, as text.
#[derive(Clone, Debug, serde::Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Tapped {
    pub guid: String,
    pub event: String,
    pub hook: String,
    pub repository: Option<String>,
    pub action: Option<String>,
    pub received_ms: u64,
    pub payload: String,
}

impl From<&Delivery> for Tapped {
    fn from(d: &Delivery) -> Self {
        Self {
            guid: d.guid.clone(),
            event: d.event.clone(),
            hook: d.hook.to_string(),
            repository: d.repository.clone(),
            action: d.action.clone(),
            received_ms: d.received_ms,
            payload: String::from_utf8_lossy(&d.payload).into_owned(),
        }
    }
}

/// The switch, concurrency and circuits of each policy `wanted` keeps, from
/// the registry and the breakers.
fn states(s: &AdminState, wanted: &impl Fn(&str) -> bool) -> BTreeMap<String, PolicyState> {
    let breakers = s.dispatcher.breaker_states();
    s.registry
        .policy_refs()
        .into_iter()
        .filter(|p| wanted(&p.to_string()))
        .filter_map(|policy| {
            let settings = s.registry.policy(&policy)?;
            let circuits = settings
                .agents
                .iter()
                .map(|a| (a.name.clone(), circuit(&breakers, &policy, &a.name).to_owned()))
                .collect();
            Some((policy.to_string(), (json!(settings.enabled), json!(settings.concurrency), circuits)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_refuses_what_is_not_one() {
        let c = Cursor::parse("team/a@1700000000000-0,team/b@1700000000500-3").unwrap();
        assert_eq!(c.0["team/b"], "1700000000500-3");
        assert_eq!(Cursor::parse(&c.encode()), Some(c.clone()));
        for bad in ["team/a", "a@1-0", "team/a@x-0", "team/a@1"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
        assert_eq!(Cursor::parse(""), Some(Cursor::default()));
    }

    #[test]
    fn where_each_policy_is_read_from() {
        let c = Cursor::parse("team/a@1700000000000-0,team/b@1700000000500-3").unwrap();
        let cases = [
            ("a known policy: its position", "team/a", "1700000000000-0"),
            ("a policy it has not seen: from the newest time it knows", "team/new", "1700000000499-0"),
        ];
        for (what, policy, want) in cases {
            assert_eq!(c.position(policy, 5), want, "{what}");
        }
        assert_eq!(Cursor::default().position("team/a", 2_000), "1999-0", "a new stream: from its start");
    }

    #[test]
    fn what_changed_between_two_looks() {
        let state = |enabled: bool, concurrency: i64, circuit: &str| -> PolicyState {
            (json!(enabled), json!(concurrency), [("bot".to_owned(), circuit.to_owned())].into())
        };
        let before: BTreeMap<String, PolicyState> = [("team/a".to_owned(), state(true, 4, "closed"))].into();
        let cases = [
            ("nothing", state(true, 4, "closed"), vec![]),
            ("the kill switch", state(false, 4, "closed"), vec!["policy"]),
            ("the concurrency", state(true, 8, "closed"), vec!["policy"]),
            ("a circuit", state(true, 4, "open"), vec!["circuit"]),
        ];
        for (what, now, want) in cases {
            let now: BTreeMap<String, PolicyState> = [("team/a".to_owned(), now)].into();
            let kinds: Vec<&str> = changes(&before, &now).into_iter().map(|(k, _)| k).collect();
            assert_eq!(kinds, want, "{what}");
        }
        let appeared: BTreeMap<String, PolicyState> =
            [("team/b".to_owned(), state(true, 1, "closed"))].into();
        let kinds: Vec<&str> = changes(&before, &appeared).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, ["policy", "circuit"], "a new policy is shown whole");
    }
}
