//! What the receiver knows about the cluster, kept current by watches:
//! which hooks exist, the keys of each, and the effective settings of each
//! AgentPolicy. Plain data behind locks, so the HTTP layer and the tests use
//! it without a Kubernetes client.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use tokio::sync::watch;

use crate::{
    ObjectRef,
    api::{Agent, AgentPolicy, AgentPolicyStatus, CircuitBreaker, RetryPolicy},
    filter::{self, Filters},
    keys::HmacKey,
    standard_webhooks::SigningKey,
};

/// Where a hook's deliveries are verified and queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookInfo {
    /// The Secret with the hook's keys.
    pub secret: ObjectRef,
    /// The AgentPolicy whose queue and agents get its events.
    pub policy: ObjectRef,
    /// What the operator last wrote about it, for the admin API: its Ready
    /// condition (`True`, `False`, `Unknown`) and GitHub's latest delivery.
    pub ready: Option<String>,
    pub last_delivery: Option<crate::api::DeliverySummary>,
}

/// What ingest needs of a hook: where its keys are, and the policy its
/// deliveries go to (`None`: an App's webhook, routed by repository).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestHook {
    pub secret: ObjectRef,
    pub policy: Option<ObjectRef>,
}

/// The effective settings of one AgentPolicy. The switch, the concurrency and
/// the queue limit come from its **status** only: the operator is their one
/// writer. Without a status, nothing is dispatched and deliveries wait.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicySettings {
    pub enabled: bool,
    pub concurrency: usize,
    pub queue_limit: u64,
    pub reason: String,
    pub agents: Vec<Agent>,
    pub circuit_breaker: CircuitBreaker,
    pub retry: RetryPolicy,
    /// The filters the operator accepted (status), compiled.
    pub filters: Filters,
    /// How long deliveries are kept for replays (ms; 0: none kept).
    pub history_ms: u64,
    /// The App webhooks' deliveries it gets (status: the operator's grants).
    pub app_webhooks: Vec<crate::api::AppWebhookRoute>,
}

/// Why a policy without a status dispatches nothing.
const WAITING: &str = "waiting for the operator to write the policy's status";

/// What a policy with no status and an empty spec has
/// ([`PolicySettings::from_policy`]): off, one at a time, the default queue
/// limit, no agents.
impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            enabled: false,
            concurrency: 1,
            queue_limit: crate::api::DEFAULT_QUEUE_LIMIT,
            reason: WAITING.to_owned(),
            agents: vec![],
            circuit_breaker: CircuitBreaker::default(),
            retry: RetryPolicy::default(),
            filters: Filters::default(),
            history_ms: 0,
            app_webhooks: vec![],
        }
    }
}

impl PolicySettings {
    pub fn from_policy(policy: &AgentPolicy) -> Self {
        let status = policy.status.as_ref();
        let enabled = status.and_then(|s| s.enabled);
        Self {
            enabled: enabled.unwrap_or(false),
            concurrency: status.and_then(|s| s.concurrency).map_or(1, |c| c.max(1) as usize),
            queue_limit: policy.effective_queue_limit(),
            reason: match (enabled, status.and_then(|s| s.reason.clone())) {
                (None, _) => WAITING.to_owned(),
                (Some(_), reason) => reason.unwrap_or_default(),
            },
            agents: policy.spec.agents.clone(),
            circuit_breaker: policy.spec.circuit_breaker.clone(),
            retry: policy.spec.retry.clone(),
            filters: filters_of(status),
            history_ms: policy.spec.history.as_ref().map_or(0, |h| h.get().as_millis() as u64),
            app_webhooks: status.map(|s| s.app_webhooks.clone()).unwrap_or_default(),
        }
    }
}

/// The filters in `status`, compiled: only what the operator accepted, so
/// a spec's filter that does not compile is never used. Agents not in
/// status have none.
fn filters_of(status: Option<&AgentPolicyStatus>) -> Filters {
    let Some(status) = status else { return Filters::default() };
    Filters {
        policy: status.filter.as_deref().map(filter::compile),
        agents: status.agent_filters.iter().map(|(agent, f)| (agent.clone(), filter::compile(f))).collect(),
    }
}

/// How long a starting replica waits at most for the keys of the hooks the
/// operator reports Ready before it says it is ready anyway.
pub const KEYS_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The receiver's view of hooks, keys and policies.
#[derive(Default)]
pub struct Registry {
    hooks: RwLock<HashMap<ObjectRef, HookInfo>>,
    /// Apps' own webhooks (`@app/{name}`): the Secret with their keys, once
    /// the operator has written it in status.
    app_hooks: RwLock<HashMap<ObjectRef, Option<ObjectRef>>>,
    keys: RwLock<HashMap<ObjectRef, Arc<[HmacKey]>>>,
    /// Agents' Standard Webhooks keys, by Secret.
    signing_keys: RwLock<HashMap<ObjectRef, Arc<[SigningKey]>>>,
    /// Agents' credentials (request headers), by Secret.
    agent_headers: RwLock<HashMap<ObjectRef, Arc<AgentHeaders>>>,
    policies: RwLock<HashMap<ObjectRef, watch::Sender<Arc<PolicySettings>>>>,
    /// Bumped whenever a policy appears or disappears.
    policy_set: watch::Sender<u64>,
    /// Bumped whenever the loaded keys change.
    key_set: watch::Sender<u64>,
    /// The watches that have listed everything (for `/readyz`).
    synced: RwLock<std::collections::HashSet<Watched>>,
    /// Set once every hook the operator reports Ready had its keys (see
    /// [`Registry::keys_ready`]).
    keyed: std::sync::atomic::AtomicBool,
    /// When this registry began (the replica's start).
    began: std::sync::OnceLock<std::time::Instant>,
}

/// Which watch finished its initial list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Watched {
    Hooks,
    Keys,
    Policies,
    SigningKeys,
    AgentHeaders,
    AppHooks,
}

impl Watched {
    pub const ALL: [Self; 6] =
        [Self::Hooks, Self::Keys, Self::Policies, Self::SigningKeys, Self::AgentHeaders, Self::AppHooks];
}

/// The request headers an agent's credentials Secret adds to every call
/// (values marked sensitive: never printed by `Debug`).
pub type AgentHeaders = Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>;

impl Registry {
    pub fn new() -> Self {
        let registry = Self::default();
        let _ = registry.began.set(std::time::Instant::now());
        registry
    }

    pub fn hook(&self, hook: &ObjectRef) -> Option<HookInfo> {
        self.hooks.read().unwrap().get(hook).cloned()
    }

    /// Every hook with what is known of it, sorted.
    pub fn hooks(&self) -> Vec<(ObjectRef, HookInfo)> {
        let mut all: Vec<_> =
            self.hooks.read().unwrap().iter().map(|(r, i)| (r.clone(), i.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn set_hook(&self, hook: ObjectRef, info: HookInfo) {
        self.hooks.write().unwrap().insert(hook, info);
    }

    pub fn hook_refs(&self) -> Vec<ObjectRef> {
        self.hooks.read().unwrap().keys().cloned().collect()
    }

    pub fn remove_hook(&self, hook: &ObjectRef) {
        self.hooks.write().unwrap().remove(hook);
    }

    /// Where deliveries to `hook` are verified: a WebhookConfig's hook
    /// (its key Secret and its policy), or an App's own webhook (its key
    /// Secret; its policies follow from each delivery's repository).
    pub fn ingest_hook(&self, hook: &ObjectRef) -> Option<IngestHook> {
        if hook.namespace == crate::api::APP_HOOK_NAMESPACE {
            let secret = self.app_hooks.read().unwrap().get(hook).cloned()?;
            // NB: before the operator wrote where its keys are, none verify.
            let secret = secret.unwrap_or_else(|| hook.clone());
            return Some(IngestHook { secret, policy: None });
        }
        let info = self.hook(hook)?;
        Some(IngestHook { secret: info.secret, policy: Some(info.policy) })
    }

    pub fn set_app_hook(&self, hook: ObjectRef, secret: Option<ObjectRef>) {
        self.app_hooks.write().unwrap().insert(hook, secret);
    }

    pub fn app_hook_refs(&self) -> Vec<ObjectRef> {
        self.app_hooks.read().unwrap().keys().cloned().collect()
    }

    pub fn remove_app_hook(&self, hook: &ObjectRef) {
        self.app_hooks.write().unwrap().remove(hook);
    }

    /// The policies a delivery of App webhook `name` about `repository`
    /// goes to, sorted: those the operator granted it to in their status.
    pub fn app_routes(&self, name: &str, repository: Option<&str>) -> Vec<ObjectRef> {
        let policies = self.policies.read().unwrap();
        let mut routed: Vec<ObjectRef> = policies
            .iter()
            .filter(|(_, settings)| {
                crate::api::AppWebhookRoute::any_takes(&settings.borrow().app_webhooks, name, repository)
            })
            .map(|(policy, _)| policy.clone())
            .collect();
        routed.sort();
        routed
    }

    /// The keys of Secret `secret`; empty when none are loaded.
    pub fn keys(&self, secret: &ObjectRef) -> Arc<[HmacKey]> {
        self.keys.read().unwrap().get(secret).cloned().unwrap_or_else(|| Arc::from(Vec::new()))
    }

    pub fn set_keys(&self, secret: ObjectRef, keys: Vec<HmacKey>) {
        self.keys.write().unwrap().insert(secret, keys.into());
        self.key_set.send_modify(|g| *g += 1);
    }

    pub fn key_refs(&self) -> Vec<ObjectRef> {
        self.keys.read().unwrap().keys().cloned().collect()
    }

    pub fn remove_keys(&self, secret: &ObjectRef) {
        self.keys.write().unwrap().remove(secret);
        self.key_set.send_modify(|g| *g += 1);
    }

    /// Notified whenever the loaded keys change.
    pub fn watch_key_set(&self) -> watch::Receiver<u64> {
        self.key_set.subscribe()
    }

    /// Versions of the keys loaded per Secret, for reporting what this
    /// replica can verify (never the keys themselves).
    pub fn loaded_key_versions(&self) -> crate::keys::LoadedKeys {
        let keys = self.keys.read().unwrap();
        keys.iter()
            .map(|(s, k)| (s.to_string(), k.iter().map(|k| k.version().to_owned()).collect()))
            .collect()
    }

    /// The Standard Webhooks keys in Secret `secret`; empty when none are loaded.
    pub fn signing_keys(&self, secret: &ObjectRef) -> Arc<[SigningKey]> {
        self.signing_keys.read().unwrap().get(secret).cloned().unwrap_or_else(|| Arc::from(Vec::new()))
    }

    pub fn set_signing_keys(&self, secret: ObjectRef, keys: Vec<SigningKey>) {
        self.signing_keys.write().unwrap().insert(secret, keys.into());
    }

    pub fn signing_key_refs(&self) -> Vec<ObjectRef> {
        self.signing_keys.read().unwrap().keys().cloned().collect()
    }

    pub fn remove_signing_keys(&self, secret: &ObjectRef) {
        self.signing_keys.write().unwrap().remove(secret);
    }

    /// The headers of credentials Secret `secret`, if it is loaded.
    pub fn agent_headers(&self, secret: &ObjectRef) -> Option<Arc<AgentHeaders>> {
        self.agent_headers.read().unwrap().get(secret).cloned()
    }

    pub fn set_agent_headers(&self, secret: ObjectRef, headers: AgentHeaders) {
        self.agent_headers.write().unwrap().insert(secret, Arc::new(headers));
    }

    pub fn agent_header_refs(&self) -> Vec<ObjectRef> {
        self.agent_headers.read().unwrap().keys().cloned().collect()
    }

    pub fn remove_agent_headers(&self, secret: &ObjectRef) {
        self.agent_headers.write().unwrap().remove(secret);
    }

    /// Current settings of `policy`, if it exists.
    pub fn policy(&self, policy: &ObjectRef) -> Option<Arc<PolicySettings>> {
        self.policies.read().unwrap().get(policy).map(|tx| tx.borrow().clone())
    }

    /// A receiver that sees every change of `policy`'s settings, if it exists.
    pub fn subscribe_policy(&self, policy: &ObjectRef) -> Option<watch::Receiver<Arc<PolicySettings>>> {
        self.policies.read().unwrap().get(policy).map(watch::Sender::subscribe)
    }

    /// Every known policy.
    pub fn policy_refs(&self) -> Vec<ObjectRef> {
        self.policies.read().unwrap().keys().cloned().collect()
    }

    /// Every policy a delivery can be queued for: the known ones and those
    /// a hook names (its AgentPolicy may not exist yet), sorted.
    pub fn queue_policies(&self) -> Vec<ObjectRef> {
        let mut refs = self.policy_refs();
        refs.extend(self.hooks.read().unwrap().values().map(|h| h.policy.clone()));
        refs.sort();
        refs.dedup();
        refs
    }

    /// Notified when a policy appears or disappears.
    pub fn watch_policy_set(&self) -> watch::Receiver<u64> {
        self.policy_set.subscribe()
    }

    pub fn set_policy(&self, policy: ObjectRef, settings: PolicySettings) {
        let mut policies = self.policies.write().unwrap();
        match policies.get(&policy) {
            Some(tx) => {
                tx.send_if_modified(|current| {
                    let changed = **current != settings;
                    if changed {
                        *current = Arc::new(settings);
                    }
                    changed
                });
            }
            None => {
                policies.insert(policy, watch::channel(Arc::new(settings)).0);
                self.policy_set.send_modify(|g| *g += 1);
            }
        }
    }

    pub fn remove_policy(&self, policy: &ObjectRef) {
        if self.policies.write().unwrap().remove(policy).is_some() {
            self.policy_set.send_modify(|g| *g += 1);
        }
    }

    pub fn mark_synced(&self, what: Watched) {
        self.synced.write().unwrap().insert(what);
    }

    /// True once every watch (hooks, keys, policies, agents' Secrets) has
    /// listed everything.
    pub fn is_synced(&self) -> bool {
        self.synced.read().unwrap().len() == Watched::ALL.len()
    }

    /// The hooks the operator reports Ready (so their key Secret exists)
    /// whose keys this replica has not loaded.
    pub fn ready_without_keys(&self) -> Vec<ObjectRef> {
        let keys = self.keys.read().unwrap();
        let mut missing: Vec<ObjectRef> = self
            .hooks
            .read()
            .unwrap()
            .iter()
            .filter(|(_, h)| {
                h.ready.as_deref() == Some("True") && keys.get(&h.secret).is_none_or(|k| k.is_empty())
            })
            .map(|(r, _)| r.clone())
            .collect();
        missing.sort();
        missing
    }

    /// For `/readyz`: true once, after the initial lists, every hook the
    /// operator reports Ready has its keys here, or once `waited` reaches
    /// `grace` after this registry began. A replica that starts before its keys reach it (the copies
    /// of a keys namespace not written yet, as on the first upgrade to one)
    /// gets no deliveries it would have to refuse; the rolling update waits
    /// and the old replicas serve. It latches: a later gap (one team's
    /// Secret) never takes a serving replica out.
    pub fn keys_ready(&self, grace: std::time::Duration) -> bool {
        use std::sync::atomic::Ordering;
        if self.keyed.load(Ordering::Relaxed) {
            return true;
        }
        let waited = self.began.get().map_or(std::time::Duration::ZERO, std::time::Instant::elapsed);
        let keyed = self.is_synced() && (waited >= grace || self.ready_without_keys().is_empty());
        if keyed {
            self.keyed.store(true, Ordering::Relaxed);
        }
        keyed
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_default_settings_are_a_policy_without_status_or_spec() {
        let policy =
            AgentPolicy::new("default", serde_json::from_value(serde_json::json!({"agents": []})).unwrap());
        assert_eq!(PolicySettings::from_policy(&policy), PolicySettings::default());
    }

    fn hook(registry: &Registry, name: &str, ready: Option<&str>) {
        registry.set_hook(
            ObjectRef::new("ns", name),
            HookInfo {
                secret: ObjectRef::new("ns", format!("{name}-hmac")),
                policy: ObjectRef::new("ns", "default"),
                ready: ready.map(str::to_owned),
                last_delivery: None,
            },
        );
    }

    #[test]
    fn a_starting_replica_is_ready_once_every_ready_hook_has_its_keys_and_stays_so() {
        let r = Registry::new();
        let long = Duration::from_secs(3600);
        assert!(!r.keys_ready(long), "nothing listed yet");
        for w in Watched::ALL {
            r.mark_synced(w);
        }
        hook(&r, "a", Some("True"));
        hook(&r, "broken", Some("False")); // its Secret may never come: not waited for
        assert_eq!(r.ready_without_keys(), vec![ObjectRef::new("ns", "a")]);
        assert!(!r.keys_ready(long), "a's keys are not loaded yet");
        r.set_keys(ObjectRef::new("ns", "a-hmac"), vec![HmacKey::new("1", "k")]);
        assert!(r.keys_ready(long));
        // Latched: a later gap does not take a serving replica out.
        hook(&r, "b", Some("True"));
        assert!(r.keys_ready(long));

        // Past the grace a replica is ready whatever is missing.
        let late = Registry::new();
        for w in Watched::ALL {
            late.mark_synced(w);
        }
        hook(&late, "a", Some("True"));
        assert!(late.keys_ready(Duration::ZERO));
    }
}
