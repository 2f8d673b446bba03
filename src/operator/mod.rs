//! `hookwarden operator`: the controllers.
//!
//! - [`agent_policy`]: AgentPolicy → the effective settings in its status.

pub mod agent_policy;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::{Controller, controller::Action, events::Recorder, watcher},
};
use tokio::sync::OnceCell;

use crate::{api::AgentPolicy, receiver::queue::Queue, telemetry::OperatorMetrics};

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "hookwarden-operator";

/// Settings of one operator process.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Watch only this namespace (default: all).
    pub namespace: Option<String>,
    /// Redis of the receivers, for the dead-letter safety rule.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// Address of /healthz, /readyz and /metrics.
    pub listen: SocketAddr,
    /// This replica's name, shown in Events.
    pub instance: String,
}

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
        }
    }
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<OperatorMetrics>,
    /// Set once Redis answers; until then the safety rule cannot be evaluated.
    pub queue: Arc<OnceCell<Queue>>,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controllers until SIGTERM or Ctrl-C.
pub async fn run(config: OperatorConfig, client: Client) -> Result<(), crate::api::InstallError> {
    crate::api::check_installed(&client).await?;
    let queue = Arc::new(OnceCell::new());
    if let Some(url) = config.redis_url.clone() {
        let (cell, prefix) = (queue.clone(), config.redis_prefix.clone());
        tokio::spawn(async move {
            loop {
                match Queue::connect(&url, &prefix).await {
                    Ok(q) => {
                        let _ = cell.set(q);
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
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        queue,
    });

    let listener =
        tokio::net::TcpListener::bind(config.listen).await.map_err(crate::api::InstallError::Listen)?;
    let health = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(m): State<Arc<OperatorMetrics>>| async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()).into_response()
            }),
        )
        .with_state(metrics);
    tokio::spawn(async move {
        let _ = axum::serve(listener, health).with_graceful_shutdown(crate::shutdown_signal()).await;
    });
    tracing::info!(listen = %config.listen, "operator started");

    let policies = api::<AgentPolicy>(&client, config.namespace.as_deref());
    Controller::new(policies, watcher::Config::default())
        .graceful_shutdown_on(crate::shutdown_signal())
        .run(instrumented_reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    tracing::info!("operator stopped");
    Ok(())
}

async fn instrumented_reconcile(policy: Arc<AgentPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile_duration.with_label_values(&["agentpolicy"]).start_timer();
    let result = agent_policy::reconcile(policy, ctx.clone()).await;
    timer.observe_duration();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.with_label_values(&["agentpolicy", outcome]).inc();
    result
}

fn error_policy(policy: Arc<AgentPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.with_label_values(&["agentpolicy", error.metric_label()]).inc();
    tracing::warn!(policy = %kube::ResourceExt::name_any(policy.as_ref()), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}
