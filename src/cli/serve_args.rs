//! The flags of `hookwarden operator` and `hookwarden receiver`, and the
//! groups they share (Redis replicas, the de-duplication window, the scope).
//!
//! Times are durations as the custom resources write them (`90s`, `15m`,
//! `1h30m`, `250ms`); a bare number is seconds, as these flags took before.
//! A flag's environment variable is its name: `--resync` is
//! `HOOKWARDEN_RESYNC`. The older names that carried a unit
//! (`--resync-seconds`, `HOOKWARDEN_GITHUB_MUTATION_INTERVAL_MS`, ...) still
//! work, hidden, and say they are deprecated ([`deprecated`]).

use std::{net::SocketAddr, time::Duration};

use crate::receiver::ingest::http::DEFAULT_BODY_LIMIT;

/// Replica acknowledgement of queued deliveries (Redis' `WAIT`).
#[derive(clap::Args)]
pub(crate) struct ReplicaArgs {
    /// Redis replicas that must have a delivery before GitHub gets its 2xx
    /// (0: the master alone). With Sentinel, a failover then loses no
    /// acknowledged delivery; a delivery the replicas miss gets a 503.
    #[arg(long, env = "HOOKWARDEN_REDIS_REPLICAS", default_value_t = 0)]
    pub(crate) redis_replicas: u32,
    /// How long to wait for those replicas, as a duration (`1s`, `500ms`)
    /// [default: 1s].
    #[arg(long, env = "HOOKWARDEN_REDIS_REPLICA_TIMEOUT", value_parser = duration)]
    pub(crate) redis_replica_timeout: Option<Duration>,
    /// Deprecated: --redis-replica-timeout in milliseconds.
    #[arg(long, env = "HOOKWARDEN_REDIS_REPLICA_TIMEOUT_MS", hide = true)]
    pub(crate) redis_replica_timeout_ms: Option<u64>,
}

/// How long delivery GUIDs are remembered; the operator (which queues what
/// recovery fetches) and the receivers must agree on it.
#[derive(clap::Args)]
pub(crate) struct DedupArgs {
    /// How long a delivery GUID is remembered: GitHub's redelivery of it (or
    /// a client's retry) within it is answered 200 and queued once. GitHub
    /// redelivers for 3 days.
    #[arg(long, alias = "dedup-window-seconds", env = "HOOKWARDEN_DEDUP_WINDOW", default_value = "72h",
          value_parser = positive_duration)]
    pub(crate) dedup_window: Duration,
}

impl ReplicaArgs {
    pub(crate) fn get(&self) -> (u32, Duration) {
        let timeout = pick(self.redis_replica_timeout, self.redis_replica_timeout_ms, Duration::from_millis);
        (self.redis_replicas, timeout.unwrap_or(Duration::from_secs(1)))
    }
}

/// What the operator and the receivers serve, and where the receivers'
/// Secrets are: the two must agree.
#[derive(clap::Args)]
pub(crate) struct ScopeArgs {
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "HOOKWARDEN_NAMESPACE")]
    pub(crate) namespace: Option<String>,
    /// Where the operator keeps copies of the Secrets receivers read (key
    /// and agent signing Secrets), and where receivers read them: receivers
    /// then need Secret read in this namespace only. Default: none; the
    /// receivers read them where they are.
    #[arg(long, env = "HOOKWARDEN_KEYS_NAMESPACE")]
    pub(crate) keys_namespace: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Recovery {
    Auto,
    Fetch,
    Redeliver,
}

#[derive(clap::Args)]
pub(crate) struct OperatorArgs {
    /// Address to serve /healthz, /readyz and /metrics on.
    #[arg(long, env = "HOOKWARDEN_LISTEN", default_value = "0.0.0.0:8081")]
    pub(crate) listen: SocketAddr,
    /// Redis of the receivers; enables the dead-letter safety rule.
    #[arg(long, env = "REDIS_URL")]
    pub(crate) redis_url: Option<String>,
    /// Prefix of every Redis key; receivers and operator must agree on it.
    #[arg(long, env = "HOOKWARDEN_REDIS_PREFIX", default_value = "hookwarden")]
    pub(crate) redis_prefix: String,
    #[command(flatten)]
    pub(crate) replicas: ReplicaArgs,
    #[command(flatten)]
    pub(crate) dedup: DedupArgs,
    #[command(flatten)]
    pub(crate) scope: ScopeArgs,
    /// Public base URL of the receivers (what GitHub calls); a WebhookConfig
    /// without spec.url delivers to {base}/hooks/{namespace}/{name}.
    #[arg(long, env = "HOOKWARDEN_PUBLIC_BASE_URL")]
    pub(crate) public_base_url: Option<String>,
    /// Which AppWebhooks (cluster-scoped) this operator manages: `all`,
    /// `none`, or a label selector [default: all when watching every
    /// namespace, none when watching one].
    #[arg(long, env = "HOOKWARDEN_APP_WEBHOOKS")]
    pub(crate) app_webhooks: Option<String>,
    /// Time between checks of every hook against GitHub (drift repair)
    /// [default: 5m].
    #[arg(long, env = "HOOKWARDEN_RESYNC", value_parser = positive_duration)]
    pub(crate) resync: Option<Duration>,
    /// Deprecated: --resync in seconds.
    #[arg(long, env = "HOOKWARDEN_RESYNC_SECONDS", hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) resync_seconds: Option<u64>,
    /// Namespace of the leader-election Lease, where the receivers also
    /// report their loaded keys (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub(crate) lease_namespace: String,
    /// How long a leader's Lease stays valid without renewal [default: 15s].
    #[arg(long, env = "HOOKWARDEN_LEASE_DURATION", value_parser = positive_duration)]
    pub(crate) lease_duration: Option<Duration>,
    /// Deprecated: --lease-duration in seconds.
    #[arg(long, env = "HOOKWARDEN_LEASE_SECONDS", hide = true)]
    pub(crate) lease_seconds: Option<u64>,
    /// Time between recovery passes over each hook's failed deliveries
    /// (`0s`: off) [default: 30s]. A pass with nothing new costs no GitHub
    /// budget (a 304); a failed latest delivery on GitHub starts one early.
    #[arg(long, env = "HOOKWARDEN_REDELIVERY_INTERVAL", value_parser = duration)]
    pub(crate) redelivery_interval: Option<Duration>,
    /// Deprecated: --redelivery-interval in seconds.
    #[arg(long, env = "HOOKWARDEN_REDELIVERY_SECONDS", hide = true)]
    pub(crate) redelivery_seconds: Option<u64>,
    /// How failed deliveries are recovered: `fetch` reads each from GitHub's
    /// API and queues it in Redis (works while GitHub cannot reach the
    /// receivers; needs --redis-url), `redeliver` asks GitHub to send it
    /// again (one a second); `auto` fetches when Redis is configured.
    #[arg(long, env = "HOOKWARDEN_RECOVERY", value_enum, default_value_t = Recovery::Auto)]
    pub(crate) recovery: Recovery,
    /// Time between two mutating GitHub calls with the same credentials
    /// (GitHub asks for at least 1 s) [default: 1s].
    #[arg(long, env = "HOOKWARDEN_GITHUB_MUTATION_INTERVAL", value_parser = duration)]
    pub(crate) github_mutation_interval: Option<Duration>,
    /// Deprecated: --github-mutation-interval in milliseconds.
    #[arg(long, env = "HOOKWARDEN_GITHUB_MUTATION_INTERVAL_MS", hide = true)]
    pub(crate) github_mutation_interval_ms: Option<u64>,
    /// Time between reads of GitHub's hook source ranges (`GET /meta`,
    /// conditional) for each API URL in use, published in the ConfigMap
    /// --github-meta-configmap for the receivers' allowlist; `0s`: off
    /// [default: 1h].
    #[arg(long, env = "HOOKWARDEN_GITHUB_META_REFRESH", value_parser = duration)]
    pub(crate) github_meta_refresh: Option<Duration>,
    /// Deprecated: --github-meta-refresh in seconds.
    #[arg(long, env = "HOOKWARDEN_GITHUB_META_REFRESH_SECONDS", hide = true)]
    pub(crate) github_meta_refresh_seconds: Option<u64>,
    /// The ConfigMap (in the pod's namespace) with GitHub's hook ranges.
    #[arg(long, env = "HOOKWARDEN_GITHUB_META_CONFIGMAP", default_value = crate::github::meta::DEFAULT_CONFIGMAP)]
    pub(crate) github_meta_configmap: String,
    /// GitHub API base URLs WebhookConfigs may use (repeat, or comma-separated);
    /// any other is refused before a request is sent. `:*` as the port
    /// matches any port. Plain http only where an entry says http.
    #[arg(long = "github-api-url", env = "HOOKWARDEN_GITHUB_API_URLS", value_delimiter = ',', default_value = crate::github::endpoints::GITHUB_COM)]
    pub(crate) github_api_urls: Vec<String>,
    /// Largest GitHub API answer read, in bytes (deliveries carry payloads of up to 25 MB).
    #[arg(long, env = "HOOKWARDEN_GITHUB_MAX_RESPONSE_BYTES", default_value_t = crate::github::Limits::default().max_response_bytes)]
    pub(crate) github_max_response_bytes: usize,
    /// Pages of a GitHub list (100 entries each) followed before giving up.
    #[arg(long, env = "HOOKWARDEN_GITHUB_MAX_PAGES", default_value_t = crate::github::Limits::default().max_pages, value_parser = at_least_one)]
    pub(crate) github_max_pages: usize,
    /// Bytes of GitHub answers kept for conditional requests (least recently used dropped).
    #[arg(long, env = "HOOKWARDEN_GITHUB_ETAG_CACHE_BYTES", default_value_t = crate::github::Limits::default().etag_cache_bytes)]
    pub(crate) github_etag_cache_bytes: usize,
    /// This replica's name in the leader Lease and in Events (default: the
    /// pod name, else the host name and process id).
    #[arg(long, env = "POD_NAME")]
    pub(crate) instance: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct ReceiverArgs {
    /// Address to serve /hooks, /healthz, /readyz and /metrics on.
    #[arg(long, env = "HOOKWARDEN_LISTEN", default_value = "0.0.0.0:8080")]
    pub(crate) listen: SocketAddr,
    /// Redis holding the queues, e.g. redis://redis:6379.
    #[arg(long, env = "REDIS_URL")]
    pub(crate) redis_url: String,
    /// Prefix of every Redis key; receivers and operator must agree on it.
    #[arg(long, env = "HOOKWARDEN_REDIS_PREFIX", default_value = "hookwarden")]
    pub(crate) redis_prefix: String,
    #[command(flatten)]
    pub(crate) replicas: ReplicaArgs,
    #[command(flatten)]
    pub(crate) dedup: DedupArgs,
    #[command(flatten)]
    pub(crate) scope: ScopeArgs,
    /// Largest delivery accepted, in bytes (GitHub sends at most 25 MiB).
    #[arg(long, env = "HOOKWARDEN_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    pub(crate) body_limit: usize,
    /// This replica's name in the Redis consumer group (default: the pod name,
    /// else the host name).
    #[arg(long)]
    pub(crate) consumer: Option<String>,
    /// Time in-flight dispatches may take to finish on SIGTERM.
    #[arg(long, alias = "shutdown-grace-seconds", env = "HOOKWARDEN_SHUTDOWN_GRACE", default_value = "25s", value_parser = duration)]
    pub(crate) shutdown_grace: Duration,
    /// Time between SIGTERM and closing the webhook listener: not ready,
    /// still accepting, while Kubernetes takes the pod out of the Service;
    /// longer while deliveries still arrive (until none for a second, at
    /// most twice this).
    #[arg(long, alias = "shutdown-delay-seconds", env = "HOOKWARDEN_SHUTDOWN_DELAY", default_value = "5s", value_parser = duration)]
    pub(crate) shutdown_delay: Duration,
    /// Time a client has to send a request's headers, counted from the
    /// request's first byte.
    #[arg(long, alias = "header-timeout-seconds", env = "HOOKWARDEN_HEADER_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub(crate) header_timeout: Duration,
    /// Time a kept-alive connection may stay idle between requests: longer
    /// than a load balancer in front keeps its idle connections (60 s for AWS
    /// ALB and ingress-nginx, 600 s for Google's), or its requests race the close.
    #[arg(long, alias = "idle-timeout-seconds", env = "HOOKWARDEN_IDLE_TIMEOUT", default_value = "620s", value_parser = positive_duration)]
    pub(crate) idle_timeout: Duration,
    /// Time a client has to send a delivery's body (then 408).
    #[arg(long, alias = "body-timeout-seconds", env = "HOOKWARDEN_BODY_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub(crate) body_timeout: Duration,
    /// Open connections on the webhook port; one more is answered 503 and closed.
    #[arg(long, env = "HOOKWARDEN_MAX_CONNECTIONS", default_value_t = 4096, value_parser = at_least_one)]
    pub(crate) max_connections: usize,
    /// Deliveries handled at a time; one more is answered 503 before it is read.
    #[arg(long, env = "HOOKWARDEN_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = at_least_one)]
    pub(crate) max_in_flight: usize,
    /// Threads that run the receiver's requests and dispatch: one handles
    /// a core's worth (thousands of deliveries a second); more cost CPU per
    /// delivery in hand-offs between them. Scale out with replicas; raise
    /// it for a pod given several cores. Large bodies' hashing, parsing and
    /// compression run on threads of their own, not these.
    #[arg(long, env = "HOOKWARDEN_WORKER_THREADS", default_value_t = 1, value_parser = at_least_one)]
    pub(crate) worker_threads: usize,
    /// Bytes of request bodies held before their signature is checked,
    /// across all connections; a delivery that does not fit is answered 503
    /// with Retry-After before it is read. Large bodies (over an eighth)
    /// share three quarters of it.
    #[arg(long, env = "HOOKWARDEN_UNAUTHENTICATED_BODY_BYTES", default_value_t = crate::receiver::ingest::body_budget::DEFAULT_UNAUTHENTICATED_BYTES)]
    pub(crate) unauthenticated_body_bytes: usize,
    /// Comma-separated CIDRs agent calls may not go to, besides link-local
    /// and cloud metadata (169.254.0.0/16, fd00:ec2::254/128, always denied)
    /// and the receiver's own ports. Loopback and private ranges are allowed
    /// unless listed here.
    #[arg(long, env = "HOOKWARDEN_AGENT_DENY_CIDRS", value_delimiter = ',')]
    pub(crate) agent_deny_cidrs: Vec<ipnet::IpNet>,
    /// Failed deliveries (unknown hook, bad signature) one source may send a
    /// minute before it gets 429 for a while, unverified; 0 turns it off.
    /// Behind an Ingress, set --trusted-proxies too.
    #[arg(long, env = "HOOKWARDEN_FAILURES_PER_MINUTE", default_value_t = 0)]
    pub(crate) failures_per_minute: u32,
    /// Failures one source may send at once before the per-minute rate applies.
    #[arg(long, env = "HOOKWARDEN_FAILURE_BURST", default_value_t = 30)]
    pub(crate) failure_burst: u32,
    /// How long a queued body is remembered: the same signed body under
    /// another X-GitHub-Delivery within it is refused as a replay (409);
    /// `0s` turns the check off.
    #[arg(long, alias = "replay-window-seconds", env = "HOOKWARDEN_REPLAY_WINDOW", default_value = "72h", value_parser = duration)]
    pub(crate) replay_window: Duration,
    /// Comma-separated CIDRs of proxies whose X-Forwarded-For names the source.
    #[arg(long, env = "HOOKWARDEN_TRUSTED_PROXIES", value_delimiter = ',')]
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    /// Accept deliveries only from GitHub's hook source ranges, as the
    /// operator publishes them (`GET /meta`); others get 403. Behind an
    /// Ingress, set --trusted-proxies too.
    #[arg(long, env = "HOOKWARDEN_GITHUB_META_ALLOWLIST")]
    pub(crate) github_meta_allowlist: bool,
    /// The ConfigMap (in the pod's namespace) with GitHub's hook ranges.
    #[arg(long, env = "HOOKWARDEN_GITHUB_META_CONFIGMAP", default_value = crate::github::meta::DEFAULT_CONFIGMAP)]
    pub(crate) github_meta_configmap: String,
    /// Namespace of the Lease in which this replica reports the keys it has
    /// loaded (default: its pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub(crate) lease_namespace: String,
    /// Address of the admin API (keep it off the public Ingress).
    #[arg(long, env = "HOOKWARDEN_ADMIN_LISTEN", default_value = "0.0.0.0:8082")]
    pub(crate) admin_listen: SocketAddr,
    /// Bearer token of the admin API; unset turns the API off. Set it from a
    /// Secret (env valueFrom.secretKeyRef), not on the command line.
    #[arg(long = "admin-token", env = "HOOKWARDEN_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
    /// Also accept Kubernetes identities on the admin API (a ServiceAccount
    /// or user bearer token, checked with TokenReview), each allowed what
    /// RBAC gives it on AgentPolicies (SubjectAccessReview): a team sees and
    /// acts on its own namespaces only.
    #[arg(long, env = "HOOKWARDEN_ADMIN_KUBERNETES_AUTH")]
    pub(crate) admin_kubernetes_auth: bool,
    /// Time beyond the slowest agent's timeout after which a crashed
    /// replica's unacknowledged deliveries are taken over.
    #[arg(long, alias = "reclaim-after-seconds", env = "HOOKWARDEN_RECLAIM_AFTER", default_value = "15s", value_parser = duration)]
    pub(crate) reclaim_after: Duration,
    /// OTLP/HTTP endpoint for the traces of deliveries, e.g.
    /// http://otel-collector:4318 (unset: trace ids are made for logs and
    /// agents, nothing is exported).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub(crate) otlp_endpoint: Option<String>,
}

/// A count that must be at least 1: zero is refused with a message, never
/// raised silently.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A duration as the custom resources write them (`90s`, `15m`, `1h30m`,
/// `250ms`), or a bare number of seconds.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    text.parse::<crate::api::Duration>().map(|d| d.get()).map_err(|e| e.to_string())
}

/// A [`duration`] longer than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        Duration::ZERO => Err("must be longer than 0".into()),
        d => Ok(d),
    }
}

/// The new flag's value, else the deprecated one's in its old unit.
pub(crate) fn pick(new: Option<Duration>, old: Option<u64>, unit: fn(u64) -> Duration) -> Option<Duration> {
    new.or(old.map(unit))
}

/// The deprecated flags (or environment variables) given, each with the
/// one to use instead: said once at start.
pub(crate) fn deprecated(replicas: &ReplicaArgs, operator: Option<&OperatorArgs>) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |given: bool, old: &str, new: &str| {
        if given {
            out.push(format!("{old} is deprecated: use {new} (a duration such as 90s, 15m, 1h30m)"));
        }
    };
    note(
        replicas.redis_replica_timeout_ms.is_some(),
        "--redis-replica-timeout-ms (HOOKWARDEN_REDIS_REPLICA_TIMEOUT_MS)",
        "--redis-replica-timeout",
    );
    if let Some(o) = operator {
        note(o.resync_seconds.is_some(), "--resync-seconds (HOOKWARDEN_RESYNC_SECONDS)", "--resync");
        note(o.lease_seconds.is_some(), "--lease-seconds (HOOKWARDEN_LEASE_SECONDS)", "--lease-duration");
        note(
            o.redelivery_seconds.is_some(),
            "--redelivery-seconds (HOOKWARDEN_REDELIVERY_SECONDS)",
            "--redelivery-interval",
        );
        note(
            o.github_mutation_interval_ms.is_some(),
            "--github-mutation-interval-ms (HOOKWARDEN_GITHUB_MUTATION_INTERVAL_MS)",
            "--github-mutation-interval",
        );
        note(
            o.github_meta_refresh_seconds.is_some(),
            "--github-meta-refresh-seconds (HOOKWARDEN_GITHUB_META_REFRESH_SECONDS)",
            "--github-meta-refresh",
        );
    }
    out
}
