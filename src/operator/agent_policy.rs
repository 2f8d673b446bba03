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
    api::{AgentPolicy, AgentPolicyStatus, conditions},
};

/// Reason of the `Dispatching` condition when the safety rule tripped.
pub const REASON_DEAD_LETTERS: &str = "DeadLettersAboveLimit";
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
    conditions::set(
        &mut conds,
        conditions::READY,
        true,
        "Applied",
        "effective settings written",
        generation,
        now,
    );
    AgentPolicyStatus {
        observed_generation: generation,
        enabled: Some(enabled),
        concurrency: Some(spec.concurrency.clamp(1, 256)),
        queue_limit: Some(spec.queue_limit.clamp(1, 10_000_000)),
        reason: Some(reason),
        conditions: conds,
    }
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
    let status = effective_status(&policy, dead, &Time(Timestamp::now()));
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
    use crate::api::AgentPolicySpec;
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
}
