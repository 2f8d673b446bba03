//! What the admin handlers share ([`AdminState`]), how a request fails
//! ([`AdminError`]), and the policies view both the API and the live stream
//! send ([`PolicyView`]): kept apart from the handlers so that the stream
//! and the API depend on it, not on each other.

use std::{collections::BTreeSet, sync::Arc};

use axum::{
    Json,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{
    access::{Access, Caller, Capability, Refused},
    wire::{AgentView, PolicyView},
};
use crate::{
    ObjectRef,
    queue::Queue,
    receiver::{dispatch::Dispatcher, ingest::rejections::Rejections, registry::Registry},
};

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Who may call, and what each caller may do.
    pub access: Arc<Access>,
    pub client: kube::Client,
    pub registry: Arc<Registry>,
    pub queue: Queue,
    pub dispatcher: Arc<Dispatcher>,
    /// This replica's recent rejections (kept in memory, not in Redis).
    pub rejections: Arc<Rejections>,
}

impl AdminState {
    /// May `caller` do `what` to `policy`? (403 otherwise.)
    pub async fn may(&self, caller: &Caller, what: Capability, policy: &ObjectRef) -> Result<(), AdminError> {
        self.access.check(caller, what, policy).await.map_err(AdminError::from)
    }

    /// The namespaces, of those this receiver serves, in which `caller` may view.
    pub async fn viewable(&self, caller: &Caller) -> Result<BTreeSet<String>, AdminError> {
        let served: BTreeSet<String> = self
            .registry
            .policy_refs()
            .into_iter()
            .chain(self.registry.hooks().into_iter().map(|(h, _)| h))
            .map(|r| r.namespace)
            .collect();
        self.access.namespaces(caller, Capability::View, served).await.map_err(AdminError::from)
    }
}

impl From<Refused> for AdminError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Unauthenticated => Self::Unauthorized,
            Refused::Forbidden(..) => Self::Denied(refused.to_string()),
            Refused::Unavailable(cause) => Self::Unavailable(cause),
        }
    }
}

/// Why an admin request failed: one `{"error": ...}` answer each. Backend
/// failures are logged here and shown only as "unavailable".
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the receiver may not patch AgentPolicies (check its RBAC)")]
    Forbidden,
    /// The caller's RBAC does not allow it.
    #[error("{0}")]
    Denied(String),
    #[error("backend unavailable; retry later")]
    Unavailable(String),
}

impl AdminError {
    pub(super) fn unavailable(error: impl std::fmt::Display) -> Self {
        Self::Unavailable(error.to_string())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Forbidden | Self::Denied(_) => StatusCode::FORBIDDEN,
            Self::Unavailable(cause) => {
                tracing::warn!(error = %cause, "admin request failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if matches!(self, Self::Unauthorized) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        response
    }
}

/// Every policy in `namespaces`: effective settings, queue sizes, each
/// agent's switch, circuit and lane ([`PolicyView`]s, as JSON).
pub async fn policies_view(s: &AdminState, namespaces: &BTreeSet<String>) -> Result<Value, AdminError> {
    let breakers = s.dispatcher.breaker_states();
    let mut out = Vec::new();
    let mut refs = s.registry.policy_refs();
    refs.retain(|p| namespaces.contains(&p.namespace));
    refs.sort();
    // NB: one round trip per policy (and one for its lanes), all at once.
    let lengths = s.queue.lengths(&refs).await.map_err(AdminError::unavailable)?;
    for (policy, held) in refs.into_iter().zip(lengths) {
        let Some(settings) = s.registry.policy(&policy) else { continue };
        let lane = |agent: &str| held.lanes.iter().find(|(a, _)| a == agent).map_or(0, |(_, n)| *n);
        let agents = settings
            .agents
            .iter()
            .map(|a| AgentView {
                name: a.name.clone(),
                url: a.url.clone(),
                enabled: a.enabled,
                circuit: circuit(&breakers, &policy, &a.name).to_owned(),
                queued: lane(&a.name),
            })
            .collect();
        out.push(PolicyView {
            policy: policy.to_string(),
            enabled: settings.enabled,
            concurrency: settings.concurrency,
            queue_limit: settings.queue_limit,
            reason: settings.reason.clone(),
            queued: held.queued,
            retrying: held.retrying,
            dead_letters: held.dead,
            agents,
        });
    }
    Ok(serde_json::to_value(out).unwrap_or_default())
}

/// The circuit of `agent` of `policy` as `breakers` say (closed when it has none yet).
pub fn circuit<'b>(
    breakers: &'b [(ObjectRef, String, crate::receiver::dispatch::breaker::State)],
    policy: &ObjectRef,
    agent: &str,
) -> &'b str {
    breakers
        .iter()
        .find(|(p, name, _)| p == policy && name == agent)
        .map_or("closed", |(_, _, st)| st.as_str())
}
