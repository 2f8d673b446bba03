//! The `hookwarden` binary: parses the command line and calls into the library.
//!
//! Over 400 lines because it is the CLI's reference: every subcommand and
//! flag with the help text `--help` and the README's configuration tables
//! show; it holds no logic of its own.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use hookwarden::{
    ObjectRef,
    operator::{self, OperatorConfig, webhook_config::RecoveryWay},
    queue::ActivityFilter,
    receiver::{
        self, ReceiverConfig, access::kubeconfig_token, admin, admin_view, http::DEFAULT_BODY_LIMIT, replay,
    },
};

#[derive(Parser)]
#[command(name = "hookwarden", version, about = "GitHub webhooks, run the Kubernetes way")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as a multi-document YAML stream.
    ///
    /// `hookwarden crds > crds/hookwarden.yaml` regenerates the committed copy.
    Crds {
        /// Print the Markdown field reference (docs/crd-reference.md) instead.
        #[arg(long)]
        reference: bool,
    },
    /// Receive GitHub deliveries, queue them in Redis, dispatch them to agents.
    Receiver(ReceiverArgs),
    /// Run the controllers (AgentPolicy effective settings).
    Operator(OperatorArgs),
    /// Talk to a receiver's admin API.
    Admin {
        /// Base URL of the receiver's admin listener.
        #[arg(long, env = "HOOKWARDEN_ADMIN_URL", default_value = "http://127.0.0.1:8082")]
        url: String,
        /// Bearer token: the platform's admin token, or a Kubernetes identity's
        /// (default: the kubeconfig's current user's token).
        #[arg(long, env = "HOOKWARDEN_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A table for people, or the API's JSON or YAML for machines.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table, global = true)]
        output: OutputFormat,
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Send a policy's deliveries from a cluster to an agent on this machine:
    /// each is POSTed to --to with GitHub's headers, signed again with
    /// --secret, in order; held while the local agent is down, resumed
    /// without gaps or repeats after a lost connection.
    Forward {
        /// Base URL of a receiver's admin listener (e.g. after
        /// `kubectl port-forward deploy/hookwarden-receiver 8082`).
        #[arg(long, env = "HOOKWARDEN_ADMIN_URL", default_value = "http://127.0.0.1:8082")]
        url: String,
        /// Bearer token: the platform's admin token, or a Kubernetes identity's
        /// (default: the kubeconfig's current user's token).
        #[arg(long, env = "HOOKWARDEN_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The AgentPolicy whose deliveries to forward (NAMESPACE/NAME).
        #[arg(long)]
        policy: String,
        /// The local agent's URL, e.g. http://localhost:3000/webhook.
        #[arg(long)]
        to: String,
        /// Only these events (comma-separated or repeated); all when absent.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// The local agent's webhook secret: each delivery is signed with it
        /// (X-Hub-Signature-256), as GitHub would.
        #[arg(long, env = "HOOKWARDEN_FORWARD_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// A recording HTTP sink that stands in for a downstream agent.
    SampleAgent {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// Verify each call's Standard Webhooks signature against these keys
        /// (`whsec_...`, comma-separated or repeated); unsigned or wrongly
        /// signed calls get 401.
        #[arg(
            long = "signing-key",
            env = "HOOKWARDEN_AGENT_SIGNING_KEYS",
            value_delimiter = ',',
            hide_env_values = true
        )]
        signing_keys: Vec<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum AdminAction {
    /// Every policy: effective settings, queue sizes, circuits.
    Policies,
    /// Set an AgentPolicy's spec.enabled to true (NAMESPACE/NAME).
    Enable { policy: String },
    /// Set an AgentPolicy's spec.enabled to false (NAMESPACE/NAME): the kill switch.
    Disable { policy: String },
    /// List a policy's dead letters.
    DeadLetters {
        policy: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put one dead letter back in the queue (NAMESPACE/NAME ID), or send a
    /// window of a policy's history again (--policy NAMESPACE/NAME --since T):
    /// to --agent A only (a new agent backfilled) or to every agent today's
    /// filters send each delivery to; the original GUID is the ce-id.
    Replay {
        /// NAMESPACE/NAME of the policy holding the dead letter.
        policy: Option<String>,
        /// The dead letter's ID.
        id: Option<String>,
        /// The policy whose history to replay, NAMESPACE/NAME.
        #[arg(long = "policy", id = "window_policy", value_name = "NAMESPACE/NAME", conflicts_with_all = ["policy", "id"], requires = "since")]
        window_policy: Option<ObjectRef>,
        /// Deliveries received since: an RFC 3339 time, or a duration ago (90m, 1h30m).
        #[arg(long, requires = "window_policy")]
        since: Option<String>,
        /// ...and before: an RFC 3339 time, or a duration ago (default: now).
        #[arg(long, requires = "window_policy")]
        until: Option<String>,
        /// Only to this agent.
        #[arg(long, requires = "window_policy")]
        agent: Option<String>,
        /// Only deliveries of this event.
        #[arg(long, requires = "window_policy")]
        event: Option<String>,
        /// Only deliveries this CEL expression is true for.
        #[arg(long, requires = "window_policy")]
        filter: Option<String>,
        /// Count what would be sent; send nothing.
        #[arg(long, requires = "window_policy")]
        dry_run: bool,
    },
    /// Delete all of a policy's dead letters.
    Purge { policy: String },
    /// Follow deliveries, policy switches and circuits live (until Ctrl-C);
    /// reconnects without missing or repeating a delivery.
    Tail {
        /// Only this policy (NAMESPACE/NAME).
        #[arg(long)]
        policy: Option<String>,
        /// Only this event (`push`, `pull_request`, ...).
        #[arg(long)]
        event: Option<String>,
    },
    /// Evaluate a CEL filter against a policy's recent deliveries (a sample
    /// of at most ten a second, the last 100) and show which would match.
    FilterTest {
        /// The policy, NAMESPACE/NAME.
        #[arg(long)]
        policy: ObjectRef,
        /// Test it as this agent's filter: after the policy's filter and
        /// the agent's events and repositories.
        #[arg(long)]
        agent: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The CEL expression, e.g. "body.pull_request.base.ref == 'main'".
        filter: String,
    },
    /// Recent deliveries and dispatches, newest first.
    Deliveries {
        /// queued, duplicate, rejected, delivered, retry, dead_letter or filtered.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        event: Option<String>,
        /// owner/name
        #[arg(long)]
        repository: Option<String>,
        /// NAMESPACE/NAME of a WebhookConfig
        #[arg(long)]
        hook: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// Replica acknowledgement of queued deliveries (Redis' `WAIT`).
#[derive(clap::Args)]
struct ReplicaArgs {
    /// Redis replicas that must have a delivery before GitHub gets its 2xx
    /// (0: the master alone). With Sentinel, a failover then loses no
    /// acknowledged delivery; a delivery the replicas miss gets a 503.
    #[arg(long, env = "HOOKWARDEN_REDIS_REPLICAS", default_value_t = 0)]
    redis_replicas: u32,
    /// How long to wait for those replicas, in milliseconds.
    #[arg(long, env = "HOOKWARDEN_REDIS_REPLICA_TIMEOUT_MS", default_value_t = 1000)]
    redis_replica_timeout_ms: u64,
}

/// How long delivery GUIDs are remembered; the operator (which queues what
/// recovery fetches) and the receivers must agree on it.
#[derive(clap::Args)]
struct DedupArgs {
    /// How long a delivery GUID is remembered: GitHub's redelivery of it (or
    /// a client's retry) within it is answered 200 and queued once. GitHub
    /// redelivers for 3 days.
    #[arg(long, env = "HOOKWARDEN_DEDUP_WINDOW", default_value_t = 3 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    dedup_window_seconds: u64,
}

impl ReplicaArgs {
    fn get(&self) -> (u32, Duration) {
        (self.redis_replicas, Duration::from_millis(self.redis_replica_timeout_ms))
    }
}

/// What the operator and the receivers serve, and where the receivers'
/// Secrets are: the two must agree.
#[derive(clap::Args)]
struct ScopeArgs {
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "HOOKWARDEN_NAMESPACE")]
    namespace: Option<String>,
    /// Where the operator keeps copies of the Secrets receivers read (key
    /// and agent signing Secrets), and where receivers read them: receivers
    /// then need Secret read in this namespace only. Default: none; the
    /// receivers read them where they are.
    #[arg(long, env = "HOOKWARDEN_KEYS_NAMESPACE")]
    keys_namespace: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Recovery {
    Auto,
    Fetch,
    Redeliver,
}

#[derive(clap::Args)]
struct OperatorArgs {
    /// Address to serve /healthz, /readyz and /metrics on.
    #[arg(long, env = "HOOKWARDEN_LISTEN", default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    /// Redis of the receivers; enables the dead-letter safety rule.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of every Redis key; receivers and operator must agree on it.
    #[arg(long, env = "HOOKWARDEN_REDIS_PREFIX", default_value = "hookwarden")]
    redis_prefix: String,
    #[command(flatten)]
    replicas: ReplicaArgs,
    #[command(flatten)]
    dedup: DedupArgs,
    #[command(flatten)]
    scope: ScopeArgs,
    /// Public base URL of the receivers (what GitHub calls); a WebhookConfig
    /// without spec.url delivers to {base}/hooks/{namespace}/{name}.
    #[arg(long, env = "HOOKWARDEN_PUBLIC_BASE_URL")]
    public_base_url: Option<String>,
    /// Seconds between checks of every hook against GitHub (drift repair).
    #[arg(long, env = "HOOKWARDEN_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// Namespace of the leader-election Lease, where the receivers also
    /// report their loaded keys (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Seconds a leader's Lease stays valid without renewal.
    #[arg(long, env = "HOOKWARDEN_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// Seconds between recovery passes over each hook's failed deliveries
    /// (0: off). A pass with nothing new costs no GitHub budget (a 304); a
    /// failed latest delivery on GitHub starts one early.
    #[arg(long, env = "HOOKWARDEN_REDELIVERY_SECONDS", default_value_t = 30)]
    redelivery_seconds: u64,
    /// How failed deliveries are recovered: `fetch` reads each from GitHub's
    /// API and queues it in Redis (works while GitHub cannot reach the
    /// receivers; needs --redis-url), `redeliver` asks GitHub to send it
    /// again (one a second); `auto` fetches when Redis is configured.
    #[arg(long, env = "HOOKWARDEN_RECOVERY", value_enum, default_value_t = Recovery::Auto)]
    recovery: Recovery,
    /// Milliseconds between two mutating GitHub calls with the same
    /// credentials (GitHub asks for at least 1 s).
    #[arg(long, env = "HOOKWARDEN_GITHUB_MUTATION_INTERVAL_MS", default_value_t = 1000)]
    github_mutation_interval_ms: u64,
    /// Seconds between reads of GitHub's hook source ranges (`GET /meta`,
    /// conditional) for each API URL in use, published in the ConfigMap
    /// --github-meta-configmap for the receivers' allowlist; 0: off.
    #[arg(long, env = "HOOKWARDEN_GITHUB_META_REFRESH_SECONDS", default_value_t = 3600)]
    github_meta_refresh_seconds: u64,
    /// The ConfigMap (in the pod's namespace) with GitHub's hook ranges.
    #[arg(long, env = "HOOKWARDEN_GITHUB_META_CONFIGMAP", default_value = hookwarden::github::meta::DEFAULT_CONFIGMAP)]
    github_meta_configmap: String,
    /// GitHub API base URLs WebhookConfigs may use (repeat, or comma-separated);
    /// any other is refused before a request is sent. `:*` as the port
    /// matches any port. Plain http only where an entry says http.
    #[arg(long = "github-api-url", env = "HOOKWARDEN_GITHUB_API_URLS", value_delimiter = ',', default_value = hookwarden::github::endpoints::GITHUB_COM)]
    github_api_urls: Vec<String>,
    /// Largest GitHub API answer read, in bytes (deliveries carry payloads of up to 25 MB).
    #[arg(long, env = "HOOKWARDEN_GITHUB_MAX_RESPONSE_BYTES", default_value_t = hookwarden::github::Limits::default().max_response_bytes)]
    github_max_response_bytes: usize,
    /// Pages of a GitHub list (100 entries each) followed before giving up.
    #[arg(long, env = "HOOKWARDEN_GITHUB_MAX_PAGES", default_value_t = hookwarden::github::Limits::default().max_pages)]
    github_max_pages: usize,
    /// Bytes of GitHub answers kept for conditional requests (least recently used dropped).
    #[arg(long, env = "HOOKWARDEN_GITHUB_ETAG_CACHE_BYTES", default_value_t = hookwarden::github::Limits::default().etag_cache_bytes)]
    github_etag_cache_bytes: usize,
    /// This replica's name in the leader Lease and in Events (default: the
    /// pod name, else the host name and process id).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
}

#[derive(clap::Args)]
struct ReceiverArgs {
    /// Address to serve /hooks, /healthz, /readyz and /metrics on.
    #[arg(long, env = "HOOKWARDEN_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Redis holding the queues, e.g. redis://redis:6379.
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// Prefix of every Redis key; receivers and operator must agree on it.
    #[arg(long, env = "HOOKWARDEN_REDIS_PREFIX", default_value = "hookwarden")]
    redis_prefix: String,
    #[command(flatten)]
    replicas: ReplicaArgs,
    #[command(flatten)]
    dedup: DedupArgs,
    #[command(flatten)]
    scope: ScopeArgs,
    /// Largest delivery accepted, in bytes (GitHub sends at most 25 MiB).
    #[arg(long, env = "HOOKWARDEN_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// This replica's name in the Redis consumer group (default: the pod name,
    /// else the host name).
    #[arg(long)]
    consumer: Option<String>,
    /// Seconds in-flight dispatches may take to finish on SIGTERM.
    #[arg(long, env = "HOOKWARDEN_SHUTDOWN_GRACE", default_value_t = 25)]
    shutdown_grace_seconds: u64,
    /// Seconds between SIGTERM and closing the webhook listener: not ready,
    /// still accepting, while Kubernetes takes the pod out of the Service;
    /// longer while deliveries still arrive (until none for a second, at
    /// most twice this).
    #[arg(long, env = "HOOKWARDEN_SHUTDOWN_DELAY", default_value_t = 5)]
    shutdown_delay_seconds: u64,
    /// Seconds a client has to send a request's headers, counted from the
    /// request's first byte.
    #[arg(long, env = "HOOKWARDEN_HEADER_TIMEOUT", default_value_t = 5)]
    header_timeout_seconds: u64,
    /// Seconds a kept-alive connection may stay idle between requests: longer
    /// than a load balancer in front keeps its idle connections (60 s for AWS
    /// ALB and ingress-nginx, 600 s for Google's), or its requests race the close.
    #[arg(long, env = "HOOKWARDEN_IDLE_TIMEOUT", default_value_t = 620)]
    idle_timeout_seconds: u64,
    /// Seconds a client has to send a delivery's body (then 408).
    #[arg(long, env = "HOOKWARDEN_BODY_TIMEOUT", default_value_t = 10)]
    body_timeout_seconds: u64,
    /// Open connections on the webhook port; one more is answered 503 and closed.
    #[arg(long, env = "HOOKWARDEN_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Deliveries handled at a time; one more is answered 503 before it is read.
    #[arg(long, env = "HOOKWARDEN_MAX_IN_FLIGHT", default_value_t = 1024)]
    max_in_flight: usize,
    /// Bytes of request bodies held before their signature is checked,
    /// across all connections; a delivery that does not fit is answered 503
    /// with Retry-After before it is read. Large bodies (over an eighth)
    /// share three quarters of it.
    #[arg(long, env = "HOOKWARDEN_UNAUTHENTICATED_BODY_BYTES", default_value_t = hookwarden::receiver::body_budget::DEFAULT_UNAUTHENTICATED_BYTES)]
    unauthenticated_body_bytes: usize,
    /// Comma-separated CIDRs agent calls may not go to, besides link-local
    /// and cloud metadata (169.254.0.0/16, fd00:ec2::254/128, always denied)
    /// and the receiver's own ports. Loopback and private ranges are allowed
    /// unless listed here.
    #[arg(long, env = "HOOKWARDEN_AGENT_DENY_CIDRS", value_delimiter = ',')]
    agent_deny_cidrs: Vec<ipnet::IpNet>,
    /// Failed deliveries (unknown hook, bad signature) one source may send a
    /// minute before it gets 429 for a while, unverified; 0 turns it off.
    /// Behind an Ingress, set --trusted-proxies too.
    #[arg(long, env = "HOOKWARDEN_FAILURES_PER_MINUTE", default_value_t = 0)]
    failures_per_minute: u32,
    /// Failures one source may send at once before the per-minute rate applies.
    #[arg(long, env = "HOOKWARDEN_FAILURE_BURST", default_value_t = 30)]
    failure_burst: u32,
    /// How long a queued body is remembered: the same signed body under
    /// another X-GitHub-Delivery within it is refused as a replay (409);
    /// 0 turns the check off.
    #[arg(long, env = "HOOKWARDEN_REPLAY_WINDOW", default_value_t = 3 * 24 * 3600)]
    replay_window_seconds: u64,
    /// Comma-separated CIDRs of proxies whose X-Forwarded-For names the source.
    #[arg(long, env = "HOOKWARDEN_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Accept deliveries only from GitHub's hook source ranges, as the
    /// operator publishes them (`GET /meta`); others get 403. Behind an
    /// Ingress, set --trusted-proxies too.
    #[arg(long, env = "HOOKWARDEN_GITHUB_META_ALLOWLIST")]
    github_meta_allowlist: bool,
    /// The ConfigMap (in the pod's namespace) with GitHub's hook ranges.
    #[arg(long, env = "HOOKWARDEN_GITHUB_META_CONFIGMAP", default_value = hookwarden::github::meta::DEFAULT_CONFIGMAP)]
    github_meta_configmap: String,
    /// Namespace of the Lease in which this replica reports the keys it has
    /// loaded (default: its pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Address of the admin API (keep it off the public Ingress).
    #[arg(long, env = "HOOKWARDEN_ADMIN_LISTEN", default_value = "0.0.0.0:8082")]
    admin_listen: SocketAddr,
    /// Bearer token of the admin API; unset turns the API off. Set it from a
    /// Secret (env valueFrom.secretKeyRef), not on the command line.
    #[arg(long = "admin-token", env = "HOOKWARDEN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Also accept Kubernetes identities on the admin API (a ServiceAccount
    /// or user bearer token, checked with TokenReview), each allowed what
    /// RBAC gives it on AgentPolicies (SubjectAccessReview): a team sees and
    /// acts on its own namespaces only.
    #[arg(long, env = "HOOKWARDEN_ADMIN_KUBERNETES_AUTH")]
    admin_kubernetes_auth: bool,
    /// Seconds beyond the slowest agent's timeout after which a crashed
    /// replica's unacknowledged deliveries are taken over.
    #[arg(long, env = "HOOKWARDEN_RECLAIM_AFTER", default_value_t = 15)]
    reclaim_after_seconds: u64,
    /// OTLP/HTTP endpoint for the traces of deliveries, e.g.
    /// http://otel-collector:4318 (unset: trace ids are made for logs and
    /// agents, nothing is exported).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { reference: true } => {
            print!("{}", hookwarden::api::crd_reference());
            ExitCode::SUCCESS
        }
        Command::Crds { reference: false } => match hookwarden::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(error),
        },
        Command::Receiver(args) => {
            let traces =
                match hookwarden::trace::Tracing::new("hookwarden-receiver", args.otlp_endpoint.as_deref()) {
                    Ok(traces) => traces,
                    Err(error) => return fail(error),
                };
            hookwarden::telemetry::init_logging(Some(&traces));
            let consumer = args.consumer.unwrap_or_else(default_consumer);
            let config = ReceiverConfig {
                listen: args.listen,
                redis_url: args.redis_url,
                redis_prefix: args.redis_prefix,
                redis_replicas: args.replicas.get(),
                namespace: args.scope.namespace,
                keys_namespace: args.scope.keys_namespace,
                body_limit: args.body_limit,
                consumer,
                shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
                shutdown_delay: Duration::from_secs(args.shutdown_delay_seconds),
                limits: receiver::serve::Limits {
                    header_timeout: Duration::from_secs(args.header_timeout_seconds.max(1)),
                    idle_timeout: Duration::from_secs(args.idle_timeout_seconds.max(1)),
                    body_timeout: Duration::from_secs(args.body_timeout_seconds.max(1)),
                    max_connections: args.max_connections.max(1),
                    max_in_flight: args.max_in_flight.max(1),
                    unauthenticated_bytes: args.unauthenticated_body_bytes,
                },
                failures_per_minute: args.failures_per_minute,
                failure_burst: args.failure_burst,
                replay_window: Duration::from_secs(args.replay_window_seconds),
                dedup_window: Duration::from_secs(args.dedup.dedup_window_seconds),
                trusted_proxies: args.trusted_proxies,
                github_meta_configmap: args.github_meta_configmap,
                github_meta_allowlist: args.github_meta_allowlist,
                agent_deny: args.agent_deny_cidrs,
                reclaim_after: Duration::from_secs(args.reclaim_after_seconds),
                admin_listen: args.admin_listen,
                admin_token: args.admin_token,
                admin_kubernetes_auth: args.admin_kubernetes_auth,
                lease_namespace: args.lease_namespace,
                pod: hookwarden::PodRef::from_env(),
            };
            let code = runtime().block_on(async {
                match kube::Client::try_default().await {
                    Ok(client) => exit_code(receiver::run(config, client).await),
                    Err(error) => fail(error),
                }
            });
            traces.shutdown();
            code
        }
        Command::Admin { url, token, output, action: AdminAction::Tail { policy, event } } => {
            let token = match token.map_or_else(kubeconfig_token, Ok) {
                Ok(token) => token,
                Err(error) => return fail(error),
            };
            let query: Vec<(&str, String)> = [("policy", policy), ("event", event)]
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect();
            runtime().block_on(async {
                let print = async |event: &hookwarden::receiver::stream::SseEvent| {
                    use std::io::Write;
                    let line = match output {
                        OutputFormat::Table => {
                            admin_view::tail_line(&event.event, &event.data, hookwarden::now_ms())
                        }
                        // NB: one JSON object per line, for `jq`.
                        OutputFormat::Json | OutputFormat::Yaml => {
                            format!("{{\"event\":{:?},\"data\":{}}}\n", event.event, event.data)
                        }
                    };
                    write!(std::io::stdout(), "{line}").and_then(|()| std::io::stdout().flush()).is_ok()
                };
                let trouble = |text: &str| eprintln!("{text}");
                match hookwarden::receiver::stream::tail(
                    &url,
                    "/admin/stream",
                    &token,
                    &query,
                    print,
                    trouble,
                )
                .await
                {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => fail(error),
                }
            })
        }
        Command::Forward { url, token, policy, to, events, secret } => {
            let token = match token.map_or_else(kubeconfig_token, Ok) {
                Ok(token) => token,
                Err(error) => return fail(error),
            };
            let policy = match parse_policy(&policy) {
                Ok(policy) => policy,
                Err(error) => return fail(format!("--policy: {error}")),
            };
            let forward = hookwarden::forward::Forward { admin: url, token, policy, to, events, secret };
            runtime().block_on(async {
                let say = |line: &str| println!("{line}");
                match forward.run(say).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => fail(error),
                }
            })
        }
        Command::Admin { url, token, output, action } => {
            let token = match token.map_or_else(kubeconfig_token, Ok) {
                Ok(token) => token,
                Err(error) => return fail(error),
            };
            let call = match admin_call(action) {
                Ok(call) => call,
                Err(error) => return fail(error),
            };
            let output = match output {
                OutputFormat::Table => admin_view::Output::Table,
                OutputFormat::Json => admin_view::Output::Json,
                OutputFormat::Yaml => admin_view::Output::Yaml,
            };
            runtime().block_on(async {
                match admin::call(&url, &token, call.clone()).await {
                    Ok(answer) => {
                        // NB: not println!, which panics when a pipe (`| head`) closes early.
                        use std::io::Write;
                        let text = admin_view::render(&call, &answer, output, hookwarden::now_ms());
                        let _ = write!(std::io::stdout(), "{text}");
                        ExitCode::SUCCESS
                    }
                    Err(error) => fail(error),
                }
            })
        }
        Command::SampleAgent { listen, signing_keys } => {
            hookwarden::telemetry::init_logging(None);
            let keys: Result<Vec<_>, _> =
                signing_keys.iter().map(|k| hookwarden::standard_webhooks::SigningKey::parse(k)).collect();
            let sink = match keys {
                Ok(keys) => hookwarden::sample_agent::Sink::verifying(keys),
                Err(error) => return fail(format!("--signing-key: {error}")),
            };
            runtime().block_on(async {
                let listener = match tokio::net::TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(error) => return fail(format!("cannot listen on {listen}: {error}")),
                };
                tracing::info!(%listen, "sample agent listening");
                exit_code(hookwarden::sample_agent::serve(listener, sink).await)
            })
        }
        Command::Operator(args) => {
            hookwarden::telemetry::init_logging(None);
            let recovery = match (args.recovery, &args.redis_url) {
                (Recovery::Fetch, None) => {
                    return fail("--recovery fetch needs --redis-url: it queues in Redis");
                }
                (Recovery::Auto | Recovery::Fetch, Some(_)) => RecoveryWay::Fetch,
                (Recovery::Auto | Recovery::Redeliver, _) => RecoveryWay::Redeliver,
            };
            let allowed_apis = match hookwarden::github::endpoints::AllowedApis::new(&args.github_api_urls) {
                Ok(list) => list,
                Err(error) => return fail(format!("--github-api-url: {error}")),
            };
            let config = OperatorConfig {
                allowed_apis,
                github_limits: hookwarden::github::Limits {
                    max_response_bytes: args.github_max_response_bytes,
                    max_pages: args.github_max_pages.max(1),
                    etag_cache_bytes: args.github_etag_cache_bytes,
                },
                namespace: args.scope.namespace,
                keys_namespace: args.scope.keys_namespace,
                redis_url: args.redis_url,
                redis_prefix: args.redis_prefix,
                redis_replicas: args.replicas.get(),
                dedup_window: Duration::from_secs(args.dedup.dedup_window_seconds),
                listen: args.listen,
                instance: args
                    .instance
                    .unwrap_or_else(|| format!("{}-{}", default_consumer(), std::process::id())),
                pod: hookwarden::PodRef::from_env(),
                public_base_url: args.public_base_url,
                resync: Duration::from_secs(args.resync_seconds.max(1)),
                lease_namespace: args.lease_namespace.clone(),
                lease_duration: Duration::from_secs(args.lease_seconds.max(3)),
                redelivery_interval: (args.redelivery_seconds > 0)
                    .then(|| Duration::from_secs(args.redelivery_seconds)),
                recovery,
                mutation_interval: Duration::from_millis(args.github_mutation_interval_ms),
                meta: (args.github_meta_refresh_seconds > 0).then(|| operator::meta::MetaConfig {
                    namespace: args.lease_namespace.clone(),
                    configmap: args.github_meta_configmap,
                    refresh: Duration::from_secs(args.github_meta_refresh_seconds),
                }),
            };
            runtime().block_on(async {
                match kube::Client::try_default().await {
                    Ok(client) => exit_code(operator::run(config, client).await),
                    Err(error) => fail(error),
                }
            })
        }
    }
}

/// A policy named on the command line, `NAMESPACE/NAME`.
fn parse_policy(p: &str) -> Result<ObjectRef, String> {
    p.parse()
}

fn admin_call(action: AdminAction) -> Result<admin::Call, String> {
    Ok(match action {
        AdminAction::Policies => admin::Call::Policies,
        AdminAction::Tail { .. } => unreachable!("tail follows the stream, it is no single call"),
        AdminAction::Enable { policy: p } => {
            admin::Call::SetEnabled { policy: parse_policy(&p)?, enabled: true }
        }
        AdminAction::Disable { policy: p } => {
            admin::Call::SetEnabled { policy: parse_policy(&p)?, enabled: false }
        }
        AdminAction::DeadLetters { policy: p, limit } => {
            admin::Call::DeadLetters { policy: parse_policy(&p)?, limit }
        }
        AdminAction::Replay { policy, id, window_policy, since, until, agent, event, filter, dry_run } => {
            match (window_policy, since, policy, id) {
                (Some(policy), Some(since), _, _) => {
                    let now = hookwarden::now_ms();
                    let window = replay::ReplayWindow {
                        since_ms: replay::parse_time(&since, now)?,
                        until_ms: until.map(|u| replay::parse_time(&u, now)).transpose()?,
                        agent,
                        event,
                        filter,
                        dry_run,
                    };
                    admin::Call::ReplayWindow { policy, window }
                }
                (_, _, Some(p), Some(id)) => admin::Call::Replay { policy: parse_policy(&p)?, id },
                _ => return Err("name a dead letter (POLICY ID) or a window (--policy P --since T)".into()),
            }
        }
        AdminAction::Purge { policy: p } => admin::Call::Purge { policy: parse_policy(&p)? },
        AdminAction::FilterTest { policy, agent, limit, filter } => {
            admin::Call::FilterTest { policy, test: admin::FilterTest { filter, agent, limit: Some(limit) } }
        }
        AdminAction::Deliveries { status, event, repository, hook, limit } => {
            admin::Call::Deliveries { filter: ActivityFilter { status, event, repository, hook }, limit }
        }
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

/// This process's name: the pod's (POD_NAME, HOSTNAME), else a random one.
fn default_consumer() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("hookwarden-{:08x}", rand::random::<u32>()))
}

fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    result.map_or_else(fail, |()| ExitCode::SUCCESS)
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}
