//! Registration: make GitHub's hook match the spec — keep, update, repair,
//! adopt by URL or create — and switch it to a key the receivers have when
//! the one it signed with left the Secret.
//!
//! The decisions ([`signing_key`], [`plan`], [`plan_new`]) are pure;
//! `register` reads GitHub, acts on them and records the hook in status.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{ResourceExt, runtime::events::EventType};

use super::{ConfigError, publish, target, target_of};
use crate::{
    api::{HookLocation, PreviousHook, WebhookConfig, WebhookConfigStatus, conditions},
    github::{self, DesiredHook, Hook, Target},
    keys::HmacKey,
    operator::{Context, Error},
};

/// The hook the spec asks for; its URL from `spec.url` or the operator's
/// public base URL.
pub(super) fn desired(
    whc: &WebhookConfig,
    public_base_url: Option<&str>,
) -> Result<DesiredHook, ConfigError> {
    let url = match (&whc.spec.url, public_base_url) {
        (Some(url), _) => url.clone(),
        (None, Some(base)) => format!(
            "{}/hooks/{}/{}",
            base.trim_end_matches('/'),
            whc.namespace().unwrap_or_default(),
            whc.name_any()
        ),
        (None, None) => return Err(ConfigError::NoUrl),
    };
    Ok(DesiredHook {
        url,
        events: whc.spec.events.clone(),
        active: whc.spec.active,
        content_type: whc.spec.content_type.as_str().to_owned(),
    })
}

/// What registering did to the hook on GitHub; its Event's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookChange {
    Created,
    /// The recorded hook (this id) was gone from GitHub: a new one was made.
    Recreated(i64),
    Adopted,
    Updated,
    /// Changed on GitHub by someone else: put back.
    Repaired,
    /// The key GitHub signed with left the Secret: switched to one it has.
    SecretReset,
}

impl HookChange {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Recreated(_) => "Recreated",
            Self::Adopted => "Adopted",
            Self::Updated => "Updated",
            Self::Repaired => "Repaired",
            Self::SecretReset => "SecretReset",
        }
    }
}

/// The key GitHub must sign with: the recorded one while the Secret has it,
/// else the newest (and `true`: the one GitHub signed with was lost, so
/// GitHub must be switched whatever the rest of the hook). `keys` is not empty.
pub fn signing_key<'a>(keys: &'a [HmacKey], recorded: Option<&str>) -> (&'a HmacKey, bool) {
    match recorded.and_then(|v| keys.iter().find(|k| k.version() == v)) {
        Some(key) => (key, false),
        None => (keys.last().expect("the key Secret has a key"), true),
    }
}

/// What to do with the hook GitHub has under the recorded id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    Keep,
    Update(HookChange),
    /// No hook under the recorded id (or none recorded): see [`plan_new`].
    Look,
}

/// `spec_seen`: status was written for the current generation, so a
/// difference was made on GitHub, not in the spec.
pub fn plan(current: Option<&Hook>, desired: &DesiredHook, secret_lost: bool, spec_seen: bool) -> Plan {
    match current {
        Some(hook) if desired.matches(hook) && !secret_lost => Plan::Keep,
        Some(_) if secret_lost => Plan::Update(HookChange::SecretReset),
        Some(_) if spec_seen => Plan::Update(HookChange::Repaired),
        Some(_) => Plan::Update(HookChange::Updated),
        None => Plan::Look,
    }
}

/// With no hook under the recorded id (`known`): adopt the hook that already
/// delivers to `url` — never a duplicate — or create one.
pub fn plan_new(existing: &[Hook], url: &str, known: Option<i64>) -> (Option<i64>, HookChange) {
    match existing.iter().find(|h| h.config.url.as_deref() == Some(url)) {
        Some(hook) => (Some(hook.id), HookChange::Adopted),
        None => (None, known.map_or(HookChange::Created, HookChange::Recreated)),
    }
}

/// The spec names another place than the one the recorded hook (`known`)
/// is at: that hook becomes a previous one, to delete once a hook is
/// registered here (so that no event is missed in between), and none is
/// known here yet. A status from before locations were recorded is taken
/// to be here.
pub fn moved(
    recorded: Option<&HookLocation>,
    here: &HookLocation,
    known: Option<i64>,
) -> Option<PreviousHook> {
    match (recorded, known) {
        (Some(then), Some(id)) if then != here => {
            Some(PreviousHook { id, location: then.clone(), error: None })
        }
        _ => None,
    }
}

/// Whether a previous hook is the one now registered (the spec came back
/// to its place and the hook was adopted again): not to be deleted.
pub fn is_current(previous: &PreviousHook, here: &HookLocation, current: i64) -> bool {
    previous.id == current && previous.location.same_place(here)
}

/// The registered hook.
pub(super) struct Registered {
    pub id: i64,
    /// GitHub's word that the hook's latest delivery failed.
    pub last_delivery_failed: bool,
}

/// Makes GitHub's hook match `desired`, signing with the key the receivers
/// have; records it in `status`.
pub(super) async fn register(
    whc: &WebhookConfig,
    ctx: &Context,
    github: &github::Client,
    desired: &DesiredHook,
    keys: &[HmacKey],
    status: &mut WebhookConfigStatus,
    now: Timestamp,
) -> Result<Registered, Error> {
    let target = target(whc);
    let here = whc.location();
    let mut known = status.hook_id;
    if let Some(previous) = moved(status.location.as_ref(), &here, known) {
        let note = format!(
            "the spec moved from hook {} on {}: registering {target}",
            previous.id,
            target_of(&previous.location)
        );
        publish(ctx, whc, EventType::Normal, "Moved", note).await;
        status.previous_hooks.push(previous);
        known = None;
    }
    let (signing, secret_lost) = signing_key(keys, status.signing_key_version.as_deref());
    let secret = String::from_utf8_lossy(signing.secret()).into_owned();
    let spec_seen = status.observed_generation == whc.metadata.generation;
    let synced = sync(github, &target, known, desired, &secret, secret_lost, spec_seen, true).await?;
    let Synced { id, change, last_delivery_failed } = synced.expect("a change is allowed");
    if let Some(change) = change {
        let mut note = format!("hook {id} on {target} delivers to {}", desired.url);
        if let HookChange::Recreated(old) = change {
            note = format!("hook {old} was gone from GitHub; {note}");
        }
        publish(ctx, whc, EventType::Normal, change.reason(), note).await;
    }
    // A new hook starts with deliveries of its own: the position read in
    // another hook's deliveries means nothing for it.
    if known != Some(id) {
        status.recovery = None;
        super::recovery::forget_except(ctx, whc, &[id]);
    }
    let generation = whc.metadata.generation;
    status.hook_id = Some(id);
    status.location = Some(here);
    status.url = Some(desired.url.clone());
    status.secret_name = Some(whc.secret_name());
    status.observed_generation = generation;
    if secret_lost {
        status.signing_key_version = Some(signing.version().to_owned());
        status.confirmed_key_version = Some(signing.version().to_owned());
    }
    let now = Time(now);
    let message = format!("hook {id} on {target}");
    conditions::set(
        &mut status.conditions,
        conditions::HOOK_REGISTERED,
        true,
        "Registered",
        message,
        generation,
        &now,
    );
    let message = "hook registered and secret set";
    conditions::set(&mut status.conditions, conditions::READY, true, "Ready", message, generation, &now);
    Ok(Registered { id, last_delivery_failed })
}

/// What bringing one hook in line found and did.
pub(super) struct Synced {
    pub id: i64,
    /// What changed on GitHub, if anything.
    pub change: Option<HookChange>,
    /// GitHub's word that the hook's latest delivery failed.
    pub last_delivery_failed: bool,
}

/// Makes the hook at `target` recorded as `known` match `desired`, signing
/// with `secret` (`switch`: GitHub must be set to it whatever the rest of
/// the hook): keep, update or repair it, or adopt one that delivers to the
/// URL, or create one ([`plan`], [`plan_new`]). `None` when a change is due
/// and `may_change` is false (a budget of mutations is spent).
#[allow(clippy::too_many_arguments)]
pub(super) async fn sync(
    github: &github::Client,
    target: &Target,
    known: Option<i64>,
    desired: &DesiredHook,
    secret: &str,
    switch: bool,
    spec_seen: bool,
    may_change: bool,
) -> Result<Option<Synced>, github::Error> {
    let current = match known {
        Some(id) => github.get_hook(target, id).await?,
        None => None,
    };
    let last_delivery_failed = current.as_ref().is_some_and(Hook::last_delivery_failed);
    let (id, change) = match plan(current.as_ref(), desired, switch, spec_seen) {
        Plan::Keep => (current.as_ref().expect("kept").id, None),
        _ if !may_change => return Ok(None),
        Plan::Update(change) => {
            let id = current.as_ref().expect("updated").id;
            (github.update_hook(target, id, desired, secret).await?.id, Some(change))
        }
        Plan::Look => {
            let existing = github.list_hooks(target).await?;
            match plan_new(&existing, &desired.url, known) {
                // NB: GitHub masks the secret, so adopting means setting ours.
                (Some(id), change) => {
                    (github.update_hook(target, id, desired, secret).await?.id, Some(change))
                }
                (None, change) => (github.create_hook(target, desired, secret).await?.id, Some(change)),
            }
        }
    };
    Ok(Some(Synced { id, change, last_delivery_failed }))
}

/// Deletes the hooks of earlier locations (`status.previousHooks`), each
/// with the credentials it was registered with, except the one registered
/// now (`current`, None while deleting the WebhookConfig); keeps those
/// GitHub refused, with why. True when none is left.
pub(super) async fn delete_previous(
    whc: &WebhookConfig,
    ctx: &Context,
    status: &mut WebhookConfigStatus,
    current: Option<i64>,
    now: Timestamp,
) -> bool {
    let here = whc.location();
    let mut left = Vec::new();
    for previous in std::mem::take(&mut status.previous_hooks) {
        if current.is_some_and(|id| is_current(&previous, &here, id)) {
            continue;
        }
        let then = whc.at(&previous.location);
        let target = target_of(&previous.location);
        let deleted = match super::secret::github_client(&then, ctx).await {
            Ok(github) => github.delete_hook(&target, previous.id).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match deleted {
            Ok(()) => {
                let note = format!("hook {} on {target}, of an earlier spec, deleted", previous.id);
                publish(ctx, whc, EventType::Normal, "PreviousDeleted", note).await;
            }
            Err(error) => {
                let error = format!("deleting hook {} on {target}: {error}", previous.id);
                left.push(PreviousHook { error: Some(error), ..previous });
            }
        }
    }
    let done = left.is_empty();
    let message = match left.first() {
        None => "no hook of an earlier spec is left on GitHub".to_owned(),
        Some(p) => format!("{} (retried on every reconcile)", p.error.as_deref().unwrap_or_default()),
    };
    let reason = if done { "Deleted" } else { "DeletionFailed" };
    let generation = whc.metadata.generation;
    if !done || status.conditions.iter().any(|c| c.type_ == conditions::PREVIOUS_HOOKS_DELETED) {
        conditions::set(
            &mut status.conditions,
            conditions::PREVIOUS_HOOKS_DELETED,
            done,
            reason,
            message,
            generation,
            &Time(now),
        );
    }
    status.previous_hooks = left;
    done
}

#[cfg(test)]
mod tests;
