//! The receiver's HTTP face: `POST /hooks/{namespace}/{name}` for GitHub,
//! plus `/healthz`, `/readyz` and `/metrics`.
//!
//! Order of checks on a delivery: the receiver has loaded what it watches
//! (503 + `Retry-After` until then, never a misleading 404) → the hook exists (404) → the body fits (413)
//! → the signature matches a current key, on the raw bytes (401) → the
//! content type is JSON or form (415) → the payload parses (400) → it is in
//! Redis (202), or was already (200). Only then does GitHub get a 2xx.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{
    queue::{Activity, Delivery, Enqueued, ObjectRef, Queue, QueueError},
    registry::{DEFAULT_QUEUE_LIMIT, Registry},
};
use crate::{
    signature::{self, SignatureError},
    telemetry::ReceiverMetrics,
};

/// GitHub's maximum payload size, the default body cap.
pub const DEFAULT_BODY_LIMIT: usize = 25 * 1024 * 1024;
/// What GitHub is asked to wait before retrying a 503 (when it retries at all:
/// the operator's recovery pass is what really brings the delivery back).
const RETRY_AFTER_SECS: u64 = 30;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub queue: Queue,
    pub metrics: Arc<ReceiverMetrics>,
    pub body_limit: usize,
    /// Cancelled on SIGTERM: not ready, and every answer closes its connection.
    pub draining: CancellationToken,
}

/// The receiver's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/hooks/{namespace}/{name}", post(ingest))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::map_response_with_state(state.clone(), close_when_draining))
        .with_state(state)
}

/// Why a delivery was not accepted. The messages are safe to show the caller:
/// they never carry key material or internals.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Until its watches have listed every hook, key and policy, the
    /// receiver cannot tell an unknown hook from one it has not read yet.
    #[error("starting: hooks and keys not loaded yet; retry later")]
    NotSynced,
    #[error("no WebhookConfig {0}")]
    UnknownHook(ObjectRef),
    #[error("body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("could not read the request body")]
    BodyRead,
    #[error("no keys loaded for this hook yet")]
    NoKeys,
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("missing or invalid {0} header")]
    Header(&'static str),
    #[error("unsupported content type: use application/json or application/x-www-form-urlencoded")]
    UnsupportedMediaType,
    #[error("malformed payload: {0}")]
    BadPayload(String),
    #[error("queue is full; retry later")]
    QueueFull,
    #[error("queue unavailable; retry later")]
    QueueUnavailable,
}

impl IngestError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NotSynced => "not_synced",
            Self::UnknownHook(_) => "unknown_hook",
            Self::TooLarge(_) => "too_large",
            Self::BodyRead => "body_read",
            Self::NoKeys => "no_keys",
            Self::Signature(e) => e.metric_label(),
            Self::Header(_) => "bad_header",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BadPayload(_) => "bad_payload",
            Self::QueueFull => "queue_full",
            Self::QueueUnavailable => "queue_unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::UnknownHook(_) => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyRead | Self::Header(_) | Self::BadPayload(_) => StatusCode::BAD_REQUEST,
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotSynced | Self::NoKeys | Self::QueueFull | Self::QueueUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

async fn ingest(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let hook = ObjectRef::new(namespace, name);
    let guid = headers.get("x-github-delivery").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    match accept(&state, &hook, &headers, body).await {
        Ok((status, message)) => (status, Json(json!({ "status": message }))).into_response(),
        Err(error) => {
            state.metrics.rejected.with_label_values(&[error.metric_label()]).inc();
            tracing::warn!(%hook, delivery_id = %guid, reason = error.metric_label(), %error, "delivery rejected");
            // The queue logs its own refusals; Redis being down needs no record.
            if !matches!(
                error,
                IngestError::QueueFull | IngestError::QueueUnavailable | IngestError::NotSynced
            ) {
                let event = headers.get("x-github-event").and_then(|v| v.to_str().ok()).unwrap_or("");
                let record = Activity {
                    at_ms: now_ms(),
                    guid: guid.chars().take(64).collect(),
                    event: event.chars().take(64).collect(),
                    hook: hook.to_string(),
                    policy: None,
                    repository: None,
                    status: "rejected".into(),
                    agent: None,
                    detail: Some(error.metric_label().into()),
                };
                let _ = state.queue.record_activity(&record).await;
            }
            error.into_response()
        }
    }
}

async fn accept(
    state: &AppState,
    hook_ref: &ObjectRef,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, &'static str), IngestError> {
    if !state.registry.is_synced() {
        return Err(IngestError::NotSynced);
    }
    let hook = state.registry.hook(hook_ref).ok_or_else(|| IngestError::UnknownHook(hook_ref.clone()))?;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > state.body_limit) {
        return Err(IngestError::TooLarge(state.body_limit));
    }
    let body = axum::body::to_bytes(body, state.body_limit).await.map_err(|e| {
        // NB: axum reports an exceeded limit as an error whose source is LengthLimitError.
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            IngestError::TooLarge(state.body_limit)
        } else {
            IngestError::BodyRead
        }
    })?;

    let keys = state.registry.keys(&hook.secret);
    if keys.is_empty() {
        return Err(IngestError::NoKeys);
    }
    let key = signature::verify(headers.get(signature::HEADER).map(HeaderValue::as_bytes), &body, &keys)?;

    let event = header_token(headers, "x-github-event", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
    })?;
    let guid = header_token(headers, "x-github-delivery", |c| c.is_ascii_alphanumeric() || c == '-')?;
    let payload = match media_type(headers) {
        Some(m) if m.eq_ignore_ascii_case("application/json") => body,
        Some(m) if m.eq_ignore_ascii_case("application/x-www-form-urlencoded") => form_payload(&body)?,
        _ => return Err(IngestError::UnsupportedMediaType),
    };
    let delivery = Delivery::parse(guid, event, hook_ref, payload)
        .map_err(|e| IngestError::BadPayload(e.to_string()))?;
    state.metrics.received.with_label_values(&[event]).inc();
    if event == "ping" {
        // Answered, not dispatched: the operator reads the ping's delivery
        // status on GitHub to confirm a rotation. Recorded for the admin API.
        let version = keys[key].version();
        if let Err(error) = state.queue.record_ping(&delivery, version).await {
            tracing::warn!(hook = %hook_ref, delivery_id = %guid, %error, "could not record ping");
        }
        tracing::info!(hook = %hook_ref, delivery_id = %guid, key_version = version, "ping verified");
        return Ok((StatusCode::OK, "pong"));
    }

    let limit = state.registry.policy(&hook.policy).map_or(DEFAULT_QUEUE_LIMIT, |p| p.queue_limit);
    match state.queue.enqueue(&hook.policy, &delivery, limit).await {
        Ok(Enqueued::Queued(id)) => {
            tracing::info!(hook = %hook_ref, delivery_id = %guid, event, entry = %id, "delivery queued");
            Ok((StatusCode::ACCEPTED, "queued"))
        }
        Ok(Enqueued::Duplicate) => {
            state.metrics.duplicates.with_label_values(&[event]).inc();
            tracing::info!(hook = %hook_ref, delivery_id = %guid, event, "duplicate delivery not queued again");
            Ok((StatusCode::OK, "duplicate"))
        }
        Err(QueueError::Full { .. }) => Err(IngestError::QueueFull),
        Err(error) => {
            tracing::error!(hook = %hook_ref, delivery_id = %guid, %error, "could not queue delivery");
            Err(IngestError::QueueUnavailable)
        }
    }
}

/// A header that must be present, short, and made of `allowed` characters.
fn header_token<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
    allowed: fn(char) -> bool,
) -> Result<&'h str, IngestError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(allowed))
        .ok_or(IngestError::Header(name))
}

fn media_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or("").trim())
}

/// GitHub's form encoding: the JSON payload in a `payload` field.
fn form_payload(body: &[u8]) -> Result<Bytes, IngestError> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| Bytes::from(v.into_owned()))
        .ok_or_else(|| IngestError::BadPayload("form body has no payload field".to_owned()))
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// While draining, a client's next request opens a new connection, which
/// the Service sends to a replica that is staying.
async fn close_when_draining(State(state): State<AppState>, mut response: Response) -> Response {
    if state.draining.is_cancelled() {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "draining": true }))).into_response();
    }
    let redis = tokio::time::timeout(Duration::from_secs(2), state.queue.ping()).await;
    let redis_ok = matches!(redis, Ok(Ok(())));
    let synced = state.registry.is_synced();
    let status = if redis_ok && synced { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "redis": redis_ok, "kubernetes_synced": synced }))).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
