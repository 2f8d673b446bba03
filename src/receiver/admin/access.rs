//! Who is asking the admin API, and what they may do there.
//!
//! Two kinds of caller:
//! - the platform's token (`--admin-token`): everything, every namespace;
//! - with `--admin-kubernetes-auth`, any Kubernetes identity: a
//!   ServiceAccount token (`kubectl create token`) or a user's bearer token,
//!   checked with a TokenReview, then each action with a
//!   SubjectAccessReview on the AgentPolicy it concerns (what
//!   kube-rbac-proxy does). A team's rights on its own AgentPolicies decide
//!   what it may read, tail, forward, switch, replay or purge; lists and
//!   streams show only the namespaces it may view.
//!
//! What each capability asks of RBAC, on `agentpolicies.hookwarden.io` in
//! the policy's namespace (the chart ships a ClusterRole per capability for
//! platform teams to bind):
//!
//! | capability | admin API | RBAC |
//! |---|---|---|
//! | view | policies, deliveries, hooks, the stream, dead-letter lists | `get agentpolicies` |
//! | payloads | the tap (`hookwarden forward`) | `get agentpolicies/payloads` |
//! | kill switch | enable, disable | `patch agentpolicies` |
//! | dead letters | replay, purge | `update agentpolicies/deadletters` |
//!
//! Answers are cached briefly (a token for 30 s, a decision for 10 s), so a
//! busy page costs the apiserver a few reviews a minute, and a revoked right
//! stops working within seconds.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, api::PostParams};
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::ObjectRef;

/// What an admin request does to an AgentPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    View,
    Payloads,
    KillSwitch,
    DeadLetters,
}

impl Capability {
    /// `(verb, subresource)` on `agentpolicies.hookwarden.io`.
    pub fn rbac(self) -> (&'static str, &'static str) {
        match self {
            Self::View => ("get", ""),
            Self::Payloads => ("get", "payloads"),
            Self::KillSwitch => ("patch", ""),
            Self::DeadLetters => ("update", "deadletters"),
        }
    }
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The platform's admin token: every namespace.
    Platform,
    /// A Kubernetes identity, as the TokenReview said.
    Kube(User),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct User {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// Why a caller is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("missing or wrong bearer token")]
    Unauthenticated,
    #[error("{0} may not {1} AgentPolicy {2}")]
    Forbidden(String, &'static str, String),
    #[error("cannot check the caller with the Kubernetes API: {0}")]
    Unavailable(String),
}

const TOKEN_TTL: Duration = Duration::from_secs(30);
const DECISION_TTL: Duration = Duration::from_secs(10);
/// Entries kept per cache before it is emptied (a flood of distinct
/// tokens must not grow memory).
const CACHE_MAX: usize = 10_000;

type DecisionKey = (User, Capability, String, String);
/// Who a token (by its SHA-256) was, and when that was asked.
type TokenCache = HashMap<[u8; 32], (Instant, Option<User>)>;

/// The admin token, and the reviews when Kubernetes identities are on.
pub struct Access {
    token: Option<String>,
    client: Option<kube::Client>,
    tokens: Mutex<TokenCache>,
    decisions: Mutex<HashMap<DecisionKey, (Instant, bool)>>,
}

impl Access {
    /// `token`: the platform's admin token (`None`: none); `client`: check
    /// Kubernetes identities with it (`None`: only the token is accepted).
    pub fn new(token: Option<String>, client: Option<kube::Client>) -> Self {
        let token = token.filter(|t| !t.is_empty());
        Self { token, client, tokens: Default::default(), decisions: Default::default() }
    }

    /// Is the admin API reachable at all (a token, or identities)?
    pub fn is_on(&self) -> bool {
        self.token.is_some() || self.client.is_some()
    }

    /// Who presented `bearer`.
    pub async fn caller(&self, bearer: &str) -> Result<Caller, Refused> {
        if bearer.is_empty() {
            return Err(Refused::Unauthenticated);
        }
        if self.token.as_ref().is_some_and(|t| bool::from(bearer.as_bytes().ct_eq(t.as_bytes()))) {
            return Ok(Caller::Platform);
        }
        let Some(client) = &self.client else { return Err(Refused::Unauthenticated) };
        let hash: [u8; 32] = sha2::Sha256::digest(bearer.as_bytes()).into();
        if let Some((at, user)) = self.tokens.lock().unwrap().get(&hash).cloned()
            && at.elapsed() < TOKEN_TTL
        {
            return user.map(Caller::Kube).ok_or(Refused::Unauthenticated);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(bearer.to_owned()), ..Default::default() },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refused::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.filter(|_| status.authenticated == Some(true)).map(|u| User {
            username: u.username.unwrap_or_default(),
            uid: u.uid.unwrap_or_default(),
            groups: u.groups.unwrap_or_default(),
        });
        remember(&self.tokens, hash, (Instant::now(), user.clone()));
        user.map(Caller::Kube).ok_or(Refused::Unauthenticated)
    }

    /// May `caller` do `what` to `policy`?
    pub async fn check(&self, caller: &Caller, what: Capability, policy: &ObjectRef) -> Result<(), Refused> {
        let Caller::Kube(user) = caller else { return Ok(()) };
        match self.allowed(user, what, &policy.namespace, &policy.name).await? {
            true => Ok(()),
            false => Err(Refused::Forbidden(user.username.clone(), what.rbac().0, policy.to_string())),
        }
    }

    /// Of `namespaces`, those in which `caller` may `what` every AgentPolicy
    /// (a list or a stream shows only these).
    pub async fn namespaces(
        &self,
        caller: &Caller,
        what: Capability,
        namespaces: BTreeSet<String>,
    ) -> Result<BTreeSet<String>, Refused> {
        let Caller::Kube(user) = caller else { return Ok(namespaces) };
        let mut allowed = BTreeSet::new();
        for ns in namespaces {
            if self.allowed(user, what, &ns, "").await? {
                allowed.insert(ns);
            }
        }
        Ok(allowed)
    }

    async fn allowed(&self, user: &User, what: Capability, ns: &str, name: &str) -> Result<bool, Refused> {
        let Some(client) = &self.client else { return Ok(false) };
        let key = (user.clone(), what, ns.to_owned(), name.to_owned());
        if let Some((at, allowed)) = self.decisions.lock().unwrap().get(&key).copied()
            && at.elapsed() < DECISION_TTL
        {
            return Ok(allowed);
        }
        let (verb, subresource) = what.rbac();
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.username.clone()),
                uid: Some(user.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("hookwarden.io".into()),
                    resource: Some("agentpolicies".into()),
                    subresource: Some(subresource.to_owned()).filter(|s| !s.is_empty()),
                    verb: Some(verb.into()),
                    namespace: Some(ns.to_owned()),
                    name: Some(name.to_owned()).filter(|n| !n.is_empty()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refused::Unavailable(e.to_string()))?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        remember(&self.decisions, key, (Instant::now(), allowed));
        Ok(allowed)
    }
}

/// The bearer token of the kubeconfig's current user (`$KUBECONFIG`, else
/// `~/.kube/config`), for `hookwarden admin`, `admin tail` and `forward`
/// when no token is given: the same identity `kubectl` uses, with the same
/// rights. Only a token (or token file) can be passed on; a user that signs
/// in with a client certificate or an exec plugin gets a clear error.
pub fn kubeconfig_token() -> Result<String, String> {
    use secrecy::ExposeSecret;
    let config =
        kube::config::Kubeconfig::read().map_err(|e| format!("no kubeconfig to take a token from: {e}"))?;
    let context = config.current_context.as_deref().ok_or("the kubeconfig has no current context")?;
    let user = config
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref()?.user.clone())
        .ok_or_else(|| format!("the kubeconfig's context {context} names no user"))?;
    let auth = config.auth_infos.iter().find(|a| a.name == user).and_then(|a| a.auth_info.as_ref());
    let token = match auth {
        Some(a) if a.token.is_some() => a.token.as_ref().map(|t| t.expose_secret().to_owned()),
        Some(a) => match &a.token_file {
            Some(file) => {
                Some(std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?)
            }
            None => None,
        },
        None => None,
    };
    token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).ok_or_else(|| {
        format!(
            "the kubeconfig's user {user} has no bearer token (a client certificate or an exec plugin cannot be passed on): \
             set HOOKWARDEN_ADMIN_TOKEN, e.g. to $(kubectl create token <service-account>)"
        )
    })
}

fn remember<K: std::hash::Hash + Eq, V>(cache: &Mutex<HashMap<K, V>>, key: K, value: V) {
    let mut cache = cache.lock().unwrap();
    if cache.len() >= CACHE_MAX {
        cache.clear();
    }
    cache.insert(key, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_platform_token_is_everything_and_nothing_else_is_without_identities() {
        let access = Access::new(Some("platform-token".into()), None);
        assert!(access.is_on());
        assert_eq!(access.caller("platform-token").await.unwrap(), Caller::Platform);
        for wrong in ["", "platform-toke", "platform-token2", "another"] {
            assert!(matches!(access.caller(wrong).await, Err(Refused::Unauthenticated)), "{wrong:?}");
        }
        let policy = ObjectRef::new("team-a", "default");
        for what in [Capability::View, Capability::Payloads, Capability::KillSwitch, Capability::DeadLetters]
        {
            assert!(access.check(&Caller::Platform, what, &policy).await.is_ok());
        }
        let all: BTreeSet<String> = ["a".into(), "b".into()].into();
        assert_eq!(access.namespaces(&Caller::Platform, Capability::View, all.clone()).await.unwrap(), all);
        assert!(!Access::new(Some(String::new()), None).is_on(), "an empty token is no token");
    }

    #[test]
    fn each_capability_is_one_rbac_rule() {
        let rules: BTreeSet<_> =
            [Capability::View, Capability::Payloads, Capability::KillSwitch, Capability::DeadLetters]
                .map(Capability::rbac)
                .into();
        assert_eq!(rules.len(), 4, "distinct rules: a team can be given one without the others");
        assert_eq!(Capability::KillSwitch.rbac(), ("patch", ""), "the switch is the policy's own patch");
    }
}
