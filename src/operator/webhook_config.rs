//! WebhookConfig controller: the GitHub hook and its key Secret.
//!
//! Shaped around `kube::runtime::finalizer`: `apply` makes GitHub match the
//! spec (create, adopt by URL, update, put back what was deleted or changed on
//! GitHub); `cleanup` deletes the hook (already gone counts as done). The key
//! Secret is owned by the WebhookConfig, so Kubernetes deletes it with it.
//! Not yet here: rotation, redelivery, conditional GETs, GitHub App auth.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::PostParams,
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{Event as Finalizer, finalizer},
    },
};

use super::{Context, Error, apply_status};
use crate::{
    api::{RateLimitStatus, WebhookConfig, WebhookConfigStatus, conditions},
    github::{self, DesiredHook, Target},
    keys::{HmacKey, MANAGED_BY, WEBHOOK_CONFIG_LABEL, keys_from_secret},
};

/// Finalizer that keeps a WebhookConfig until its GitHub hook is deleted.
pub const FINALIZER: &str = "hookwarden.io/github-hook";

fn target(whc: &WebhookConfig) -> Target {
    match (&whc.spec.repository, &whc.spec.organization) {
        (Some(r), _) => Target::Repository(r.clone()),
        (None, Some(o)) => Target::Organization(o.clone()),
        // NB: the schema's CEL rule makes this unreachable for stored objects.
        (None, None) => Target::Repository(String::new()),
    }
}

pub async fn reconcile(whc: Arc<WebhookConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<WebhookConfig> = Api::namespaced(ctx.client.clone(), &whc.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, whc, |event| async {
        match event {
            Finalizer::Apply(whc) => apply(whc, &ctx).await,
            Finalizer::Cleanup(whc) => cleanup(whc, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn github_client(whc: &WebhookConfig, ctx: &Context) -> Result<github::Client, Error> {
    let ns = whc.namespace().unwrap_or_default();
    let Some(token_ref) = &whc.spec.github.token_secret_ref else {
        return Err(Error::Config(
            "GitHub App authentication is not supported yet: use tokenSecretRef".into(),
        ));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = secrets.get_opt(&token_ref.name).await.map_err(Error::Kube)?.ok_or_else(|| {
        Error::Config(format!("token Secret {} not found in namespace {ns}", token_ref.name))
    })?;
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&token_ref.key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::Config(format!("token Secret {} has no key {:?}", token_ref.name, token_ref.key))
        })?;
    Ok(github::Client::new(&whc.spec.github.api_url, &token, ctx.etags.clone()))
}

/// The key Secret, created (with a first key) when missing; returns the newest key.
async fn ensure_keys(whc: &WebhookConfig, ctx: &Context) -> Result<HmacKey, Error> {
    let ns = whc.namespace().unwrap_or_default();
    let name = whc.secret_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets.get_opt(&name).await.map_err(Error::Kube)?;
    if let Some(newest) = existing.as_ref().and_then(|s| keys_from_secret(s).pop()) {
        return Ok(newest);
    }
    let key = HmacKey::generate(Timestamp::now().as_second() as u64);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                [
                    (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                    (WEBHOOK_CONFIG_LABEL.to_owned(), whc.name_any()),
                ]
                .into(),
            ),
            owner_references: whc.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some([(key.entry_name(), ByteString(key.secret().to_vec()))].into()),
        ..Secret::default()
    };
    match existing {
        None => secrets.create(&PostParams::default(), &secret).await.map_err(Error::Kube)?,
        Some(_) => secrets.replace(&name, &PostParams::default(), &secret).await.map_err(Error::Kube)?,
    };
    Ok(key)
}

fn desired(whc: &WebhookConfig, ctx: &Context) -> Result<DesiredHook, Error> {
    let url = match (&whc.spec.url, &ctx.public_base_url) {
        (Some(url), _) => url.clone(),
        (None, Some(base)) => {
            format!(
                "{}/hooks/{}/{}",
                base.trim_end_matches('/'),
                whc.namespace().unwrap_or_default(),
                whc.name_any()
            )
        }
        (None, None) => {
            return Err(Error::Config(
                "no URL for the hook: set spec.url, or the operator's --public-base-url".into(),
            ));
        }
    };
    Ok(DesiredHook {
        url,
        events: whc.spec.events.clone(),
        active: whc.spec.active,
        content_type: whc.spec.content_type.as_str().to_owned(),
    })
}

async fn apply(whc: Arc<WebhookConfig>, ctx: &Context) -> Result<Action, Error> {
    match register(&whc, ctx).await {
        Ok(action) => Ok(action),
        Err(error) => {
            write_failure(&whc, ctx, &error).await;
            Err(error)
        }
    }
}

async fn register(whc: &WebhookConfig, ctx: &Context) -> Result<Action, Error> {
    let desired = desired(whc, ctx)?;
    let github = github_client(whc, ctx).await?;
    let key = ensure_keys(whc, ctx).await?;
    let secret = String::from_utf8_lossy(key.secret()).into_owned();
    let target = target(whc);
    let known = whc.status.as_ref().and_then(|s| s.hook_id);

    let current = match known {
        Some(id) => github.get_hook(&target, id).await.map_err(Error::GitHub)?,
        None => None,
    };
    let (hook, what) = match current {
        Some(hook) if desired.matches(&hook) => (hook, None),
        Some(hook) => {
            let drift = whc.status.as_ref().and_then(|s| s.observed_generation) == whc.metadata.generation;
            let updated =
                github.update_hook(&target, hook.id, &desired, &secret).await.map_err(Error::GitHub)?;
            (updated, Some(if drift { "Repaired" } else { "Updated" }))
        }
        None => {
            // Never a duplicate: adopt a hook that already delivers to our URL.
            let existing = github.list_hooks(&target).await.map_err(Error::GitHub)?;
            match existing.into_iter().find(|h| h.config.url.as_deref() == Some(desired.url.as_str())) {
                Some(hook) => {
                    // NB: GitHub masks the secret, so adopting means setting ours.
                    (
                        github
                            .update_hook(&target, hook.id, &desired, &secret)
                            .await
                            .map_err(Error::GitHub)?,
                        Some("Adopted"),
                    )
                }
                None => {
                    let created =
                        github.create_hook(&target, &desired, &secret).await.map_err(Error::GitHub)?;
                    (created, Some(if known.is_some() { "Repaired" } else { "Created" }))
                }
            }
        }
    };
    if let Some(reason) = what {
        let note = format!("hook {} on {target} delivers to {}", hook.id, desired.url);
        publish(ctx, whc, EventType::Normal, reason, note).await;
    }

    let now = Time(Timestamp::now());
    let generation = whc.metadata.generation;
    let mut status = whc.status.clone().unwrap_or_default();
    status.hook_id = Some(hook.id);
    status.url = Some(desired.url.clone());
    status.secret_name = Some(whc.secret_name());
    status.observed_generation = generation;
    status.rate_limit = rate_limit_status(&github);
    let registered = format!("hook {} on {target}", hook.id);
    conditions::set(
        &mut status.conditions,
        conditions::HOOK_REGISTERED,
        true,
        "Registered",
        registered,
        generation,
        &now,
    );
    conditions::set(
        &mut status.conditions,
        conditions::SECRET_IN_SYNC,
        true,
        "Set",
        format!("GitHub signs with key {}", key.version()),
        generation,
        &now,
    );
    conditions::set(
        &mut status.conditions,
        conditions::READY,
        true,
        "Ready",
        "hook registered and secret set",
        generation,
        &now,
    );
    write_status(whc, ctx, &status).await?;
    Ok(Action::requeue(ctx.resync))
}

fn rate_limit_status(github: &github::Client) -> Option<RateLimitStatus> {
    github.rate_limit().map(|r| RateLimitStatus {
        limit: r.limit,
        remaining: r.remaining,
        reset_time: Time(Timestamp::from_second(r.reset).unwrap_or_default()),
    })
}

async fn write_status(whc: &WebhookConfig, ctx: &Context, status: &WebhookConfigStatus) -> Result<(), Error> {
    // NB: the remaining budget changes with every call; writing it alone would
    // wake this controller again and again. It rides along with real changes.
    let without_budget = |s: &WebhookConfigStatus| WebhookConfigStatus { rate_limit: None, ..s.clone() };
    if whc.status.as_ref().map(without_budget) == Some(without_budget(status)) {
        return Ok(());
    }
    apply_status(&ctx.client, whc, status).await
}

/// Puts the reason a person can act on into the Ready condition.
async fn write_failure(whc: &WebhookConfig, ctx: &Context, error: &Error) {
    let reason = match error {
        Error::GitHub(github::Error::BadCredentials) => "BadCredentials",
        Error::GitHub(github::Error::NotFound(_)) => "NotFound",
        Error::GitHub(github::Error::Invalid(_)) => "Rejected",
        Error::GitHub(github::Error::RateLimited { .. }) => "RateLimited",
        Error::GitHub(_) => "GitHubError",
        Error::Config(_) => "InvalidConfig",
        _ => "Error",
    };
    let now = Time(Timestamp::now());
    let generation = whc.metadata.generation;
    let mut status = whc.status.clone().unwrap_or_default();
    conditions::set(
        &mut status.conditions,
        conditions::READY,
        false,
        reason,
        error.to_string(),
        generation,
        &now,
    );
    if let Err(e) = write_status(whc, ctx, &status).await {
        tracing::warn!(error = %e, "could not write the failure to status");
    }
    publish(ctx, whc, EventType::Warning, reason, error.to_string()).await;
}

async fn cleanup(whc: Arc<WebhookConfig>, ctx: &Context) -> Result<Action, Error> {
    let Some(id) = whc.status.as_ref().and_then(|s| s.hook_id) else { return Ok(Action::await_change()) };
    match github_client(&whc, ctx).await {
        Ok(github) => {
            github.delete_hook(&target(&whc), id).await.map_err(Error::GitHub)?;
            publish(
                ctx,
                &whc,
                EventType::Normal,
                "Deleted",
                format!("hook {id} on {} deleted", target(&whc)),
            )
            .await;
        }
        // Without credentials the hook cannot be deleted; say so rather than
        // keep the resource (and its namespace) from going away forever.
        Err(error) => {
            publish(ctx, &whc, EventType::Warning, "Orphaned", format!("hook {id} left on GitHub: {error}"))
                .await;
        }
    }
    Ok(Action::await_change())
}

async fn publish(ctx: &Context, whc: &WebhookConfig, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "ReconcileHook".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &whc.object_ref(&())).await {
        tracing::warn!(%error, "could not publish event");
    }
}

/// How soon to try again after `error`.
pub fn retry_delay(error: &Error) -> Duration {
    use kube::runtime::finalizer::Error as F;
    match error {
        Error::GitHub(e) => e.retry_after().unwrap_or(Duration::from_secs(15)),
        // Waits for an edit; the periodic retry is only a safety net.
        Error::Config(_) => Duration::from_secs(60),
        Error::Finalizer(f) => match f.as_ref() {
            F::ApplyFailed(e) | F::CleanupFailed(e) => retry_delay(e),
            _ => Duration::from_secs(5),
        },
        Error::Kube(_) => Duration::from_secs(5),
    }
}
