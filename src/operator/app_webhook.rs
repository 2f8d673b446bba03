//! AppWebhook controller: a GitHub App's own webhook (`/app/hook/config`),
//! kept pointing at the receivers with a key they have, and rotated like a
//! hook's, with no rejected delivery:
//! 1. a new key is added to the key Secret beside the one GitHub signs with;
//! 2. once every live receiver reports it loaded it, GitHub is switched to it;
//! 3. an App's webhook cannot be pinged: the switch is confirmed by the first
//!    successful delivery after it (any event; older keys stay valid until
//!    one comes);
//! 4. `overlap` after the switch, the older keys leave the Secret.
//!
//! The steps are [`rotation::step`]'s, the same pure decisions as a hook's;
//! [`confirming`] reads the delivery that confirms a switch. The key Secret
//! is `appwebhook-{name}` in the operator's namespace, owned by the
//! AppWebhook; receivers read it there or (with a keys namespace) its copy.
//! Deliveries GitHub failed to make are recovered as a hook's are, each
//! queued for every policy the grants route it to ([`super::webhook_config::recovery`]).

use std::{sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};

use super::{
    Context, Error, FIELD_MANAGER, Step,
    webhook_config::{
        HookRef, recovery,
        rotation::{self, Facts},
        secret::{credentials, keys_or_first, patch_keys},
        status::last_delivery,
    },
};
use crate::{
    api::{AppWebhook, AppWebhookStatus, GitHubConnection, ROTATE_ANNOTATION, conditions},
    github::{self, Auth, Delivery, Target},
    keys::HmacKey,
};

/// Label naming the AppWebhook a key Secret belongs to.
pub const APP_WEBHOOK_LABEL: &str = "hookwarden.io/appwebhook";
/// Receivers' path of an App's webhook: `/app-hooks/{name}`.
pub const PATH: &str = "app-hooks";
/// While a step waits (receivers, a confirming delivery), look again this soon.
const POLL: Duration = Duration::from_secs(2);

/// The name of the key Secret of AppWebhook `name`.
pub fn secret_name(name: &str) -> String {
    format!("appwebhook-{name}")
}

/// The first delivery strictly after the switch at `switched` (Unix
/// seconds) that succeeded: it was signed with the new key, and a receiver
/// verified it. `deliveries` newest first.
pub fn confirming(deliveries: &[Delivery], switched: i64) -> Option<&Delivery> {
    deliveries.iter().rev().find(|d| d.delivered_unix() > switched && d.succeeded())
}

/// Why an AppWebhook cannot be served, in words for its Ready condition.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("GitHubConnection {0} does not exist")]
    ConnectionMissing(String),
    #[error("GitHubConnection {0} has no app: only a GitHub App has a webhook of its own")]
    NotAnApp(String),
    #[error("no URL: set spec.url, or the operator's --public-base-url")]
    NoUrl,
    #[error("Secret {0} exists and is not this AppWebhook's")]
    SecretConflict(String),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Self::ConnectionMissing(_) => "ConnectionMissing",
            Self::NotAnApp(_) => "ConnectionNotAnApp",
            Self::NoUrl => "NoUrl",
            Self::SecretConflict(_) => "SecretConflict",
        }
    }
}

/// What a pass failed with.
enum Failure {
    Refused(Refusal),
    Error(Error),
}

impl<E: Into<Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::Error(e.into())
    }
}

pub async fn reconcile(awh: Arc<AppWebhook>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<AppWebhook> = Api::all(ctx.client.clone());
    // NB: as for WebhookConfigs, decisions are taken on the object as the
    // API server has it now, not a cache that may lag behind our own writes.
    let Some(awh) = api.get_opt(&awh.name_any()).await.map_err(Step::ReadObject.error())? else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    let mut status = awh.status.clone().unwrap_or_default();
    status.observed_generation = awh.metadata.generation;
    let result = sync(&awh, &ctx, &mut status, now).await;
    let generation = awh.metadata.generation;
    let at = Time(now);
    let (action, error) = match result {
        Ok(wait) => {
            let message =
                format!("GitHub delivers the App's events to {}", status.url.as_deref().unwrap_or(""));
            conditions::set(
                &mut status.conditions,
                conditions::READY,
                true,
                "Configured",
                message,
                generation,
                &at,
            );
            (Action::requeue(wait), None)
        }
        Err(Failure::Refused(refusal)) => {
            conditions::set(
                &mut status.conditions,
                conditions::READY,
                false,
                refusal.reason(),
                refusal.to_string(),
                generation,
                &at,
            );
            (Action::requeue(Duration::from_secs(30)), None)
        }
        Err(Failure::Error(error)) => {
            let reason = super::webhook_config::status::failure_reason(&error);
            let message = github::short(&error);
            conditions::set(
                &mut status.conditions,
                conditions::READY,
                false,
                reason,
                message,
                generation,
                &at,
            );
            (Action::requeue(super::webhook_config::retry_delay(&error)), Some(error))
        }
    };
    if awh.status.as_ref() != Some(&status) {
        let patch = serde_json::json!({
            "apiVersion": AppWebhook::api_version(&()), "kind": AppWebhook::kind(&()), "status": status,
        });
        api.patch_status(&awh.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Step::WriteStatus.error())?;
    }
    match error {
        Some(error) => Err(error),
        None => Ok(action),
    }
}

/// One pass: the connection's App, the key Secret, GitHub's config, the
/// rotation, recovery. Returns how soon to look again.
async fn sync(
    awh: &AppWebhook,
    ctx: &Context,
    status: &mut AppWebhookStatus,
    now: Timestamp,
) -> Result<Duration, Failure> {
    let name = awh.name_any();
    let url = match (&awh.spec.url, &ctx.public_base_url) {
        (Some(url), _) => url.clone(),
        (None, Some(base)) => format!("{}/{PATH}/{name}", base.trim_end_matches('/')),
        (None, None) => return Err(Failure::Refused(Refusal::NoUrl)),
    };
    let connection_name = &awh.spec.connection;
    let connection = Api::<GitHubConnection>::all(ctx.client.clone())
        .get_opt(connection_name)
        .await
        .map_err(Step::ReadConnection.error())?
        .ok_or_else(|| Failure::Refused(Refusal::ConnectionMissing(connection_name.clone())))?;
    let Some(app) = &connection.spec.app else {
        return Err(Failure::Refused(Refusal::NotAnApp(connection_name.clone())));
    };
    let auth: Auth = credentials(ctx, &ctx.lease_namespace, None, Some(app)).await?;
    // NB: the connection's own account: one budget and one pacing for
    // everything done with this App.
    let github = github::Client::new(
        ctx.github.clone(),
        &connection.spec.api_url,
        auth,
        "",
        &format!("connection/{connection_name}"),
    );
    let mut keys = ensure_keys(awh, ctx, now).await?;
    status.key_secret = Some(format!("{}/{}", ctx.lease_namespace, secret_name(&name)));
    status.url = Some(url.clone());

    // GitHub's config drifted (the App's settings page): put it back with
    // the key it signs with.
    let config = github.app_hook_config().await?;
    if let Some(signing) = &status.signing_key_version
        && (config.url.as_deref() != Some(url.as_str()) || config.content_type.as_deref() != Some("json"))
        && let Some(key) = keys.iter().find(|k| k.version() == signing)
    {
        github.update_app_hook_config(&url, &String::from_utf8_lossy(key.secret())).await?;
    }

    let deliveries = github.deliveries_page(&Target::App, 0, None).await?.deliveries;
    if let Some(newest) = deliveries.first() {
        status.last_delivery = Some(last_delivery(newest));
    }
    let wait = rotate(awh, ctx, &github, &url, &mut keys, &deliveries, status, now).await?;
    let hook = HookRef { github: &github, target: &Target::App, id: 0 };
    let evidence = deliveries.first().is_some_and(|d| !d.succeeded());
    let (recovery_wait, _) =
        recovery::run(recovery::Owner::App(awh), ctx, &hook, &mut status.recovery, evidence).await;
    Ok(recovery_wait.map_or(wait, |r| r.min(wait)))
}

/// The key Secret's keys, oldest first, the Secret made with a first key
/// when missing. A Secret of that name that is not this AppWebhook's is
/// never touched.
async fn ensure_keys(awh: &AppWebhook, ctx: &Context, now: Timestamp) -> Result<Vec<HmacKey>, Failure> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.lease_namespace);
    let name = secret_name(&awh.name_any());
    keys_or_first(&secrets, &name, APP_WEBHOOK_LABEL, awh, now)
        .await?
        .ok_or(Failure::Refused(Refusal::SecretConflict(name)))
}

/// Adds `add` to the key Secret and removes `remove`, in one patch.
async fn edit_keys(
    awh: &AppWebhook,
    ctx: &Context,
    add: Option<&HmacKey>,
    remove: &[&HmacKey],
) -> Result<(), Error> {
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.lease_namespace);
    patch_keys(&secrets, &secret_name(&awh.name_any()), add, remove).await
}

/// The next steps of the rotation (the first switch included: a new App
/// webhook signs with no key of ours until it). Returns how soon to look again.
#[allow(clippy::too_many_arguments)]
async fn rotate(
    awh: &AppWebhook,
    ctx: &Context,
    github: &github::Client,
    url: &str,
    keys: &mut Vec<HmacKey>,
    deliveries: &[Delivery],
    status: &mut AppWebhookStatus,
    now: Timestamp,
) -> Result<Duration, Error> {
    let generation = awh.metadata.generation;
    let requested = awh.annotations().get(ROTATE_ANNOTATION).cloned();
    let rotation = &awh.spec.secret_rotation;
    let in_sync = |status: &mut AppWebhookStatus, ok: bool, reason: &str, message: String| {
        conditions::set(
            &mut status.conditions,
            conditions::SECRET_IN_SYNC,
            ok,
            reason,
            message,
            generation,
            &Time(now),
        )
    };
    loop {
        let signing = status.signing_key_version.clone().unwrap_or_default();
        let switched = status.last_rotation_time.as_ref().map_or(0, |t| t.0.as_second());
        let facts = Facts {
            now: now.as_second(),
            versions: keys.iter().map(HmacKey::version).collect(),
            signing: &signing,
            confirmed: status.confirmed_key_version.as_deref() == Some(signing.as_str()),
            switched,
            asked: requested.is_some() && requested != status.rotation_request,
            interval_secs: rotation.interval.get().as_secs() as i64,
            overlap_secs: rotation.overlap.get().as_secs() as i64,
        };
        match rotation::step(&facts) {
            rotation::Step::Start { version, asked } => {
                let key = HmacKey::generate(version as u64);
                edit_keys(awh, ctx, Some(&key), &[]).await?;
                let _ = asked;
                status.rotation_request.clone_from(&requested);
                let note = format!(
                    "key {} added beside key {signing}; waiting for receivers to load it",
                    key.version()
                );
                publish(ctx, awh, "RotationStarted", note).await;
                keys.push(key);
            }
            rotation::Step::Switch { to } => {
                // Already rotating: a request is served by the rotation under way.
                status.rotation_request.clone_from(&requested);
                let secret = format!("{}/{}", ctx.lease_namespace, secret_name(&awh.name_any()));
                if let Some(message) = rotation::receivers_lacking(ctx, &secret, &to, now).await? {
                    in_sync(status, false, "WaitingForReceivers", message);
                    return Ok(POLL);
                }
                let key = keys.last().expect("switching to the newest key");
                github.update_app_hook_config(url, &String::from_utf8_lossy(key.secret())).await?;
                status.signing_key_version = Some(to.clone());
                // NB: the clock read after GitHub's answer: deliveries strictly after it confirm.
                status.last_rotation_time = Some(Time(Timestamp::now()));
                let message = format!("GitHub signs with key {to}; waiting for a successful delivery");
                in_sync(status, false, "AwaitingDelivery", message);
                return Ok(POLL);
            }
            rotation::Step::AwaitPing => match confirming(deliveries, switched) {
                Some(ok) => {
                    status.confirmed_key_version = Some(signing.clone());
                    let note = format!(
                        "GitHub signs with key {signing}: delivery {} succeeded; older keys leave the Secret after {}",
                        ok.guid, rotation.overlap
                    );
                    publish(ctx, awh, "Rotated", note).await;
                }
                None => {
                    let message = format!(
                        "GitHub signs with key {signing}; no successful delivery since the switch yet (an App's webhook cannot be pinged); older keys stay valid"
                    );
                    in_sync(status, false, "AwaitingDelivery", message);
                    return Ok(POLL * 2);
                }
            },
            rotation::Step::InSync { drop, overlap_until, next } => {
                if !drop.is_empty() {
                    let older: Vec<&HmacKey> =
                        keys.iter().filter(|k| drop.iter().any(|v| v == k.version())).collect();
                    edit_keys(awh, ctx, None, &older).await?;
                    publish(
                        ctx,
                        awh,
                        "OldKeysRemoved",
                        format!("keys {} removed; key {signing} remains", drop.join(", ")),
                    )
                    .await;
                }
                let message = match overlap_until {
                    None => format!("GitHub signs with key {signing}, the only key in the Secret"),
                    Some(_) => format!(
                        "GitHub signs with key {signing}; the previous key stays valid until the overlap ends"
                    ),
                };
                in_sync(status, true, "InSync", message);
                return Ok(Duration::from_secs((next - facts.now).clamp(1, 300) as u64));
            }
        }
    }
}

pub(crate) async fn publish(ctx: &Context, awh: &AppWebhook, reason: &str, note: String) {
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: "ReconcileAppWebhook".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &awh.object_ref(&())).await {
        tracing::warn!(%error, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: i64, at: i64, code: i64) -> Delivery {
        serde_json::from_value(serde_json::json!({
            "id": id, "guid": format!("g{id}"), "event": "push", "status_code": code, "redelivery": false,
            "delivered_at": Timestamp::from_second(at).unwrap().to_string(),
        }))
        .unwrap()
    }

    #[test]
    fn the_first_success_strictly_after_the_switch_confirms_it() {
        // Newest first.
        let page =
            [delivery(5, 130, 200), delivery(4, 120, 200), delivery(3, 110, 503), delivery(2, 100, 200)];
        assert_eq!(
            confirming(&page, 100).map(|d| d.id),
            Some(4),
            "the one in the switch's second does not count"
        );
        assert_eq!(confirming(&page, 99).map(|d| d.id), Some(2));
        assert_eq!(confirming(&page, 130), None, "nothing after the switch");
        assert_eq!(confirming(&[delivery(3, 110, 401)], 100), None, "a failed delivery confirms nothing");
        assert_eq!(confirming(&[], 0), None);
    }
}
