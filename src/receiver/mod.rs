//! `hookwarden receiver`: takes deliveries from GitHub, verifies and queues
//! them durably, and dispatches them to agents.
//!
//! Three rooms, and what they share:
//!
//! - [`ingest`]: the public listener: verify, de-duplicate, queue (the axum
//!   router in [`ingest::http`], connections in [`ingest::serve`]).
//! - [`dispatch`]: routers and lanes that send queued deliveries to agents,
//!   with breakers, backoff, limits and credentials.
//! - [`admin`]: the admin listener: the API, the live stream and tap, window
//!   replays, the status page, and who may do what ([`admin::access`]).
//! - shared: [`registry`] (hooks, keys and policy settings, kept current by
//!   [`watch`]), [`report`] (the keys this replica loaded, for rotation), and
//!   [`crate::queue`] (Redis, shared with the operator).
//!
//! The admin API's client side (the CLI's calls, tables, the SSE reader,
//! `forward`) is in [`crate::cli`].

pub mod admin;
pub mod dispatch;
pub mod ingest;
pub mod registry;
pub mod report;
pub mod watch;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::queue::Queue;
use crate::telemetry::ReceiverMetrics;
use dispatch::{DispatchConfig, Dispatcher};
use registry::Registry;

/// Settings of one receiver process.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    pub listen: SocketAddr,
    pub redis_url: String,
    pub redis_prefix: String,
    /// Replicas that must have a queued delivery, and how long to wait for them.
    pub redis_replicas: (u32, Duration),
    /// Watch only this namespace (default: all).
    pub namespace: Option<String>,
    /// Read Secrets only here, as the operator's copies (see [`crate::copies`]).
    pub keys_namespace: Option<String>,
    pub body_limit: usize,
    pub consumer: String,
    pub shutdown_grace: Duration,
    /// Time between SIGTERM and closing the webhook listener (see `run`).
    pub shutdown_delay: Duration,
    /// What one client may hold (see `serve`).
    pub limits: ingest::serve::Limits,
    /// Failed deliveries (unknown hook, bad signature) a source may send a
    /// minute, and in a burst, before it is refused for a while; 0: no limit.
    pub failures_per_minute: u32,
    pub failure_burst: u32,
    /// How long a queued body is remembered against replays (0: off).
    pub replay_window: Duration,
    /// How long a delivery GUID is remembered against duplicates.
    pub dedup_window: Duration,
    /// Proxies (an Ingress) whose `X-Forwarded-For` names the real source.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// GitHub's hook source ranges, as the operator publishes them in this
    /// ConfigMap (in `lease_namespace`); read when the allowlist or the
    /// failure limit is on (GitHub's own addresses are never limited).
    pub github_meta_configmap: String,
    /// Accept only GitHub's hook source ranges.
    pub github_meta_allowlist: bool,
    /// Destinations agent calls may not go to, besides the defaults.
    pub agent_deny: Vec<ipnet::IpNet>,
    pub reclaim_after: Duration,
    /// Address of the admin API; served when `admin_token` is set or
    /// Kubernetes identities are accepted.
    pub admin_listen: SocketAddr,
    pub admin_token: Option<String>,
    /// Accept Kubernetes identities on the admin API, with the rights RBAC
    /// gives them on AgentPolicies (see [`admin::access`]).
    pub admin_kubernetes_auth: bool,
    /// Namespace of this replica's Lease reporting its loaded keys.
    pub lease_namespace: String,
    /// This replica's pod, the owner of its Lease.
    pub pod: Option<crate::PodRef>,
}

/// Runs the receiver until SIGTERM or Ctrl-C, then shuts down gracefully.
/// First it drains for `shutdown_delay` and until deliveries stop arriving
/// (see [`ingest::drain`]): `/readyz` answers 503 and every answer says
/// `Connection: close`, but deliveries are still accepted. Then it stops
/// accepting, lets in-flight dispatches finish within the grace period (the
/// rest stay pending in Redis for another replica), and returns.
pub async fn run(config: ReceiverConfig, client: Client) -> Result<(), crate::RunError> {
    crate::api::check_installed(&client, config.namespace.as_deref()).await?;
    crate::api::check_app_webhooks_installed(&client).await?;
    let metrics = Arc::new(ReceiverMetrics::new());
    let queue = connect_redis(&config).await.batch_sizes(metrics.enqueue_batch.clone());
    let registry = Arc::new(Registry::new());
    watch::spawn(&client, config.namespace.as_deref(), config.keys_namespace.as_deref(), registry.clone());

    let shutdown = CancellationToken::new();
    let dispatcher = Arc::new(Dispatcher::new(
        queue.clone(),
        registry.clone(),
        metrics.clone(),
        DispatchConfig {
            redis_url: config.redis_url.clone(),
            redis_prefix: config.redis_prefix.clone(),
            consumer: config.consumer.clone(),
            read_block: Duration::from_millis(250),
            reclaim_after: config.reclaim_after,
            shutdown_grace: config.shutdown_grace,
            destinations: Arc::new(dispatch::destinations::Destinations::new(
                config.agent_deny.clone(),
                vec![config.listen, config.admin_listen],
            )),
        },
    ));
    let workers = tokio::spawn(dispatcher.clone().run(shutdown.clone()));
    let reporter = tokio::spawn(report::run(
        client.clone(),
        config.lease_namespace.clone(),
        config.consumer.clone(),
        config.pod.clone(),
        registry.clone(),
        shutdown.clone(),
    ));

    let rejections = Arc::new(ingest::rejections::Rejections::default());
    let access = admin::access::Access::new(
        config.admin_token.clone(),
        config.admin_kubernetes_auth.then(|| client.clone()),
    );
    match access.is_on() {
        true => {
            let admin = admin::router(admin::AdminState {
                access: Arc::new(access),
                client: client.clone(),
                registry: registry.clone(),
                queue: queue.clone(),
                dispatcher: dispatcher.clone(),
                rejections: rejections.clone(),
            });
            let listener = tokio::net::TcpListener::bind(config.admin_listen)
                .await
                .map_err(|source| crate::RunError::Listen { addr: config.admin_listen, source })?;
            let kubernetes_auth = config.admin_kubernetes_auth;
            tracing::info!(listen = %config.admin_listen, kubernetes_auth, "admin API listening");
            tokio::spawn(async move {
                let _ = axum::serve(listener, admin).with_graceful_shutdown(crate::shutdown_signal()).await;
            });
        }
        false => tracing::info!("no admin token and no Kubernetes identities; admin API off"),
    }

    let allowlist = Arc::new(match config.github_meta_allowlist {
        true => ingest::sources::Allowlist::enforced(),
        false => ingest::sources::Allowlist::off(),
    });
    if config.github_meta_allowlist || config.failures_per_minute > 0 {
        let configmap = &config.github_meta_configmap;
        watch::spawn_allowlist(&client, &config.lease_namespace, configmap, allowlist.clone());
        tracing::info!(configmap, enforced = config.github_meta_allowlist, "reading GitHub's hook ranges");
    }
    let drain = Arc::new(ingest::drain::Drain::default());
    let state = ingest::http::AppState {
        registry,
        queue,
        metrics: metrics.clone(),
        body_limit: config.body_limit,
        drain: drain.clone(),
        limits: config.limits,
        rejections,
        failures: Arc::new(ingest::sources::FailureLimit::new(
            config.failures_per_minute,
            config.failure_burst,
            config.trusted_proxies.clone(),
        )),
        allowlist,
        body_budget: Arc::new(ingest::body_budget::BodyBudget::new(config.limits.unauthenticated_bytes)),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| crate::RunError::Listen { addr: config.listen, source })?;
    tracing::info!(listen = %config.listen, consumer = %config.consumer, "receiver listening");
    let stop = shutdown.clone();
    ingest::serve::serve(listener, ingest::http::router(state), config.limits, metrics, async move {
        crate::shutdown_signal().await;
        let delay_seconds = config.shutdown_delay.as_secs_f64();
        tracing::info!(delay_seconds, "shutting down: not ready, still accepting during the delay");
        drain.begin();
        let drained_seconds = drain.settled(config.shutdown_delay).await.as_secs_f64();
        tracing::info!(drained_seconds, "shutting down: no new deliveries, finishing in-flight dispatches");
        stop.cancel();
    })
    .await;
    shutdown.cancel();
    let _ = workers.await;
    let _ = reporter.await;
    tracing::info!("receiver stopped");
    Ok(())
}

/// Connects to Redis, waiting for it: until it answers there is nothing to
/// accept deliveries into.
async fn connect_redis(config: &ReceiverConfig) -> Queue {
    let mut delay = Duration::from_millis(200);
    loop {
        match Queue::connect(&config.redis_url, &config.redis_prefix).await {
            Ok(queue) => {
                return queue
                    .acknowledged_by(config.redis_replicas.0, config.redis_replicas.1)
                    .replay_window(config.replay_window)
                    .dedup_window(config.dedup_window);
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "redis unavailable");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
