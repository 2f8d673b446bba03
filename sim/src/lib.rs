//! A stateful GitHub REST simulator for the endpoints hookwarden uses:
//! repository and organization webhooks (list with `Link` pagination, get,
//! create, update, update config, delete, ping, test) and their deliveries
//! (list with cursor pagination, get, redeliver), plus `/rate_limit`.
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

pub mod openapi;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// GitHub's per-token budget for the REST API.
pub const HOURLY_BUDGET: u32 = 5_000;
/// GitHub's limit of hooks subscribed to one event on one repository or organization.
pub const HOOKS_PER_EVENT: usize = 20;
/// GitHub keeps deliveries this long.
pub const DELIVERY_RETENTION: Duration = Duration::from_secs(3 * 24 * 3600);
const MASK: &str = "********";

/// Who owns a hook.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// `owner/name`
    Repo(String),
    Org(String),
}

impl Owner {
    fn path(&self) -> String {
        match self {
            Self::Repo(r) => format!("repos/{r}"),
            Self::Org(o) => format!("orgs/{o}"),
        }
    }
}

#[derive(Clone, Debug)]
struct Hook {
    id: u64,
    owner: Owner,
    active: bool,
    events: Vec<String>,
    url: String,
    content_type: String,
    insecure_ssl: String,
    secret: Option<String>,
    created_at: String,
    updated_at: String,
    last_response: Value,
}

/// One delivery attempt, as GitHub records it.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    pub id: u64,
    pub guid: String,
    pub delivered_at: String,
    pub redelivery: bool,
    pub duration: f64,
    pub status: String,
    pub status_code: u16,
    pub event: String,
    pub action: Option<String>,
    pub installation_id: Option<u64>,
    pub repository_id: Option<u64>,
    pub throttled_at: Option<String>,
    #[serde(skip)]
    hook_id: u64,
    #[serde(skip)]
    at: Instant,
    #[serde(skip)]
    payload: Value,
}

/// A request the simulator served on the GitHub API (not `/_sim/`), for
/// checking what a client sent against GitHub's OpenAPI description.
#[derive(Clone, Debug, Serialize)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub body: Option<Value>,
    pub status: u16,
    pub response: Option<Value>,
}

/// What a token may do: a personal access token everything, an App
/// installation token the hooks of its account until it expires.
#[derive(Clone, Debug, Default)]
struct Grant {
    /// Unix seconds.
    expires: Option<u64>,
    /// The user or organization of an installation.
    account: Option<String>,
}

impl Grant {
    fn valid(&self) -> bool {
        self.expires.is_none_or(|e| now_secs() < e)
    }

    fn sees(&self, owner: &Owner) -> bool {
        let login = match owner {
            Owner::Repo(r) => r.split('/').next().unwrap_or_default(),
            Owner::Org(o) => o,
        };
        self.account.as_deref().is_none_or(|a| a.eq_ignore_ascii_case(login))
    }
}

/// A GitHub App: its public key and installations (id → account login).
struct App {
    public_key: jsonwebtoken::DecodingKey,
    installations: HashMap<u64, String>,
}

#[derive(Default)]
struct Budget {
    used: u32,
    window_start: u64,
    mutations: VecDeque<Instant>,
}

/// Faults tests inject.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    /// Answer the next `count` API requests with `status`.
    pub status: Option<u16>,
    /// Limit `status` and `drop_connections` to requests whose path contains this.
    pub path_contains: Option<String>,
    /// Limit `status` and `drop_connections` to requests of this method (`DELETE`).
    pub method: Option<String>,
    /// Close the connection of the next N API requests without an answer.
    #[serde(default)]
    pub drop_connections: u32,
    #[serde(default)]
    pub count: u32,
    /// Delay every API answer by this much.
    #[serde(default)]
    pub latency_ms: u64,
    /// Mutations per minute per token before the secondary limit hits.
    pub secondary_mutations_per_minute: Option<usize>,
    /// Treat every token's hourly budget as spent.
    #[serde(default)]
    pub exhaust_budget: bool,
}

impl Faults {
    /// Is a request of `method` to `path` one the faults are limited to?
    fn scoped(&self, method: &Method, path: &str) -> bool {
        self.path_contains.as_ref().is_none_or(|p| path.contains(p.as_str()))
            && self.method.as_ref().is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
    }
}

#[derive(Default)]
struct Inner {
    hooks: BTreeMap<u64, Hook>,
    deliveries: Vec<Delivery>,
    repos: HashMap<String, u64>,
    orgs: HashMap<String, u64>,
    tokens: HashMap<String, Grant>,
    apps: HashMap<u64, App>,
    budgets: HashMap<String, Budget>,
    next_id: u64,
    requests: Vec<Recorded>,
    faults: Faults,
    /// Hook URLs starting with one of these cannot be reached: deliveries
    /// fail as GitHub's do when the host refuses (a broken Ingress, DNS).
    unreachable: Vec<String>,
    /// The `hooks` ranges `GET /meta` lists (`None`: GitHub's own).
    meta_hooks: Option<Vec<String>>,
}

/// The addresses github.com's hooks come from, as its `GET /meta` listed
/// them when this was written; the simulator serves them until told otherwise.
pub const GITHUB_HOOKS_RANGES: &[&str] = &[
    "192.30.252.0/22",
    "185.199.108.0/22",
    "140.82.112.0/20",
    "143.55.64.0/20",
    "2a0a:a440::/29",
    "2606:50c0::/32",
];

/// The simulator. Cheap to clone.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Mutex<Inner>>,
    http: reqwest::Client,
    /// Base URL the simulator is reachable at, for `url` fields.
    base: Arc<str>,
    /// GitHub's OpenAPI description, when loaded: `/_sim/openapi-violations`.
    spec: Option<Arc<openapi::Spec>>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn timestamp() -> String {
    rfc3339(now_secs())
}

fn rfc3339(secs: u64) -> String {
    let secs = secs as i64;
    // RFC 3339 in UTC without pulling a date crate: days since epoch → civil date.
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

// Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn guid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn message(status: StatusCode, text: &str) -> (StatusCode, Value) {
    (
        status,
        json!({ "message": text, "documentation_url": "https://docs.github.com/rest", "status": status.as_u16().to_string() }),
    )
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
        self.inner.lock().unwrap().apps.insert(id, App { public_key, installations });
        key.to_pkcs1_pem(LineEnding::LF).expect("PEM").to_string()
    }

    /// `POST /app/installations/{id}/access_tokens`, authenticated by the
    /// App's RS256 JWT: a one-hour token for the installation's account.
    fn installation_token(&self, installation: u64, jwt: Option<&str>) -> Answer {
        #[derive(Deserialize)]
        struct Claims {
            iss: Value,
            iat: u64,
            exp: u64,
        }
        let refuse = |text: &str| message(StatusCode::UNAUTHORIZED, text).into();
        let Some(jwt) = jwt else { return refuse("A JSON web token could not be decoded") };
        let Ok(header) = jsonwebtoken::decode_header(jwt) else {
            return refuse("A JSON web token could not be decoded");
        };
        if header.alg != jsonwebtoken::Algorithm::RS256 {
            return refuse(
                "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
            );
        }
        let mut s = self.inner.lock().unwrap();
        // The issuer names the App; its key must have signed the token.
        let unverified = jsonwebtoken::dangerous::insecure_decode::<Claims>(jwt);
        let Some(app_id) = unverified.ok().and_then(|t| match t.claims.iss {
            Value::String(s) => s.parse::<u64>().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        }) else {
            return refuse("'Issuer' claim ('iss') must be an Integer");
        };
        let Some(app) = s.apps.get(&app_id) else { return refuse("Integration not found") };
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.required_spec_claims = ["exp", "iat", "iss"].into_iter().map(str::to_owned).collect();
        validation.leeway = 0;
        let claims = match jsonwebtoken::decode::<Claims>(jwt, &app.public_key, &validation) {
            Ok(t) => t.claims,
            Err(_) => return refuse("A JSON web token could not be decoded"),
        };
        // GitHub refuses tokens that live more than 10 minutes or come from the future.
        if claims.exp.saturating_sub(claims.iat) > 600 || claims.iat > now_secs() + 60 {
            return refuse("'Expiration time' claim ('exp') is too far in the future");
        }
        let Some(account) = app.installations.get(&installation).cloned() else {
            return message(StatusCode::NOT_FOUND, "Not Found").into();
        };
        let token = format!("ghs_{}", hex::encode(rand::random::<[u8; 18]>()));
        let expires = now_secs() + 3600;
        s.tokens.insert(token.clone(), Grant { expires: Some(expires), account: Some(account) });
        let mut a: Answer = (
            StatusCode::CREATED,
            json!({
                "token": token,
                "expires_at": rfc3339(expires),
                "permissions": { "repository_hooks": "write", "organization_hooks": "write" },
                "repository_selection": "all",
            }),
        )
            .into();
        // NB: as on GitHub, asking for an installation token spends no budget.
        a.free = true;
        a
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

    fn hook_json(&self, h: &Hook) -> Value {
        let base = format!("{}/{}/hooks/{}", self.base, h.owner.path(), h.id);
        let mut config =
            json!({ "url": h.url, "content_type": h.content_type, "insecure_ssl": h.insecure_ssl });
        if h.secret.is_some() {
            config["secret"] = json!(MASK);
        }
        let mut v = json!({
            "type": match h.owner { Owner::Repo(_) => "Repository", Owner::Org(_) => "Organization" },
            "id": h.id,
            "name": "web",
            "active": h.active,
            "events": h.events,
            "config": config,
            "updated_at": h.updated_at,
            "created_at": h.created_at,
            "url": base,
            "ping_url": format!("{base}/pings"),
            "deliveries_url": format!("{base}/deliveries"),
        });
        if let Owner::Repo(_) = h.owner {
            v["test_url"] = json!(format!("{base}/test"));
            v["last_response"] = h.last_response.clone();
        }
        v
    }

    /// Emits `event` with `payload` to hook `hook_id` as GitHub would, and
    /// returns the delivery once the receiver answered (or timed out).
    pub async fn deliver(
        &self,
        hook_id: u64,
        event: &str,
        payload: Value,
        redelivery_of: Option<&str>,
    ) -> Option<Delivery> {
        let (hook, target_id) = {
            let s = self.inner.lock().unwrap();
            let hook = s.hooks.get(&hook_id)?.clone();
            let target = match &hook.owner {
                Owner::Repo(r) => s.repos.get(r).copied(),
                Owner::Org(o) => s.orgs.get(o).copied(),
            };
            (hook, target.unwrap_or(0))
        };
        let guid = redelivery_of.map_or_else(guid, str::to_owned);
        let json_body = serde_json::to_vec(&payload).expect("JSON");
        let (content_type, body) = if hook.content_type == "json" {
            ("application/json", json_body)
        } else {
            let form: String = url_form(&String::from_utf8_lossy(&json_body));
            ("application/x-www-form-urlencoded", form.into_bytes())
        };
        let mut request = self
            .http
            .post(&hook.url)
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", &guid)
            .header("X-GitHub-Hook-ID", hook.id.to_string())
            .header(
                "X-GitHub-Hook-Installation-Target-Type",
                match hook.owner {
                    Owner::Repo(_) => "repository",
                    Owner::Org(_) => "organization",
                },
            )
            .header("X-GitHub-Hook-Installation-Target-ID", target_id.to_string())
            .header("User-Agent", "GitHub-Hookshot/github-sim")
            .header("Content-Type", content_type);
        if let Some(secret) = &hook.secret {
            request = request
                .header("X-Hub-Signature-256", hookwarden::signature::sign(secret.as_bytes(), &body))
                .header("X-Hub-Signature", hookwarden::signature::sign_sha1(secret.as_bytes(), &body));
        }
        let started = Instant::now();
        let unreachable =
            self.inner.lock().unwrap().unreachable.iter().any(|u| hook.url.starts_with(u.as_str()));
        let result = if unreachable { None } else { Some(request.body(body).send().await) };
        let duration = started.elapsed().as_secs_f64();
        let (status_code, status) = match &result {
            None => (0, "failed to connect to host".to_owned()),
            Some(Ok(r)) if r.status().is_success() => (r.status().as_u16(), "OK".to_owned()),
            Some(Ok(r)) => (r.status().as_u16(), format!("Invalid HTTP Response: {}", r.status().as_u16())),
            Some(Err(e)) if e.is_timeout() => (0, "timed out".to_owned()),
            Some(Err(_)) => (0, "failed to connect to host".to_owned()),
        };
        let mut s = self.inner.lock().unwrap();
        s.next_id += 1;
        let delivery = Delivery {
            id: s.next_id,
            guid,
            delivered_at: timestamp(),
            redelivery: redelivery_of.is_some(),
            duration,
            status: status.clone(),
            status_code,
            event: event.to_owned(),
            action: payload.get("action").and_then(Value::as_str).map(str::to_owned),
            installation_id: None,
            repository_id: match hook.owner {
                Owner::Repo(_) => Some(target_id),
                Owner::Org(_) => None,
            },
            throttled_at: None,
            hook_id,
            at: Instant::now(),
            payload,
        };
        if let Some(h) = s.hooks.get_mut(&hook_id) {
            h.last_response = json!({ "code": status_code, "status": if status_code / 100 == 2 { "active" } else { "failed" }, "message": status });
        }
        s.deliveries.retain(|d| d.at.elapsed() < DELIVERY_RETENTION);
        s.deliveries.push(delivery.clone());
        Some(delivery)
    }

    fn ping_payload(&self, hook: &Hook) -> Value {
        json!({
            "zen": "Keep it logically awesome.",
            "hook_id": hook.id,
            "hook": self.hook_json(hook),
            "sender": { "login": "octocat", "id": 1, "type": "User" },
        })
    }
}

fn url_form(payload: &str) -> String {
    let mut out = String::from("payload=");
    for b in payload.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What one API call produced, before the common headers are added.
struct Answer {
    status: StatusCode,
    body: Option<Value>,
    headers: Vec<(header::HeaderName, String)>,
    /// Spends no rate-limit budget (a 304).
    free: bool,
}

impl From<(StatusCode, Value)> for Answer {
    fn from((status, body): (StatusCode, Value)) -> Self {
        Self { status, body: Some(body), headers: vec![], free: false }
    }
}

fn no_content() -> Answer {
    Answer { status: StatusCode::NO_CONTENT, body: None, headers: vec![], free: false }
}

async fn handle(
    State(sim): State<Sim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').collect();
    if segments.first() == Some(&"_sim") {
        return control(&sim, &method, &segments[1..], &body).await;
    }
    let body_json: Option<Value> = if body.is_empty() { None } else { serde_json::from_slice(&body).ok() };
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();

    let drop_it = {
        let mut s = sim.inner.lock().unwrap();
        let drop_it = s.faults.scoped(&method, &path) && s.faults.drop_connections > 0;
        s.faults.drop_connections -= u32::from(drop_it);
        drop_it
    };
    if drop_it {
        // NB: unwinding out of the handler makes hyper close the connection
        // with no answer, as a network failure would; resume_unwind skips the
        // panic hook, so nothing is printed.
        std::panic::resume_unwind(Box::new("dropped connection (injected fault)"));
    }
    let latency = sim.inner.lock().unwrap().faults.latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("token ")))
        .map(str::to_owned);

    let answer: Answer = 'answer: {
        if let (&Method::GET, ["meta"]) = (&method, segments.as_slice()) {
            // As on GitHub: no authentication, no budget; ETag'd below.
            let hooks = sim.inner.lock().unwrap().meta_hooks.clone();
            let hooks = hooks.unwrap_or_else(|| GITHUB_HOOKS_RANGES.iter().map(|r| r.to_string()).collect());
            let mut a: Answer =
                (StatusCode::OK, json!({ "verifiable_password_authentication": false, "hooks": hooks }))
                    .into();
            a.free = true;
            break 'answer a;
        }
        if let (&Method::POST, ["app", "installations", id, "access_tokens"]) = (&method, segments.as_slice())
        {
            break 'answer match id.parse() {
                Ok(id) => sim.installation_token(id, token.as_deref()),
                Err(_) => message(StatusCode::NOT_FOUND, "Not Found").into(),
            };
        }
        let grant = token.as_ref().and_then(|t| sim.inner.lock().unwrap().tokens.get(t).cloned());
        let Some(grant) = grant.filter(Grant::valid) else {
            break 'answer message(StatusCode::UNAUTHORIZED, "Bad credentials").into();
        };
        let token = token.clone().unwrap_or_default();
        {
            let mut s = sim.inner.lock().unwrap();
            let scoped = s.faults.scoped(&method, &path);
            if let Some(status) = s.faults.status.filter(|_| s.faults.count > 0 && scoped) {
                s.faults.count -= 1;
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                break 'answer message(status, "Injected fault").into();
            }
            let exhausted = s.faults.exhaust_budget;
            let budget = s.budgets.entry(token.clone()).or_default();
            let hour = now_secs() / 3600 * 3600;
            if budget.window_start != hour {
                budget.window_start = hour;
                budget.used = 0;
            }
            if exhausted || budget.used >= HOURLY_BUDGET {
                break 'answer message(StatusCode::FORBIDDEN, "API rate limit exceeded for user.").into();
            }
        }
        if method != Method::GET {
            let mut s = sim.inner.lock().unwrap();
            let limit = s.faults.secondary_mutations_per_minute;
            let budget = s.budgets.entry(token.clone()).or_default();
            budget.mutations.retain(|t| t.elapsed() < Duration::from_secs(60));
            if limit.is_some_and(|l| budget.mutations.len() >= l) {
                let mut a: Answer =
                    message(StatusCode::FORBIDDEN, "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.").into();
                a.headers.push((header::RETRY_AFTER, "60".into()));
                a.free = true;
                break 'answer a;
            }
            budget.mutations.push_back(Instant::now());
        }
        api(&sim, &grant, &method, &segments, &query, body_json.as_ref()).await
    };

    let mut answer = answer;
    // ETag on GETs; a matching If-None-Match is a 304 that costs nothing.
    if method == Method::GET
        && answer.status == StatusCode::OK
        && let Some(body) = &answer.body
    {
        use sha2::Digest;
        let etag = format!("W/\"{}\"", hex::encode(sha2::Sha256::digest(body.to_string().as_bytes())));
        if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
            answer = Answer { status: StatusCode::NOT_MODIFIED, body: None, headers: vec![], free: true };
        }
        answer.headers.push((header::ETAG, etag));
    }
    let (limit, remaining, used, reset) = {
        let mut s = sim.inner.lock().unwrap();
        let exhausted = s.faults.exhaust_budget;
        let hour = now_secs() / 3600 * 3600;
        let token_budget = token.as_ref().filter(|t| s.tokens.contains_key(*t)).cloned();
        let used = match token_budget {
            Some(t) => {
                let b = s.budgets.entry(t).or_default();
                if !answer.free
                    && answer.status != StatusCode::UNAUTHORIZED
                    && answer.status != StatusCode::FORBIDDEN
                {
                    b.used += 1;
                }
                b.used
            }
            None => 0,
        };
        let remaining = if exhausted { 0 } else { HOURLY_BUDGET.saturating_sub(used) };
        (HOURLY_BUDGET, remaining, used, hour + 3600)
    };
    let recorded = Recorded {
        method: method.to_string(),
        path: format!("/{path}"),
        query: uri.query().map(str::to_owned),
        body: body_json,
        status: answer.status.as_u16(),
        response: answer.body.clone(),
    };
    sim.inner.lock().unwrap().requests.push(recorded);

    let mut response = match answer.body {
        Some(body) => (answer.status, Json(body)).into_response(),
        None => answer.status.into_response(),
    };
    let h = response.headers_mut();
    for (name, value) in [
        ("x-ratelimit-limit", limit.to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-used", used.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
        ("x-ratelimit-resource", "core".to_owned()),
        ("x-github-api-version-selected", "2022-11-28".to_owned()),
    ] {
        h.insert(name, HeaderValue::from_str(&value).expect("ASCII"));
    }
    for (name, value) in answer.headers {
        h.insert(name, HeaderValue::from_str(&value).expect("ASCII"));
    }
    response
}

/// The GitHub REST endpoints, after authentication and rate limiting.
async fn api(
    sim: &Sim,
    grant: &Grant,
    method: &Method,
    seg: &[&str],
    query: &HashMap<String, String>,
    body: Option<&Value>,
) -> Answer {
    // /repos/{owner}/{repo}/hooks/... or /orgs/{org}/hooks/...
    let (owner, rest) = match seg {
        ["rate_limit"] => {
            // As on GitHub, asking costs nothing; the headers carry the numbers.
            let mut a: Answer =
                (StatusCode::OK, json!({ "resources": { "core": { "limit": HOURLY_BUDGET } } })).into();
            a.free = true;
            return a;
        }
        ["repos", o, r, "hooks", rest @ ..] => (Owner::Repo(format!("{o}/{r}")), rest),
        ["orgs", o, "hooks", rest @ ..] => (Owner::Org((*o).to_owned()), rest),
        _ => return message(StatusCode::NOT_FOUND, "Not Found").into(),
    };
    let exists = {
        let s = sim.inner.lock().unwrap();
        match &owner {
            Owner::Repo(r) => s.repos.contains_key(r),
            Owner::Org(o) => s.orgs.contains_key(o),
        }
    };
    // NB: like GitHub, a resource the credentials cannot see does not exist.
    if !exists || !grant.sees(&owner) {
        return message(StatusCode::NOT_FOUND, "Not Found").into();
    }
    let hook_id: Option<u64> = rest.first().and_then(|id| id.parse().ok());
    if !rest.is_empty() {
        let found = hook_id
            .is_some_and(|id| sim.inner.lock().unwrap().hooks.get(&id).is_some_and(|h| h.owner == owner));
        if !found {
            return message(StatusCode::NOT_FOUND, "Not Found").into();
        }
    }
    match (method.clone(), rest) {
        (Method::GET, []) => list_hooks(sim, &owner, query),
        (Method::POST, []) => create_hook(sim, owner, body).await,
        (Method::GET, [_]) => {
            let s = sim.inner.lock().unwrap();
            (StatusCode::OK, sim.hook_json(&s.hooks[&hook_id.unwrap()])).into()
        }
        (Method::PATCH, [_]) => update_hook(sim, hook_id.unwrap(), body, false),
        (Method::GET, [_, "config"]) => {
            let s = sim.inner.lock().unwrap();
            (StatusCode::OK, sim.hook_json(&s.hooks[&hook_id.unwrap()])["config"].clone()).into()
        }
        (Method::PATCH, [_, "config"]) => update_hook(sim, hook_id.unwrap(), body, true),
        (Method::DELETE, [_]) => {
            sim.inner.lock().unwrap().hooks.remove(&hook_id.unwrap());
            no_content()
        }
        (Method::POST, [_, "pings"]) => {
            let hook = sim.inner.lock().unwrap().hooks[&hook_id.unwrap()].clone();
            let (sim, payload) = (sim.clone(), sim.ping_payload(&hook));
            tokio::spawn(async move { sim.deliver(hook.id, "ping", payload, None).await });
            no_content()
        }
        (Method::POST, [_, "tests"]) if matches!(owner, Owner::Repo(_)) => {
            let hook = sim.inner.lock().unwrap().hooks[&hook_id.unwrap()].clone();
            if hook.events.iter().any(|e| e == "push" || e == "*") {
                let payload = json!({ "ref": "refs/heads/main", "repository": { "full_name": match &owner { Owner::Repo(r) => r.clone(), Owner::Org(_) => String::new() } } });
                let sim = sim.clone();
                tokio::spawn(async move { sim.deliver(hook.id, "push", payload, None).await });
            }
            no_content()
        }
        (Method::GET, [_, "deliveries"]) => list_deliveries(sim, &owner, hook_id.unwrap(), query),
        (Method::GET, [_, "deliveries", d]) => {
            let s = sim.inner.lock().unwrap();
            match s.deliveries.iter().find(|x| x.hook_id == hook_id.unwrap() && d.parse() == Ok(x.id)) {
                Some(x) => {
                    let mut v = serde_json::to_value(x).expect("JSON");
                    v["url"] = json!(format!(
                        "{}/{}/hooks/{}/deliveries/{}",
                        sim.base,
                        owner.path(),
                        x.hook_id,
                        x.id
                    ));
                    v["request"] = json!({
                        "headers": {
                            "X-GitHub-Event": x.event,
                            "X-GitHub-Delivery": x.guid,
                            "X-GitHub-Hook-ID": x.hook_id.to_string(),
                            "User-Agent": "GitHub-Hookshot/github-sim",
                        },
                        "payload": x.payload,
                    });
                    v["response"] = json!({ "headers": {}, "payload": null });
                    (StatusCode::OK, v).into()
                }
                None => message(StatusCode::NOT_FOUND, "Not Found").into(),
            }
        }
        (Method::POST, [_, "deliveries", d, "attempts"]) => {
            let original = {
                let s = sim.inner.lock().unwrap();
                s.deliveries.iter().find(|x| x.hook_id == hook_id.unwrap() && d.parse() == Ok(x.id)).cloned()
            };
            match original {
                Some(x) => {
                    let sim = sim.clone();
                    tokio::spawn(async move {
                        sim.deliver(x.hook_id, &x.event, x.payload.clone(), Some(&x.guid)).await
                    });
                    (StatusCode::ACCEPTED, json!({})).into()
                }
                None => message(StatusCode::NOT_FOUND, "Not Found").into(),
            }
        }
        _ => message(StatusCode::NOT_FOUND, "Not Found").into(),
    }
}

fn page_params(query: &HashMap<String, String>) -> (usize, usize) {
    let per_page = query.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(30usize).clamp(1, 100);
    let page = query.get("page").and_then(|v| v.parse().ok()).unwrap_or(1usize).max(1);
    (per_page, page)
}

fn list_hooks(sim: &Sim, owner: &Owner, query: &HashMap<String, String>) -> Answer {
    let (per_page, page) = page_params(query);
    let s = sim.inner.lock().unwrap();
    let all: Vec<Value> = s.hooks.values().filter(|h| &h.owner == owner).map(|h| sim.hook_json(h)).collect();
    let last = all.len().div_ceil(per_page).max(1);
    let items: Vec<Value> = all.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    let mut answer: Answer = (StatusCode::OK, Value::Array(items)).into();
    let base = format!("{}/{}/hooks", sim.base, owner.path());
    let mut links = Vec::new();
    if page < last {
        links.push(format!("<{base}?per_page={per_page}&page={}>; rel=\"next\"", page + 1));
        links.push(format!("<{base}?per_page={per_page}&page={last}>; rel=\"last\""));
    }
    if page > 1 {
        links.push(format!("<{base}?per_page={per_page}&page={}>; rel=\"prev\"", page - 1));
        links.push(format!("<{base}?per_page={per_page}&page=1>; rel=\"first\""));
    }
    if !links.is_empty() {
        answer.headers.push((header::LINK, links.join(", ")));
    }
    answer
}

fn list_deliveries(sim: &Sim, owner: &Owner, hook_id: u64, query: &HashMap<String, String>) -> Answer {
    let (per_page, _) = page_params(query);
    // The cursor is the id of the last delivery of the previous page.
    let cursor: Option<u64> = query.get("cursor").and_then(|c| c.parse().ok());
    let s = sim.inner.lock().unwrap();
    let mut newest_first: Vec<&Delivery> = s.deliveries.iter().filter(|d| d.hook_id == hook_id).collect();
    newest_first.reverse();
    let rest: Vec<&Delivery> = newest_first.into_iter().filter(|d| cursor.is_none_or(|c| d.id < c)).collect();
    let page: Vec<Value> =
        rest.iter().take(per_page).map(|d| serde_json::to_value(d).expect("JSON")).collect();
    let mut answer: Answer = (StatusCode::OK, Value::Array(page)).into();
    if rest.len() > per_page {
        let next = rest[per_page - 1].id;
        let base = format!("{}/{}/hooks/{hook_id}/deliveries", sim.base, owner.path());
        answer
            .headers
            .push((header::LINK, format!("<{base}?per_page={per_page}&cursor={next}>; rel=\"next\"")));
    }
    answer
}

fn unprocessable(text: &str) -> Answer {
    message(StatusCode::UNPROCESSABLE_ENTITY, text).into()
}

fn events_of(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
}

/// The 422s GitHub gives for a hook configuration: duplicates and the
/// per-event limit.
fn conflicts(s: &Inner, owner: &Owner, id: Option<u64>, url: &str, events: &[String]) -> Option<Answer> {
    let others: Vec<&Hook> = s.hooks.values().filter(|h| &h.owner == owner && Some(h.id) != id).collect();
    let overlap =
        |a: &[String], b: &[String]| a.iter().any(|e| e == "*" || b.iter().any(|f| f == e || f == "*"));
    if others.iter().any(|h| h.url == url && overlap(&h.events, events)) {
        return Some(unprocessable("Validation Failed: Hook already exists on this repository"));
    }
    for e in events {
        if others.iter().filter(|h| h.events.iter().any(|f| f == e || f == "*")).count() >= HOOKS_PER_EVENT {
            return Some(unprocessable(&format!(
                "Validation Failed: The \"{e}\" event cannot have more than {HOOKS_PER_EVENT} hooks"
            )));
        }
    }
    None
}

async fn create_hook(sim: &Sim, owner: Owner, body: Option<&Value>) -> Answer {
    let Some(body) = body else { return unprocessable("Invalid request: a body is required") };
    // NB: GitHub requires `name: "web"` for organization hooks (optional for repositories).
    if matches!(owner, Owner::Org(_)) && body["name"] != "web" {
        return unprocessable("Invalid request: \"name\" wasn't supplied; it must be \"web\"");
    }
    let config = &body["config"];
    let Some(url) = config["url"].as_str().filter(|u| u.starts_with("http")) else {
        return unprocessable("Validation Failed: config.url is missing or not a URL");
    };
    // NB: GitHub's defaults: events ["push"], active true, content_type form.
    let events = events_of(body.get("events")).unwrap_or_else(|| vec!["push".to_owned()]);
    let hook = {
        let mut s = sim.inner.lock().unwrap();
        if let Some(conflict) = conflicts(&s, &owner, None, url, &events) {
            return conflict;
        }
        s.next_id += 1;
        let now = timestamp();
        let hook = Hook {
            id: s.next_id,
            owner,
            active: body["active"].as_bool().unwrap_or(true),
            events,
            url: url.to_owned(),
            content_type: config["content_type"].as_str().unwrap_or("form").to_owned(),
            insecure_ssl: config["insecure_ssl"].as_str().unwrap_or("0").to_owned(),
            secret: config["secret"].as_str().filter(|s| !s.is_empty()).map(str::to_owned),
            created_at: now.clone(),
            updated_at: now,
            last_response: json!({ "code": null, "status": "unused", "message": null }),
        };
        s.hooks.insert(hook.id, hook.clone());
        hook
    };
    // GitHub pings a new hook.
    let (sim2, payload) = (sim.clone(), sim.ping_payload(&hook));
    let id = hook.id;
    tokio::spawn(async move { sim2.deliver(id, "ping", payload, None).await });
    (StatusCode::CREATED, sim.hook_json(&hook)).into()
}

fn update_hook(sim: &Sim, id: u64, body: Option<&Value>, config_only: bool) -> Answer {
    let Some(body) = body else { return unprocessable("Invalid request: a body is required") };
    let mut s = sim.inner.lock().unwrap();
    let mut hook = s.hooks[&id].clone();
    let config = if config_only { Some(body) } else { body.get("config") };
    if let Some(config) = config {
        if let Some(url) = config.get("url").and_then(Value::as_str) {
            hook.url = url.to_owned();
        }
        if let Some(ct) = config.get("content_type").and_then(Value::as_str) {
            hook.content_type = ct.to_owned();
        }
        if let Some(i) = config.get("insecure_ssl").and_then(Value::as_str) {
            hook.insecure_ssl = i.to_owned();
        }
        match config.get("secret").and_then(Value::as_str) {
            Some(secret) => hook.secret = Some(secret.to_owned()).filter(|s| !s.is_empty()),
            // NB: GitHub's surprise: a config sent through PATCH /hooks/{id}
            // without the secret removes it; PATCH /hooks/{id}/config keeps it.
            None if !config_only => hook.secret = None,
            None => {}
        }
    }
    if !config_only {
        if let Some(events) = events_of(body.get("events")) {
            hook.events = events;
        }
        for e in events_of(body.get("add_events")).unwrap_or_default() {
            if !hook.events.contains(&e) {
                hook.events.push(e);
            }
        }
        let remove = events_of(body.get("remove_events")).unwrap_or_default();
        hook.events.retain(|e| !remove.contains(e));
        if let Some(active) = body.get("active").and_then(Value::as_bool) {
            hook.active = active;
        }
    }
    if let Some(conflict) = conflicts(&s, &hook.owner, Some(id), &hook.url, &hook.events) {
        return conflict;
    }
    hook.updated_at = timestamp();
    s.hooks.insert(id, hook.clone());
    let json = if config_only { sim.hook_json(&hook)["config"].clone() } else { sim.hook_json(&hook) };
    (StatusCode::OK, json).into()
}

/// `/_sim/...`: set up the world, emit events, inject faults, look inside.
async fn control(sim: &Sim, method: &Method, seg: &[&str], body: &[u8]) -> Response {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (method.clone(), seg) {
        (Method::POST, ["tokens"]) => {
            sim.add_token(body["token"].as_str().unwrap_or_default());
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, ["repos"]) => {
            sim.add_repo(body["full_name"].as_str().unwrap_or_default());
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, ["apps"]) => {
            // {"id": 1, "installations": {"7": "octo-org"}} → {"private_key": PEM}
            let id = body["id"].as_u64().unwrap_or_default();
            let installations = body["installations"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_owned())))
                .collect();
            Json(json!({ "private_key": sim.add_app(id, installations) })).into_response()
        }
        (Method::POST, ["orgs"]) => {
            sim.add_org(body["login"].as_str().unwrap_or_default());
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, ["faults"]) => match serde_json::from_value::<Faults>(body) {
            Ok(f) => {
                sim.inner.lock().unwrap().faults = f;
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        },
        (Method::GET, ["hooks"]) => {
            // Unlike the API, shows secrets: tests compare what GitHub signs with.
            let s = sim.inner.lock().unwrap();
            let hooks: Vec<Value> = s
                .hooks
                .values()
                .map(|h| {
                    let mut v = sim.hook_json(h);
                    v["config"]["secret"] = json!(h.secret);
                    v
                })
                .collect();
            Json(hooks).into_response()
        }
        (Method::POST, ["hooks", id, "events"]) => {
            let Ok(id) = id.parse() else { return StatusCode::NOT_FOUND.into_response() };
            let event = body["event"].as_str().unwrap_or("push").to_owned();
            match sim.deliver(id, &event, body["payload"].clone(), None).await {
                Some(d) => Json(serde_json::to_value(&d).expect("JSON")).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }
        (Method::DELETE, ["hooks", id]) => {
            let removed = id.parse().ok().and_then(|id: u64| sim.inner.lock().unwrap().hooks.remove(&id));
            if removed.is_some() { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND }.into_response()
        }
        // {"url": prefix}: deliveries to hook URLs starting with it fail
        // (connection refused) until the DELETE with the same body.
        (method @ (Method::POST | Method::DELETE), ["unreachable"]) => {
            let Some(url) = body["url"].as_str().filter(|u| !u.is_empty()) else {
                return (StatusCode::BAD_REQUEST, "body must be {\"url\": \"<prefix>\"}").into_response();
            };
            let mut s = sim.inner.lock().unwrap();
            s.unreachable.retain(|u| u != url);
            if method == Method::POST {
                s.unreachable.push(url.to_owned());
            }
            StatusCode::NO_CONTENT.into_response()
        }
        // Back to github.com's hook ranges.
        (Method::DELETE, ["meta"]) => {
            sim.inner.lock().unwrap().meta_hooks = None;
            StatusCode::NO_CONTENT.into_response()
        }
        // {"hooks": [cidr...]}: what `GET /meta` lists as hook source ranges.
        (Method::POST, ["meta"]) => {
            let Some(hooks) = body["hooks"].as_array() else {
                return (StatusCode::BAD_REQUEST, "body must be {\"hooks\": [\"<cidr>\"...]}")
                    .into_response();
            };
            let hooks = hooks.iter().filter_map(|h| h.as_str().map(str::to_owned)).collect();
            sim.inner.lock().unwrap().meta_hooks = Some(hooks);
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, ["requests"]) => Json(sim.requests()).into_response(),
        // What clients sent so far (and what the simulator answered) that
        // GitHub's OpenAPI description contradicts, for request paths that
        // contain the rest of this path (e.g. `/_sim/openapi-violations/orgs/acme`).
        (Method::GET, ["openapi-violations", needle @ ..]) => match &sim.spec {
            Some(spec) => {
                let needle = needle.join("/");
                let requests = sim.requests();
                let problems: Vec<String> = requests
                    .iter()
                    .filter(|r| r.path.contains(&needle))
                    .flat_map(|r| spec.check(r))
                    .collect();
                Json(problems).into_response()
            }
            None => (StatusCode::CONFLICT, "started without --openapi").into_response(),
        },
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
