//! WebhookConfig controller: the GitHub hook and its key Secret.
//!
//! Shaped around `kube::runtime::finalizer`: `apply` makes GitHub match the
//! spec (create, adopt by URL, update, put back what was deleted or changed on
//! GitHub), rotates the secret when due and recovers the deliveries that
//! failed ([`recovery`]); `cleanup` deletes the hook (already gone counts as done). The key
//! Secret is owned by the WebhookConfig, so Kubernetes deletes it with it.
//!
//! Rotation, one step per reconcile, each step safe to repeat after a crash:
//! 1. a new key is added to the Secret beside the one GitHub signs with;
//! 2. wait until every live receiver reports it loaded it (their Leases);
//! 3. switch GitHub to it (`status.signingKeyVersion`) and ask for a ping;
//! 4. a successful ping delivery confirms the switch (`confirmedKeyVersion`);
//! 5. `overlap` after the switch, the older keys leave the Secret.
//!
//! A failure anywhere leaves every key in place and the step is retried, so
//! GitHub never signs with a key the receivers do not have.

pub mod recovery;

pub use recovery::Way as RecoveryWay;

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    ByteString,
    api::{coordination::v1::Lease, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{Event as Finalizer, finalizer},
    },
};

use super::{Context, Error, apply_status};
use crate::{
    api::{
        DeliverySummary, ROTATE_ANNOTATION, RateLimitStatus, WebhookConfig, WebhookConfigStatus, conditions,
    },
    github::{self, Auth, DesiredHook, Target},
    keys::{HmacKey, MANAGED_BY, RECEIVER_COMPONENT, keys_from_secret, replicas_missing},
};

/// While a rotation step waits, look again this soon.
const ROTATION_POLL: Duration = Duration::from_secs(2);
/// Ask for another ping when none succeeded for this long after the switch.
const REPING_AFTER_SECS: i64 = 10;

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

/// A data entry of a Secret in the WebhookConfig's namespace, trimmed.
async fn secret_value(ctx: &Context, ns: &str, name: &str, key: &str) -> Result<Vec<u8>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(Error::Kube)?
        .ok_or_else(|| Error::Config(format!("Secret {name} not found in namespace {ns}")))?;
    secret
        .data
        .and_then(|mut d| d.remove(key))
        .map(|v| v.0.trim_ascii().to_vec())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::Config(format!("Secret {name} has no (or an empty) key {key:?}")))
}

async fn github_client(whc: &WebhookConfig, ctx: &Context) -> Result<github::Client, Error> {
    let ns = whc.namespace().unwrap_or_default();
    let spec = &whc.spec.github;
    let (auth, account) = match (&spec.token_secret_ref, &spec.app) {
        (Some(r), _) => {
            let token = secret_value(ctx, &ns, &r.name, &r.key).await?;
            let token = String::from_utf8(token)
                .map_err(|_| Error::Config(format!("Secret {} key {:?} is not text", r.name, r.key)))?;
            (Auth::Token(token), format!("{ns}/{}", r.name))
        }
        (None, Some(app)) => {
            let r = &app.private_key_secret_ref;
            let pem = secret_value(ctx, &ns, &r.name, &r.key).await?;
            (
                Auth::app(app.app_id, app.installation_id, &pem)?,
                format!("app/{}/installation/{}", app.app_id, app.installation_id),
            )
        }
        // NB: the schema's CEL rule makes this unreachable for stored objects.
        (None, None) => return Err(Error::Config("set github.tokenSecretRef or github.app".into())),
    };
    Ok(github::Client::new(ctx.github.clone(), &spec.api_url, auth, &account))
}

fn secrets_api(whc: &WebhookConfig, ctx: &Context) -> Api<Secret> {
    Api::namespaced(ctx.client.clone(), &whc.namespace().unwrap_or_default())
}

/// The keys of the key Secret, oldest first; the Secret is created (with a
/// first key) when missing or keyless.
async fn ensure_keys(whc: &WebhookConfig, ctx: &Context) -> Result<Vec<HmacKey>, Error> {
    let name = whc.secret_name();
    let secrets = secrets_api(whc, ctx);
    let existing = secrets.get_opt(&name).await.map_err(Error::Kube)?;
    let keys = existing.as_ref().map(keys_from_secret).unwrap_or_default();
    if !keys.is_empty() {
        return Ok(keys);
    }
    let key = HmacKey::generate(Timestamp::now().as_second() as u64);
    let mut secret = crate::keys::key_secret(&name, &whc.name_any(), &[&key]);
    secret.metadata.owner_references = whc.controller_owner_ref(&()).map(|o| vec![o]);
    match existing {
        None => secrets.create(&PostParams::default(), &secret).await.map_err(Error::Kube)?,
        Some(_) => secrets.replace(&name, &PostParams::default(), &secret).await.map_err(Error::Kube)?,
    };
    Ok(vec![key])
}

/// Adds `add` to the key Secret and removes the keys `remove`, in one patch.
async fn edit_keys(
    whc: &WebhookConfig,
    ctx: &Context,
    add: Option<&HmacKey>,
    remove: &[&HmacKey],
) -> Result<(), Error> {
    let mut data = serde_json::Map::new();
    if let Some(key) = add {
        data.insert(key.entry_name(), serde_json::to_value(ByteString(key.secret().to_vec())).expect("JSON"));
    }
    for key in remove {
        data.insert(key.entry_name(), serde_json::Value::Null);
    }
    let patch = serde_json::json!({ "data": data });
    secrets_api(whc, ctx)
        .patch(&whc.secret_name(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::Kube)?;
    Ok(())
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
    // NB: the controller's cache can lag behind the status this controller
    // wrote a moment ago (a reconcile woken by the new key Secret would not
    // know the hook it just created, and adopt it again). Decisions that
    // call GitHub are taken on the object as the API server has it now.
    let api: Api<WebhookConfig> = Api::namespaced(ctx.client.clone(), &whc.namespace().unwrap_or_default());
    let Some(whc) = api.get_opt(&whc.name_any()).await.map_err(Error::Kube)? else {
        return Ok(Action::await_change());
    };
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
    let keys = ensure_keys(whc, ctx).await?;
    let target = target(whc);
    let mut status = whc.status.clone().unwrap_or_default();
    let known = status.hook_id;

    // GitHub signs with the recorded key, as long as the Secret still has it.
    // When it does not (the Secret was deleted or emptied), GitHub must be
    // switched to a key the receivers have, whatever the rest of the hook.
    let recorded = status.signing_key_version.as_deref().and_then(|v| keys.iter().find(|k| k.version() == v));
    let secret_lost = recorded.is_none();
    let signing = recorded.or(keys.last()).expect("ensure_keys returns a key").clone();
    let secret = String::from_utf8_lossy(signing.secret()).into_owned();

    let current = match known {
        Some(id) => github.get_hook(&target, id).await?,
        None => None,
    };
    // GitHub's word that the latest delivery failed: recover without waiting.
    let current_failed = current.as_ref().is_some_and(github::Hook::last_delivery_failed);
    let (hook, change) = match current {
        Some(hook) if desired.matches(&hook) && !secret_lost => (hook, None),
        Some(hook) => {
            let drift = status.observed_generation == whc.metadata.generation;
            let updated = github.update_hook(&target, hook.id, &desired, &secret).await?;
            let change = match (secret_lost, drift) {
                (true, _) => HookChange::SecretReset,
                (false, true) => HookChange::Repaired,
                (false, false) => HookChange::Updated,
            };
            (updated, Some(change))
        }
        None => {
            // Never a duplicate: adopt a hook that already delivers to our URL.
            let existing = github.list_hooks(&target).await?;
            match existing.into_iter().find(|h| h.config.url.as_deref() == Some(desired.url.as_str())) {
                // NB: GitHub masks the secret, so adopting means setting ours.
                Some(hook) => (
                    github.update_hook(&target, hook.id, &desired, &secret).await?,
                    Some(HookChange::Adopted),
                ),
                None => {
                    let created = github.create_hook(&target, &desired, &secret).await?;
                    let change = known.map_or(HookChange::Created, HookChange::Recreated);
                    (created, Some(change))
                }
            }
        }
    };
    if let Some(change) = change {
        let mut note = format!("hook {} on {target} delivers to {}", hook.id, desired.url);
        if let HookChange::Recreated(old) = change {
            note = format!("hook {old} was gone from GitHub; {note}");
        }
        publish(ctx, whc, EventType::Normal, change.reason(), note).await;
    }
    // A new hook starts with deliveries of its own: the position read in
    // another hook's deliveries means nothing for it.
    if known != Some(hook.id) {
        status.recovery = None;
    }

    let generation = whc.metadata.generation;
    status.hook_id = Some(hook.id);
    status.url = Some(desired.url.clone());
    status.secret_name = Some(whc.secret_name());
    status.observed_generation = generation;
    if secret_lost {
        status.signing_key_version = Some(signing.version().to_owned());
        status.confirmed_key_version = Some(signing.version().to_owned());
    }
    let now = Time(Timestamp::now());
    conditions::set(
        &mut status.conditions,
        conditions::HOOK_REGISTERED,
        true,
        "Registered",
        format!("hook {} on {target}", hook.id),
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

    let hook = HookRef { github: &github, target: &target, id: hook.id, desired: &desired };
    // NB: status is written even when a step failed, so it shows how far it got.
    let rotation = rotate(whc, ctx, &hook, keys, &mut status).await;
    let (next_recovery, newest) = recovery::run(whc, ctx, &hook, &mut status.recovery, current_failed).await;
    if let Some(newest) = &newest {
        status.last_delivery = Some(DeliverySummary {
            guid: newest.guid.clone(),
            event: newest.event.clone(),
            status_code: newest.status_code as i32,
            delivered_at: Time(Timestamp::from_second(newest.delivered_unix()).unwrap_or_default()),
        });
    }
    status.rate_limit = rate_limit_status(&github);
    write_status(whc, ctx, &status).await?;
    let next_rotation_step = rotation?;
    let next = [Some(ctx.resync), next_rotation_step, next_recovery].into_iter().flatten().min();
    Ok(Action::requeue(next.unwrap_or(ctx.resync)))
}

/// What registering did to the hook on GitHub; its Event's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HookChange {
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
    fn reason(self) -> &'static str {
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

/// The registered hook and how to reach it.
struct HookRef<'a> {
    github: &'a github::Client,
    target: &'a Target,
    id: i64,
    desired: &'a DesiredHook,
}

/// Takes the next step of a rotation that is due or under way, recording it
/// in `status` (which the caller writes even when this fails). Returns how
/// soon to look again.
async fn rotate(
    whc: &WebhookConfig,
    ctx: &Context,
    hook: &HookRef<'_>,
    mut keys: Vec<HmacKey>,
    status: &mut WebhookConfigStatus,
) -> Result<Option<Duration>, Error> {
    let now = Timestamp::now().as_second();
    let generation = whc.metadata.generation;
    let in_sync = |status: &mut WebhookConfigStatus, ok: bool, reason: &str, message: String| {
        conditions::set(
            &mut status.conditions,
            conditions::SECRET_IN_SYNC,
            ok,
            reason,
            message,
            generation,
            &Time(Timestamp::now()),
        )
    };
    let signing = status.signing_key_version.clone().expect("set by register");
    let confirmed = status.confirmed_key_version.as_deref() == Some(signing.as_str());
    let signed_since = signing.parse::<i64>().unwrap_or(0);
    let due_at = signed_since + whc.spec.secret_rotation.interval.get().as_secs() as i64;

    // 1. Due (by age, or asked for by annotation): a new key beside the old.
    let requested = whc.annotations().get(ROTATE_ANNOTATION).cloned();
    let asked = requested.is_some() && requested != status.rotation_request;
    let newest = keys.last().expect("ensure_keys returns a key").version().to_owned();
    if newest == signing && confirmed && (asked || now >= due_at) {
        // NB: versions order keys; a second rotation within a second still sorts after.
        let version = now.max(signed_since + 1);
        let key = HmacKey::generate(version as u64);
        edit_keys(whc, ctx, Some(&key), &[]).await?;
        status.rotation_request = requested;
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
    } else if asked && newest != signing {
        // Already rotating: this request is served by the rotation under way.
        status.rotation_request = requested;
    }
    let newest = keys.last().expect("non-empty").clone();

    // 2-3. Receivers have the new key: switch GitHub to it, and ping.
    if newest.version() != signing {
        let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.lease_namespace);
        let selector =
            format!("{}={},app.kubernetes.io/component={RECEIVER_COMPONENT}", MANAGED_BY.0, MANAGED_BY.1);
        let leases = leases.list(&ListParams::default().labels(&selector)).await.map_err(Error::Kube)?;
        let secret = format!("{}/{}", whc.namespace().unwrap_or_default(), whc.secret_name());
        let missing = replicas_missing(&leases.items, Timestamp::now(), &secret, newest.version());
        if !missing.is_empty() {
            let message = format!(
                "key {} is in the Secret; {} receiver(s) have not loaded it yet: {}",
                newest.version(),
                missing.len(),
                missing.join(", ")
            );
            in_sync(status, false, "WaitingForReceivers", message);
            return Ok(Some(ROTATION_POLL));
        }
        let secret = String::from_utf8_lossy(newest.secret()).into_owned();
        if let Err(error) = hook.github.update_hook(hook.target, hook.id, hook.desired, &secret).await {
            let message = format!(
                "switching GitHub to key {} failed; key {signing} stays valid: {error}",
                newest.version()
            );
            in_sync(status, false, "SwitchFailed", message);
            return Err(error.into());
        }
        status.signing_key_version = Some(newest.version().to_owned());
        status.last_rotation_time = Some(Time(Timestamp::now()));
        let message =
            format!("GitHub signs with key {}; waiting for a successful ping delivery", newest.version());
        in_sync(status, false, "AwaitingPing", message);
        hook.github.ping_hook(hook.target, hook.id).await?;
        return Ok(Some(ROTATION_POLL));
    }

    // 4. Confirm the switch by a ping delivered (and accepted) after it.
    let switched = status.last_rotation_time.as_ref().map_or(0, |t| t.0.as_second());
    if !confirmed {
        let deliveries = hook.github.deliveries_page(hook.target, hook.id, None).await?.deliveries;
        // NB: strictly after the switch (GitHub's timestamps have whole
        // seconds); a ping in the same second is not counted, and asked again.
        let pings: Vec<_> =
            deliveries.iter().filter(|d| d.event == "ping" && d.delivered_unix() > switched).collect();
        if let Some(ok) = pings.iter().find(|d| d.succeeded()) {
            status.confirmed_key_version = Some(signing.clone());
            let note = format!(
                "GitHub signs with key {signing}: ping delivery {} succeeded; older keys leave the Secret after {}",
                ok.guid, whc.spec.secret_rotation.overlap
            );
            publish(ctx, whc, EventType::Normal, "Rotated", note).await;
        } else {
            let last = pings.first().map_or("none yet".to_owned(), |d| format!("HTTP {}", d.status_code));
            let message = format!(
                "GitHub signs with key {signing}; no successful ping delivery yet (last: {last}); older keys stay valid"
            );
            in_sync(status, false, "AwaitingPing", message);
            let last_ping = pings.first().map_or(switched, |d| d.delivered_unix());
            if now - last_ping >= REPING_AFTER_SECS {
                hook.github.ping_hook(hook.target, hook.id).await?;
            }
            return Ok(Some(ROTATION_POLL * 2));
        }
    }

    // 5. Older keys leave `overlap` after the switch.
    let overlap = whc.spec.secret_rotation.overlap.get().as_secs() as i64;
    let older: Vec<&HmacKey> = keys.iter().filter(|k| k.version() < signing.as_str()).collect();
    let drop_at = switched + overlap;
    if !older.is_empty() && now >= drop_at {
        edit_keys(whc, ctx, None, &older).await?;
        let versions: Vec<&str> = older.iter().map(|k| k.version()).collect();
        let note = format!("keys {} removed from the Secret; key {signing} remains", versions.join(", "));
        publish(ctx, whc, EventType::Normal, "OldKeysRemoved", note).await;
    }
    let message = if older.is_empty() || now >= drop_at {
        format!("GitHub signs with key {signing}, the only key in the Secret")
    } else {
        format!("GitHub signs with key {signing}; the previous key stays valid until the overlap ends")
    };
    in_sync(status, true, "InSync", message);
    let next = if !older.is_empty() && now < drop_at { drop_at } else { due_at };
    Ok(Some(Duration::from_secs((next - now).max(1) as u64)))
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
        Error::GitHub(github::Error::BadCredentials | github::Error::BadPrivateKey) => "BadCredentials",
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
    recovery::forget(ctx, &whc);
    let Some(id) = whc.status.as_ref().and_then(|s| s.hook_id) else { return Ok(Action::await_change()) };
    match github_client(&whc, ctx).await {
        Ok(github) => {
            github.delete_hook(&target(&whc), id).await?;
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
        // A dropped connection or a timeout is usually over soon.
        Error::GitHub(github::Error::Transport(_)) => Duration::from_secs(5),
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
