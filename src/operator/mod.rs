//! `hookwarden operator`: the controllers.
//!
//! - [`agent_policy`]: AgentPolicy → the effective settings in its status.
//! - [`webhook_config`]: WebhookConfig → the GitHub hook and its key Secret.
//!
//! Of several replicas only the holder of the Lease [`LEADER_LEASE`] runs
//! them ([`leader`]); the others serve health and metrics and stand by.

pub mod agent_policy;
pub mod app_webhook;
mod error;
pub mod leader;
pub mod meta;
pub mod mirror;
pub mod webhook_config;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use futures::StreamExt;
use kube::{
    Client, ResourceExt,
    runtime::{Controller, WatchStreamExt, controller::Action, events::Recorder, watcher},
};
use tokio::sync::OnceCell;

use k8s_openapi::api::core::v1::Secret;

use crate::{
    api::{AgentPolicy, WebhookConfig},
    keys::MANAGED_BY,
    queue::Queue,
    telemetry::OperatorMetrics,
};

pub use error::{Error, Step};

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "hookwarden-operator";
/// Name of the leader-election Lease.
pub const LEADER_LEASE: &str = "hookwarden-operator";

/// Settings of one operator process.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Watch only this namespace (default: all).
    pub namespace: Option<String>,
    /// Keep copies of the Secrets receivers read here (see [`crate::copies`]).
    pub keys_namespace: Option<String>,
    /// Redis of the receivers, for the dead-letter safety rule.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// Replicas that must have a queued delivery, and how long to wait for them.
    pub redis_replicas: (u32, Duration),
    /// How long delivery GUIDs are remembered (the receivers' setting).
    pub dedup_window: Duration,
    /// Address of /healthz, /readyz and /metrics.
    pub listen: SocketAddr,
    /// This replica's name, shown in Events.
    pub instance: String,
    /// This replica's pod: the owner of the leader Lease while it holds it.
    pub pod: Option<crate::PodRef>,
    /// Public base URL of the receivers; a hook without `spec.url` delivers
    /// to `{base}/hooks/{namespace}/{name}`.
    pub public_base_url: Option<String>,
    /// How often every WebhookConfig is checked against GitHub.
    pub resync: Duration,
    /// Namespace of the leader Lease and of the receivers' Leases.
    pub lease_namespace: String,
    /// How long a leader's Lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often each hook's failed deliveries are looked for (`None`: never).
    pub redelivery_interval: Option<Duration>,
    /// How failed deliveries are recovered.
    pub recovery: webhook_config::RecoveryWay,
    /// Pause between two mutating GitHub calls of one account.
    pub mutation_interval: Duration,
    /// Publishing GitHub's hook source ranges (`None`: not done).
    pub meta: Option<meta::MetaConfig>,
    /// The GitHub API URLs WebhookConfigs may use; no other is ever called.
    pub allowed_apis: crate::github::endpoints::AllowedApis,
    /// How much of GitHub's answers is read and kept.
    pub github_limits: crate::github::Limits,
    /// The label selector of the AppWebhooks managed (`""`: all; `None`: none).
    pub app_webhooks: Option<String>,
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    /// The one namespace watched (`None`: all).
    pub namespace: Option<String>,
    pub recorder: Recorder,
    pub metrics: Arc<OperatorMetrics>,
    /// Set once Redis answers; until then the safety rule cannot be evaluated.
    pub queue: Arc<OnceCell<Queue>>,
    pub public_base_url: Option<String>,
    pub resync: Duration,
    /// Budget, pacing, tokens and `ETag`s of every GitHub account.
    pub github: Arc<crate::github::Shared>,
    /// The operator's own namespace: where the receivers report the keys
    /// they loaded, and where GitHubConnections keep their Secrets.
    pub lease_namespace: String,
    pub redelivery_interval: Option<Duration>,
    /// How failed deliveries are recovered.
    pub recovery_way: webhook_config::RecoveryWay,
    /// When each hook's next recovery pass is due, by WebhookConfig and hook id.
    pub recovery:
        std::sync::Mutex<std::collections::HashMap<(crate::ObjectRef, i64), webhook_config::recovery::Memo>>,
    /// The GitHub API URLs WebhookConfigs may use.
    pub allowed_apis: crate::github::endpoints::AllowedApis,
}

/// Runs the controllers until SIGTERM or Ctrl-C.
pub async fn run(config: OperatorConfig, client: Client) -> Result<(), crate::RunError> {
    crate::api::check_installed(&client, config.namespace.as_deref()).await?;
    crate::api::check_connections_installed(&client).await?;
    let queue = Arc::new(OnceCell::new());
    if let Some(url) = config.redis_url.clone() {
        let (cell, prefix, (replicas, timeout), window) =
            (queue.clone(), config.redis_prefix.clone(), config.redis_replicas, config.dedup_window);
        tokio::spawn(async move {
            loop {
                match Queue::connect(&url, &prefix).await {
                    Ok(q) => {
                        let _ = cell.set(q.acknowledged_by(replicas, timeout).dedup_window(window));
                        return;
                    }
                    Err(error) => tracing::warn!(%error, "redis unavailable; safety rule paused"),
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }
    let metrics = Arc::new(OperatorMetrics::new());
    let reporter = kube::runtime::events::Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(config.instance.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        namespace: config.namespace.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        queue,
        public_base_url: config.public_base_url.clone(),
        resync: config.resync,
        github: Arc::new(crate::github::Shared::new(
            config.mutation_interval,
            config.github_limits,
            metrics.github_requests.clone(),
            metrics.github_rate_limit_remaining.clone(),
        )),
        lease_namespace: config.lease_namespace.clone(),
        redelivery_interval: config.redelivery_interval,
        recovery_way: config.recovery,
        recovery: Default::default(),
        allowed_apis: config.allowed_apis.clone(),
    });

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| crate::RunError::Listen { addr: config.listen, source })?;
    let health = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(m): State<Arc<OperatorMetrics>>| async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()).into_response()
            }),
        )
        .with_state(metrics.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, health).with_graceful_shutdown(crate::shutdown_signal()).await;
    });
    tracing::info!(listen = %config.listen, instance = %config.instance, "operator started");

    let leases = kube::Api::namespaced(client.clone(), &config.lease_namespace);
    let election = leader::Election::new(leases, LEADER_LEASE, &config.instance, config.lease_duration)
        .owned_by(config.pod.as_ref());
    tokio::select! {
        () = election.acquire() => {}
        () = crate::shutdown_signal() => return Ok(()),
    }
    metrics.leader.set(1);
    tracing::info!(lease = LEADER_LEASE, namespace = %config.lease_namespace, "leading");

    let policies = crate::scoped_api::<AgentPolicy>(&client, config.namespace.as_deref());
    let policy_controller = Controller::new(policies, watcher::Config::default());
    // An AppWebhook or a connection changed: the policies asking for App
    // webhooks' events are granted anew (a revoked grant stops them at once).
    fn asking<K>(
        store: kube::runtime::reflector::Store<AgentPolicy>,
    ) -> impl Fn(K) -> Vec<kube::runtime::reflector::ObjectRef<AgentPolicy>> {
        move |_| {
            store
                .state()
                .into_iter()
                .filter(|p| !p.spec.app_webhooks.is_empty())
                .map(|p| kube::runtime::reflector::ObjectRef::from_obj(p.as_ref()))
                .collect()
        }
    }
    let store = policy_controller.store();
    let policy_controller = policy_controller
        .watches(
            kube::Api::<crate::api::GitHubConnection>::all(client.clone()),
            watcher::Config::default(),
            asking(store.clone()),
        )
        .watches(
            kube::Api::<crate::api::AppWebhook>::all(client.clone()),
            watcher::Config::default(),
            asking(store),
        )
        .graceful_shutdown_on(crate::shutdown_signal())
        .run(instrumented_reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let hooks = crate::scoped_api::<WebhookConfig>(&client, config.namespace.as_deref());
    // NB: an Api of PartialObjectMeta makes metadata-only requests.
    let secrets =
        crate::scoped_api::<kube::core::PartialObjectMeta<Secret>>(&client, config.namespace.as_deref());
    // NB: memory at scale. The cached WebhookConfigs drop their
    // managedFields (reconciles read the object fresh from the API anyway),
    // and the key Secrets are watched as metadata only: a change of one only
    // needs its owner, never its keys in this process's memory.
    let (reader, writer) = kube::runtime::reflector::store();
    let hook_stream = watcher(hooks, watcher::Config::default())
        .default_backoff()
        .modify(|whc| whc.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects();
    let owned_secrets =
        watcher(secrets, watcher::Config::default().labels(&crate::keys::selector(MANAGED_BY)))
            .default_backoff()
            .touched_objects();
    // A connection's grants or credentials changed: every WebhookConfig
    // that names it is reconciled again (a revoked grant stops it at once).
    let naming = reader.clone();
    let connections = kube::Api::<crate::api::GitHubConnection>::all(client.clone());
    let hook_controller = Controller::for_stream(hook_stream, reader)
        .owns_stream(owned_secrets)
        .watches(connections, watcher::Config::default(), move |connection| {
            let name = connection.name_any();
            naming
                .state()
                .into_iter()
                .filter(|whc| whc.spec.github.connection.as_ref() == Some(&name))
                .map(|whc| kube::runtime::reflector::ObjectRef::from_obj(whc.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(crate::shutdown_signal())
        .run(reconcile_hook, hook_error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let publisher = config.meta.clone().map(|m| {
        tokio::spawn(meta::run(client.clone(), config.namespace.clone(), config.allowed_apis.clone(), m))
    });
    let mirrors: Vec<_> = config
        .keys_namespace
        .iter()
        .flat_map(|keys| {
            crate::copies::Kind::ALL.map(|kind| {
                tokio::spawn(mirror::run(client.clone(), config.namespace.clone(), keys.clone(), kind))
            })
        })
        .collect();
    let app_controller = async {
        let Some(selector) = &config.app_webhooks else { return };
        let apps = kube::Api::<crate::api::AppWebhook>::all(client.clone());
        Controller::new(apps, watcher::Config::default().labels(selector))
            .graceful_shutdown_on(crate::shutdown_signal())
            .run(reconcile_app, app_error_policy, ctx.clone())
            .for_each(|_| futures::future::ready(()))
            .await
    };
    let lost = tokio::select! {
        _ = futures::future::join3(policy_controller, hook_controller, app_controller) => false,
        () = election.keep() => true,
    };
    for task in publisher.into_iter().chain(mirrors) {
        task.abort();
    }
    metrics.leader.set(0);
    if lost {
        // NB: another replica may be leading already; stop writing at once.
        return Err(crate::RunError::LostLeadership);
    }
    election.release().await;
    tracing::info!("operator stopped");
    Ok(())
}

/// Writes `status` of `obj` by server-side apply, as the operator's field manager.
pub(crate) async fn apply_status<K>(
    client: &Client,
    obj: &K,
    status: &impl serde::Serialize,
) -> Result<(), Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    use kube::ResourceExt;
    let api: kube::Api<K> = kube::Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let patch =
        serde_json::json!({ "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status });
    let params = kube::api::PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&obj.name_any(), &params, &kube::api::Patch::Apply(&patch))
        .await
        .map_err(Step::WriteStatus.error())?;
    Ok(())
}

/// Times and counts a reconcile of `controller`. A panic in it ends this
/// reconcile only, as [`Error::Panicked`]: kube-runtime would re-raise it
/// and end the process, and with it every team's reconciles.
async fn measured(
    ctx: &Context,
    controller: &str,
    reconcile: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    use futures::FutureExt;
    let timer = ctx.metrics.reconcile_duration.with_label_values(&[controller]).start_timer();
    let result = std::panic::AssertUnwindSafe(reconcile).catch_unwind().await.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::Panicked(crate::github::short(message)))
    });
    timer.observe_duration();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.with_label_values(&[controller, outcome]).inc();
    result
}

/// Counts and logs a failed reconcile; requeues after `delay`.
fn failed(ctx: &Context, controller: &str, name: &str, error: &Error, delay: Duration) -> Action {
    ctx.metrics.reconcile_errors.with_label_values(&[controller, error.metric_label()]).inc();
    tracing::warn!(controller, name, %error, "reconcile failed; retrying");
    Action::requeue(delay)
}

async fn instrumented_reconcile(policy: Arc<AgentPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    measured(&ctx, "agentpolicy", agent_policy::reconcile(policy, ctx.clone())).await
}

async fn reconcile_hook(whc: Arc<WebhookConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = measured(&ctx, "webhookconfig", webhook_config::reconcile(whc.clone(), ctx.clone())).await;
    if let Err(error @ Error::Panicked(_)) = &result {
        webhook_config::report(&whc, &ctx, error).await;
    }
    result
}

fn hook_error_policy(whc: Arc<WebhookConfig>, error: &Error, ctx: Arc<Context>) -> Action {
    failed(
        &ctx,
        "webhookconfig",
        &kube::ResourceExt::name_any(whc.as_ref()),
        error,
        webhook_config::retry_delay(error),
    )
}

async fn reconcile_app(awh: Arc<crate::api::AppWebhook>, ctx: Arc<Context>) -> Result<Action, Error> {
    measured(&ctx, "appwebhook", app_webhook::reconcile(awh, ctx.clone())).await
}

fn app_error_policy(awh: Arc<crate::api::AppWebhook>, error: &Error, ctx: Arc<Context>) -> Action {
    failed(
        &ctx,
        "appwebhook",
        &kube::ResourceExt::name_any(awh.as_ref()),
        error,
        webhook_config::retry_delay(error),
    )
}

fn error_policy(policy: Arc<AgentPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    failed(&ctx, "agentpolicy", &kube::ResourceExt::name_any(policy.as_ref()), error, Duration::from_secs(5))
}

#[cfg(test)]
mod reconcile_tests;
