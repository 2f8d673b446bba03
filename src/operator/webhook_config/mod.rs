//! WebhookConfig controller: the GitHub hook and its key Secret.
//!
//! Shaped around `kube::runtime::finalizer`: `apply` runs the flows in
//! order on the object as the API server has it now, each in its own file
//! with its decisions as pure functions of the facts and `now`:
//!
//! | flow | file | decisions |
//! |---|---|---|
//! | credentials and the key Secret | [`secret`] | — |
//! | registration: keep, update, repair, adopt, create | [`register`] | [`register::plan`], [`register::plan_new`], [`register::signing_key`] |
//! | many repositories: a hook on each, added and removed with the list | [`fleet`] | [`fleet::entries`], [`fleet::key_for`], [`fleet::summary`] |
//! | rotation of the HMAC key | [`rotation`] | [`rotation::step`], [`rotation::ping_outcome`] |
//! | recovery of failed deliveries | [`recovery`] | [`recovery::to_recover`], [`recovery::due`], [`recovery::after_pass`], … |
//! | status and failures | [`status`] | [`status::failure_reason`] |
//!
//! When the spec names another repository, organization, API URL or
//! credentials, the hook of the old place is deleted once the new one is
//! registered (`status.previousHooks` until it is).
//!
//! With `spec.repositories`, the same flows run for every hook: the list is
//! registered a few mutations per reconcile, one rotation switches them all
//! (confirmed by a ping of each), and each hook's failed deliveries are
//! recovered from its own position.
//!
//! `cleanup` deletes the hook (or hooks) and any previous one (already gone counts as
//! done); while GitHub refuses, or the credentials are gone, the
//! WebhookConfig stays, `Ready=False DeletionBlocked` says why and what to do.
//! The key Secret is owned by the WebhookConfig, so Kubernetes deletes it
//! with it.

pub mod fleet;
pub mod recovery;
pub mod register;
pub mod rotation;
pub mod secret;
pub mod status;

pub use recovery::Way as RecoveryWay;

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{Event as Finalizer, finalizer},
    },
};

use super::{Context, Error, Step};
use crate::{
    api::{HookLocation, RepositoryHookState, WebhookConfig, WebhookConfigStatus},
    github::{self, DesiredHook, Target},
};

/// Finalizer that keeps a WebhookConfig until its GitHub hook is deleted.
pub const FINALIZER: &str = "hookwarden.io/github-hook";

/// What only an edit of the resource (or its Secrets) can fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Secret {name} not found in namespace {namespace}")]
    SecretMissing { namespace: String, name: String },
    #[error("Secret {name} has no (or an empty) key {key:?}")]
    SecretKeyMissing { name: String, key: String },
    #[error("Secret {name} key {key:?} is not text")]
    NotText { name: String, key: String },
    #[error("no URL for the hook: set spec.url, or the operator's --public-base-url")]
    NoUrl,
    #[error("set github.tokenSecretRef, github.app or github.connection")]
    NoCredentials,
    #[error("GitHubConnection {0} not found")]
    ConnectionMissing(String),
    #[error(
        "GitHubConnection {connection} does not grant namespace {namespace} the use of {target}; nothing was sent to GitHub (ask the platform team for a grant)"
    )]
    ConnectionNotGranted { connection: String, namespace: String, target: String },
    #[error(
        "GitHub API URL {0} is not one the platform allows (operator flag --github-api-url); nothing was sent to it"
    )]
    ApiUrlNotAllowed(String),
    #[error(
        "Secret {0} exists and is not this WebhookConfig's; it is left untouched: delete or rename it, or set spec.secretName to another name"
    )]
    SecretConflict(String),
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

/// A registered hook and how to reach it.
pub(crate) struct HookRef<'a> {
    pub github: &'a github::Client,
    pub target: &'a Target,
    pub id: i64,
}

async fn apply(whc: Arc<WebhookConfig>, ctx: &Context) -> Result<Action, Error> {
    // NB: the controller's cache can lag behind the status this controller
    // wrote a moment ago (a reconcile woken by the new key Secret would not
    // know the hook it just created, and adopt it again). Decisions that
    // call GitHub are taken on the object as the API server has it now.
    let api: Api<WebhookConfig> = Api::namespaced(ctx.client.clone(), &whc.namespace().unwrap_or_default());
    let Some(whc) = api.get_opt(&whc.name_any()).await.map_err(Step::ReadObject.error())? else {
        return Ok(Action::await_change());
    };
    match run_flows(&whc, ctx, Timestamp::now()).await {
        Ok(action) => Ok(action),
        Err(error) => {
            report(&whc, ctx, &error).await;
            Err(error)
        }
    }
}

/// Puts `error` on the WebhookConfig: its Ready condition and an Event.
pub async fn report(whc: &WebhookConfig, ctx: &Context, error: &Error) {
    status::write_failure(whc, ctx, status::failure_reason(error), error.to_string(), Timestamp::now()).await;
}

/// Registration, rotation and recovery, then one status write.
async fn run_flows(whc: &WebhookConfig, ctx: &Context, now: Timestamp) -> Result<Action, Error> {
    let desired = register::desired(whc, ctx.public_base_url.as_deref())?;
    let github = secret::github_client(whc, ctx).await?;
    let keys = secret::ensure_keys(whc, ctx, now).await?;
    let mut status = whc.status.clone().unwrap_or_default();
    // NB: status is written even when a step after registration failed, so
    // it shows how far it got.
    let next = if whc.spec.repositories.is_some() {
        Ok(fleet_flows(whc, ctx, &github, &desired, keys, &mut status, now).await)
    } else {
        hook_flows(whc, ctx, &github, &desired, keys, &mut status, now).await
    }?;
    status.rate_limit = status::rate_limit(github.rate_limit());
    status::write(whc, ctx, &status).await?;
    let next = [Some(ctx.resync), Some(next?)].into_iter().flatten().min();
    Ok(Action::requeue(next.unwrap_or(ctx.resync)))
}

/// The flows of one hook (`spec.repository` or `spec.organization`); how
/// soon to look again. Err only when registering failed (nothing else to
/// write); a later step's error comes back inside.
async fn hook_flows(
    whc: &WebhookConfig,
    ctx: &Context,
    github: &github::Client,
    desired: &DesiredHook,
    keys: Vec<crate::keys::HmacKey>,
    status: &mut WebhookConfigStatus,
    now: Timestamp,
) -> Result<Result<Duration, Error>, Error> {
    let registered = register::register(whc, ctx, github, desired, &keys, status, now).await?;
    let previous_deleted = register::delete_previous(whc, ctx, status, Some(registered.id), now).await;

    let target = target(whc);
    let member = rotation::Member {
        target: target.clone(),
        id: registered.id,
        signing: status.signing_key_version.clone(),
        confirmed: status.confirmed_key_version.clone(),
    };
    let rotation = rotation::rotate(whc, ctx, github, desired, &mut [member], keys, status, now).await;
    let hook = HookRef { github, target: &target, id: registered.id };
    let (next_recovery, newest) = recovery::run(
        recovery::Owner::Hook(whc),
        ctx,
        &hook,
        &mut status.recovery,
        registered.last_delivery_failed,
    )
    .await;
    if let Some(newest) = &newest {
        status.last_delivery = Some(status::last_delivery(newest));
    }
    recovery::report_pending_age(ctx, whc, [&status.recovery], now.as_second());
    let retry_previous = (!previous_deleted).then_some(PREVIOUS_RETRY);
    Ok(rotation.map(|r| [Some(r), next_recovery, retry_previous].into_iter().flatten().min().unwrap_or(r)))
}

/// The flows of `spec.repositories`: every hook registered (paced), all
/// rotated together, each one's failed deliveries recovered.
async fn fleet_flows(
    whc: &WebhookConfig,
    ctx: &Context,
    github: &github::Client,
    desired: &DesiredHook,
    keys: Vec<crate::keys::HmacKey>,
    status: &mut WebhookConfigStatus,
    now: Timestamp,
) -> Result<Duration, Error> {
    let registered = fleet::register(whc, ctx, github, desired, &keys, status, now).await;
    let mut members = fleet::members(status);
    let rotation = rotation::rotate(whc, ctx, github, desired, &mut members, keys, status, now).await;
    fleet::after_rotation(status, members);
    let mut next = if registered.more { MORE_REPOSITORIES } else { ctx.resync };
    let mut ids = Vec::new();
    for entry in status.repositories.iter_mut().filter(|e| e.state == RepositoryHookState::Registered) {
        let Some(id) = entry.hook_id else { continue };
        ids.push(id);
        let target = Target::Repository(entry.repository.clone());
        let hook = HookRef { github, target: &target, id };
        let evidence = registered.failing.contains(&id);
        let (next_recovery, newest) =
            recovery::run(recovery::Owner::Hook(whc), ctx, &hook, &mut entry.recovery, evidence).await;
        if let Some(newest) = &newest {
            entry.last_delivery = Some(status::last_delivery(newest));
        }
        next = next.min(next_recovery.unwrap_or(ctx.resync));
    }
    recovery::forget_except(ctx, whc, &ids);
    recovery::report_pending_age(ctx, whc, status.repositories.iter().map(|e| &e.recovery), now.as_second());
    status.last_delivery =
        status.repositories.iter().filter_map(|e| e.last_delivery.clone()).max_by_key(|d| d.delivered_at.0);
    Ok(rotation?.min(next))
}

/// How soon a reconcile that left repositories for later comes back.
const MORE_REPOSITORIES: Duration = Duration::from_secs(1);

/// Where the spec puts the hook: its repository or organization.
pub(super) fn target(whc: &WebhookConfig) -> Target {
    target_at(&whc.spec.repository, &whc.spec.organization)
}

/// Every place the spec puts a hook: its repository or organization, or
/// each of its repositories.
pub(super) fn targets(whc: &WebhookConfig) -> Vec<Target> {
    match &whc.spec.repositories {
        Some(list) => list.iter().cloned().map(Target::Repository).collect(),
        None => vec![target(whc)],
    }
}

pub(super) fn target_of(location: &HookLocation) -> Target {
    target_at(&location.repository, &location.organization)
}

fn target_at(repository: &Option<String>, organization: &Option<String>) -> Target {
    match (repository, organization) {
        (Some(r), _) => Target::Repository(r.clone()),
        (None, Some(o)) => Target::Organization(o.clone()),
        // NB: the schema's CEL rule makes this unreachable for stored objects.
        (None, None) => Target::Repository(String::new()),
    }
}

/// How soon a refused deletion of an earlier spec's hook is tried again.
const PREVIOUS_RETRY: Duration = Duration::from_secs(15);

async fn cleanup(whc: Arc<WebhookConfig>, ctx: &Context) -> Result<Action, Error> {
    recovery::forget(ctx, &whc);
    let now = Timestamp::now();
    let mut status = whc.status.clone().unwrap_or_default();
    if !status.previous_hooks.is_empty()
        && !register::delete_previous(&whc, ctx, &mut status, None, now).await
    {
        status::write(&whc, ctx, &status).await?;
        let left =
            status.previous_hooks.iter().filter_map(|p| p.error.as_deref()).collect::<Vec<_>>().join("; ");
        let message = format!("the WebhookConfig stays until its earlier hooks are deleted: {left}");
        status::write_failure(&whc, ctx, "DeletionBlocked", message.clone(), now).await;
        return Err(Error::DeletionBlocked(message));
    }
    let hooks: Vec<(Target, i64)> = match status.hook_id {
        Some(id) => vec![(target(&whc), id)],
        None => status
            .repositories
            .iter()
            .filter_map(|e| Some((Target::Repository(e.repository.clone()), e.hook_id?)))
            .collect(),
    };
    let Some((target, id)) = hooks.first() else { return Ok(Action::await_change()) };
    let more = match hooks.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    let blocked = |what: String| {
        format!("hook {id} on {target}{more} {what}; the WebhookConfig stays until it is deleted")
    };
    let github = match secret::github_client(&whc, ctx).await {
        Ok(github) => github,
        // NB: never let go of a hook that still delivers: say what to do.
        Err(error) => {
            let message = blocked(format!(
                "cannot be deleted without credentials ({error}): restore them, or remove the finalizer {FINALIZER} to leave the hook on GitHub"
            ));
            status::write_failure(&whc, ctx, "DeletionBlocked", message.clone(), now).await;
            return Err(Error::DeletionBlocked(message));
        }
    };
    for (target, id) in &hooks {
        if let Err(error) = github.delete_hook(target, *id).await {
            let message = format!(
                "hook {id} on {target} could not be deleted: {error}; the WebhookConfig stays until it is deleted"
            );
            status::write_failure(&whc, ctx, "DeletionBlocked", message, now).await;
            return Err(error.into());
        }
    }
    let note = match hooks.len() {
        1 => format!("hook {id} on {target} deleted"),
        n => format!("hooks on all {n} repositories deleted"),
    };
    publish(ctx, &whc, EventType::Normal, "Deleted", note).await;
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
        // A dropped connection or a timeout is usually over soon.
        Error::GitHub(github::Error::Transport(_)) => Duration::from_secs(5),
        // The same server would give the same answer at once.
        Error::GitHub(github::Error::BadAnswer(_)) => Duration::from_secs(60),
        Error::GitHub(e) => e.retry_after().unwrap_or(Duration::from_secs(15)),
        // Waits for an edit; the periodic retry is only a safety net.
        Error::Config(_) | Error::Panicked(_) => Duration::from_secs(60),
        Error::Finalizer(f) => match f.as_ref() {
            F::ApplyFailed(e) | F::CleanupFailed(e) => retry_delay(e),
            _ => Duration::from_secs(5),
        },
        Error::Kube { .. } => Duration::from_secs(5),
        // Credentials restored or GitHub agreeing again are not watched.
        Error::DeletionBlocked(_) => PREVIOUS_RETRY,
    }
}
