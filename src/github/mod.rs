//! Everything that talks to GitHub's REST API: webhooks of a repository or
//! an organization and their deliveries, as a personal access token or a
//! GitHub App installation. A thin client over reqwest rather than octocrab:
//! every call here needs the response headers (rate limit, `ETag`, `Link`,
//! `retry-after`), so octocrab could only serve through its raw-response API
//! (`_get`, `_post`, ...) and lend its App token minting. Weighed on
//! 2026-11-26: octocrab 0.54.9 with the fewest features that work here
//! (`rustls`, `rustls-ring`, `default-client`, `jwt-rust-crypto`, `timeout`)
//! adds 6 crates to this build (octocrab, chrono, http-serde, iana-time-zone,
//! snafu, snafu-derive; `cargo tree`), and would replace only `bearer` (about
//! 35 lines): pagination here is two `Link`/cursor lines, the GHES base URL a
//! string. And its token minting would happen outside the account's pacing,
//! its `Retry-After` handling and the per-endpoint request metrics, and a
//! 401 could not drop a revoked installation token. So not octocrab.
//!
//! Good citizenship lives here, per account (API URL + credential), shared by
//! every reconcile through [`Shared`]: GETs are conditional on the last `ETag`
//! (a 304 costs no budget); when GitHub says the budget is spent or a
//! secondary limit hit, calls on that account fail fast until the time GitHub
//! gave; mutations are sent one at a time with a pause between them, as
//! GitHub's best-practice guide for secondary limits asks.
//!
//! Over 400 lines: the transport every call shares (credentials, pacing,
//! `ETag`s, rate limits, errors) and one short method per endpoint.

pub mod endpoints;
pub mod meta;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::jiff;
use prometheus::{IntCounterVec, IntGaugeVec};
use reqwest::{Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Whose hooks: `repos/{owner}/{name}`, `orgs/{org}`, or the one webhook
/// of the GitHub App whose credentials the client has (`app/hook`, called
/// with the App's JWT; its hook id is ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Repository(String),
    Organization(String),
    App,
}

impl Target {
    /// The path of the target's hooks (an App has one, no list).
    fn hooks_path(&self) -> String {
        match self {
            Self::Repository(r) => format!("repos/{r}/hooks"),
            Self::Organization(o) => format!("orgs/{o}/hooks"),
            Self::App => APP_HOOK_PATH.to_owned(),
        }
    }

    /// The path of hook `id`.
    fn hook_path(&self, id: i64) -> String {
        match self {
            Self::App => APP_HOOK_PATH.to_owned(),
            _ => format!("{}/{id}", self.hooks_path()),
        }
    }
}

/// Where a GitHub App's own webhook is (`/app/hook/config`, `/app/hook/deliveries`).
const APP_HOOK_PATH: &str = "app/hook";

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Repository(r) => write!(f, "repository {r}"),
            Self::Organization(o) => write!(f, "organization {o}"),
            Self::App => write!(f, "the App's own webhook"),
        }
    }
}

/// A hook as GitHub returns it (the secret is masked, so never read here).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Hook {
    pub id: i64,
    pub active: bool,
    pub events: Vec<String>,
    pub config: HookConfig,
    /// How the hook's latest delivery went, as GitHub shows it.
    #[serde(default)]
    pub last_response: Option<LastResponse>,
}

impl Hook {
    /// Did GitHub's latest delivery of this hook fail? Evidence that a
    /// recovery pass is worth running now.
    pub fn last_delivery_failed(&self) -> bool {
        self.last_response.as_ref().and_then(|r| r.code).is_some_and(|c| !(200..300).contains(&c))
    }
}

/// `last_response` of a hook: `code` is `null` before the first delivery.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct LastResponse {
    pub code: Option<i64>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct HookConfig {
    pub url: Option<String>,
    pub content_type: Option<String>,
}

/// What the hook should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredHook {
    pub url: String,
    pub events: Vec<String>,
    pub active: bool,
    /// `json` or `form`, always sent: GitHub's own default is `form`.
    pub content_type: String,
}

impl DesiredHook {
    /// Does `hook` already look like this (the secret aside, which GitHub masks)?
    pub fn matches(&self, hook: &Hook) -> bool {
        let mut want = self.events.clone();
        let mut have = hook.events.clone();
        want.sort();
        have.sort();
        hook.active == self.active
            && want == have
            && hook.config.url.as_deref() == Some(self.url.as_str())
            && hook.config.content_type.as_deref() == Some(self.content_type.as_str())
    }

    fn body(&self, secret: &str) -> Value {
        json!({
            "name": "web",
            "active": self.active,
            "events": self.events,
            "config": { "url": self.url, "content_type": self.content_type, "secret": secret, "insecure_ssl": "0" },
        })
    }
}

/// One recorded delivery of a hook, as GitHub lists them (newest first).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub guid: String,
    pub delivered_at: String,
    pub redelivery: bool,
    /// HTTP status the receiver answered; 0 when it could not be reached.
    pub status_code: i64,
    pub event: String,
}

/// One page of a hook's deliveries (newest first) and the cursor of the next, older, page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryPage {
    pub deliveries: Vec<Delivery>,
    pub next_cursor: Option<String>,
}

/// One delivery with the request GitHub sent: what `GET .../deliveries/{id}` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRequest {
    pub guid: String,
    pub event: String,
    /// The original payload; `None` when GitHub no longer shows it.
    pub payload: Option<Value>,
}

impl Delivery {
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status_code)
    }

    /// `delivered_at` in Unix seconds (0 when GitHub's timestamp is unreadable).
    pub fn delivered_unix(&self) -> i64 {
        self.delivered_at.parse::<jiff::Timestamp>().map_or(0, |t| t.as_second())
    }
}

/// GitHub's rate-limit headers from the latest answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub limit: i64,
    pub remaining: i64,
    /// Unix seconds.
    pub reset: i64,
}

/// Why a call failed, in words a person can act on. Never carries a token or
/// a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("GitHub rejected the credentials (HTTP 401): check the token or the App's private key Secret")]
    BadCredentials,
    #[error("GitHub answered 404 for {0}: it does not exist, or the credentials cannot see it")]
    NotFound(String),
    #[error("GitHub refused: {0}")]
    Forbidden(String),
    #[error("GitHub rejected the hook: {0}")]
    Invalid(String),
    #[error("rate limited by GitHub until {} ({until} Unix seconds)", jiff::Timestamp::from_second(*until).map_or_else(|_| "?".into(), |t| t.to_string()))]
    RateLimited { until: i64 },
    #[error("GitHub answered HTTP {status}")]
    Unexpected { status: u16 },
    #[error("cannot reach GitHub: {0}")]
    Transport(String),
    /// An answer this client will not use: not the JSON GitHub documents,
    /// larger than the limit, or more pages than the limit. Retrying at once
    /// would get the same answer.
    #[error("unusable answer from the GitHub API: {0}")]
    BadAnswer(String),
    #[error("the GitHub App private key is not a PEM-encoded RSA key")]
    BadPrivateKey,
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::BadCredentials => "bad_credentials",
            Self::NotFound(_) => "not_found",
            Self::Forbidden(_) => "forbidden",
            Self::Invalid(_) => "invalid",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unexpected { .. } => "unexpected",
            Self::Transport(_) => "transport",
            Self::BadAnswer(_) => "bad_answer",
            Self::BadPrivateKey => "bad_private_key",
        }
    }

    /// How long to wait before trying again, when GitHub said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { until } => {
                Some(Duration::from_secs((*until - now_secs()).clamp(1, 3600) as u64))
            }
            _ => None,
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// How the client proves who it is.
pub enum Auth {
    /// A personal access token (classic or fine-grained).
    Token(String),
    /// A GitHub App installation: an RS256 JWT signed with the App's private
    /// key buys a one-hour installation token, cached until 5 minutes before
    /// it expires.
    App {
        app_id: i64,
        installation_id: i64,
        private_key: jsonwebtoken::EncodingKey,
        /// SHA-256 of the PEM: which key this is, without keeping it twice.
        fingerprint: [u8; 32],
    },
}

impl Auth {
    /// App authentication from the App's PEM private key.
    pub fn app(app_id: i64, installation_id: i64, pem: &[u8]) -> Result<Self, Error> {
        use sha2::Digest;
        let private_key = jsonwebtoken::EncodingKey::from_rsa_pem(pem).map_err(|_| Error::BadPrivateKey)?;
        let fingerprint = sha2::Sha256::digest(pem.trim_ascii()).into();
        Ok(Self::App { app_id, installation_id, private_key, fingerprint })
    }

    /// What tells this credential from any other, for the account cache:
    /// a hash of the token or of the App's private key. NB: an installation
    /// token is cached per private key (and owner), so a WebhookConfig that
    /// names another team's App and installation with a key of its own never
    /// gets that team's token: its own JWT goes to GitHub, which refuses it.
    fn fingerprint(&self) -> String {
        use sha2::Digest;
        match self {
            Self::Token(token) => hex::encode(&sha2::Sha256::digest(token.as_bytes())[..16]),
            Self::App { fingerprint, .. } => hex::encode(&fingerprint[..16]),
        }
    }
}

/// How much of GitHub's (or a fake GitHub's) answers one process keeps:
/// an API URL is a tenant's to choose, so each bound holds against a
/// hostile server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest answer body read; a larger one is an error (`BadAnswer`).
    /// GitHub's own largest are deliveries with their payload (25 MB).
    pub max_response_bytes: usize,
    /// Pages of a list followed (`Link: rel="next"`) before giving up.
    pub max_pages: usize,
    /// Bytes of cached `ETag` answers, least recently used dropped first.
    pub etag_cache_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_response_bytes: 32 << 20, max_pages: 10, etag_cache_bytes: 32 << 20 }
    }
}

/// What one account (an API URL and a credential) has learned from GitHub.
#[derive(Default)]
struct Account {
    rate_limit: Mutex<Option<RateLimit>>,
    /// No call before this (Unix seconds): the budget is spent or a secondary
    /// limit was hit.
    blocked_until: Mutex<i64>,
    /// Held for the length of a mutation; when the last one ended.
    last_mutation: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    /// An App installation token and when it expires (Unix seconds).
    installation_token: tokio::sync::Mutex<Option<(String, i64)>>,
}

/// What every client of the process shares: one HTTP connection pool,
/// accounts, cached `ETag`s, the pause between mutations, and the metrics.
pub struct Shared {
    http: reqwest::Client,
    accounts: Mutex<HashMap<String, Arc<Account>>>,
    /// By account and URL: the `ETag` and body of the last 200 answer. The
    /// body is kept as the JSON text: a parsed `Value` takes several times
    /// its size, and at 1,000 hooks these are most of the operator's memory.
    etags: Mutex<EtagCache>,
    mutation_interval: Duration,
    limits: Limits,
    requests: IntCounterVec,
    remaining: IntGaugeVec,
}

impl Shared {
    /// `requests` is labelled `endpoint`, `status`; `remaining` by `account`.
    pub fn new(
        mutation_interval: Duration,
        limits: Limits,
        requests: IntCounterVec,
        remaining: IntGaugeVec,
    ) -> Self {
        Self {
            http: http_client(),
            accounts: Default::default(),
            etags: Mutex::new(EtagCache::new(limits.etag_cache_bytes)),
            mutation_interval,
            limits,
            requests,
            remaining,
        }
    }
}

/// The HTTP client for GitHub's API: a total deadline per call (a slow
/// drip ends with it), and no redirect followed (the credential would go
/// along to wherever it pointed).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("hookwarden/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a TLS backend is available")
}

/// The body of `res`, at most `cap` bytes: a longer one is refused as soon
/// as it is known (its `Content-Length`, or the first chunk past the cap).
pub async fn read_capped(mut res: reqwest::Response, cap: usize) -> Result<bytes::Bytes, Error> {
    let too_large = || Error::BadAnswer(format!("the answer is larger than {cap} bytes"));
    if res.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    // NB: the chunks as they came, joined once at the end: a buffer grown
    // by doubling would hold half as much again while it copies (an
    // allocator without mremap, as mimalloc, copies every time).
    let (mut chunks, mut len) = (Vec::new(), 0);
    while let Some(chunk) = res.chunk().await.map_err(|e| Error::Transport(e.without_url().to_string()))? {
        len += chunk.len();
        if len > cap {
            return Err(too_large());
        }
        chunks.push(chunk);
    }
    Ok(match chunks.len() {
        1 => chunks.remove(0),
        _ => chunks.concat().into(),
    })
}

/// Cached answers by key, bounded in bytes; the least recently used go first.
pub struct EtagCache {
    cap: usize,
    bytes: usize,
    tick: u64,
    /// key → (last use, `ETag`, body)
    entries: HashMap<String, (u64, String, bytes::Bytes)>,
    /// last use → key: the eviction order.
    order: std::collections::BTreeMap<u64, String>,
}

impl EtagCache {
    pub fn new(cap: usize) -> Self {
        Self { cap, bytes: 0, tick: 0, entries: HashMap::new(), order: Default::default() }
    }

    fn cost(key: &str, etag: &str, body: &[u8]) -> usize {
        key.len() + etag.len() + body.len()
    }

    /// The entry of `key`, now the most recently used.
    pub fn get(&mut self, key: &str) -> Option<(String, bytes::Bytes)> {
        self.tick += 1;
        let (used, etag, body) = self.entries.get_mut(key)?;
        self.order.remove(used);
        *used = self.tick;
        self.order.insert(self.tick, key.to_owned());
        Some((etag.clone(), body.clone()))
    }

    /// Keeps `body` under `key`, dropping the least recently used entries
    /// until everything fits; an entry larger than the whole cache is not kept.
    pub fn insert(&mut self, key: &str, etag: &str, body: bytes::Bytes) {
        self.remove(key);
        let cost = Self::cost(key, etag, &body);
        if cost > self.cap {
            return;
        }
        while self.bytes + cost > self.cap {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            if let Some((_, e, b)) = self.entries.remove(&oldest) {
                self.bytes -= Self::cost(&oldest, &e, &b);
            }
        }
        self.tick += 1;
        self.bytes += cost;
        self.order.insert(self.tick, key.to_owned());
        self.entries.insert(key.to_owned(), (self.tick, etag.to_owned(), body));
    }

    pub fn remove(&mut self, key: &str) {
        if let Some((used, e, b)) = self.entries.remove(key) {
            self.order.remove(&used);
            self.bytes -= Self::cost(key, &e, &b);
        }
    }

    /// Bytes held, and entries.
    pub fn size(&self) -> (usize, usize) {
        (self.bytes, self.entries.len())
    }
}

/// A client for one GitHub (github.com or an Enterprise Server) and one account.
pub struct Client {
    api_url: String,
    auth: Auth,
    /// Names the account in metrics, e.g. the token Secret `namespace/name`.
    account_name: String,
    /// The account's key among all of the process's: API URL, owner, name
    /// and credential fingerprint. What one owner's calls learn (a token,
    /// an `ETag`ed answer) is only ever used for the same key.
    account_key: String,
    account: Arc<Account>,
    shared: Arc<Shared>,
}

/// The answer to a call: status, headers, JSON body (`Null` when empty).
type Answer = (StatusCode, header::HeaderMap, Value);

impl Client {
    /// A client for `owner` (the namespace whose credential this is).
    pub fn new(shared: Arc<Shared>, api_url: &str, auth: Auth, owner: &str, account_name: &str) -> Self {
        let api_url = api_url.trim_end_matches('/').to_owned();
        let account_key = format!("{api_url} {owner} {account_name} {}", auth.fingerprint());
        let account = shared.accounts.lock().unwrap().entry(account_key.clone()).or_default().clone();
        Self { api_url, auth, account_name: account_name.to_owned(), account_key, account, shared }
    }

    /// The budget GitHub reported on the latest call of this account.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        *self.account.rate_limit.lock().unwrap()
    }

    /// The bearer token for API calls: the PAT, or a (cached) installation token.
    async fn bearer(&self) -> Result<String, Error> {
        let (app_id, installation_id, private_key) = match &self.auth {
            Auth::Token(token) => return Ok(token.clone()),
            Auth::App { app_id, installation_id, private_key, .. } => (app_id, installation_id, private_key),
        };
        let mut cached = self.account.installation_token.lock().await;
        if let Some((token, expires)) = cached.as_ref()
            && *expires - 300 > now_secs()
        {
            return Ok(token.clone());
        }
        let jwt = app_jwt(*app_id, private_key)?;
        let url = format!("{}/app/installations/{installation_id}/access_tokens", self.api_url);
        let (_, _, body) =
            self.send("create_installation_token", Method::POST, &url, None, None, &jwt).await?;
        let (token, expires) = parse_installation_token(&body, now_secs())?;
        *cached = Some((token.clone(), expires));
        Ok(token)
    }

    /// The App's own JWT (for `/app/...` endpoints), signed now.
    fn app_jwt(&self) -> Result<String, Error> {
        match &self.auth {
            Auth::App { app_id, private_key, .. } => app_jwt(*app_id, private_key),
            Auth::Token(_) => Err(Error::BadAnswer("the App's own webhook needs App credentials".into())),
        }
    }

    /// A call as this account, conditional on `etag` when given; mutations
    /// wait their turn.
    async fn call(
        &self,
        endpoint: &'static str,
        method: Method,
        url: &str,
        body: Option<Value>,
        etag: Option<&str>,
    ) -> Result<Answer, Error> {
        let blocked_until = *self.account.blocked_until.lock().unwrap();
        if blocked_until > now_secs() {
            return Err(Error::RateLimited { until: blocked_until });
        }
        // NB: the App's own webhook is the App's, not an installation's.
        let bearer = if url.starts_with(&format!("{}/{APP_HOOK_PATH}/", self.api_url)) {
            self.app_jwt()?
        } else {
            self.bearer().await?
        };
        let result = if method == Method::GET {
            self.send(endpoint, method, url, body, etag, &bearer).await
        } else {
            let mut last = self.account.last_mutation.lock().await;
            if let Some(at) = *last {
                tokio::time::sleep_until(at + self.shared.mutation_interval).await;
            }
            let result = self.send(endpoint, method, url, body, etag, &bearer).await;
            *last = Some(tokio::time::Instant::now());
            result
        };
        // A revoked installation token: the next call mints a new one.
        // NB: not in `send`, which `bearer` calls holding this lock.
        if matches!(result, Err(Error::BadCredentials)) {
            *self.account.installation_token.lock().await = None;
        }
        result
    }

    async fn send(
        &self,
        endpoint: &'static str,
        method: Method,
        url: &str,
        body: Option<Value>,
        etag: Option<&str>,
        bearer: &str,
    ) -> Result<Answer, Error> {
        let mut req = self
            .shared
            .http
            .request(method, url)
            .bearer_auth(bearer)
            .header(header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(etag) = etag {
            req = req.header(header::IF_NONE_MATCH, etag);
        }
        let res = match req.send().await {
            Ok(res) => res,
            Err(e) => {
                self.shared.requests.with_label_values(&[endpoint, "error"]).inc();
                return Err(Error::Transport(e.without_url().to_string()));
            }
        };
        let (status, headers) = (res.status(), res.headers().clone());
        self.shared.requests.with_label_values(&[endpoint, status.as_str()]).inc();
        let num = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()?.parse::<i64>().ok());
        if let (Some(limit), Some(remaining), Some(reset)) =
            (num("x-ratelimit-limit"), num("x-ratelimit-remaining"), num("x-ratelimit-reset"))
        {
            *self.account.rate_limit.lock().unwrap() = Some(RateLimit { limit, remaining, reset });
            self.shared.remaining.with_label_values(&[&self.account_name]).set(remaining);
        }
        let bytes = read_capped(res, self.shared.limits.max_response_bytes).await?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let path = url.trim_start_matches(&self.api_url);
        match classify(status.as_u16(), &headers, &body, path, now_secs()) {
            Ok(()) => Ok((status, headers, body)),
            Err(Error::RateLimited { until }) => {
                *self.account.blocked_until.lock().unwrap() = until;
                Err(Error::RateLimited { until })
            }
            Err(error) => Err(error),
        }
    }

    /// A GET conditional on the `ETag` of the last answer for `url`: an
    /// unchanged resource is answered from the cache at no budget.
    /// `None` when GitHub answers 404.
    async fn get_cached(
        &self,
        endpoint: &'static str,
        url: &str,
    ) -> Result<Option<(Value, header::HeaderMap)>, Error> {
        let key = format!("{} {url}", self.account_key);
        let cached = self.shared.etags.lock().unwrap().get(&key);
        match self.call(endpoint, Method::GET, url, None, cached.as_ref().map(|(e, _)| e.as_str())).await {
            Ok((StatusCode::NOT_MODIFIED, headers, _)) if cached.is_some() => {
                let body =
                    cached.and_then(|(_, text)| serde_json::from_slice(&text).ok()).unwrap_or(Value::Null);
                Ok(Some((body, headers)))
            }
            Ok((_, headers, body)) => {
                if let (Some(etag), Ok(text)) =
                    (headers.get(header::ETAG).and_then(|v| v.to_str().ok()), serde_json::to_vec(&body))
                {
                    self.shared.etags.lock().unwrap().insert(&key, etag, text.into());
                }
                Ok(Some((body, headers)))
            }
            Err(Error::NotFound(_)) => {
                self.shared.etags.lock().unwrap().remove(&key);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn hooks_url(&self, target: &Target) -> String {
        format!("{}/{}", self.api_url, target.hooks_path())
    }

    fn hook_url(&self, target: &Target, id: i64) -> String {
        format!("{}/{}", self.api_url, target.hook_path(id))
    }

    /// The App's own webhook: its URL and content type.
    pub async fn app_hook_config(&self) -> Result<HookConfig, Error> {
        let url = format!("{}/config", self.hook_url(&Target::App, 0));
        let (body, _) = self
            .get_cached("get_app_hook_config", &url)
            .await?
            .ok_or_else(|| Error::BadAnswer("GitHub has no webhook for this App".into()))?;
        parse(body)
    }

    /// Points the App's own webhook at `url` (JSON) and sets its secret.
    pub async fn update_app_hook_config(&self, url: &str, secret: &str) -> Result<HookConfig, Error> {
        let endpoint = format!("{}/config", self.hook_url(&Target::App, 0));
        let body = json!({ "url": url, "content_type": "json", "insecure_ssl": "0", "secret": secret });
        let (_, _, body) =
            self.call("update_app_hook_config", Method::PATCH, &endpoint, Some(body), None).await?;
        parse(body)
    }

    /// Every hook of `target`, following `Link: rel="next"` pages.
    pub async fn list_hooks(&self, target: &Target) -> Result<Vec<Hook>, Error> {
        let mut url = format!("{}?per_page=100", self.hooks_url(target));
        let mut hooks = Vec::new();
        for _ in 0..self.shared.limits.max_pages {
            let (_, headers, body) = self.call("list_hooks", Method::GET, &url, None, None).await?;
            hooks.extend(parse::<Vec<Hook>>(body)?);
            // NB: only a next page on the same API is followed: the token
            // goes with the request.
            match next_link(&headers) {
                Some(n) if n.starts_with(&format!("{}/", self.api_url)) => url = n,
                Some(_) => return Err(Error::BadAnswer("a next page on another host".into())),
                None => return Ok(hooks),
            }
        }
        Err(Error::BadAnswer(format!("more than {} pages of hooks", self.shared.limits.max_pages)))
    }

    /// One hook; `None` when it no longer exists. Conditional on the last
    /// `ETag`, so an unchanged hook costs no budget.
    pub async fn get_hook(&self, target: &Target, id: i64) -> Result<Option<Hook>, Error> {
        let url = self.hook_url(target, id);
        self.get_cached("get_hook", &url).await?.map(|(body, _)| parse(body)).transpose()
    }

    pub async fn create_hook(
        &self,
        target: &Target,
        hook: &DesiredHook,
        secret: &str,
    ) -> Result<Hook, Error> {
        let url = self.hooks_url(target);
        let (_, _, body) =
            self.call("create_hook", Method::POST, &url, Some(hook.body(secret)), None).await?;
        parse(body)
    }

    /// Replaces the hook's settings, secret included. NB: the secret is always
    /// sent, because `PATCH /hooks/{id}` without it removes it.
    pub async fn update_hook(
        &self,
        target: &Target,
        id: i64,
        hook: &DesiredHook,
        secret: &str,
    ) -> Result<Hook, Error> {
        let url = self.hook_url(target, id);
        let (_, _, body) =
            self.call("update_hook", Method::PATCH, &url, Some(hook.body(secret)), None).await?;
        parse(body)
    }

    /// Deletes the hook; one already gone counts as deleted.
    pub async fn delete_hook(&self, target: &Target, id: i64) -> Result<(), Error> {
        let url = self.hook_url(target, id);
        match self.call("delete_hook", Method::DELETE, &url, None, None).await {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Asks GitHub to send the hook a `ping` event.
    pub async fn ping_hook(&self, target: &Target, id: i64) -> Result<(), Error> {
        let url = format!("{}/pings", self.hook_url(target, id));
        self.call("ping_hook", Method::POST, &url, None, None).await.map(|_| ())
    }

    /// One page of the hook's deliveries, newest first: the newest page when
    /// `cursor` is `None` (conditional: when nothing was delivered since the
    /// last look it costs no budget), else the page GitHub's `Link` named.
    pub async fn deliveries_page(
        &self,
        target: &Target,
        hook_id: i64,
        cursor: Option<&str>,
    ) -> Result<DeliveryPage, Error> {
        let mut url = format!("{}/deliveries?per_page=100", self.hook_url(target, hook_id));
        let answer = match cursor {
            None => self.get_cached("list_deliveries", &url).await?,
            Some(c) => {
                // NB: only the cursor is kept (in status), never a URL: a
                // stored URL would send the token wherever it pointed.
                url.push_str("&cursor=");
                url.extend(form_urlencoded::byte_serialize(c.as_bytes()));
                match self.call("list_deliveries", Method::GET, &url, None, None).await {
                    Ok((_, headers, body)) => Some((body, headers)),
                    Err(Error::NotFound(_)) => None,
                    Err(e) => return Err(e),
                }
            }
        };
        let Some((body, headers)) = answer else { return Ok(DeliveryPage::default()) };
        let next_cursor = next_link(&headers).as_deref().and_then(cursor_of);
        Ok(DeliveryPage { deliveries: parse(body)?, next_cursor })
    }

    /// One delivery with its original request; `None` when GitHub no longer has it.
    pub async fn delivery(
        &self,
        target: &Target,
        hook_id: i64,
        delivery_id: i64,
    ) -> Result<Option<DeliveryRequest>, Error> {
        let url = format!("{}/deliveries/{delivery_id}", self.hook_url(target, hook_id));
        let body = match self.call("get_delivery", Method::GET, &url, None, None).await {
            Ok((_, _, body)) => body,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        parse_delivery(body).map(Some)
    }

    /// Asks GitHub to deliver delivery `delivery_id` again (same GUID).
    pub async fn redeliver(&self, target: &Target, hook_id: i64, delivery_id: i64) -> Result<(), Error> {
        let url = format!("{}/deliveries/{delivery_id}/attempts", self.hook_url(target, hook_id));
        self.call("redeliver", Method::POST, &url, None, None).await.map(|_| ())
    }
}

/// A JWT of App `app_id` for GitHub's `/app` endpoints: issued a minute
/// back for clock drift; GitHub refuses one that lives beyond 10 minutes.
fn app_jwt(app_id: i64, private_key: &jsonwebtoken::EncodingKey) -> Result<String, Error> {
    let claims = json!({ "iat": now_secs() - 60, "exp": now_secs() + 540, "iss": app_id.to_string() });
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, private_key)
        .map_err(|_| Error::BadPrivateKey)
}

// The parsers of GitHub's answers, public for the fuzz target
// (`fuzz/fuzz_targets/github_answers.rs`): whatever a server answers, an
// error, never a panic.

/// What GitHub's answer to a call on `path` means, from its status and
/// headers (and the body's `message`) at `now`: usable, or which error. A
/// rate limit (`retry-after`, or a spent budget) names when calls on the
/// account may start again. (A body that does not parse as what was asked
/// is [`Error::BadAnswer`], found by [`parse`], not here.)
pub fn classify(
    status: u16,
    headers: &header::HeaderMap,
    body: &Value,
    path: &str,
    now: i64,
) -> Result<(), Error> {
    let num = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()?.trim().parse::<i64>().ok());
    // NB: a message shows in conditions and Events: kept short whoever wrote it.
    let message = || short(body["message"].as_str().unwrap_or(""));
    match status {
        200..=299 | 304 => Ok(()),
        401 => Err(Error::BadCredentials),
        403 | 429 if num("retry-after").is_some() => {
            Err(Error::RateLimited { until: now + num("retry-after").unwrap_or(60).clamp(1, 3600) })
        }
        403 | 429 if num("x-ratelimit-remaining") == Some(0) => {
            Err(Error::RateLimited { until: num("x-ratelimit-reset").unwrap_or(now + 60) })
        }
        403 => Err(Error::Forbidden(message())),
        404 => Err(Error::NotFound(path.to_owned())),
        422 => Err(Error::Invalid(message())),
        other => Err(Error::Unexpected { status: other }),
    }
}

/// An answer's JSON body as `T` (a hook, a list of hooks, a deliveries page).
pub fn parse<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, Error> {
    serde_json::from_value(body).map_err(|e| Error::BadAnswer(short(e)))
}

/// `GET .../deliveries/{id}`: the delivery with its original payload, if shown.
pub fn parse_delivery(body: Value) -> Result<DeliveryRequest, Error> {
    #[derive(Deserialize)]
    struct Full {
        guid: String,
        event: String,
        #[serde(default)]
        request: Option<Request>,
    }
    #[derive(Deserialize)]
    struct Request {
        #[serde(default)]
        payload: Option<Value>,
    }
    let full: Full = parse(body)?;
    let payload = full.request.and_then(|r| r.payload).filter(|p| !p.is_null());
    Ok(DeliveryRequest { guid: full.guid, event: full.event, payload })
}

/// `POST /app/installations/{id}/access_tokens`: the token and when it
/// expires (Unix seconds; an hour from `now` when unreadable).
pub fn parse_installation_token(body: &Value, now: i64) -> Result<(String, i64), Error> {
    let token = body["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::BadAnswer("an installation token answer without a token".into()))?;
    let expires = body["expires_at"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(now + 3600, |t| t.as_second());
    Ok((token.to_owned(), expires))
}

/// The `cursor` parameter of a deliveries page's next link.
pub fn cursor_of(link: &str) -> Option<String> {
    let (_, query) = link.split_once('?')?;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "cursor").map(|(_, v)| v.into_owned())
}

/// At most 200 characters of `text`: what an answer may put into a
/// condition, an Event or a log line.
pub fn short(text: impl std::fmt::Display) -> String {
    let text = text.to_string();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(headers: &header::HeaderMap) -> Option<String> {
    headers.get(header::LINK).and_then(|v| v.to_str().ok()).and_then(next_of)
}

/// The `rel="next"` URL of a `Link` header's value.
pub fn next_of(link: &str) -> Option<String> {
    link.split(',')
        .find(|p| p.contains("rel=\"next\""))
        .and_then(|p| p.trim().strip_prefix('<')?.split('>').next())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_etag_cache_stays_within_its_bytes_and_drops_the_least_recently_used() {
        let body = |n: usize| bytes::Bytes::from(vec![b'x'; n]);
        // Each entry costs key (1) + ETag (2) + body.
        let mut cache = EtagCache::new(100);
        cache.insert("a", "e1", body(27)); // 30
        cache.insert("b", "e2", body(27)); // 60
        cache.insert("c", "e3", body(27)); // 90
        assert_eq!(cache.size(), (90, 3));
        assert_eq!(cache.get("a").map(|(e, _)| e), Some("e1".into()), "a is now the most recent");
        cache.insert("d", "e4", body(27)); // 120 > 100: b, the least recently used, goes
        assert_eq!(cache.size(), (90, 3));
        assert!(cache.get("b").is_none());
        assert!(cache.get("a").is_some() && cache.get("c").is_some() && cache.get("d").is_some());
        cache.insert("c", "e5", body(7)); // replaced: its old cost is given back
        assert_eq!(cache.size(), (70, 3));
        assert_eq!(cache.get("c").map(|(e, b)| (e, b.len())), Some(("e5".into(), 7)));
        cache.insert("huge", "e6", body(200)); // larger than the cache: not kept, nothing dropped
        assert_eq!(cache.size(), (70, 3));
        cache.remove("a");
        assert_eq!(cache.size(), (40, 2));
        assert!(cache.get("a").is_none());
    }

    #[test]
    fn what_an_answer_means() {
        const NOW: i64 = 1_800_000_000;
        let h = |pairs: &[(&'static str, &str)]| {
            let mut map = header::HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, v.parse().unwrap());
            }
            map
        };
        let body = json!({ "message": "Validation Failed: Hook already exists" });
        let cases: Vec<(u16, header::HeaderMap, Result<(), Error>)> = vec![
            (200, h(&[]), Ok(())),
            (304, h(&[]), Ok(())),
            (401, h(&[]), Err(Error::BadCredentials)),
            (403, h(&[("retry-after", "30")]), Err(Error::RateLimited { until: NOW + 30 })),
            (429, h(&[("retry-after", "999999")]), Err(Error::RateLimited { until: NOW + 3600 })),
            (
                403,
                h(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1800000500")]),
                Err(Error::RateLimited { until: 1_800_000_500 }),
            ),
            (
                403,
                h(&[("x-ratelimit-remaining", "12")]),
                Err(Error::Forbidden("Validation Failed: Hook already exists".into())),
            ),
            (404, h(&[]), Err(Error::NotFound("/repos/o/r/hooks".into()))),
            (422, h(&[]), Err(Error::Invalid("Validation Failed: Hook already exists".into()))),
            (502, h(&[]), Err(Error::Unexpected { status: 502 })),
        ];
        for (status, headers, want) in cases {
            let got = classify(status, &headers, &body, "/repos/o/r/hooks", NOW);
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "HTTP {status} {headers:?}");
        }
        assert!(
            matches!(parse::<Hook>(json!({"id": "not a number"})), Err(Error::BadAnswer(_))),
            "not retried as a network fault"
        );
    }

    #[test]
    fn answers_and_texts_from_a_server_are_kept_short() {
        assert_eq!(short("fine"), "fine");
        let long = "é".repeat(500);
        let cut = short(&long);
        assert_eq!(cut.chars().count(), 201, "200 characters and an ellipsis");
        assert!(cut.ends_with('…'));
    }
}
