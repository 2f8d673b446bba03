//! A stateful GitHub REST simulator for the endpoints hookwarden uses:
//! repository and organization webhooks (list with `Link` pagination, get,
//! create, update, update config, delete, ping, test) and their deliveries
//! (list with cursor pagination, get, redeliver), a GitHub App's own webhook
//! (`/app/hook/config` and `/app/hook/deliveries`), plus `/rate_limit`.
//!
//! It behaves like GitHub where GitHub is surprising: `content_type` defaults
//! to `form`; the secret reads back as `********`; `PATCH /hooks/{id}` with a
//! `config` but no secret removes the secret; a second hook with the same URL
//! and overlapping events is a 422; at most 20 hooks per event; a 5,000/hour
//! budget per token with `x-ratelimit-*` headers; `ETag` on GETs and a free
//! 304 for `If-None-Match`; a secondary limit on mutations per minute (403
//! with `retry-after`). Deliveries are POSTed to the hook URL exactly as
//! GitHub does (headers, HMAC signatures, JSON or `payload=` form), with a
//! 10-second timeout and no retries, and kept for 3 days.
//!
//! Authentication is by personal access token or as a GitHub App: an RS256
//! JWT signed with the App's private key buys a one-hour installation token
//! (`POST /app/installations/{id}/access_tokens`) that sees only the
//! installation's account.
//!
//! A control API under `/_sim/` lets tests create repositories, organizations,
//! tokens and Apps, emit any event for a hook, inject faults and read what
//! happened.
//!
//! A request runs through [`handle`]: `/_sim/` to [`control`]; else
//! [`faults::before`] (dropped connection, latency) → the public endpoints
//! (`/meta`, App installation tokens) or [`auth::grant`] →
//! [`faults::injected`] → [`limits::check`] → [`hooks::api`]; then the
//! `ETag`, [`limits::account`] and the record of the request.

mod answer;
mod app_hook;
mod auth;
mod control;
mod deliveries;
mod faults;
mod hooks;
mod limits;
pub mod openapi;
mod state;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use answer::{Answer, message};
pub use faults::Faults;
use state::{App, Grant, Inner};
pub use state::{Delivery, GITHUB_HOOKS_RANGES, Owner, Recorded};

/// GitHub's per-token budget for the REST API.
pub const HOURLY_BUDGET: u32 = 5_000;
/// GitHub's limit of hooks subscribed to one event on one repository or organization.
pub const HOOKS_PER_EVENT: usize = 20;
/// GitHub keeps deliveries this long.
pub const DELIVERY_RETENTION: Duration = Duration::from_secs(3 * 24 * 3600);
const MASK: &str = "********";

/// The simulator. Cheap to clone.
#[derive(Clone)]
pub struct Sim {
    pub(crate) inner: Arc<Mutex<Inner>>,
    pub(crate) http: reqwest::Client,
    /// Base URL the simulator is reachable at, for `url` fields.
    pub(crate) base: Arc<str>,
    /// GitHub's OpenAPI description, when loaded: `/_sim/openapi-violations`.
    pub(crate) spec: Option<Arc<openapi::Spec>>,
}

impl Sim {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client");
        Self { inner: Arc::default(), http, base: base.trim_end_matches('/').into(), spec: None }
    }

    /// Checks every request against `spec` on demand (`GET /_sim/openapi-violations`).
    pub fn with_spec(mut self, spec: openapi::Spec) -> Self {
        self.spec = Some(Arc::new(spec));
        self
    }

    pub fn router(self) -> Router {
        Router::new().fallback(handle).with_state(self)
    }

    /// Accepts `token` as a personal access token.
    pub fn add_token(&self, token: &str) {
        self.inner.lock().unwrap().tokens.insert(token.to_owned(), Grant::default());
    }

    /// Registers GitHub App `id` with `installations` (id → account login) and
    /// returns its private key (PKCS#1 PEM), as GitHub's "Generate a private
    /// key" button does.
    pub fn add_app(&self, id: u64, installations: HashMap<u64, String>) -> String {
        use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key generation");
        let public = key.to_public_key().to_pkcs1_pem(LineEnding::LF).expect("PEM");
        let public_key = jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).expect("own key");
        let mut s = self.inner.lock().unwrap();
        // Its own webhook, with no URL until one is configured.
        s.next_id += 1;
        let hook_id = s.next_id;
        let now = state::timestamp();
        s.hooks.insert(
            hook_id,
            state::Hook {
                id: hook_id,
                owner: Owner::App(id),
                active: true,
                events: vec!["*".to_owned()],
                url: String::new(),
                content_type: "json".to_owned(),
                insecure_ssl: "0".to_owned(),
                secret: None,
                created_at: now.clone(),
                updated_at: now,
                last_response: Value::Null,
            },
        );
        s.apps.insert(id, App { public_key, installations, hook_id });
        key.to_pkcs1_pem(LineEnding::LF).expect("PEM").to_string()
    }

    pub fn add_repo(&self, full_name: &str) {
        let mut s = self.inner.lock().unwrap();
        s.next_id += 1;
        let id = s.next_id;
        s.repos.entry(full_name.to_owned()).or_insert(id);
    }

    pub fn add_org(&self, org: &str) {
        let mut s = self.inner.lock().unwrap();
        s.next_id += 1;
        let id = s.next_id;
        s.orgs.entry(org.to_owned()).or_insert(id);
    }

    /// Every delivery of hook `hook_id`, oldest first.
    pub fn deliveries(&self, hook_id: u64) -> Vec<Delivery> {
        self.inner.lock().unwrap().deliveries.iter().filter(|d| d.hook_id == hook_id).cloned().collect()
    }

    /// Every API request served so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }
}

/// One API request, as the steps of [`handle`] see it.
struct Request {
    method: Method,
    /// Without the surrounding slashes.
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Option<Value>,
    token: Option<String>,
}

impl Request {
    fn segments(&self) -> Vec<&str> {
        self.path.split('/').collect()
    }

    fn query(&self) -> HashMap<String, String> {
        self.query
            .iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

async fn handle(
    State(sim): State<Sim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_matches('/').to_owned();
    if let Some(rest) = path.strip_prefix("_sim") {
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        return control::control(&sim, &method, &segments, &body).await;
    }
    let request = Request {
        token: auth::token(&headers),
        body: if body.is_empty() { None } else { serde_json::from_slice(&body).ok() },
        query: uri.query().map(str::to_owned),
        method,
        path,
        headers,
    };
    faults::before(&sim, &request.method, &request.path).await;
    let answer = match public(&sim, &request) {
        Some(answer) => answer,
        None => authenticated(&sim, &request).await,
    };
    let answer = etag(&request, answer);
    let rate_limit = limits::account(&sim, request.token.as_deref(), &answer);
    sim.inner.lock().unwrap().requests.push(Recorded {
        method: request.method.to_string(),
        path: format!("/{}", request.path),
        query: request.query.clone(),
        body: request.body.clone(),
        status: answer.status.as_u16(),
        response: answer.body.clone(),
    });
    respond(answer, rate_limit)
}

/// The endpoints that need no token: `GET /meta` and App installation tokens.
fn public(sim: &Sim, request: &Request) -> Option<Answer> {
    match (&request.method, request.segments().as_slice()) {
        (&Method::GET, ["meta"]) => {
            // As on GitHub: no authentication, no budget; ETag'd.
            let hooks = sim.inner.lock().unwrap().meta_hooks.clone();
            let hooks = hooks.unwrap_or_else(|| GITHUB_HOOKS_RANGES.iter().map(|r| r.to_string()).collect());
            let body = json!({ "verifiable_password_authentication": false, "hooks": hooks });
            let mut answer: Answer = (StatusCode::OK, body).into();
            answer.free = true;
            Some(answer)
        }
        (&Method::POST, ["app", "installations", id, "access_tokens"]) => Some(match id.parse() {
            Ok(id) => sim.installation_token(id, request.token.as_deref()),
            Err(_) => message(StatusCode::NOT_FOUND, "Not Found").into(),
        }),
        // The App's own webhook: its JWT, not a token.
        (_, ["app", "hook", ..]) => app_hook::api(
            sim,
            request.token.as_deref(),
            &request.method,
            &request.segments(),
            &request.query(),
            request.body.as_ref(),
        ),
        _ => None,
    }
}

/// The API proper: a valid token, no injected fault, within the limits.
async fn authenticated(sim: &Sim, request: &Request) -> Answer {
    let grant = match auth::grant(sim, request.token.as_deref()) {
        Ok(grant) => grant,
        Err(answer) => return answer,
    };
    if let Some(answer) = faults::injected(sim, &request.method, &request.path) {
        return answer;
    }
    let token = request.token.as_deref().unwrap_or_default();
    if let Some(answer) = limits::check(sim, token, &request.method) {
        return answer;
    }
    let segments = request.segments();
    hooks::api(sim, &grant, &request.method, &segments, &request.query(), request.body.as_ref()).await
}

/// `ETag` on GETs; a matching `If-None-Match` is a 304 that costs nothing.
fn etag(request: &Request, mut answer: Answer) -> Answer {
    use sha2::Digest;
    let Some(body) =
        answer.body.as_ref().filter(|_| request.method == Method::GET && answer.status == StatusCode::OK)
    else {
        return answer;
    };
    let etag = format!("W/\"{}\"", hex::encode(sha2::Sha256::digest(body.to_string().as_bytes())));
    if request.headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        answer = Answer { status: StatusCode::NOT_MODIFIED, body: None, headers: vec![], free: true };
    }
    answer.headers.push((header::ETAG, etag));
    answer
}

fn respond(answer: Answer, rate_limit: [(&'static str, String); 5]) -> Response {
    let mut response = match answer.body {
        Some(body) => (answer.status, Json(body)).into_response(),
        None => answer.status.into_response(),
    };
    let h = response.headers_mut();
    for (name, value) in
        rate_limit.into_iter().chain([("x-github-api-version-selected", "2022-11-28".to_owned())])
    {
        h.insert(name, HeaderValue::from_str(&value).expect("ASCII"));
    }
    for (name, value) in answer.headers {
        h.insert(name, HeaderValue::from_str(&value).expect("ASCII"));
    }
    response
}
