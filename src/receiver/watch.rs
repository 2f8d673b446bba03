//! Keeps the [`Registry`] current from the Kubernetes API: WebhookConfigs
//! (which hook uses which Secret and policy), hookwarden's Secrets (the keys,
//! reloaded the moment the operator writes one), AgentPolicies (the
//! effective settings from their status) and agents' signing and
//! credentials Secrets — where they are, or, with a keys namespace, the operator's copies of them
//! there (see [`crate::copies`]).

use std::{collections::HashSet, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};

use super::{
    dispatch::credentials,
    ingest::sources::Allowlist,
    registry::{HookInfo, PolicySettings, Registry, Watched},
};
use crate::{
    ObjectRef,
    api::{AgentPolicy, AppWebhook, WebhookConfig},
    copies::{self, Kind},
    github::meta,
    keys::keys_from_secret,
    standard_webhooks::{self, SigningKey},
};

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
                tracing::warn!(secret = %ObjectRef::of(secret), entry = name, %error, "signing Secret entry skipped");
            }
            parsed.ok()
        })
        .collect()
}

/// Where the Secrets of one kind are read, and under which reference each
/// is filed: in place, or as copies in the keys namespace, filed under their
/// source (and only those of the namespace served).
struct SecretSource {
    api: Api<Secret>,
    config: watcher::Config,
    filing: Filing,
}

enum Filing {
    InPlace,
    Copies { served: Option<String> },
}

impl Filing {
    fn refer(&self, secret: &Secret) -> Option<ObjectRef> {
        match self {
            Filing::InPlace => Some(ObjectRef::of(secret)),
            Filing::Copies { served } => copies::source_of(secret)
                .filter(|source| served.as_ref().is_none_or(|ns| *ns == source.namespace)),
        }
    }
}

impl SecretSource {
    fn new(client: &Client, namespace: Option<&str>, keys_namespace: Option<&str>, kind: Kind) -> Self {
        match keys_namespace {
            None => Self {
                api: crate::scoped_api(client, namespace),
                config: watcher::Config::default().labels(&kind.source_selector()),
                filing: Filing::InPlace,
            },
            Some(keys) => Self {
                api: Api::namespaced(client.clone(), keys),
                config: watcher::Config::default().labels(&kind.copy_selector()),
                filing: Filing::Copies { served: namespace.map(str::to_owned) },
            },
        }
    }

    /// Follows these Secrets into `registry` (see [`follow`]), each filed
    /// where [`Filing`] says.
    fn follow(
        self,
        registry: Arc<Registry>,
        what: Watched,
        known: fn(&Registry) -> Vec<ObjectRef>,
        apply: impl Fn(&Registry, ObjectRef, &Secret) + Send + 'static,
        delete: fn(&Registry, &ObjectRef),
    ) {
        let filing = self.filing;
        tokio::spawn(follow(
            self.api,
            self.config,
            move |s| filing.refer(s),
            registry,
            what,
            known,
            apply,
            delete,
        ));
    }
}

/// Starts the six watches; they run until the process ends, riding out
/// API errors with backoff. With `keys_namespace`, Secrets are read only
/// there (the operator's copies).
pub fn spawn(
    client: &Client,
    namespace: Option<&str>,
    keys_namespace: Option<&str>,
    registry: Arc<Registry>,
) {
    let hooks = crate::scoped_api::<WebhookConfig>(client, namespace);
    tokio::spawn(follow(
        hooks,
        watcher::Config::default(),
        |whc| Some(ObjectRef::of(whc)),
        registry.clone(),
        Watched::Hooks,
        Registry::hook_refs,
        |r, at, whc| {
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
            r.set_hook(at, info);
        },
        Registry::remove_hook,
    ));

    let secrets = |kind| SecretSource::new(client, namespace, keys_namespace, kind);
    secrets(Kind::Keys).follow(
        registry.clone(),
        Watched::Keys,
        Registry::key_refs,
        |r, at, secret| {
            let keys = keys_from_secret(secret);
            tracing::info!(secret = %at, versions = ?keys.iter().map(|k| k.version()).collect::<Vec<_>>(), "keys loaded");
            r.set_keys(at, keys);
        },
        Registry::remove_keys,
    );
    secrets(Kind::Signing).follow(
        registry.clone(),
        Watched::SigningKeys,
        Registry::signing_key_refs,
        |r, at, secret| {
            let keys = signing_keys_from_secret(secret);
            tracing::info!(secret = %at, keys = keys.len(), "agent signing keys loaded");
            r.set_signing_keys(at, keys);
        },
        Registry::remove_signing_keys,
    );
    secrets(Kind::Headers).follow(
        registry.clone(),
        Watched::AgentHeaders,
        Registry::agent_header_refs,
        |r, at, secret| {
            let (headers, skipped) = credentials::headers_from(secret.data.iter().flatten());
            for (entry, why) in skipped {
                tracing::warn!(secret = %at, entry, why, "credentials Secret entry skipped");
            }
            tracing::info!(secret = %at, headers = headers.len(), "agent credentials loaded");
            r.set_agent_headers(at, headers);
        },
        Registry::remove_agent_headers,
    );

    // Apps' own webhooks are cluster-scoped; a receiver that serves one
    // namespace verifies them too, for its namespace's policies.
    tokio::spawn(follow(
        Api::<AppWebhook>::all(client.clone()),
        watcher::Config::default(),
        |awh| Some(crate::api::app_hook_ref(&awh.name_any())),
        registry.clone(),
        Watched::AppHooks,
        Registry::app_hook_refs,
        |r, at, awh| {
            let secret = awh.status.as_ref().and_then(|s| s.key_secret.as_deref()?.parse().ok());
            r.set_app_hook(at, secret);
        },
        Registry::remove_app_hook,
    ));

    let policies = crate::scoped_api::<AgentPolicy>(client, namespace);
    tokio::spawn(follow(
        policies,
        watcher::Config::default(),
        |policy| Some(ObjectRef::of(policy)),
        registry,
        Watched::Policies,
        Registry::policy_refs,
        |r, at, policy| {
            r.set_policy(at, PolicySettings::from_policy(policy));
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

/// Applies a watch to the registry, each object filed under `refer`'s
/// reference (`None`: ignored). A re-list (after a disconnect) also removes
/// what disappeared meanwhile.
#[allow(clippy::too_many_arguments)]
async fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    refer: impl Fn(&K) -> Option<ObjectRef>,
    registry: Arc<Registry>,
    what: Watched,
    known: fn(&Registry) -> Vec<ObjectRef>,
    apply: impl Fn(&Registry, ObjectRef, &K),
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
                if let Some(at) = refer(&obj) {
                    seen.insert(at.clone());
                    apply(&registry, at, &obj);
                }
            }
            Ok(watcher::Event::InitDone) => {
                for gone in known(&registry).into_iter().filter(|r| !seen.contains(r)) {
                    delete(&registry, &gone);
                }
                registry.mark_synced(what);
            }
            Ok(watcher::Event::Apply(obj)) => {
                if let Some(at) = refer(&obj) {
                    apply(&registry, at, &obj);
                }
            }
            Ok(watcher::Event::Delete(obj)) => {
                if let Some(at) = refer(&obj) {
                    delete(&registry, &at);
                }
            }
            Err(error) => tracing::warn!(?what, %error, "watch error; retrying"),
        }
    }
}
