//! A policy's tap: its deliveries with their payloads as Server-Sent Events,
//! from now on or from its kept history first: what `hookwarden forward`
//! follows.

use std::time::Duration;

use axum::{
    Extension,
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{IntoResponse, Response, sse::Event},
};
use serde::Deserialize;
use serde_json::json;

use super::{
    access::{Caller, Capability},
    state::{AdminError, AdminState},
    stream::{TICK, sse},
};
use crate::{ObjectRef, now_ms, queue::Delivery};

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
