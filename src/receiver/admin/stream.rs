//! `GET /admin/stream`: the live view as Server-Sent Events (a policy's
//! tap, with payloads, is [`super::tap`]).
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
    extract::{Query, State},
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    access::Caller,
    state::{AdminError, AdminState, circuit, policies_view},
};
use crate::now_ms;

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

/// The events a task sends on `rx`, as a Server-Sent Events response with a
/// heartbeat comment every 15 s (proxies close idle connections).
pub(super) fn sse(rx: tokio::sync::mpsc::Receiver<Event>) -> Response {
    let events =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) },
        );
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("heartbeat"))
        .into_response()
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
