//! The admin API, on its own listener (never behind the public Ingress),
//! for the platform's bearer token (compared in constant time) and, when on,
//! Kubernetes identities with the rights RBAC gives them ([`access`]):
//! every route checks its capability on the policy it names, and lists show
//! only what the caller may view.
//!
//! - `GET  /admin/policies`: every policy's effective settings, queue,
//!   retry and dead-letter counts, and each agent's circuit state.
//! - `POST /admin/policies/{ns}/{name}/enable` and `/disable`: patch the
//!   AgentPolicy's `spec.enabled`, so kubectl and the API never disagree.
//! - `GET  /admin/policies/{ns}/{name}/dead-letters?limit=`
//! - `POST /admin/policies/{ns}/{name}/dead-letters/{id}/replay`
//! - `DELETE /admin/policies/{ns}/{name}/dead-letters`: purge.
//! - `POST /admin/policies/{ns}/{name}/filter-test` ([`FilterTest`]): a
//!   filter evaluated against the policy's recent deliveries
//!   ([`FilterTestRow`] each), for a caller who may read its payloads.
//! - `POST /admin/policies/{ns}/{name}/replay` ([`ReplayWindow`]): a window
//!   of the policy's history sent again ([`replay`]), or counted
//!   with `dryRun`.
//! - `GET  /admin/deliveries?status=&event=&repository=&hook=&limit=`:
//!   recent activity, newest first: the log in Redis, and the requests this
//!   replica rejected (kept in its memory only).

pub mod access;
pub mod replay;
pub mod state;
pub mod stream;
pub mod tap;
pub mod ui;
pub mod wire;

pub use state::{AdminError, AdminState, circuit, policies_view};
pub use wire::{AgentView, DeadLetterView, Enabled, HookView, PolicyView, Purged, Replayed};

use replay::{ReplayError, ReplayWindow};

use axum::{
    Extension, Json, Router,
    extract::{Path, Query, RawQuery, Request, State},
    http::header,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use kube::api::{Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};

use access::{Caller, Capability};

use crate::{ObjectRef, api::AgentPolicy, queue::ActivityFilter};

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/policies", get(policies))
        .route("/admin/policies/{ns}/{name}/enable", post(|s, c, p| set_enabled(s, c, p, true)))
        .route("/admin/policies/{ns}/{name}/disable", post(|s, c, p| set_enabled(s, c, p, false)))
        .route("/admin/policies/{ns}/{name}/dead-letters", get(dead_letters))
        .route("/admin/policies/{ns}/{name}/dead-letters", delete(purge))
        .route("/admin/policies/{ns}/{name}/dead-letters/{id}/replay", post(replay))
        .route("/admin/policies/{ns}/{name}/filter-test", post(filter_test))
        .route("/admin/policies/{ns}/{name}/replay", post(replay_window))
        .route("/admin/deliveries", get(deliveries))
        .route("/admin/hooks", get(hooks))
        .route("/admin/stream", get(stream::stream))
        .route("/admin/policies/{ns}/{name}/tap", get(tap::tap))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .merge(ui::router())
        .with_state(state)
}

/// Puts the [`Caller`] on the request; the handlers check what it may do.
async fn authorize(State(state): State<AdminState>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match state.access.caller(presented).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refused) => AdminError::from(refused).into_response(),
    }
}

type Answer = Result<Json<Value>, AdminError>;

/// `value` as the JSON answer: every answer is one of the [`wire`] types.
fn answer(value: impl serde::Serialize) -> Answer {
    Ok(Json(serde_json::to_value(value).expect("the wire types serialise")))
}

async fn policies(State(s): State<AdminState>, Extension(caller): Extension<Caller>) -> Answer {
    Ok(Json(policies_view(&s, &s.viewable(&caller).await?).await?))
}

/// Every WebhookConfig this receiver serves: its policy, its Ready
/// condition and GitHub's latest delivery, as the operator last wrote them.
async fn hooks(State(s): State<AdminState>, Extension(caller): Extension<Caller>) -> Answer {
    let viewable = s.viewable(&caller).await?;
    let hooks = s.registry.hooks().into_iter().filter(|(h, _)| viewable.contains(&h.namespace));
    let hooks = hooks.map(|(hook, info)| HookView {
        hook: hook.to_string(),
        policy: info.policy.to_string(),
        ready: info.ready,
        last_delivery: info.last_delivery,
    });
    answer(hooks.collect::<Vec<_>>())
}

async fn set_enabled(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
    enabled: bool,
) -> Answer {
    s.may(&caller, Capability::KillSwitch, &ObjectRef::new(&ns, &name)).await?;
    let api: kube::Api<AgentPolicy> = kube::Api::namespaced(s.client.clone(), &ns);
    let patch = json!({ "spec": { "enabled": enabled } });
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            tracing::info!(policy = %ObjectRef::new(&ns, &name), enabled, "spec.enabled patched through the admin API");
            answer(Enabled { policy: format!("{ns}/{name}"), spec_enabled: enabled })
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            Err(AdminError::NotFound(format!("no AgentPolicy {ns}/{name}")))
        }
        Err(kube::Error::Api(e)) if e.code == 403 => Err(AdminError::Forbidden),
        Err(e) => Err(AdminError::unavailable(e)),
    }
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn dead_letters(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<Limit>,
) -> Answer {
    let policy = ObjectRef::new(ns, name);
    s.may(&caller, Capability::View, &policy).await?;
    let letters = s
        .queue
        .dead_letters(&policy, q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT))
        .await
        .map_err(AdminError::unavailable)?;
    answer(
        letters
            .into_iter()
            .map(|l| DeadLetterView {
                id: l.id,
                guid: l.delivery.guid,
                event: l.delivery.event,
                hook: l.delivery.hook.to_string(),
                repository: l.delivery.repository,
                agent: l.delivery.agent,
                attempts: l.delivery.attempt,
                error: l.error,
                failed_ms: l.failed_ms,
            })
            .collect::<Vec<_>>(),
    )
}

/// What `filter-test` evaluates: `filter` on its own, or as `agent`'s
/// filter (after the policy's filter and the agent's events and
/// repositories).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterTest {
    pub filter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// How one recent delivery fares under a tested filter.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterTestRow {
    pub received_ms: u64,
    pub guid: String,
    pub event: String,
    pub action: Option<String>,
    pub repository: Option<String>,
    /// `match`, `no_match`, `error`, or `unwanted` (the agent's events and
    /// repositories do not take it).
    pub result: String,
    pub detail: Option<String>,
}

/// How `d` fares under `filter`: alone, or as `agent`'s filter (after the
/// policy's filter of `settings` and the agent's events and repositories).
pub fn filter_test_row(
    filter: &crate::filter::Filter,
    agent: Option<&crate::api::Agent>,
    settings: &super::registry::PolicySettings,
    d: &crate::queue::Delivery,
) -> FilterTestRow {
    use crate::filter::{Filters, Verdict};
    let name = agent.map_or("", |a| a.name.as_str());
    let filters = Filters {
        policy: agent.and(settings.filters.policy.clone()),
        agents: [(name.to_owned(), Ok(filter.clone()))].into(),
    };
    let verdict = match agent {
        Some(a) if !super::dispatch::wants(a, &d.event, d.repository.as_deref()) => Verdict::Unwanted,
        _ => filters.judge(&[name], &filters.facts(d)).remove(0).1,
    };
    let (result, detail) = match &verdict {
        Verdict::Pass => ("match", None),
        Verdict::NoMatch { .. } => ("no_match", Some(verdict.detail())),
        Verdict::Error { .. } => ("error", Some(verdict.detail())),
        Verdict::Unwanted => {
            ("unwanted", Some(format!("agent {name}'s events and repositories do not take it")))
        }
    };
    FilterTestRow {
        received_ms: d.received_ms,
        guid: d.guid.clone(),
        event: d.event.clone(),
        action: d.action.clone(),
        repository: d.repository.clone(),
        result: result.to_owned(),
        detail,
    }
}

async fn filter_test(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
    body: Result<Json<FilterTest>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let policy = ObjectRef::new(ns, name);
    // It reveals what payloads hold, a bit per delivery.
    s.may(&caller, Capability::Payloads, &policy).await?;
    let Json(test) = body.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    let filter = crate::filter::compile(&test.filter)
        .map_err(|e| AdminError::BadRequest(format!("the filter does not compile {e}")))?;
    let settings =
        s.registry.policy(&policy).ok_or_else(|| AdminError::NotFound(format!("no policy {policy}")))?;
    let agent = match &test.agent {
        None => None,
        Some(a) => Some(
            settings
                .agents
                .iter()
                .find(|x| &x.name == a)
                .ok_or_else(|| AdminError::NotFound(format!("no agent {a} in {policy}")))?,
        ),
    };
    let limit = test.limit.unwrap_or(crate::queue::RECENT_LEN as usize).min(MAX_LIMIT);
    let recent = s.queue.recent(&policy, limit).await.map_err(AdminError::unavailable)?;
    let rows: Vec<FilterTestRow> =
        recent.iter().map(|d| filter_test_row(&filter, agent, &settings, d)).collect();
    Ok(Json(serde_json::to_value(rows).unwrap_or_default()))
}

async fn replay(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path((ns, name, id)): Path<(String, String, String)>,
) -> Answer {
    let policy = ObjectRef::new(ns, name);
    s.may(&caller, Capability::DeadLetters, &policy).await?;
    match s.queue.replay(&policy, &id).await.map_err(AdminError::unavailable)? {
        true => answer(Replayed { replayed: id }),
        false => Err(AdminError::NotFound(format!("no dead letter {id}"))),
    }
}

async fn replay_window(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
    body: Result<Json<ReplayWindow>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let policy = ObjectRef::new(ns, name);
    s.may(&caller, Capability::DeadLetters, &policy).await?;
    let Json(window) = body.map_err(|e| AdminError::BadRequest(e.body_text()))?;
    if window.filter.is_some() {
        // A count under a filter tells what payloads hold.
        s.may(&caller, Capability::Payloads, &policy).await?;
    }
    let settings =
        s.registry.policy(&policy).ok_or_else(|| AdminError::NotFound(format!("no policy {policy}")))?;
    match replay::replay(&s.queue, &policy, &settings, &window).await {
        Ok(report) => Ok(Json(serde_json::to_value(report).unwrap_or_default())),
        Err(ReplayError::Queue(e)) => Err(AdminError::unavailable(e)),
        Err(e @ ReplayError::UnknownAgent(_)) => Err(AdminError::NotFound(e.to_string())),
        Err(e) => Err(AdminError::BadRequest(e.to_string())),
    }
}

async fn purge(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path((ns, name)): Path<(String, String)>,
) -> Answer {
    let policy = ObjectRef::new(ns, name);
    s.may(&caller, Capability::DeadLetters, &policy).await?;
    let n = s.queue.purge_dead(&policy).await.map_err(AdminError::unavailable)?;
    answer(Purged { purged: n })
}

/// The most entries one list answer holds, and the default.
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

/// Parses `/admin/deliveries`' query string: the filter and the limit
/// (default 100, at most 1000). Unknown parameters are ignored; a repeated
/// one keeps its last value; a limit that is not a number is an error.
pub fn deliveries_query(raw: &str) -> Result<(ActivityFilter, usize), String> {
    let mut filter = ActivityFilter::default();
    let mut limit = DEFAULT_LIMIT;
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        let slot = match &*key {
            "status" => &mut filter.status,
            "event" => &mut filter.event,
            "repository" => &mut filter.repository,
            "hook" => &mut filter.hook,
            "limit" => {
                limit = value.parse().map_err(|_| format!("limit must be a whole number, not {value:?}"))?;
                continue;
            }
            _ => continue,
        };
        *slot = Some(value.into_owned());
    }
    Ok((filter, limit.min(MAX_LIMIT)))
}

async fn deliveries(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<crate::queue::Activity>>, AdminError> {
    let (filter, limit) = deliveries_query(raw.as_deref().unwrap_or("")).map_err(AdminError::BadRequest)?;
    let viewable = s.viewable(&caller).await?;
    let mut policies = s.registry.queue_policies();
    policies.retain(|p| viewable.contains(&p.namespace));
    let mut list = s.queue.activity(&policies, &filter, limit).await.map_err(AdminError::unavailable)?;
    // The log in Redis and this replica's rejections, newest first. A
    // rejection names the hook path it was sent to: shown to whoever may
    // view that namespace (the platform's token sees them all).
    let in_view = |a: &crate::queue::Activity| {
        a.hook.split_once('/').is_some_and(|(ns, _)| viewable.contains(ns)) || caller == Caller::Platform
    };
    list.extend(s.rejections.matching(&filter, limit).into_iter().filter(in_view));
    list.sort_by_key(|a| std::cmp::Reverse(a.at_ms));
    list.truncate(limit);
    Ok(Json(list))
}
