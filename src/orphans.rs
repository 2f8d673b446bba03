//! `hookwarden orphans`: hooks on GitHub that hookwarden registered and no
//! WebhookConfig owns any more, found and (on request) deleted.
//!
//! The operator never leaves a hook behind by itself (moves delete the old
//! hook, deletion waits for GitHub), but a person can: removing the finalizer
//! of a WebhookConfig whose deletion was blocked, or an operator uninstalled
//! before its WebhookConfigs. Hookwarden's mark on a hook is its URL,
//! `{public base URL}/hooks/{namespace}/{name}` ([`owner_of`]); a hook with
//! that mark whose WebhookConfig does not exist is an orphan ([`orphans`]).
//! A WebhookConfig that exists keeps every hook that names it, whatever its
//! status says: one being created may not have written its hook id yet.
//! Hooks with a `spec.url` of their own carry no mark and are never touched.

use std::collections::HashSet;

use crate::{
    ObjectRef,
    github::{self, Hook, Target},
};

/// The WebhookConfig a hook's URL names, when it is under `base`.
pub fn owner_of(url: &str, base: &str) -> Option<ObjectRef> {
    let rest = url.strip_prefix(base.trim_end_matches('/'))?.strip_prefix("/hooks/")?;
    let (ns, name) = rest.trim_end_matches('/').split_once('/')?;
    let valid =
        |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    (valid(ns) && valid(name) && !name.contains('/')).then(|| ObjectRef::new(ns, name))
}

/// A hook with hookwarden's mark and no WebhookConfig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    pub target: Target,
    pub id: i64,
    pub url: String,
    /// The WebhookConfig its URL names, which does not exist.
    pub owner: ObjectRef,
}

/// The orphans among `hooks` (by target): marked under `base`, naming a
/// WebhookConfig not in `existing`.
pub fn orphans(hooks: &[(Target, Vec<Hook>)], base: &str, existing: &HashSet<ObjectRef>) -> Vec<Orphan> {
    let mut out = Vec::new();
    for (target, list) in hooks {
        for hook in list {
            let Some(url) = hook.config.url.as_deref() else { continue };
            let Some(owner) = owner_of(url, base) else { continue };
            if !existing.contains(&owner) {
                out.push(Orphan { target: target.clone(), id: hook.id, url: url.to_owned(), owner });
            }
        }
    }
    out
}

/// What `hookwarden orphans` was asked to look at.
pub struct Look {
    pub github: github::Client,
    pub targets: Vec<Target>,
    pub public_base_url: String,
}

/// Lists the targets' hooks and the cluster's WebhookConfigs; returns the orphans.
pub async fn find(look: &Look, client: kube::Client) -> Result<Vec<Orphan>, String> {
    let api: kube::Api<crate::api::WebhookConfig> = kube::Api::all(client);
    let existing: HashSet<ObjectRef> = api
        .list_metadata(&Default::default())
        .await
        .map_err(|e| format!("listing WebhookConfigs: {e}"))?
        .items
        .iter()
        .map(|m| {
            ObjectRef::new(
                m.metadata.namespace.clone().unwrap_or_default(),
                m.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    let mut hooks = Vec::new();
    for target in &look.targets {
        let list =
            look.github.list_hooks(target).await.map_err(|e| format!("listing hooks of {target}: {e}"))?;
        hooks.push((target.clone(), list));
    }
    Ok(orphans(&hooks, &look.public_base_url, &existing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::HookConfig;

    const BASE: &str = "https://hooks.example.com/gh";

    #[test]
    fn the_mark_is_the_url_under_the_base() {
        let cases = [
            ("https://hooks.example.com/gh/hooks/team-a/svc", Some("team-a/svc")),
            ("https://hooks.example.com/gh/hooks/team-a/svc/", Some("team-a/svc")),
            ("https://hooks.example.com/gh/hooks/team-a", None),
            ("https://hooks.example.com/gh/hooks/team-a/svc/extra", None),
            ("https://hooks.example.com/other/hooks/team-a/svc", None),
            ("https://hooks.example.com/ghx/hooks/team-a/svc", None),
            ("https://elsewhere.example.com/gh/hooks/team-a/svc", None),
            ("https://hooks.example.com/gh/hooks//svc", None),
        ];
        for (url, want) in cases {
            assert_eq!(owner_of(url, BASE).map(|o| o.to_string()), want.map(str::to_owned), "{url}");
            assert_eq!(
                owner_of(url, &format!("{BASE}/")).map(|o| o.to_string()),
                want.map(str::to_owned),
                "{url}, base with /"
            );
        }
    }

    fn hook(id: i64, url: &str) -> Hook {
        Hook {
            id,
            active: true,
            events: vec!["push".into()],
            config: HookConfig { url: Some(url.into()), content_type: Some("json".into()) },
            last_response: None,
        }
    }

    #[test]
    fn an_orphan_is_marked_and_its_webhook_config_is_gone() {
        let repo = Target::Repository("o/r".into());
        let hooks = vec![(
            repo.clone(),
            vec![
                hook(1, &format!("{BASE}/hooks/team-a/kept")),
                hook(2, &format!("{BASE}/hooks/team-a/gone")),
                hook(3, "https://ci.example.com/hook"),
                hook(4, &format!("{BASE}/hooks/team-b/kept")),
            ],
        )];
        let existing: HashSet<ObjectRef> =
            [ObjectRef::new("team-a", "kept"), ObjectRef::new("team-b", "kept")].into();
        let found = orphans(&hooks, BASE, &existing);
        assert_eq!(found.iter().map(|o| o.id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(found[0].owner, ObjectRef::new("team-a", "gone"));
        assert_eq!(found[0].target, repo);
        assert!(
            orphans(&hooks, "https://other.example.com", &HashSet::new()).is_empty(),
            "another base: none ours"
        );
    }
}
