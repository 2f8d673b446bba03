//! Everything that talks to GitHub's REST API: webhooks of a repository or
//! an organization. A thin client over reqwest rather than octocrab's typed
//! API: every call here needs the response headers (rate limit, `ETag`,
//! `Link`, `retry-after`), and the bodies are four small shapes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Whose hooks: `repos/{owner}/{name}` or `orgs/{org}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Repository(String),
    Organization(String),
}

impl Target {
    fn path(&self) -> String {
        match self {
            Self::Repository(r) => format!("repos/{r}"),
            Self::Organization(o) => format!("orgs/{o}"),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Repository(r) => write!(f, "repository {r}"),
            Self::Organization(o) => write!(f, "organization {o}"),
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
    #[error("GitHub rejected the credentials (HTTP 401): check the token Secret")]
    BadCredentials,
    #[error("GitHub answered 404 for {0}: it does not exist, or the token cannot see it")]
    NotFound(String),
    #[error("GitHub refused: {0}")]
    Forbidden(String),
    #[error("GitHub rejected the hook: {0}")]
    Invalid(String),
    #[error("rate limited by GitHub until {until} (Unix seconds)")]
    RateLimited { until: i64 },
    #[error("GitHub answered HTTP {status}")]
    Unexpected { status: u16 },
    #[error("cannot reach GitHub: {0}")]
    Transport(String),
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

/// Hooks last read, by URL, with their `ETag`: a conditional GET answered
/// 304 costs no rate-limit budget, so steady state spends nothing. Shared by
/// every reconcile.
pub type EtagCache = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (String, Hook)>>>;

/// A client for one GitHub (github.com or an Enterprise Server) and one token.
pub struct Client {
    http: reqwest::Client,
    api_url: String,
    token: String,
    last_rate_limit: std::sync::Mutex<Option<RateLimit>>,
    etags: EtagCache,
}

impl Client {
    pub fn new(api_url: &str, token: &str, etags: EtagCache) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("hookwarden/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Self {
            http,
            api_url: api_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            last_rate_limit: Default::default(),
            etags,
        }
    }

    /// The budget GitHub reported on the latest call.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        *self.last_rate_limit.lock().unwrap()
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, header::HeaderMap, Value), Error> {
        self.call_if(method, url, body, None).await
    }

    /// A call, conditional on `etag` when given.
    async fn call_if(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
        etag: Option<&str>,
    ) -> Result<(StatusCode, header::HeaderMap, Value), Error> {
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .header(header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(etag) = etag {
            req = req.header(header::IF_NONE_MATCH, etag);
        }
        let res = req.send().await.map_err(|e| Error::Transport(e.without_url().to_string()))?;
        let (status, headers) = (res.status(), res.headers().clone());
        let num = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()?.parse::<i64>().ok());
        if let (Some(limit), Some(remaining), Some(reset)) =
            (num("x-ratelimit-limit"), num("x-ratelimit-remaining"), num("x-ratelimit-reset"))
        {
            *self.last_rate_limit.lock().unwrap() = Some(RateLimit { limit, remaining, reset });
        }
        let bytes = res.bytes().await.map_err(|e| Error::Transport(e.without_url().to_string()))?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let message = body["message"].as_str().unwrap_or("").to_owned();
        match status.as_u16() {
            200..=299 | 304 => Ok((status, headers, body)),
            401 => Err(Error::BadCredentials),
            403 | 429 if num("retry-after").is_some() => {
                Err(Error::RateLimited { until: now_secs() + num("retry-after").unwrap_or(60) })
            }
            403 | 429 if num("x-ratelimit-remaining") == Some(0) => {
                Err(Error::RateLimited { until: num("x-ratelimit-reset").unwrap_or(now_secs() + 60) })
            }
            403 => Err(Error::Forbidden(message)),
            404 => Err(Error::NotFound(url.trim_start_matches(&self.api_url).to_owned())),
            422 => Err(Error::Invalid(message)),
            other => Err(Error::Unexpected { status: other }),
        }
    }

    /// Every hook of `target`, following `Link: rel="next"` pages.
    pub async fn list_hooks(&self, target: &Target) -> Result<Vec<Hook>, Error> {
        let mut url = format!("{}/{}/hooks?per_page=100", self.api_url, target.path());
        let mut hooks = Vec::new();
        loop {
            let (_, headers, body) = self.call(Method::GET, &url, None).await?;
            hooks.extend(
                serde_json::from_value::<Vec<Hook>>(body).map_err(|e| Error::Transport(e.to_string()))?,
            );
            let next = headers
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.split(',').find(|p| p.contains("rel=\"next\"")))
                .and_then(|p| p.trim().strip_prefix('<')?.split('>').next())
                .map(str::to_owned);
            match next {
                Some(n) => url = n,
                None => return Ok(hooks),
            }
        }
    }

    /// One hook; `None` when it no longer exists. Conditional on the last
    /// `ETag`, so an unchanged hook costs no budget.
    pub async fn get_hook(&self, target: &Target, id: i64) -> Result<Option<Hook>, Error> {
        let url = format!("{}/{}/hooks/{id}", self.api_url, target.path());
        let cached = self.etags.lock().unwrap().get(&url).cloned();
        match self.call_if(Method::GET, &url, None, cached.as_ref().map(|(e, _)| e.as_str())).await {
            Ok((StatusCode::NOT_MODIFIED, _, _)) if cached.is_some() => Ok(cached.map(|(_, hook)| hook)),
            Ok((_, headers, body)) => {
                let hook: Hook = serde_json::from_value(body).map_err(|e| Error::Transport(e.to_string()))?;
                if let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok()) {
                    self.etags.lock().unwrap().insert(url, (etag.to_owned(), hook.clone()));
                }
                Ok(Some(hook))
            }
            Err(Error::NotFound(_)) => {
                self.etags.lock().unwrap().remove(&url);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn create_hook(
        &self,
        target: &Target,
        hook: &DesiredHook,
        secret: &str,
    ) -> Result<Hook, Error> {
        let (_, _, body) = self
            .call(Method::POST, &format!("{}/{}/hooks", self.api_url, target.path()), Some(hook.body(secret)))
            .await?;
        serde_json::from_value(body).map_err(|e| Error::Transport(e.to_string()))
    }

    /// Replaces the hook's settings. NB: the secret is always sent, because
    /// `PATCH /hooks/{id}` without it removes it.
    pub async fn update_hook(
        &self,
        target: &Target,
        id: i64,
        hook: &DesiredHook,
        secret: &str,
    ) -> Result<Hook, Error> {
        let url = format!("{}/{}/hooks/{id}", self.api_url, target.path());
        let (_, _, body) = self.call(Method::PATCH, &url, Some(hook.body(secret))).await?;
        serde_json::from_value(body).map_err(|e| Error::Transport(e.to_string()))
    }

    /// Deletes the hook; one already gone counts as deleted.
    pub async fn delete_hook(&self, target: &Target, id: i64) -> Result<(), Error> {
        match self.call(Method::DELETE, &format!("{}/{}/hooks/{id}", self.api_url, target.path()), None).await
        {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
