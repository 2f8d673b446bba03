//! The flags of `hookwarden operator` and `hookwarden receiver`, and the
//! groups they share (Redis replicas, the de-duplication window, the scope).

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
    /// How long to wait for those replicas, in milliseconds.
    #[arg(long, env = "HOOKWARDEN_REDIS_REPLICA_TIMEOUT_MS", default_value_t = 1000)]
    pub(crate) redis_replica_timeout_ms: u64,
}

/// How long delivery GUIDs are remembered; the operator (which queues what
/// recovery fetches) and the receivers must agree on it.
#[derive(clap::Args)]
pub(crate) struct DedupArgs {
    /// How long a delivery GUID is remembered: GitHub's redelivery of it (or
    /// a client's retry) within it is answered 200 and queued once. GitHub
    /// redelivers for 3 days.
    #[arg(long, env = "HOOKWARDEN_DEDUP_WINDOW", default_value_t = 3 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) dedup_window_seconds: u64,
}

impl ReplicaArgs {
    pub(crate) fn get(&self) -> (u32, Duration) {
        (self.redis_replicas, Duration::from_millis(self.redis_replica_timeout_ms))
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
    /// Seconds between checks of every hook against GitHub (drift repair).
    #[arg(long, env = "HOOKWARDEN_RESYNC_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) resync_seconds: u64,
    /// Namespace of the leader-election Lease, where the receivers also
    /// report their loaded keys (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub(crate) lease_namespace: String,
    /// Seconds a leader's Lease stays valid without renewal.
    #[arg(long, env = "HOOKWARDEN_LEASE_SECONDS", default_value_t = 15)]
    pub(crate) lease_seconds: u64,
    /// Seconds between recovery passes over each hook's failed deliveries
    /// (0: off). A pass with nothing new costs no GitHub budget (a 304); a
    /// failed latest delivery on GitHub starts one early.
    #[arg(long, env = "HOOKWARDEN_REDELIVERY_SECONDS", default_value_t = 30)]
    pub(crate) redelivery_seconds: u64,
    /// How failed deliveries are recovered: `fetch` reads each from GitHub's
    /// API and queues it in Redis (works while GitHub cannot reach the
    /// receivers; needs --redis-url), `redeliver` asks GitHub to send it
    /// again (one a second); `auto` fetches when Redis is configured.
    #[arg(long, env = "HOOKWARDEN_RECOVERY", value_enum, default_value_t = Recovery::Auto)]
    pub(crate) recovery: Recovery,
    /// Milliseconds between two mutating GitHub calls with the same
    /// credentials (GitHub asks for at least 1 s).
    #[arg(long, env = "HOOKWARDEN_GITHUB_MUTATION_INTERVAL_MS", default_value_t = 1000)]
    pub(crate) github_mutation_interval_ms: u64,
    /// Seconds between reads of GitHub's hook source ranges (`GET /meta`,
    /// conditional) for each API URL in use, published in the ConfigMap
    /// --github-meta-configmap for the receivers' allowlist; 0: off.
    #[arg(long, env = "HOOKWARDEN_GITHUB_META_REFRESH_SECONDS", default_value_t = 3600)]
    pub(crate) github_meta_refresh_seconds: u64,
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
    /// Seconds in-flight dispatches may take to finish on SIGTERM.
    #[arg(long, env = "HOOKWARDEN_SHUTDOWN_GRACE", default_value_t = 25)]
    pub(crate) shutdown_grace_seconds: u64,
    /// Seconds between SIGTERM and closing the webhook listener: not ready,
    /// still accepting, while Kubernetes takes the pod out of the Service;
    /// longer while deliveries still arrive (until none for a second, at
    /// most twice this).
    #[arg(long, env = "HOOKWARDEN_SHUTDOWN_DELAY", default_value_t = 5)]
    pub(crate) shutdown_delay_seconds: u64,
    /// Seconds a client has to send a request's headers, counted from the
    /// request's first byte.
    #[arg(long, env = "HOOKWARDEN_HEADER_TIMEOUT", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) header_timeout_seconds: u64,
    /// Seconds a kept-alive connection may stay idle between requests: longer
    /// than a load balancer in front keeps its idle connections (60 s for AWS
    /// ALB and ingress-nginx, 600 s for Google's), or its requests race the close.
    #[arg(long, env = "HOOKWARDEN_IDLE_TIMEOUT", default_value_t = 620, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) idle_timeout_seconds: u64,
    /// Seconds a client has to send a delivery's body (then 408).
    #[arg(long, env = "HOOKWARDEN_BODY_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) body_timeout_seconds: u64,
    /// Open connections on the webhook port; one more is answered 503 and closed.
    #[arg(long, env = "HOOKWARDEN_MAX_CONNECTIONS", default_value_t = 4096, value_parser = at_least_one)]
    pub(crate) max_connections: usize,
    /// Deliveries handled at a time; one more is answered 503 before it is read.
    #[arg(long, env = "HOOKWARDEN_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = at_least_one)]
    pub(crate) max_in_flight: usize,
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
    /// 0 turns the check off.
    #[arg(long, env = "HOOKWARDEN_REPLAY_WINDOW", default_value_t = 3 * 24 * 3600)]
    pub(crate) replay_window_seconds: u64,
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
    /// Seconds beyond the slowest agent's timeout after which a crashed
    /// replica's unacknowledged deliveries are taken over.
    #[arg(long, env = "HOOKWARDEN_RECLAIM_AFTER", default_value_t = 15)]
    pub(crate) reclaim_after_seconds: u64,
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
