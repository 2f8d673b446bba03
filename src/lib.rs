//! hookwarden: GitHub webhooks run the Kubernetes way.
//!
//! The operator reconciles `WebhookConfig` resources into GitHub webhook
//! registrations with rotated HMAC secrets, and `AgentPolicy` resources into
//! the effective settings receivers obey. The receiver verifies, de-duplicates,
//! queues durably and dispatches deliveries to downstream agents.
//!
//! Modules:
//! - [`cli`]: the `hookwarden` command line (the binary is five lines), with
//!   the admin API's client side and `forward`.
//! - [`api`]: the custom resource types (the source of the CRD YAML in `crds/`),
//!   their validation and condition vocabulary.
//! - [`github`]: the GitHub REST client (hooks, deliveries, `/meta`).
//! - [`filter`]: agents' CEL filters: compiled, bounded, evaluated.
//! - [`keys`]: the layout of a hook's HMAC keys in its Secret.
//! - [`signature`]: GitHub's `X-Hub-Signature-256`, signed and verified.
//! - [`standard_webhooks`]: the signature on what is sent to agents.
//! - [`queue`]: the durable queue on Redis (receiver and operator both write it).
//! - [`operator`]: the operator's controllers.
//! - [`receiver`]: the receiver, in three rooms: ingest, dispatch, admin.
//! - [`orphans`]: hooks hookwarden registered whose WebhookConfig is gone.
//! - [`sample_agent`]: a recording HTTP sink standing in for an agent.
//! - [`telemetry`]: logging and metrics.
//! - [`cpu`]: work on large inputs kept off the threads requests run on.
//!
//! # Flows
//!
//! | Flow | Where | Decisions (pure, table-tested) |
//! | --- | --- | --- |
//! | registration (create, adopt, update, repair) | `operator::webhook_config::register::register` | `register::plan`, `plan_new`, `signing_key` |
//! | many repositories (a hook each, added and removed with the list) | `operator::webhook_config::fleet::register` | `fleet::entries`, `key_for`, `summary` |
//! | deletion of the hook | `operator::webhook_config::cleanup` | — |
//! | hooks nobody owns | `hookwarden orphans` → `orphans::find` | `orphans::owner_of`, `orphans::orphans` |
//! | secret rotation | `operator::webhook_config::rotation::rotate`; receivers report loaded keys in `receiver::report` | `rotation::step`, `ping_outcome`, `keys::replicas_missing` |
//! | recovery of failed deliveries | `operator::webhook_config::recovery::run` | `recovery::to_recover`, `scan_done`, `due`, `after_pass`, `oldest_pending` |
//! | status and failures of a WebhookConfig | `operator::webhook_config::status` | `status::failure_reason` |
//! | ingest (verify, de-duplicate, queue) | `receiver::ingest::http::ingest` → `authenticate_request`, `accept` → `queue::Queue::enqueue` → the policy's task (`queue::batch`) → `queue/lua/enqueue.lua` | `http::admit`, `http::authenticate`, `http::verify`, `batch::fill`, `batch::outcome` |
//! | routing into agents' lanes | `receiver::dispatch::worker::run` (the router) → `Dispatcher::process` → `Queue::settle` with `routed` (`queue/lua/settle.lua`) | `dispatch::targets`, `worker::free_slots` |
//! | dispatch per agent (breaker, limits, retries, dead letters) | a lane's worker → `Dispatcher::process` (payload read once: `payload_of`) → `call` → `Queue::settle` | `dispatch::settle`, `backoff::jittered`, `Breaker::try_acquire`, `queue/lua/permit.lua` (GCRA, slots) |
//! | agent credentials | `receiver::watch` (Secrets labelled `hookwarden.io/agent-headers`) → `Registry::agent_headers` → `Dispatcher::call` | `dispatch::credentials::headers_from` |
//! | replay of a window | `admin replay --since` → `receiver::admin::replay::replay` ← the history written by `settle.lua` | `replay::pick`, `replay::parse_time` |
//! | command line | `cli::main` → `cli::commands::run` | `cli::config::{receiver, operator, admin_call}` |
//! | agent filters (check, apply, try) | `operator::agent_policy::effective_status` → `status.agentFilters` → `receiver::registry` → `dispatch::targets`; `admin filter-test` ← samples written by `settle.lua` | `agent_policy::accepted_filters`, `filter::compile`, `Filters::judge`, `dispatch::targets` |
//! | kill switch and concurrency | `operator::agent_policy::effective_status` → status → `receiver::registry` → the worker | `effective_status`, `worker::free_slots` |
//! | leader election | `operator::leader` | — |
//! | live view: stream, status page | `receiver::admin::stream::stream` (SSE), `receiver::admin::ui` (the page, `ui/`) | `stream::Cursor`, `stream::changes`, `SseParser` |
//! | forward to a laptop | `cli::forward::Forward::run` ← `receiver::admin::tap::tap` (with `--since`: the history first) ← the tap written by `enqueue.lua` | `forward::outgoing` |
//! | traces of a delivery | spans in `http::ingest`, `accept` (enqueue), `Dispatcher::process` (route, dispatch) and `call`; `trace` carries the context | — |
//!
//! # Where each team's boundary is kept (tenancy)
//!
//! | Boundary | Where | Decisions (pure, table-tested) |
//! | --- | --- | --- |
//! | only platform-listed GitHub APIs are called | `operator::webhook_config::secret::github_client`, `operator::meta::run` | `github::endpoints::AllowedApis::allows` |
//! | a cached installation token serves only the key that minted it | `github::Client::new` (account key: URL, namespace, credential fingerprint) | — |
//! | only the operator's own key Secrets are changed | `operator::webhook_config::secret::ensure_keys` | `secret::owned_by` |
//! | an entry is delivered only from its hook's policy | `receiver::dispatch::Dispatcher::dispatch` | `dispatch::routes` |
//! | agent calls go nowhere else | `receiver::dispatch::Dispatcher::call`, its resolver | `dispatch::destinations::Destinations::check_url` |
//! | an agent's credentials come only from its policy's namespace and cannot forge what agents verify | `Dispatcher::call` | `dispatch::credentials::headers_from` |
//! | one agent's backlog or slowness never holds another's | a lane per agent (`queue::lanes`), the payload held once | `worker::free_slots` |
//! | bounded memory against strangers | `receiver::ingest::http::authenticate_request`, `github::read_capped`, `github::EtagCache` | `receiver::ingest::body_budget::BodyBudget::reserve` |
//! | one object's panic ends only its reconcile | `operator::measured` | — |
//! | a tenant's filter costs about its payload's size | `filter::compile` (refused otherwise, by the operator) | `filter::Check` |

pub mod api;
pub mod cli;
pub mod copies;
pub mod cpu;
pub mod filter;
pub mod github;
pub mod keys;
pub mod operator;
pub mod orphans;
pub mod queue;
pub mod receiver;
pub mod sample_agent;
pub mod signature;
pub mod standard_webhooks;
pub mod telemetry;
pub mod trace;

/// A namespaced name: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    /// The reference of a Kubernetes object (an empty namespace for a
    /// cluster-scoped one).
    pub fn of<K: kube::Resource>(obj: &K) -> Self {
        Self::new(kube::ResourceExt::namespace(obj).unwrap_or_default(), kube::ResourceExt::name_any(obj))
    }
}

/// `namespace/name`, both non-empty (what the command line and the queue's
/// entries spell).
impl std::str::FromStr for ObjectRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::new(ns, name))
            }
            _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The wall clock, Unix milliseconds: the one place it is read for
/// timestamps that are stored or compared across processes.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Why the operator or a receiver could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Install(#[from] crate::api::InstallError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("lost the leader Lease; exiting so that only the new leader acts")]
    LostLeadership,
}

/// The pod this process runs in (`POD_NAME` and `POD_UID`, set by the
/// chart from the downward API). The Leases a replica holds name it as their
/// owner, so Kubernetes removes them with the pod even when the process was
/// killed before it could remove them itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub uid: String,
}

impl PodRef {
    /// From the environment; `None` outside a pod (either variable unset or empty).
    pub fn from_env() -> Option<Self> {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(Self { name: var("POD_NAME")?, uid: var("POD_UID")? })
    }

    pub fn owner_reference(&self) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            ..Default::default()
        }
    }
}

/// Resolves on SIGTERM (what Kubernetes sends) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// An API handle for one namespace, or for all of them.
pub(crate) fn scoped_api<K>(client: &kube::Client, namespace: Option<&str>) -> kube::Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    }
}
