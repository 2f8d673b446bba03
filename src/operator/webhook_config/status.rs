//! What a WebhookConfig's status says, and writing it.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::runtime::events::EventType;

use super::{ConfigError, publish};
use crate::{
    api::{DeliverySummary, RateLimitStatus, WebhookConfig, WebhookConfigStatus, conditions},
    github::{self, Delivery, RateLimit},
    operator::{Context, Error, apply_status},
};

/// The Ready reason a person can act on, for an error of a reconcile.
pub fn failure_reason(error: &Error) -> &'static str {
    match error {
        Error::GitHub(github::Error::BadCredentials | github::Error::BadPrivateKey) => "BadCredentials",
        Error::GitHub(github::Error::NotFound(_)) => "NotFound",
        Error::GitHub(github::Error::Invalid(_)) => "Rejected",
        Error::GitHub(github::Error::RateLimited { .. }) => "RateLimited",
        Error::GitHub(github::Error::BadAnswer(_)) => "BadAnswer",
        Error::GitHub(_) => "GitHubError",
        Error::Config(ConfigError::ApiUrlNotAllowed(_)) => "ApiUrlNotAllowed",
        Error::Config(ConfigError::SecretConflict(_)) => "SecretConflict",
        Error::Config(ConfigError::ConnectionMissing(_)) => "ConnectionMissing",
        Error::Config(ConfigError::ConnectionNotGranted { .. }) => "ConnectionNotGranted",
        Error::Config(_) => "InvalidConfig",
        Error::Panicked(_) => "Panicked",
        Error::DeletionBlocked(_) => "DeletionBlocked",
        Error::Kube { .. } => "KubernetesError",
        Error::Finalizer(_) => "Error",
    }
}

pub fn rate_limit(rate_limit: Option<RateLimit>) -> Option<RateLimitStatus> {
    rate_limit.map(|r| RateLimitStatus {
        limit: r.limit,
        remaining: r.remaining,
        reset_time: Time(Timestamp::from_second(r.reset).unwrap_or_default()),
    })
}

pub fn last_delivery(newest: &Delivery) -> DeliverySummary {
    DeliverySummary {
        guid: newest.guid.clone(),
        event: newest.event.clone(),
        status_code: newest.status_code as i32,
        delivered_at: Time(Timestamp::from_second(newest.delivered_unix()).unwrap_or_default()),
    }
}

/// Writes `status` when it differs from what the object has.
pub(super) async fn write(
    whc: &WebhookConfig,
    ctx: &Context,
    status: &WebhookConfigStatus,
) -> Result<(), Error> {
    // NB: the remaining budget changes with every call; writing it alone would
    // wake this controller again and again. It rides along with real changes.
    let without_budget = |s: &WebhookConfigStatus| WebhookConfigStatus { rate_limit: None, ..s.clone() };
    if whc.status.as_ref().map(without_budget) == Some(without_budget(status)) {
        return Ok(());
    }
    apply_status(&ctx.client, whc, status).await
}

/// Puts `reason` and `message` into the Ready condition, and a Warning Event.
pub(super) async fn write_failure(
    whc: &WebhookConfig,
    ctx: &Context,
    reason: &str,
    message: String,
    now: Timestamp,
) {
    let mut status = whc.status.clone().unwrap_or_default();
    let generation = whc.metadata.generation;
    conditions::set(
        &mut status.conditions,
        conditions::READY,
        false,
        reason,
        &message,
        generation,
        &Time(now),
    );
    if let Err(e) = write(whc, ctx, &status).await {
        tracing::warn!(error = %e, "could not write the failure to status");
    }
    publish(ctx, whc, EventType::Warning, reason, message).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_a_person_can_act_on() {
        let secret = ConfigError::SecretMissing { namespace: "ns".into(), name: "t".into() };
        let cases = [
            (Error::GitHub(github::Error::BadCredentials), "BadCredentials"),
            (Error::GitHub(github::Error::BadPrivateKey), "BadCredentials"),
            (Error::GitHub(github::Error::NotFound("repos/o/r".into())), "NotFound"),
            (Error::GitHub(github::Error::Invalid("events".into())), "Rejected"),
            (Error::Config(ConfigError::NoUrl), "InvalidConfig"),
            (Error::Config(secret), "InvalidConfig"),
            (Error::Config(ConfigError::ApiUrlNotAllowed("http://x".into())), "ApiUrlNotAllowed"),
            (Error::Config(ConfigError::SecretConflict("x-hmac".into())), "SecretConflict"),
            (Error::Config(ConfigError::ConnectionMissing("acme".into())), "ConnectionMissing"),
            (
                Error::Config(ConfigError::ConnectionNotGranted {
                    connection: "acme".into(),
                    namespace: "b".into(),
                    target: "repository acme/a".into(),
                }),
                "ConnectionNotGranted",
            ),
            (Error::GitHub(github::Error::BadAnswer("more than 10 pages".into())), "BadAnswer"),
            (Error::GitHub(github::Error::Transport("reset".into())), "GitHubError"),
            (Error::Panicked("index out of bounds".into()), "Panicked"),
            (Error::DeletionBlocked("hook 4 on repos/o/r cannot be deleted".into()), "DeletionBlocked"),
        ];
        for (error, want) in cases {
            assert_eq!(failure_reason(&error), want, "{error}");
        }
    }

    #[test]
    fn a_kubernetes_error_names_its_step() {
        let forbidden = || {
            kube::Error::Api(
                kube::core::Status::failure("secrets \"t\" is forbidden", "Forbidden").with_code(403).boxed(),
            )
        };
        let cases = [
            (
                crate::operator::Step::ReadCredentials,
                "kube_read_credentials",
                "reading the credentials Secret",
            ),
            (crate::operator::Step::KeySecret, "kube_key_secret", "the key Secret"),
            (crate::operator::Step::WriteStatus, "kube_write_status", "writing status"),
        ];
        for (step, label, says) in cases {
            let error = step.error()(forbidden());
            assert_eq!(failure_reason(&error), "KubernetesError");
            assert_eq!(error.metric_label(), label);
            let text = error.to_string();
            assert!(text.contains(says) && text.contains("forbidden"), "{text}");
        }
    }
}
