//! `hookwarden sample-agent`: a small HTTP sink that stands in for a
//! downstream agent. It records every CloudEvent it gets, and can be told to
//! fail or be slow, so the whole path can be watched and tested.
//!
//! - `POST /{agent}`: an event for agent `{agent}`; answered per its mode.
//! - `PUT /_mode/{agent}` with body `ok`, `fail`, `slow:<ms>`, `flaky:<percent>` or `busy:<seconds>` (503 + `Retry-After`)
//!   (that share of calls fails, at random).
//! - `GET /_received/{agent}`: what it accepted, as JSON `[{id, type, subject, bytes, atMs}]`.
//! - `GET /_stats/{agent}`: `{received, inFlight, maxInFlight, unverified}`.
//!
//! Given signing keys (`--signing-key whsec_...`), it verifies each call's
//! Standard Webhooks signature and answers 401 to a call that does not
//! carry a valid one (counted as `unverified`, not recorded).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post, put},
};
use serde::Serialize;

use crate::standard_webhooks::{self, SigningKey};

/// How an agent answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Ok,
    Fail,
    Slow(u64),
    /// Fails this percentage of calls, at random.
    Flaky(u8),
    /// Answers 503 with `Retry-After` of this many seconds.
    Busy(u64),
}

/// One received CloudEvent.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Received {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub subject: Option<String>,
    pub bytes: usize,
    /// When it was answered, Unix milliseconds.
    pub at_ms: u64,
    /// The W3C trace context the call carried.
    pub traceparent: Option<String>,
    /// The `Authorization` header the call carried (an agent's credentials;
    /// this sink is a test tool, it shows them).
    pub authorization: Option<String>,
}

#[derive(Default)]
struct AgentState {
    mode: Mode,
    received: Vec<Received>,
    /// Every call, answered or failed: `(ce-id, Unix ms)`.
    calls: Vec<(String, u64)>,
    in_flight: usize,
    max_in_flight: usize,
    unverified: usize,
}

/// The sink's state, shared by its handlers (and inspectable in-process).
#[derive(Clone, Default)]
pub struct Sink {
    agents: Arc<Mutex<HashMap<String, AgentState>>>,
    /// When not empty, every call must be signed with one of these.
    signing_keys: Arc<[SigningKey]>,
}

impl Sink {
    /// A sink that verifies Standard Webhooks signatures against `keys`.
    pub fn verifying(keys: Vec<SigningKey>) -> Self {
        Self { signing_keys: keys.into(), ..Self::default() }
    }

    pub fn set_mode(&self, agent: &str, mode: Mode) {
        self.agents.lock().unwrap().entry(agent.to_owned()).or_default().mode = mode;
    }

    /// Events agent `agent` accepted (answered 2xx), in arrival order.
    /// Every call `agent` got, failed ones too: `(ce-id, Unix ms)`.
    pub fn calls(&self, agent: &str) -> Vec<(String, u64)> {
        self.agents.lock().unwrap().get(agent).map(|a| a.calls.clone()).unwrap_or_default()
    }

    pub fn received(&self, agent: &str) -> Vec<Received> {
        self.agents.lock().unwrap().get(agent).map(|a| a.received.clone()).unwrap_or_default()
    }

    /// The most requests agent `agent` had in flight at once.
    pub fn max_in_flight(&self, agent: &str) -> usize {
        self.agents.lock().unwrap().get(agent).map_or(0, |a| a.max_in_flight)
    }

    /// Forgets the in-flight high-water mark.
    pub fn reset_max_in_flight(&self, agent: &str) {
        if let Some(a) = self.agents.lock().unwrap().get_mut(agent) {
            a.max_in_flight = a.in_flight;
        }
    }
}

pub fn router(sink: Sink) -> Router {
    Router::new()
        .route("/{agent}", post(receive))
        .route("/_mode/{agent}", put(set_mode))
        .route(
            "/_received/{agent}",
            get(|State(s): State<Sink>, Path(a): Path<String>| async move { Json(s.received(&a)) }),
        )
        .route("/_stats/{agent}", get(stats))
        .with_state(sink)
}

async fn receive(
    State(sink): State<Sink>,
    Path(agent): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if !sink.signing_keys.is_empty() {
        let now = crate::now_ms() / 1000;
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let verified = standard_webhooks::verify(
            &sink.signing_keys,
            h(standard_webhooks::ID),
            h(standard_webhooks::TIMESTAMP),
            h(standard_webhooks::SIGNATURE),
            &body,
            now,
        );
        if let Err(error) = verified {
            tracing::warn!(agent, %error, "unverified call refused");
            sink.agents.lock().unwrap().entry(agent).or_default().unverified += 1;
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    let mode = {
        let mut agents = sink.agents.lock().unwrap();
        let a = agents.entry(agent.clone()).or_default();
        a.in_flight += 1;
        a.calls.push((header("ce-id").unwrap_or_default(), crate::now_ms()));
        a.max_in_flight = a.max_in_flight.max(a.in_flight);
        a.mode
    };
    if let Mode::Slow(ms) = mode {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut agents = sink.agents.lock().unwrap();
    let a = agents.get_mut(&agent).expect("entry created above");
    a.in_flight -= 1;
    let fail = match mode {
        Mode::Fail => true,
        Mode::Flaky(percent) => rand::random_range(0..100u8) < percent,
        Mode::Ok | Mode::Slow(_) | Mode::Busy(_) => false,
    };
    if fail {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    if let Mode::Busy(seconds) = mode {
        return (StatusCode::SERVICE_UNAVAILABLE, [(axum::http::header::RETRY_AFTER, seconds.to_string())])
            .into_response();
    }
    a.received.push(Received {
        id: header("ce-id").unwrap_or_default(),
        kind: header("ce-type").unwrap_or_default(),
        subject: header("ce-subject"),
        bytes: body.len(),
        at_ms: crate::now_ms(),
        traceparent: header("traceparent"),
        authorization: header("authorization"),
    });
    tracing::info!(agent, id = ?header("ce-id"), kind = ?header("ce-type"), "event received");
    StatusCode::OK.into_response()
}

async fn set_mode(State(sink): State<Sink>, Path(agent): Path<String>, body: String) -> StatusCode {
    let mode = match body.trim() {
        "ok" => Mode::Ok,
        "fail" => Mode::Fail,
        other => {
            let number = |prefix: &str| other.strip_prefix(prefix).and_then(|n| n.parse::<u64>().ok());
            match (number("slow:"), number("flaky:"), number("busy:")) {
                (Some(ms), _, _) => Mode::Slow(ms),
                (_, Some(percent @ 0..=100), _) => Mode::Flaky(percent as u8),
                (_, _, Some(seconds)) => Mode::Busy(seconds),
                _ => return StatusCode::BAD_REQUEST,
            }
        }
    };
    sink.set_mode(&agent, mode);
    StatusCode::NO_CONTENT
}

async fn stats(State(sink): State<Sink>, Path(agent): Path<String>) -> Json<serde_json::Value> {
    let agents = sink.agents.lock().unwrap();
    let (received, in_flight, max, unverified) = agents
        .get(&agent)
        .map_or((0, 0, 0, 0), |a| (a.received.len(), a.in_flight, a.max_in_flight, a.unverified));
    Json(serde_json::json!({
        "received": received, "inFlight": in_flight, "maxInFlight": max, "unverified": unverified,
    }))
}

/// Serves the sink on `listener` until SIGTERM or Ctrl-C.
pub async fn serve(listener: tokio::net::TcpListener, sink: Sink) -> std::io::Result<()> {
    axum::serve(listener, router(sink)).with_graceful_shutdown(crate::shutdown_signal()).await
}
