//! Keeps the [`Registry`] current from the Kubernetes API: WebhookConfigs
//! (which hook uses which Secret and policy), hookwarden's Secrets (the keys,
//! reloaded the moment the operator writes one), AgentPolicies (the
//! effective settings from their status) and agents' signing Secrets.

use std::{collections::HashSet, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};

use super::{
    registry::{HookInfo, PolicySettings, Registry, Watched},
    sources::Allowlist,
};
use crate::{
    ObjectRef,
    api::{AgentPolicy, WebhookConfig},
    github::meta,
    keys::{MANAGED_BY, keys_from_secret},
    standard_webhooks::{self, SigningKey},
};

/// The label that makes a Secret an agent's signing Secret, the only kind of
/// user Secret receivers watch.
pub const AGENT_SIGNING_LABEL: (&str, &str) = ("hookwarden.io/agent-signing", "true");

/// The `whsec_` keys of an agent's signing Secret, by entry name; other
/// values are skipped (named in a warning, never shown).
fn signing_keys_from_secret(secret: &Secret) -> Vec<SigningKey> {
    // NB: `data` is a BTreeMap: already in entry-name order.
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(name, value)| {
            let parsed = std::str::from_utf8(&value.0)
                .map_err(|_| standard_webhooks::Error::MalformedKey)
                .and_then(SigningKey::parse);
            if let Err(error) = &parsed {
                tracing::warn!(secret = %object_ref(secret), entry = name, %error, "signing Secret entry skipped");
            }
            parsed.ok()
        })
        .collect()
}

fn object_ref<K: Resource>(obj: &K) -> ObjectRef {
    ObjectRef::new(obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Starts the four watches; they run until the process ends, riding out
/// API errors with backoff.
pub fn spawn(client: &Client, namespace: Option<&str>, registry: Arc<Registry>) {
    let hooks = crate::scoped_api::<WebhookConfig>(client, namespace);
    tokio::spawn(follow(
        hooks,
        watcher::Config::default(),
        registry.clone(),
        Watched::Hooks,
        Registry::hook_refs,
        |r, whc| {
            let ns = whc.namespace().unwrap_or_default();
            let info = HookInfo {
                secret: ObjectRef::new(ns.clone(), whc.secret_name()),
                policy: ObjectRef::new(ns, whc.spec.agent_policy.clone()),
                ready: whc.status.as_ref().and_then(|st| {
                    st.conditions
                        .iter()
                        .find(|c| c.type_ == crate::api::conditions::READY)
                        .map(|c| c.status.clone())
                }),
                last_delivery: whc.status.as_ref().and_then(|st| st.last_delivery.clone()),
            };
            r.set_hook(object_ref(whc), info);
        },
        Registry::remove_hook,
    ));

    let selector = crate::keys::selector(MANAGED_BY);
    let secrets = crate::scoped_api::<Secret>(client, namespace);
    tokio::spawn(follow(
        secrets,
        watcher::Config::default().labels(&selector),
        registry.clone(),
        Watched::Keys,
        Registry::key_refs,
        |r, secret| {
            let keys = keys_from_secret(secret);
            tracing::info!(secret = %object_ref(secret), versions = ?keys.iter().map(|k| k.version()).collect::<Vec<_>>(), "keys loaded");
            r.set_keys(object_ref(secret), keys);
        },
        Registry::remove_keys,
    ));

    let signing = crate::scoped_api::<Secret>(client, namespace);
    tokio::spawn(follow(
        signing,
        watcher::Config::default().labels(&crate::keys::selector(AGENT_SIGNING_LABEL)),
        registry.clone(),
        Watched::SigningKeys,
        Registry::signing_key_refs,
        |r, secret| {
            let keys = signing_keys_from_secret(secret);
            tracing::info!(secret = %object_ref(secret), keys = keys.len(), "agent signing keys loaded");
            r.set_signing_keys(object_ref(secret), keys);
        },
        Registry::remove_signing_keys,
    ));

    let policies = crate::scoped_api::<AgentPolicy>(client, namespace);
    tokio::spawn(follow(
        policies,
        watcher::Config::default(),
        registry,
        Watched::Policies,
        Registry::policy_refs,
        |r, policy| {
            r.set_policy(object_ref(policy), PolicySettings::from_policy(policy));
        },
        Registry::remove_policy,
    ));
}

/// Keeps `allowlist` at the ranges the operator publishes in ConfigMap
/// `name` of `namespace` (see `crate::github::meta`). A deleted ConfigMap
/// leaves the last ranges in force; until one is read, nothing is allowed.
pub fn spawn_allowlist(client: &Client, namespace: &str, name: &str, allowlist: Arc<Allowlist>) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().applied_objects().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(cm) => {
                    let text =
                        cm.data.as_ref().and_then(|d| d.get(meta::HOOKS_KEY)).map_or("", String::as_str);
                    let ranges = meta::parse_hooks(text);
                    tracing::info!(ranges = ranges.len(), "GitHub's hook ranges loaded");
                    allowlist.set(ranges);
                }
                Err(error) => tracing::warn!(%error, "allowlist watch error; retrying"),
            }
        }
    });
}

/// Applies a watch to the registry. A re-list (after a disconnect) also
/// removes what disappeared meanwhile.
async fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    registry: Arc<Registry>,
    what: Watched,
    known: fn(&Registry) -> Vec<ObjectRef>,
    apply: impl Fn(&Registry, &K),
    delete: fn(&Registry, &ObjectRef),
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut seen = HashSet::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => seen.clear(),
            Ok(watcher::Event::InitApply(obj)) => {
                seen.insert(object_ref(&obj));
                apply(&registry, &obj);
            }
            Ok(watcher::Event::InitDone) => {
                for gone in known(&registry).into_iter().filter(|r| !seen.contains(r)) {
                    delete(&registry, &gone);
                }
                registry.mark_synced(what);
            }
            Ok(watcher::Event::Apply(obj)) => apply(&registry, &obj),
            Ok(watcher::Event::Delete(obj)) => delete(&registry, &object_ref(&obj)),
            Err(error) => tracing::warn!(?what, %error, "watch error; retrying"),
        }
    }
}
