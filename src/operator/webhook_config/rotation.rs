//! Rotation of a hook's HMAC key with no rejected delivery, one step per
//! reconcile, each safe to repeat after a crash:
//! 1. **start**: a new key is added to the Secret beside the one GitHub signs with;
//! 2. **await receivers**: until every live receiver reports it loaded it (their Leases);
//! 3. **switch** GitHub to it (`status.signingKeyVersion`) and ask for a ping;
//! 4. **await ping**: a successful ping delivery confirms the switch (`confirmedKeyVersion`);
//! 5. **drop old**: `overlap` after the switch, the older keys leave the Secret.
//!
//! Then it is **in sync** until the next one is due (by age or the annotation).
//!
//! A failure anywhere leaves every key in place and the step is retried, so
//! GitHub never signs with a key the receivers do not have. The decisions
//! ([`step`], [`ping_outcome`]) are pure; `rotate` gathers the facts and acts.

use std::time::Duration;

use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, api::ListParams, runtime::events::EventType};

use super::{publish, secret::edit_keys};
use crate::{
    api::{ROTATE_ANNOTATION, WebhookConfig, WebhookConfigStatus, conditions},
    github::{self, Delivery, DesiredHook, Target},
    keys::{HmacKey, receiver_lease_selector, replicas_missing},
    operator::{self, Context, Error},
};

/// While a rotation step waits, look again this soon.
const ROTATION_POLL: Duration = Duration::from_secs(2);
/// Ask for another ping when none succeeded for this long after the switch.
const REPING_AFTER_SECS: i64 = 10;

/// What a rotation decides from.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub now: i64,
    /// The versions in the key Secret, oldest first (not empty).
    pub versions: Vec<&'a str>,
    /// The version GitHub signs with (`status.signingKeyVersion`).
    pub signing: &'a str,
    /// A successful ping confirmed GitHub signs with it.
    pub confirmed: bool,
    /// When GitHub was switched to it (Unix seconds; 0 when never).
    pub switched: i64,
    /// The annotation asks for a rotation not yet served.
    pub asked: bool,
    pub interval_secs: i64,
    pub overlap_secs: i64,
}

/// The next step of a rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Add a key of this version beside the signing one (`asked`: by the annotation).
    Start { version: i64, asked: bool },
    /// The newest key is not GitHub's yet: switch once every receiver has it.
    Switch { to: String },
    /// GitHub signs with the newest key; wait for a successful ping.
    AwaitPing,
    /// Confirmed: remove `drop` from the Secret; the previous key stays valid
    /// until `overlap_until` when set; look again at `next`.
    InSync { drop: Vec<String>, overlap_until: Option<i64>, next: i64 },
}

pub fn step(f: &Facts) -> Step {
    let newest = *f.versions.last().expect("the key Secret has a key");
    let signed_since = f.signing.parse::<i64>().unwrap_or(0);
    let due_at = signed_since + f.interval_secs;
    if newest != f.signing {
        return Step::Switch { to: newest.to_owned() };
    }
    if !f.confirmed {
        return Step::AwaitPing;
    }
    if f.asked || f.now >= due_at {
        // NB: versions order keys; a second rotation within a second still sorts after.
        return Step::Start { version: f.now.max(signed_since + 1), asked: f.asked };
    }
    let older: Vec<String> = f.versions.iter().filter(|v| **v < f.signing).map(|v| (*v).to_owned()).collect();
    let drop_at = f.switched + f.overlap_secs;
    match (older.is_empty(), f.now >= drop_at) {
        (true, _) => Step::InSync { drop: vec![], overlap_until: None, next: due_at },
        (false, true) => Step::InSync { drop: older, overlap_until: None, next: due_at },
        (false, false) => Step::InSync { drop: vec![], overlap_until: Some(drop_at), next: drop_at },
    }
}

/// What GitHub's deliveries say about the switch made at `switched`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ping<'a> {
    /// This ping, delivered after the switch, succeeded.
    Confirmed(&'a Delivery),
    /// None succeeded yet; `last` is the newest ping's HTTP status, `again`
    /// whether to ask for another.
    Waiting { last: Option<i64>, again: bool },
}

/// Deliveries newest first. Only pings strictly after the switch count
/// (GitHub's timestamps have whole seconds; one in the same second is asked
/// again).
pub fn ping_outcome(deliveries: &[Delivery], switched: i64, now: i64) -> Ping<'_> {
    let mut pings =
        deliveries.iter().filter(|d| d.event == "ping" && d.delivered_unix() > switched).peekable();
    let newest = pings.peek().copied();
    if let Some(ok) = pings.find(|d| d.succeeded()) {
        return Ping::Confirmed(ok);
    }
    let last_ping = newest.map_or(switched, Delivery::delivered_unix);
    Ping::Waiting { last: newest.map(|d| d.status_code), again: now - last_ping >= REPING_AFTER_SECS }
}

/// Why GitHub cannot be switched to key `version` of Secret `secret`
/// (`namespace/name`) yet: the live receivers that have not loaded it, in
/// words; `None` when every one has.
pub(crate) async fn receivers_lacking(
    ctx: &Context,
    secret: &str,
    version: &str,
    now: Timestamp,
) -> Result<Option<String>, Error> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.lease_namespace);
    let leases = leases
        .list(&ListParams::default().labels(&receiver_lease_selector()))
        .await
        .map_err(operator::Step::ReceiverLeases.error())?;
    let missing = replicas_missing(&leases.items, now, secret, version);
    Ok((!missing.is_empty()).then(|| {
        format!(
            "key {version} is in the Secret; {} receiver(s) have not loaded it yet: {}",
            missing.len(),
            missing.join(", ")
        )
    }))
}

/// One hook a rotation switches: every hook of the WebhookConfig signs with
/// the same key, and a key is confirmed once a ping of each one succeeded.
pub(super) struct Member {
    pub target: Target,
    pub id: i64,
    /// The key version it was last set to sign with.
    pub signing: Option<String>,
    /// The newest key version a successful ping of this hook confirmed.
    pub confirmed: Option<String>,
}

/// Takes the next step of a rotation that is due or under way for all of
/// `hooks` (none: nothing to switch yet), recording it in `status` (which the
/// caller writes even when this fails). Returns how soon to look again.
#[allow(clippy::too_many_arguments)]
pub(super) async fn rotate(
    whc: &WebhookConfig,
    ctx: &Context,
    github: &github::Client,
    desired: &DesiredHook,
    hooks: &mut [Member],
    mut keys: Vec<HmacKey>,
    status: &mut WebhookConfigStatus,
    now: Timestamp,
) -> Result<Duration, Error> {
    let generation = whc.metadata.generation;
    let in_sync = |status: &mut WebhookConfigStatus, ok: bool, reason: &str, message: String| {
        let now = Time(now);
        conditions::set(
            &mut status.conditions,
            conditions::SECRET_IN_SYNC,
            ok,
            reason,
            message,
            generation,
            &now,
        )
    };
    let requested = whc.annotations().get(ROTATE_ANNOTATION).cloned();
    let rotation = &whc.spec.secret_rotation;
    loop {
        let Some(signing) = status.signing_key_version.clone() else {
            // NB: no hook registered yet: its first key is chosen then.
            return Ok(ROTATION_POLL);
        };
        let facts = Facts {
            now: now.as_second(),
            versions: keys.iter().map(HmacKey::version).collect(),
            signing: &signing,
            confirmed: status.confirmed_key_version.as_deref() == Some(signing.as_str()),
            switched: status.last_rotation_time.as_ref().map_or(0, |t| t.0.as_second()),
            asked: requested.is_some() && requested != status.rotation_request,
            interval_secs: rotation.interval.get().as_secs() as i64,
            overlap_secs: rotation.overlap.get().as_secs() as i64,
        };
        let asked = facts.asked;
        match step(&facts) {
            Step::Start { version, asked } => {
                let key = HmacKey::generate(version as u64);
                edit_keys(whc, ctx, Some(&key), &[]).await?;
                status.rotation_request.clone_from(&requested);
                let why = if asked {
                    format!("the {ROTATE_ANNOTATION} annotation")
                } else {
                    "the rotation interval".into()
                };
                let note = format!(
                    "key {} added beside key {signing} ({why}); waiting for receivers to load it",
                    key.version()
                );
                publish(ctx, whc, EventType::Normal, "RotationStarted", note).await;
                keys.push(key);
                // Straight on to the switch: the receivers may be quick.
            }
            Step::Switch { to } => {
                if asked {
                    // Already rotating: this request is served by the rotation under way.
                    status.rotation_request.clone_from(&requested);
                }
                let secret = format!("{}/{}", whc.namespace().unwrap_or_default(), whc.secret_name());
                if let Some(message) = receivers_lacking(ctx, &secret, &to, now).await? {
                    in_sync(status, false, "WaitingForReceivers", message);
                    return Ok(ROTATION_POLL);
                }
                let key = keys.last().expect("switching to the newest key");
                let secret = String::from_utf8_lossy(key.secret()).into_owned();
                // NB: a hook switched before another one failed signs with a
                // key the receivers have; the switch is repeated for all.
                for hook in hooks.iter_mut().filter(|h| h.signing.as_ref() != Some(&to)) {
                    if let Err(error) = github.update_hook(&hook.target, hook.id, desired, &secret).await {
                        let message = format!(
                            "switching hook {} on {} to key {to} failed; key {signing} stays valid: {error}",
                            hook.id, hook.target
                        );
                        in_sync(status, false, "SwitchFailed", message);
                        return Err(error.into());
                    }
                    hook.signing = Some(to.clone());
                }
                status.signing_key_version = Some(to.clone());
                // NB: the clock read after GitHub's answer: pings strictly after it confirm.
                status.last_rotation_time = Some(Time(Timestamp::now()));
                let message = format!("GitHub signs with key {to}; waiting for a successful ping delivery");
                in_sync(status, false, "AwaitingPing", message);
                for hook in hooks.iter() {
                    github.ping_hook(&hook.target, hook.id).await?;
                }
                return Ok(ROTATION_POLL);
            }
            Step::AwaitPing => {
                let mut waiting = Vec::new();
                let mut confirmed_by = None;
                for hook in hooks.iter_mut().filter(|h| h.confirmed.as_ref() != Some(&signing)) {
                    let deliveries = github.deliveries_page(&hook.target, hook.id, None).await?.deliveries;
                    match ping_outcome(&deliveries, facts.switched, facts.now) {
                        Ping::Confirmed(ok) => {
                            hook.confirmed = Some(signing.clone());
                            confirmed_by = Some(ok.guid.clone());
                        }
                        Ping::Waiting { last, again } => {
                            let last = last.map_or("none yet".to_owned(), |code| format!("HTTP {code}"));
                            waiting.push(format!("hook {} on {} (last: {last})", hook.id, hook.target));
                            if again {
                                github.ping_hook(&hook.target, hook.id).await?;
                            }
                        }
                    }
                }
                if let Some(first) = waiting.first() {
                    let message = format!(
                        "GitHub signs with key {signing}; no successful ping delivery yet from {} of {} hook(s): {first}; older keys stay valid",
                        waiting.len(),
                        hooks.len()
                    );
                    in_sync(status, false, "AwaitingPing", message);
                    return Ok(ROTATION_POLL * 2);
                }
                status.confirmed_key_version = Some(signing.clone());
                let by = match (hooks.len(), confirmed_by) {
                    (1, Some(guid)) => format!("ping delivery {guid} succeeded"),
                    (n, _) => format!("pings of all {n} hooks succeeded"),
                };
                let note = format!(
                    "GitHub signs with key {signing}: {by}; older keys leave the Secret after {}",
                    rotation.overlap
                );
                publish(ctx, whc, EventType::Normal, "Rotated", note).await;
                // On to the old keys.
            }
            Step::InSync { drop, overlap_until, next } => {
                if !drop.is_empty() {
                    let older: Vec<&HmacKey> =
                        keys.iter().filter(|k| drop.iter().any(|v| v == k.version())).collect();
                    edit_keys(whc, ctx, None, &older).await?;
                    let note =
                        format!("keys {} removed from the Secret; key {signing} remains", drop.join(", "));
                    publish(ctx, whc, EventType::Normal, "OldKeysRemoved", note).await;
                }
                let message = match overlap_until {
                    None => format!("GitHub signs with key {signing}, the only key in the Secret"),
                    Some(_) => format!(
                        "GitHub signs with key {signing}; the previous key stays valid until the overlap ends"
                    ),
                };
                in_sync(status, true, "InSync", message);
                return Ok(Duration::from_secs((next - facts.now).max(1) as u64));
            }
        }
    }
}

#[cfg(test)]
mod tests;
