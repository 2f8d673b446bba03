//! The receiver's HTTP face: `POST /hooks/{namespace}/{name}` for GitHub,
//! plus `/healthz`, `/readyz` and `/metrics`.
//!
//! Order of checks on a delivery: the receiver has loaded what it watches
//! (503 + `Retry-After` until then, never a misleading 404) → the hook exists (404) → the body fits (413)
//! → its bytes fit in the budget of unauthenticated bodies (503, before it is read; [`super::body_budget`])
//! → the signature matches a current key, on the raw bytes (401) → the
//! event and delivery headers are well-formed (400) → the content type is
//! JSON or form (415) → the payload parses (400) → it is in
//! Redis (202), or was already (200), or its signed body was, under another
//! GUID (409, a replay). Only then does GitHub get a 2xx.
//! Every check before Redis is a pure step, `admit` (before the body is
//! read), `authenticate` (the signature, on the raw body) then `verify` (the
//! rest), table-tested without Redis; `authenticate_request` and `accept` are
//! the I/O around them. A delivery's trace starts once it is authenticated.
//!
//! Over 400 lines: the ordered checks of a delivery, their pure steps and
//! the I/O around them, then the steps' table tests.

use std::{net::IpAddr, sync::Arc, time::Duration};

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
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::{
    body_budget::BodyBudget,
    drain::Drain,
    rejections::Rejections,
    serve::Limits,
    sources::{Allowlist, FailureLimit, NotAllowed},
};
use crate::{
    ObjectRef,
    api::DEFAULT_QUEUE_LIMIT,
    keys::HmacKey,
    now_ms,
    queue::{Activity, Delivery, Enqueued, Queue, QueueError},
    receiver::registry::{IngestHook, Registry},
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
    /// From SIGTERM: not ready, and every answer closes its connection.
    pub drain: Arc<Drain>,
    /// What one client may hold (the body deadline and the in-flight cap apply here).
    pub limits: Limits,
    /// The most recent rejections, in memory: unauthenticated requests write nothing to Redis.
    pub rejections: Arc<Rejections>,
    /// Sources that fail too often are refused for a while.
    pub failures: Arc<FailureLimit>,
    /// Only GitHub's hook ranges, when enforced; known to the failure limit
    /// whenever read.
    pub allowlist: Arc<Allowlist>,
    /// Bytes of bodies read before their signature is checked.
    pub body_budget: Arc<BodyBudget>,
}

/// Every reason a request is turned away (`reason` of the rejection counter),
/// exported at 0 from the start so that dashboards and alert ratios see 0,
/// not "no data".
pub const REJECTION_REASONS: &[&str] = &[
    "not_synced",
    "unknown_hook",
    "too_large",
    "body_read",
    "body_timeout",
    "no_keys",
    "signature_missing",
    "signature_malformed",
    "signature_mismatch",
    "bad_header",
    "unsupported_media_type",
    "bad_payload",
    "too_many_failures",
    "source_not_allowed",
    "allowlist_not_loaded",
    "replay",
    "queue_full",
    "dead_letters_full",
    "queue_unavailable",
    "overloaded",
    "too_many_connections",
    "body_budget",
];

/// The receiver's router.
pub fn router(state: AppState) -> Router {
    // NB: axum clones the state for each handler and layer of a request: one
    // reference count, not one per field.
    let state = Arc::new(state);
    for reason in REJECTION_REASONS {
        state.metrics.rejected.with_label_values(&[reason]);
    }
    // Every event GitHub can send, at 0: a ratio of duplicates to deliveries
    // per event is 0, not "no data", until the first one.
    for event in crate::api::GITHUB_EVENTS.iter().chain(&["ping"]) {
        state.metrics.received.with_label_values(&[event]);
        state.metrics.duplicates.with_label_values(&[event]);
    }
    let in_flight = Arc::new(Semaphore::new(state.limits.max_in_flight));
    Router::new()
        .route(
            "/hooks/{namespace}/{name}",
            post(ingest).layer(axum::middleware::from_fn_with_state(
                (in_flight.clone(), state.metrics.clone()),
                limit_in_flight,
            )),
        )
        .route(
            "/app-hooks/{name}",
            post(ingest_app).layer(axum::middleware::from_fn_with_state(
                (in_flight, state.metrics.clone()),
                limit_in_flight,
            )),
        )
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
    #[error("the body did not arrive within {0} seconds")]
    BodyTimeout(u64),
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
    #[error("too many failed deliveries from this address; retry in {0} seconds")]
    TooManyFailures(u64),
    #[error("this address is not one GitHub sends webhooks from")]
    SourceNotAllowed,
    #[error("GitHub's hook source ranges are not loaded yet; retry later")]
    AllowlistNotLoaded,
    #[error("overloaded; retry later")]
    Overloaded,
    /// Too many bytes of unauthenticated bodies are being read right now.
    #[error("too many large deliveries being read; retry later")]
    BodyBudget,
    /// The same signed body was accepted before under another GUID.
    #[error("replay: this body was already accepted under another delivery id")]
    Replay,
    #[error("queue is full; retry later")]
    QueueFull,
    #[error("the policy's dead letters are at its queue limit; retry later")]
    DeadLettersFull,
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
            Self::BodyTimeout(_) => "body_timeout",
            Self::NoKeys => "no_keys",
            Self::Signature(e) => e.metric_label(),
            Self::Header(_) => "bad_header",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BadPayload(_) => "bad_payload",
            Self::TooManyFailures(_) => "too_many_failures",
            Self::SourceNotAllowed => "source_not_allowed",
            Self::AllowlistNotLoaded => "allowlist_not_loaded",
            Self::Overloaded => "overloaded",
            Self::BodyBudget => "body_budget",
            Self::Replay => "replay",
            Self::QueueFull => "queue_full",
            Self::DeadLettersFull => "dead_letters_full",
            Self::QueueUnavailable => "queue_unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::UnknownHook(_) => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyRead | Self::Header(_) | Self::BadPayload(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyFailures(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Replay => StatusCode::CONFLICT,
            Self::SourceNotAllowed => StatusCode::FORBIDDEN,
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotSynced
            | Self::NoKeys
            | Self::AllowlistNotLoaded
            | Self::Overloaded
            | Self::BodyBudget
            | Self::QueueFull
            | Self::DeadLettersFull
            | Self::QueueUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match self {
            Self::TooManyFailures(seconds) => Some(seconds),
            _ => (status == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER_SECS),
        };
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

async fn ingest(
    State(state): State<Arc<AppState>>,
    Path((namespace, name)): Path<(String, String)>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest_to(state, ObjectRef::new(namespace, name), extensions, headers, body).await
}

/// `POST /app-hooks/{name}`: a GitHub App's own webhook (an AppWebhook),
/// each delivery queued for every policy granted its repository.
async fn ingest_app(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Body,
) -> Response {
    ingest_to(state, crate::api::app_hook_ref(&name), extensions, headers, body).await
}

async fn ingest_to(
    state: Arc<AppState>,
    hook: ObjectRef,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Body,
) -> Response {
    state.drain.saw_delivery();
    // NB: the connection's peer is known when served by `serve::serve`.
    let source = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|peer| state.failures.source(peer.0.ip(), &headers));
    // NB: GitHub's own addresses are shared by every team's hooks: one team's
    // misconfigured hook must not get GitHub refused for all of them.
    let limited = source.filter(|s| !state.allowlist.publishes(*s));
    let refused = limited.and_then(|s| state.failures.refuses(s));
    // Both before the body is read or any HMAC computed.
    let authenticated = match (refused, state.allowlist.check(source)) {
        (Some(wait), _) => Err(IngestError::TooManyFailures(wait.as_secs().max(1))),
        (None, Err(NotAllowed::Outside)) => Err(IngestError::SourceNotAllowed),
        (None, Err(NotAllowed::NotLoaded)) => Err(IngestError::AllowlistNotLoaded),
        (None, Ok(())) => authenticate_request(&state, &hook, &headers, body).await,
    };
    let (info, body, signed) = match authenticated {
        Ok(authenticated) => authenticated,
        // A request that proved nothing makes no trace: a flood of them must
        // cost no more than the check, here and in the trace backend.
        Err(error) => return reject(&state, &hook, &headers, limited, error),
    };
    // The root of the delivery's trace ([`crate::trace`]), from the moment
    // the request is known to come from GitHub.
    let guid = headers.get("x-github-delivery").and_then(|v| v.to_str().ok()).unwrap_or("");
    let span = tracing::info_span!(
        target: crate::trace::TARGET,
        "ingest",
        otel.kind = "server",
        hook = %hook,
        delivery_id = %guid,
        trace_id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    crate::trace::record_trace_id(&span);
    let response = async {
        match accept(&state, &hook, &info, &headers, body, signed).await {
            Ok((status, message)) => (status, Json(json!({ "status": message }))).into_response(),
            Err(error) => reject(&state, &hook, &headers, limited, error),
        }
    }
    .instrument(span.clone())
    .await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// The answer to a request turned away: counted, remembered in memory, and
/// logged (at most [`Rejections`]' rate: a flood becomes a count, not a log flood).
/// A failure of `limited` (the source, unless it is GitHub) counts against it.
fn reject(
    state: &AppState,
    hook: &ObjectRef,
    headers: &HeaderMap,
    limited: Option<IpAddr>,
    error: IngestError,
) -> Response {
    state.metrics.rejected.with_label_values(&[error.metric_label()]).inc();
    if matches!(error, IngestError::TooManyFailures(_)) {
        // Counted only: a refused flood must not become a log or memory flood.
        return error.into_response();
    }
    if let (
        Some(source),
        IngestError::UnknownHook(_)
        | IngestError::Signature(_)
        | IngestError::Replay
        | IngestError::SourceNotAllowed,
    ) = (limited, &error)
    {
        state.failures.failed(source);
    }
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let guid = text("x-github-delivery");
    if let Some(unlogged) = state.rejections.to_log() {
        tracing::warn!(%hook, delivery_id = %guid, reason = error.metric_label(), %error, unlogged, "delivery rejected");
    }
    // The queue logs its own refusals; Redis being down needs no record.
    if !matches!(
        error,
        IngestError::QueueFull
            | IngestError::DeadLettersFull
            | IngestError::QueueUnavailable
            | IngestError::NotSynced
    ) {
        state.rejections.push(Activity {
            at_ms: now_ms(),
            guid: guid.chars().take(64).collect(),
            event: text("x-github-event").chars().take(64).collect(),
            hook: hook.to_string(),
            policy: None,
            repository: None,
            status: "rejected".into(),
            agent: None,
            detail: Some(error.metric_label().into()),
        });
    }
    error.into_response()
}

/// The first pure step, before the body is read: the receiver knows the hook
/// and the declared size fits. Returns the hook's settings.
pub fn admit(
    registry: &Registry,
    hook_ref: &ObjectRef,
    headers: &HeaderMap,
    body_limit: usize,
) -> Result<IngestHook, IngestError> {
    if !registry.is_synced() {
        return Err(IngestError::NotSynced);
    }
    let hook = registry.ingest_hook(hook_ref).ok_or_else(|| IngestError::UnknownHook(hook_ref.clone()))?;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > body_limit) {
        return Err(IngestError::TooLarge(body_limit));
    }
    Ok(hook)
}

/// What a valid signature proved: which of the hook's current keys signed
/// the body, and the MAC it carried (the identity of a signed body: what
/// recognises a replay).
#[derive(Debug)]
pub struct Signed {
    keys: Arc<[HmacKey]>,
    key: usize,
    mac: [u8; 32],
}

/// A request that passed every check: what to do with it.
#[derive(Debug)]
pub enum Verified {
    /// GitHub's ping: answered and recorded with the key that verified it, never queued.
    Ping { delivery: Delivery, key_version: String },
    /// A delivery for the policy's queue, with the MAC that signed its body.
    Delivery { delivery: Delivery, mac: [u8; 32] },
}

/// The second pure step, on the whole body: signed with one of the hook's
/// current keys, on the raw bytes, before anything in it is believed.
pub fn authenticate(
    registry: &Registry,
    hook: &IngestHook,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Signed, IngestError> {
    let keys = registry.keys(&hook.secret);
    if keys.is_empty() {
        return Err(IngestError::NoKeys);
    }
    let signed = headers.get(signature::HEADER).map(HeaderValue::as_bytes);
    let key = signature::verify(signed, body, &keys)?;
    let mac = signed.and_then(signature::digest).expect("a verified header has a digest");
    Ok(Signed { keys, key, mac })
}

/// The third pure step, on an authenticated body: headers, media type and
/// payload. The order of the answers is the order of these checks (see the
/// module header).
pub fn verify(
    hook_ref: &ObjectRef,
    headers: &HeaderMap,
    body: Bytes,
    signed: Signed,
) -> Result<Verified, IngestError> {
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
    Ok(match event {
        "ping" => Verified::Ping { delivery, key_version: signed.keys[signed.key].version().to_owned() },
        _ => Verified::Delivery { delivery, mac: signed.mac },
    })
}

/// The I/O before the trace starts: the hook is known, the body is read
/// within its size and deadline, and it is signed by one of the hook's keys.
async fn authenticate_request(
    state: &AppState,
    hook_ref: &ObjectRef,
    headers: &HeaderMap,
    body: Body,
) -> Result<(IngestHook, Bytes, Signed), IngestError> {
    let hook = admit(&state.registry, hook_ref, headers, state.body_limit)?;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    // NB: held until the body is authenticated (or refused), then the bytes
    // are the delivery's, bounded by the in-flight cap.
    let _reserved =
        state.body_budget.reserve(declared.unwrap_or(state.body_limit)).ok_or(IngestError::BodyBudget)?;
    let deadline = state.limits.body_timeout;
    let body = tokio::time::timeout(deadline, axum::body::to_bytes(body, state.body_limit))
        .await
        .map_err(|_| IngestError::BodyTimeout(deadline.as_secs()))?
        .map_err(|e| {
            // NB: axum reports an exceeded limit as an error whose source is LengthLimitError.
            if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
                IngestError::TooLarge(state.body_limit)
            } else {
                IngestError::BodyRead
            }
        })?;
    let signed = crate::cpu::heavy(body.len(), || authenticate(&state.registry, &hook, headers, &body))?;
    Ok((hook, body, signed))
}

/// The rest of the checks on an authenticated request, then the queue.
async fn accept(
    state: &AppState,
    hook_ref: &ObjectRef,
    hook: &IngestHook,
    headers: &HeaderMap,
    body: Bytes,
    signed: Signed,
) -> Result<(StatusCode, &'static str), IngestError> {
    let verified = crate::cpu::heavy(body.len(), || verify(hook_ref, headers, body, signed))?;
    let (mut delivery, mac) = match verified {
        Verified::Ping { delivery, key_version } => {
            state.metrics.received.with_label_values(&["ping"]).inc();
            // Answered, not dispatched: the operator reads the ping's delivery
            // status on GitHub to confirm a rotation. Recorded for the admin API.
            if let Err(error) = state.queue.record_ping(&delivery, &key_version).await {
                tracing::warn!(hook = %hook_ref, delivery_id = %delivery.guid, %error, "could not record ping");
            }
            tracing::info!(hook = %hook_ref, delivery_id = %delivery.guid, key_version, "ping verified");
            return Ok((StatusCode::OK, "pong"));
        }
        Verified::Delivery { delivery, mac } => (delivery, mac),
    };
    let policies = match &hook.policy {
        Some(policy) => vec![policy.clone()],
        None => state.registry.app_routes(&hook_ref.name, delivery.repository.as_deref()),
    };
    state.metrics.received.with_label_values(&[&delivery.event]).inc();
    if policies.is_empty() {
        // An App's delivery that no policy asks for and is granted: GitHub
        // did its part; nobody here wants it.
        tracing::info!(hook = %hook_ref, delivery_id = %delivery.guid, event = %delivery.event, repository = delivery.repository.as_deref().unwrap_or(""), "no policy is granted this delivery");
        return Ok((StatusCode::ACCEPTED, "no policy"));
    }
    // NB: each policy its own script call (its own slot in a Redis Cluster).
    // A failure for one answers 503: GitHub's retry or the operator's
    // recovery brings it again, and the policies that queued it already
    // see a duplicate.
    let mut queued = false;
    for policy in &policies {
        let span = tracing::info_span!(target: crate::trace::TARGET, "enqueue", policy = %policy);
        // Dispatch continues the trace from here, across the queue.
        delivery.trace = crate::trace::traceparent(&span);
        let limit = state.registry.policy(policy).map_or(DEFAULT_QUEUE_LIMIT, |p| p.queue_limit);
        match state.queue.enqueue(policy, &delivery, limit, Some(&mac)).instrument(span).await {
            Ok(Enqueued::Queued(id)) => {
                tracing::info!(hook = %hook_ref, %policy, delivery_id = %delivery.guid, event = %delivery.event, entry = %id, "delivery queued");
                queued = true;
            }
            Ok(Enqueued::Duplicate) => {
                tracing::info!(hook = %hook_ref, %policy, delivery_id = %delivery.guid, event = %delivery.event, "duplicate delivery not queued again");
            }
            Ok(Enqueued::Replay) => return Err(IngestError::Replay),
            Err(QueueError::Full { .. }) => return Err(IngestError::QueueFull),
            Err(QueueError::DeadLettersFull { .. }) => return Err(IngestError::DeadLettersFull),
            Err(error) => {
                tracing::error!(hook = %hook_ref, %policy, delivery_id = %delivery.guid, %error, "could not queue delivery");
                return Err(IngestError::QueueUnavailable);
            }
        }
    }
    if queued {
        Ok((StatusCode::ACCEPTED, "queued"))
    } else {
        state.metrics.duplicates.with_label_values(&[&delivery.event]).inc();
        Ok((StatusCode::OK, "duplicate"))
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
pub fn form_payload(body: &[u8]) -> Result<Bytes, IngestError> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| Bytes::from(v.into_owned()))
        .ok_or_else(|| IngestError::BadPayload("form body has no payload field".to_owned()))
}

/// At most `max_in_flight` deliveries at a time: one more is answered 503
/// before its body is read or its signature computed.
async fn limit_in_flight(
    State((in_flight, metrics)): State<(Arc<Semaphore>, Arc<ReceiverMetrics>)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(_permit) = in_flight.try_acquire() else {
        let error = IngestError::Overloaded;
        metrics.rejected.with_label_values(&[error.metric_label()]).inc();
        return error.into_response();
    };
    next.run(request).await
}

/// While draining, a client's next request opens a new connection, which
/// the Service sends to a replica that is staying.
async fn close_when_draining(State(state): State<Arc<AppState>>, mut response: Response) -> Response {
    if state.drain.is_draining() {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.drain.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "draining": true }))).into_response();
    }
    let redis = tokio::time::timeout(Duration::from_secs(2), state.queue.ping()).await;
    let redis_ok = matches!(redis, Ok(Ok(())));
    let synced = state.registry.is_synced();
    let keys = state.registry.keys_ready(crate::receiver::registry::KEYS_GRACE);
    let status = if redis_ok && synced && keys { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "redis": redis_ok, "kubernetes_synced": synced, "keys_loaded": keys })))
        .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // The queue gauges are read from Redis at scrape time, so an alert sees
    // a queue fill up at once. Redis down: the last values stay.
    let policies = state.registry.queue_policies();
    let lengths = tokio::time::timeout(Duration::from_secs(1), state.queue.lengths(&policies)).await;
    if let Ok(Ok(lengths)) = lengths {
        for (policy, held) in policies.iter().zip(lengths) {
            let label = policy.to_string();
            state.metrics.queue_length.with_label_values(&[&label]).set(held.queued as i64);
            state.metrics.dead_letters.with_label_values(&[&label]).set(held.dead as i64);
            for (agent, n) in &held.lanes {
                state.metrics.lane_length.with_label_values(&[&label, agent]).set(*n as i64);
            }
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        keys::HmacKey,
        receiver::registry::{HookInfo, Watched},
    };

    const KEY: &str = "a key";
    const LIMIT: usize = 64;

    fn registry(synced: bool) -> Registry {
        let registry = Registry::new();
        let secret = ObjectRef::new("team", "hook-hmac");
        registry.set_hook(
            ObjectRef::new("team", "hook"),
            HookInfo {
                secret: secret.clone(),
                policy: ObjectRef::new("team", "default"),
                ready: None,
                last_delivery: None,
            },
        );
        registry.set_keys(secret, vec![HmacKey::new("000000000001", KEY)]);
        if synced {
            for watched in Watched::ALL {
                registry.mark_synced(watched);
            }
        }
        registry
    }

    /// One request, described by what is wrong with it.
    #[derive(Clone, Copy, Default)]
    struct Request {
        unknown_hook: bool,
        declared_too_large: bool,
        bad_signature: bool,
        bad_event: bool,
        bad_media_type: bool,
        bad_json: bool,
        ping: bool,
    }

    fn check(registry: &Registry, r: Request) -> Result<Verified, IngestError> {
        let body: &[u8] = if r.bad_json { b"{not json" } else { br#"{"zen":"ok"}"# };
        let mut headers = HeaderMap::new();
        let signature = signature::sign(if r.bad_signature { b"another key" } else { KEY.as_bytes() }, body);
        headers.insert(signature::HEADER, signature.parse().unwrap());
        let event = if r.bad_event {
            "Push Event"
        } else if r.ping {
            "ping"
        } else {
            "push"
        };
        headers.insert("x-github-event", event.parse().unwrap());
        headers.insert("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958".parse().unwrap());
        let media = if r.bad_media_type { "text/plain" } else { "application/json; charset=utf-8" };
        headers.insert(header::CONTENT_TYPE, media.parse().unwrap());
        let length = if r.declared_too_large { LIMIT + 1 } else { body.len() };
        headers.insert(header::CONTENT_LENGTH, length.into());
        let hook_ref = ObjectRef::new("team", if r.unknown_hook { "other" } else { "hook" });
        let hook = admit(registry, &hook_ref, &headers, LIMIT)?;
        let signed = authenticate(registry, &hook, &headers, body)?;
        verify(&hook_ref, &headers, Bytes::from_static(body), signed)
    }

    #[test]
    fn each_answer_comes_from_the_first_check_that_fails_with_no_redis_involved() {
        let everything = Request {
            unknown_hook: true,
            declared_too_large: true,
            bad_signature: true,
            bad_event: true,
            bad_media_type: true,
            bad_json: true,
            ping: false,
        };
        // Each row fixes one more problem than the row before, and the
        // answer moves on to the next check.
        let known = Request { unknown_hook: false, ..everything };
        let fits = Request { declared_too_large: false, ..known };
        let signed = Request { bad_signature: false, ..fits };
        let named = Request { bad_event: false, ..signed };
        let json = Request { bad_media_type: false, ..named };
        let rows = [
            ("everything wrong", everything, StatusCode::NOT_FOUND, "unknown_hook"),
            ("known hook", known, StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ("fits", fits, StatusCode::UNAUTHORIZED, "signature_mismatch"),
            ("signed", signed, StatusCode::BAD_REQUEST, "bad_header"),
            ("event named", named, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ("JSON declared", json, StatusCode::BAD_REQUEST, "bad_payload"),
            ("not synced yet", Request::default(), StatusCode::SERVICE_UNAVAILABLE, "not_synced"),
        ];
        for (name, request, status, label) in rows {
            let registry = registry(name != "not synced yet");
            let error = check(&registry, request).expect_err(name);
            assert_eq!((error.status(), error.metric_label()), (status, label), "{name}: {error}");
        }
    }

    #[test]
    fn every_rejection_reason_is_exported_from_the_start() {
        let hook = ObjectRef::new("team", "hook");
        let errors = [
            IngestError::NotSynced,
            IngestError::UnknownHook(hook),
            IngestError::TooLarge(1),
            IngestError::BodyRead,
            IngestError::BodyTimeout(1),
            IngestError::NoKeys,
            IngestError::Signature(SignatureError::Missing),
            IngestError::Signature(SignatureError::Malformed),
            IngestError::Signature(SignatureError::Mismatch),
            IngestError::Header("x-github-event"),
            IngestError::UnsupportedMediaType,
            IngestError::BadPayload(String::new()),
            IngestError::TooManyFailures(1),
            IngestError::SourceNotAllowed,
            IngestError::AllowlistNotLoaded,
            IngestError::Overloaded,
            IngestError::Replay,
            IngestError::QueueFull,
            IngestError::QueueUnavailable,
        ];
        for error in &errors {
            assert!(
                REJECTION_REASONS.contains(&error.metric_label()),
                "{} is not exported",
                error.metric_label()
            );
        }
    }

    #[test]
    fn a_good_request_is_a_delivery_and_a_ping_is_a_ping_with_its_key() {
        let registry = registry(true);
        match check(&registry, Request::default()).unwrap() {
            Verified::Delivery { delivery: d, .. } => {
                assert_eq!((d.event.as_str(), d.hook.to_string()), ("push", "team/hook".into()))
            }
            other => panic!("{other:?}"),
        }
        match check(&registry, Request { ping: true, ..Request::default() }).unwrap() {
            Verified::Ping { delivery, key_version } => {
                assert_eq!((delivery.event.as_str(), key_version.as_str()), ("ping", "000000000001"))
            }
            other => panic!("{other:?}"),
        }
    }
}
