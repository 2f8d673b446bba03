//! AgentPolicy controller: writes the effective settings receivers obey into
//! `status`, from `spec` (clamped) and the safety rule. It is the only writer
//! of those fields; receivers read nothing else.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};

use super::{Context, Error, apply_status};
use crate::{
    ObjectRef,
    api::{AgentPolicy, AgentPolicySpec, AgentPolicyStatus, AppWebhookRoute, conditions},
};

/// Reason of the `Dispatching` condition when the safety rule tripped.
pub const REASON_DEAD_LETTERS: &str = "DeadLettersAboveLimit";
/// Reason of `Ready=False` when a filter does not compile.
pub const REASON_INVALID_FILTER: &str = "InvalidFilter";
const REASON_SPEC_DISABLED: &str = "DisabledInSpec";
const REASON_ENABLED: &str = "Enabled";

/// What the operator knows about a policy's dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetters {
    /// The policy sets no limit.
    NoLimit,
    /// Limit set, but Redis could not be asked.
    Unknown,
    Count(u64),
}

/// The filters receivers should apply, and why a spec's filter is not
/// among them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptedFilters {
    pub policy: Option<String>,
    pub agents: std::collections::BTreeMap<String, String>,
    /// One line per filter that does not compile: whose, where, why.
    pub errors: Vec<String>,
}

/// What a filter that never compiled is replaced with: nothing passes.
pub const NEVER: &str = "false";

/// Each filter of `spec` that compiles; for one that does not, the one
/// `previous` status holds for it (the last that did), or [`NEVER`].
pub fn accepted_filters(spec: &AgentPolicySpec, previous: &AgentPolicyStatus) -> AcceptedFilters {
    let mut errors = Vec::new();
    let mut accept = |source: Option<&String>, last: Option<&String>, whose: String| {
        let source = source?;
        match crate::filter::compile(source) {
            Ok(_) => Some(source.clone()),
            Err(error) => {
                errors.push(format!("{whose} filter does not compile {error}"));
                Some(last.cloned().unwrap_or_else(|| NEVER.to_owned()))
            }
        }
    };
    let policy = accept(spec.filter.as_ref(), previous.filter.as_ref(), "the policy's".to_owned());
    let agents = spec
        .agents
        .iter()
        .filter_map(|a| {
            let last = previous.agent_filters.get(&a.name);
            Some((a.name.clone(), accept(a.filter.as_ref(), last, format!("agent {}'s", a.name))?))
        })
        .collect();
    AcceptedFilters { policy, agents, errors }
}

/// The status receivers should obey. Pure: the same inputs give the same
/// status, and condition times move only when a condition flips.
pub fn effective_status(policy: &AgentPolicy, dead: DeadLetters, now: &Time) -> AgentPolicyStatus {
    let spec = &policy.spec;
    let previous = policy.status.clone().unwrap_or_default();
    let was_tripped = previous
        .conditions
        .iter()
        .any(|c| c.type_ == conditions::DISPATCHING && c.reason == REASON_DEAD_LETTERS);
    let limit = spec.safety.max_dead_letters.unwrap_or(i64::MAX).max(0) as u64;
    let tripped = match dead {
        DeadLetters::NoLimit => None,
        DeadLetters::Count(n) => (n > limit).then(|| format!(
            "{n} dead letters exceed safety.maxDeadLetters {limit}: replay or purge them, or raise the limit"
        )),
        // Cannot evaluate: keep a trip in place rather than resume blindly.
        DeadLetters::Unknown => was_tripped.then(|| "dead letters above the limit; Redis unreachable, so still tripped".to_owned()),
    };
    let (enabled, reason_code, reason) = match (spec.enabled, tripped) {
        (false, _) => (false, REASON_SPEC_DISABLED, "disabled in spec".to_owned()),
        (true, Some(why)) => (false, REASON_DEAD_LETTERS, why),
        (true, None) => (true, REASON_ENABLED, "enabled".to_owned()),
    };
    let generation = policy.meta().generation;
    let filters = accepted_filters(spec, &previous);
    let mut conds = previous.conditions;
    conditions::set(
        &mut conds,
        conditions::DISPATCHING,
        enabled,
        reason_code,
        reason.clone(),
        generation,
        now,
    );
    let (ready, ready_reason, ready_message) = match filters.errors.is_empty() {
        true => (true, "Applied", "effective settings written".to_owned()),
        false => {
            let mut message = filters.errors.join("; ");
            let cut = (0..=message.len().min(4000)).rev().find(|i| message.is_char_boundary(*i));
            message.truncate(cut.unwrap_or(0));
            message.push_str("; receivers apply the last filter that compiled (none yet: nothing passes)");
            (false, REASON_INVALID_FILTER, message)
        }
    };
    conditions::set(&mut conds, conditions::READY, ready, ready_reason, ready_message, generation, now);
    AgentPolicyStatus {
        observed_generation: generation,
        enabled: Some(enabled),
        concurrency: Some(spec.concurrency.clamp(1, 256)),
        queue_limit: Some(spec.queue_limit.clamp(1, 10_000_000)),
        reason: Some(reason),
        filter: filters.policy,
        agent_filters: filters.agents,
        app_webhooks: Vec::new(),
        conditions: conds,
    }
}

/// Reason of `Ready=False` when an asked App webhook is not granted.
pub const REASON_APP_WEBHOOK_NOT_GRANTED: &str = "AppWebhookNotGranted";

/// What the policy's namespace is granted of each asked App webhook: the
/// repository globs of its connection's grants, or why none (`Err`).
pub type AppGrants = std::collections::BTreeMap<String, Result<Vec<String>, String>>;

/// The App webhooks' events the policy gets: each ask whose connection
/// grants the namespace some repositories; one line per ask that gets none.
pub fn app_routes(spec: &AgentPolicySpec, grants: &AppGrants) -> (Vec<AppWebhookRoute>, Vec<String>) {
    let mut routes = Vec::new();
    let mut refused = Vec::new();
    for ask in &spec.app_webhooks {
        match grants.get(&ask.name) {
            Some(Ok(granted)) if !granted.is_empty() => routes.push(AppWebhookRoute {
                name: ask.name.clone(),
                repositories: ask.repositories.clone(),
                granted: granted.clone(),
            }),
            Some(Err(why)) => refused.push(format!("AppWebhook {}: {why}", ask.name)),
            _ => refused
                .push(format!("AppWebhook {}: its connection grants this namespace no repository", ask.name)),
        }
    }
    (routes, refused)
}

/// What the namespace of a policy is granted of App webhook `name`.
async fn app_grants(ctx: &Context, spec: &AgentPolicySpec, namespace: &str) -> Result<AppGrants, Error> {
    use crate::api::{AppWebhook, GitHubConnection};
    let hooks: kube::Api<AppWebhook> = kube::Api::all(ctx.client.clone());
    let connections: kube::Api<GitHubConnection> = kube::Api::all(ctx.client.clone());
    let mut grants = AppGrants::new();
    for ask in &spec.app_webhooks {
        let Some(hook) = hooks.get_opt(&ask.name).await.map_err(super::Step::ReadConnection.error())? else {
            grants.insert(ask.name.clone(), Err("no such AppWebhook".to_owned()));
            continue;
        };
        let granted = match connections
            .get_opt(&hook.spec.connection)
            .await
            .map_err(super::Step::ReadConnection.error())?
        {
            Some(c) => Ok(c.spec.granted_repositories(namespace)),
            None => Err(format!("its GitHubConnection {} does not exist", hook.spec.connection)),
        };
        grants.insert(ask.name.clone(), granted);
    }
    Ok(grants)
}

pub async fn reconcile(policy: Arc<AgentPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let dead = match (policy.spec.safety.max_dead_letters, ctx.queue.get()) {
        (None, _) => DeadLetters::NoLimit,
        (Some(_), None) => DeadLetters::Unknown,
        (Some(_), Some(queue)) => match queue.dead_len(&ObjectRef::new(&namespace, &name)).await {
            Ok(n) => DeadLetters::Count(n),
            Err(error) => {
                tracing::warn!(policy = %name, %namespace, %error, "cannot count dead letters");
                DeadLetters::Unknown
            }
        },
    };
    let now = Time(Timestamp::now());
    let mut status = effective_status(&policy, dead, &now);
    let (routes, refused) = app_routes(&policy.spec, &app_grants(&ctx, &policy.spec, &namespace).await?);
    status.app_webhooks = routes;
    if !refused.is_empty()
        && status.conditions.iter().any(|c| c.type_ == conditions::READY && c.status == "True")
    {
        // NB: set on the conditions as they were, so that its time moves
        // only when it flips.
        let mut was = policy.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        let generation = policy.meta().generation;
        let message = refused.join("; ");
        conditions::set(
            &mut was,
            conditions::READY,
            false,
            REASON_APP_WEBHOOK_NOT_GRANTED,
            message,
            generation,
            &now,
        );
        let ready = was.into_iter().find(|c| c.type_ == conditions::READY);
        status.conditions.retain(|c| c.type_ != conditions::READY);
        status.conditions.extend(ready);
    }
    if policy.status.as_ref() != Some(&status) {
        apply_status(&ctx.client, policy.as_ref(), &status).await?;
        let was = policy.status.as_ref().and_then(|s| s.enabled);
        if was != status.enabled {
            let on = status.enabled == Some(true);
            let event = Event {
                type_: if on { EventType::Normal } else { EventType::Warning },
                reason: if on { "DispatchEnabled" } else { "DispatchDisabled" }.into(),
                note: status.reason.clone(),
                action: "UpdateEffectiveSettings".into(),
                secondary: None,
            };
            if let Err(error) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
                tracing::warn!(policy = %name, %namespace, %error, "could not publish event");
            }
        }
        // NB: plain values, not `Option`s (their Debug form, `Some(true)`, is what JSON logs showed).
        tracing::info!(
            policy = %name,
            %namespace,
            enabled = status.enabled.unwrap_or_default(),
            concurrency = status.concurrency.unwrap_or_default(),
            reason = status.reason.as_deref().unwrap_or_default(),
            "effective settings written"
        );
    }
    // The safety rule watches a number that changes outside Kubernetes.
    let every = if policy.spec.safety.max_dead_letters.is_some() { 10 } else { 300 };
    Ok(Action::requeue(Duration::from_secs(every)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(spec: serde_json::Value) -> AgentPolicy {
        let spec: AgentPolicySpec = serde_json::from_value(spec).unwrap();
        let mut p = AgentPolicy::new("default", spec);
        p.metadata.generation = Some(3);
        p
    }

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn a_policy_gets_the_app_webhooks_it_asks_for_and_is_granted() {
        let p = policy(json!({"agents": [], "appWebhooks": [
            {"name": "granted", "repositories": ["acme/*"]},
            {"name": "nothing-granted", "repositories": ["*/*"]},
            {"name": "gone", "repositories": ["*/*"]},
            {"name": "unknown", "repositories": ["*/*"]},
        ]}));
        let grants: AppGrants = [
            ("granted".to_owned(), Ok(vec!["acme/api".to_owned(), "beta/*".to_owned()])),
            ("nothing-granted".to_owned(), Ok(vec![])),
            ("gone".to_owned(), Err("no such AppWebhook".to_owned())),
        ]
        .into();
        let (routes, refused) = app_routes(&p.spec, &grants);
        assert_eq!(routes.len(), 1);
        let route = &routes[0];
        assert_eq!((route.name.as_str(), route.granted.len()), ("granted", 2));
        // Asked and granted, both: acme/api only.
        assert!(route.routes("acme/api") && route.routes("ACME/Api"));
        assert!(!route.routes("acme/web"), "asked, not granted");
        assert!(!route.routes("beta/web"), "granted, not asked");
        assert!(!route.routes("acme/api/x") && !route.routes("acme"));
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(
            refused[0].contains("nothing-granted")
                && refused[0].contains("grants this namespace no repository")
        );
        assert!(refused[1].contains("no such AppWebhook"));
        assert!(refused[2].starts_with("AppWebhook unknown"));
    }

    #[test]
    fn copies_spec_into_status() {
        let s = effective_status(
            &policy(json!({"concurrency": 7, "queueLimit": 50})),
            DeadLetters::NoLimit,
            &at(1),
        );
        assert_eq!((s.enabled, s.concurrency, s.queue_limit), (Some(true), Some(7), Some(50)));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.reason.as_deref(), Some("enabled"));
    }

    #[test]
    fn clamps_values_the_schema_would_have_rejected() {
        let mut p = policy(json!({}));
        p.spec.concurrency = 100_000;
        p.spec.queue_limit = -5;
        let s = effective_status(&p, DeadLetters::NoLimit, &at(1));
        assert_eq!((s.concurrency, s.queue_limit), (Some(256), Some(1)));
    }

    #[test]
    fn spec_kill_switch_wins() {
        let s = effective_status(&policy(json!({"enabled": false})), DeadLetters::Count(0), &at(1));
        assert_eq!(s.enabled, Some(false));
        assert_eq!(s.reason.as_deref(), Some("disabled in spec"));
    }

    #[test]
    fn dead_letters_above_the_limit_trip_the_switch_and_clearing_them_resets_it() {
        let mut p = policy(json!({"safety": {"maxDeadLetters": 10}}));
        let s = effective_status(&p, DeadLetters::Count(10), &at(1));
        assert_eq!(s.enabled, Some(true), "at the limit is still fine");
        let s = effective_status(&p, DeadLetters::Count(11), &at(2));
        assert_eq!(s.enabled, Some(false));
        assert!(s.reason.as_deref().unwrap().contains("11 dead letters exceed"), "{:?}", s.reason);
        let dispatching = s.conditions.iter().find(|c| c.type_ == conditions::DISPATCHING).unwrap();
        assert_eq!(
            (dispatching.status.as_str(), dispatching.reason.as_str()),
            ("False", REASON_DEAD_LETTERS)
        );

        // Redis unreachable: a trip stays in place.
        p.status = Some(s);
        assert_eq!(effective_status(&p, DeadLetters::Unknown, &at(3)).enabled, Some(false));
        // Purged: dispatch resumes.
        let s = effective_status(&p, DeadLetters::Count(0), &at(4));
        assert_eq!(s.enabled, Some(true));
        let dispatching = s.conditions.iter().find(|c| c.type_ == conditions::DISPATCHING).unwrap();
        assert_eq!(dispatching.last_transition_time, at(4));
    }

    #[test]
    fn unknown_dead_letters_do_not_trip_an_untripped_policy() {
        let p = policy(json!({"safety": {"maxDeadLetters": 10}}));
        assert_eq!(effective_status(&p, DeadLetters::Unknown, &at(1)).enabled, Some(true));
    }

    #[test]
    fn filters_that_compile_reach_status_and_broken_ones_keep_the_last_good_or_nothing() {
        let agents = |reviewer: &str| {
            json!([{"name": "reviewer", "url": "http://r", "filter": reviewer},
                   {"name": "plain", "url": "http://p"}])
        };
        let ready = |s: &AgentPolicyStatus| {
            let c = s.conditions.iter().find(|c| c.type_ == conditions::READY).unwrap();
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        let mut p = policy(json!({"filter": "event != 'check_run'", "agents": agents("action == 'opened'")}));
        let s = effective_status(&p, DeadLetters::NoLimit, &at(1));
        assert_eq!(s.filter.as_deref(), Some("event != 'check_run'"));
        assert_eq!(s.agent_filters.len(), 1, "an agent without a filter has none: {:?}", s.agent_filters);
        assert_eq!(s.agent_filters["reviewer"], "action == 'opened'");
        assert_eq!(ready(&s).0, "True");

        // Broken: the last good one stays, Ready says whose, where and why;
        // the other settings still apply.
        p.status = Some(s);
        p.spec =
            policy(json!({"filter": "event != 'check_run'", "agents": agents("acton == 'opened'")})).spec;
        let s = effective_status(&p, DeadLetters::NoLimit, &at(2));
        assert_eq!(s.agent_filters["reviewer"], "action == 'opened'");
        assert_eq!(s.enabled, Some(true));
        let (status, reason, message) = ready(&s);
        assert_eq!((status.as_str(), reason.as_str()), ("False", REASON_INVALID_FILTER));
        assert!(
            message.starts_with("agent reviewer's filter does not compile at 1:1: unknown variable 'acton'"),
            "{message}"
        );

        // Fixed: the new one applies and Ready comes back.
        p.status = Some(s);
        p.spec = policy(json!({"agents": agents("action == 'closed'")})).spec;
        let s = effective_status(&p, DeadLetters::NoLimit, &at(3));
        assert_eq!((s.filter.as_deref(), s.agent_filters["reviewer"].as_str()), (None, "action == 'closed'"));
        assert_eq!(ready(&s).0, "True");

        // Never compiled: nothing passes until it does.
        let fresh = policy(json!({"filter": "event ==", "agents": agents("body.x ==")}));
        let s = effective_status(&fresh, DeadLetters::NoLimit, &at(4));
        assert_eq!((s.filter.as_deref(), s.agent_filters["reviewer"].as_str()), (Some(NEVER), NEVER));
        let message = ready(&s).2;
        assert!(
            message.contains("the policy's filter does not compile at 1:9")
                && message.contains("agent reviewer's"),
            "{message}"
        );
    }
}
