//! Many repositories per WebhookConfig (`spec.repositories`): a hook on
//! each, all delivering to the WebhookConfig's URL and signing with its one
//! key Secret, each with its state in `status.repositories`.
//!
//! The list is compared with the entries in status ([`entries`]): a new
//! repository is registered like a single hook (keep, update, repair, adopt
//! by URL, create: [`register::plan`], [`register::plan_new`]); one that left
//! the list stays `Deleting` until GitHub agrees its hook is gone, and a hook
//! another listed entry holds (the same repository spelled in another case)
//! is never deleted. GitHub asks for mutations one at a time with a pause
//! (the client paces them); a reconcile makes at most
//! [`MUTATIONS_PER_RECONCILE`] and comes back at once for the rest, so status
//! shows the progress of a long list.
//!
//! Every hook signs with the key `status.signingKeyVersion` names except
//! while a rotation switches them one by one; each entry records the key it
//! was set to ([`key_for`]), so a switch cut short is finished, never undone.

use std::collections::HashSet;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::runtime::events::EventType;

use super::{
    publish,
    register::{self, HookChange, Synced},
    rotation::Member,
};
use crate::{
    api::{RepositoryHook, RepositoryHookState as State, WebhookConfig, WebhookConfigStatus, conditions},
    github::{self, DesiredHook, Target},
    keys::HmacKey,
    operator::Context,
};

/// Creates, updates and deletes one reconcile sends at most.
pub const MUTATIONS_PER_RECONCILE: usize = 10;

/// The entries the list asks for: listed ones kept in the list's order (a
/// new one `Registering`), then unlisted ones that still have a hook,
/// `Deleting`; unlisted ones without a hook are dropped. Repositories are
/// compared without regard to case, as GitHub does.
pub fn entries(listed: &[String], mut recorded: Vec<RepositoryHook>) -> Vec<RepositoryHook> {
    let mut out = Vec::with_capacity(listed.len());
    for repository in listed {
        match recorded.iter().position(|e| e.repository.eq_ignore_ascii_case(repository)) {
            Some(i) => {
                let mut entry = recorded.swap_remove(i);
                if entry.state == State::Deleting {
                    entry.state = State::Registering;
                    entry.message = None;
                }
                entry.repository.clone_from(repository);
                out.push(entry);
            }
            None => out.push(RepositoryHook { repository: repository.clone(), ..Default::default() }),
        }
    }
    let listed_ids: HashSet<i64> = out.iter().filter_map(|e| e.hook_id).collect();
    recorded.sort_by(|a, b| a.repository.cmp(&b.repository));
    for mut entry in recorded {
        // NB: a hook a listed entry holds is that entry's, never deleted.
        if entry.hook_id.is_some_and(|id| !listed_ids.contains(&id)) {
            if entry.state != State::Deleting {
                entry.state = State::Deleting;
                entry.message = None;
            }
            out.push(entry);
        }
    }
    out
}

/// The key a hook must sign with: the one it was set to while the Secret
/// has it, else the WebhookConfig's (`signing`), and `true` when that
/// means switching it (or it is new).
pub fn key_for<'a>(keys: &'a [HmacKey], recorded: Option<&str>, signing: &'a HmacKey) -> (&'a HmacKey, bool) {
    match recorded.and_then(|v| keys.iter().find(|k| k.version() == v)) {
        Some(key) => (key, false),
        None => (signing, true),
    }
}

/// The Ready condition of the whole list: status, reason, message.
pub fn summary(entries: &[RepositoryHook]) -> (bool, &'static str, String) {
    let count = |s: State| entries.iter().filter(|e| e.state == s).count();
    let listed = entries.len() - count(State::Deleting);
    let (registered, failed, deleting) =
        (count(State::Registered), count(State::Failed), count(State::Deleting));
    let first_failed = entries.iter().find(|e| e.state == State::Failed);
    match first_failed {
        Some(e) => (
            false,
            "RepositoriesFailed",
            format!(
                "{failed} of {listed} repositories failed, first {}: {}",
                e.repository,
                e.message.as_deref().unwrap_or("unknown")
            ),
        ),
        None if registered < listed => {
            (false, "Registering", format!("{registered} of {listed} repositories registered; more follow"))
        }
        None if deleting > 0 => {
            let message = format!(
                "hooks on all {listed} repositories registered; {deleting} hook(s) of removed repositories being deleted"
            );
            (true, "Ready", message)
        }
        None => (true, "Ready", format!("hooks on all {listed} repositories registered and secret set")),
    }
}

/// What registering the list found: whether more is left for the next
/// reconcile, and which hooks' latest delivery failed (recovery evidence).
pub(super) struct Registered {
    pub more: bool,
    pub failing: HashSet<i64>,
}

/// Brings every listed repository's hook in line with `desired` and deletes
/// the hooks of repositories that left the list, at most
/// [`MUTATIONS_PER_RECONCILE`] changes; records it all in `status`.
pub(super) async fn register(
    whc: &WebhookConfig,
    ctx: &Context,
    github: &github::Client,
    desired: &DesiredHook,
    keys: &[HmacKey],
    status: &mut WebhookConfigStatus,
    now: Timestamp,
) -> Registered {
    let listed = whc.spec.repositories.as_deref().unwrap_or_default();
    let mut entries = entries(listed, std::mem::take(&mut status.repositories));
    let (signing, lost) = register::signing_key(keys, status.signing_key_version.as_deref());
    if lost {
        status.signing_key_version = Some(signing.version().to_owned());
        status.confirmed_key_version = Some(signing.version().to_owned());
    }
    let spec_seen = status.observed_generation == whc.metadata.generation;
    let mut budget = MUTATIONS_PER_RECONCILE;
    let mut more = false;
    let mut failing = HashSet::new();
    let mut changes: Vec<(HookChange, String)> = Vec::new();
    let mut deleted = Vec::new();
    for entry in &mut entries {
        let target = Target::Repository(entry.repository.clone());
        if entry.state == State::Deleting {
            let Some(id) = entry.hook_id else { continue };
            if budget == 0 {
                more = true;
                continue;
            }
            budget -= 1;
            match github.delete_hook(&target, id).await {
                Ok(()) => {
                    entry.hook_id = None;
                    deleted.push(entry.repository.clone());
                }
                Err(e) => entry.message = Some(format!("deleting hook {id}: {}", github::short(e))),
            }
            continue;
        }
        let (key, switch) = key_for(keys, entry.signing_key_version.as_deref(), signing);
        let secret = String::from_utf8_lossy(key.secret()).into_owned();
        let synced =
            register::sync(github, &target, entry.hook_id, desired, &secret, switch, spec_seen, budget > 0)
                .await;
        match synced {
            Ok(None) => more = true,
            Ok(Some(Synced { id, change, last_delivery_failed })) => {
                if let Some(change) = change {
                    budget -= 1;
                    if entry.hook_id != Some(id) {
                        // A new hook starts with deliveries of its own.
                        entry.recovery = None;
                    }
                    entry.signing_key_version = Some(key.version().to_owned());
                    if switch {
                        entry.confirmed_key_version = Some(key.version().to_owned());
                    }
                    changes.push((change, entry.repository.clone()));
                }
                entry.hook_id = Some(id);
                if last_delivery_failed {
                    failing.insert(id);
                }
                entry.state = State::Registered;
                entry.message = None;
            }
            Err(e) => {
                entry.state = State::Failed;
                entry.message = Some(match e {
                    github::Error::NotFound(_) => {
                        "repository not found, or the credentials cannot see it or manage its hooks".into()
                    }
                    e => github::short(e),
                });
            }
        }
    }
    entries.retain(|e| e.state != State::Deleting || e.hook_id.is_some());
    announce(whc, ctx, &changes, &deleted, &desired.url).await;

    let generation = whc.metadata.generation;
    let (ready, reason, message) = summary(&entries);
    let registered = entries.iter().filter(|e| e.state == State::Registered).count();
    let now = Time(now);
    let hooks = format!("{registered} hook(s) registered");
    conditions::set(
        &mut status.conditions,
        conditions::HOOK_REGISTERED,
        ready,
        reason,
        hooks,
        generation,
        &now,
    );
    conditions::set(&mut status.conditions, conditions::READY, ready, reason, message, generation, &now);
    status.repositories = entries;
    status.hook_id = None;
    status.recovery = None;
    status.location = Some(whc.location());
    status.url = Some(desired.url.clone());
    status.secret_name = Some(whc.secret_name());
    status.observed_generation = generation;
    Registered { more, failing }
}

/// One Event per kind of change, naming the first repositories.
async fn announce(
    whc: &WebhookConfig,
    ctx: &Context,
    changes: &[(HookChange, String)],
    deleted: &[String],
    url: &str,
) {
    let named = |repos: &[&String]| {
        let first: Vec<&str> = repos.iter().take(5).map(|r| r.as_str()).collect();
        let more = repos.len().saturating_sub(first.len());
        if more > 0 { format!("{} and {more} more", first.join(", ")) } else { first.join(", ") }
    };
    let mut kinds: Vec<&'static str> = changes.iter().map(|(c, _)| c.reason()).collect();
    kinds.dedup();
    for kind in kinds {
        let repos: Vec<&String> =
            changes.iter().filter(|(c, _)| c.reason() == kind).map(|(_, r)| r).collect();
        let note = format!("hooks on {} delivering to {url}: {kind}", named(&repos));
        publish(ctx, whc, EventType::Normal, kind, note).await;
    }
    if !deleted.is_empty() {
        let repos: Vec<&String> = deleted.iter().collect();
        let note = format!("hooks on {} deleted: no longer in spec.repositories", named(&repos));
        publish(ctx, whc, EventType::Normal, "RepositoriesRemoved", note).await;
    }
}

/// The hooks a rotation switches: every listed one with a hook.
pub(super) fn members(status: &WebhookConfigStatus) -> Vec<Member> {
    status
        .repositories
        .iter()
        .filter(|e| e.state != State::Deleting)
        .filter_map(|e| {
            Some(Member {
                target: Target::Repository(e.repository.clone()),
                id: e.hook_id?,
                signing: e.signing_key_version.clone(),
                confirmed: e.confirmed_key_version.clone(),
            })
        })
        .collect()
}

/// Writes what a rotation did to its members back into their entries.
pub(super) fn after_rotation(status: &mut WebhookConfigStatus, members: Vec<Member>) {
    for member in members {
        if let Some(e) = status.repositories.iter_mut().find(|e| e.hook_id == Some(member.id)) {
            e.signing_key_version = member.signing;
            e.confirmed_key_version = member.confirmed;
        }
    }
}

#[cfg(test)]
mod tests;
