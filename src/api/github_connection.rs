//! `GitHubConnection`: a GitHub endpoint and credential that the platform
//! team owns and lends to the namespaces it names.
//!
//! Cluster-scoped, so only whoever may write cluster-scoped objects (the
//! platform team) declares one; its credential Secret lives in the
//! operator's own namespace, which teams cannot read. A WebhookConfig
//! names it with `spec.github.connection` instead of a Secret of its own,
//! and the operator uses it only for a namespace and a target (repository
//! or organization) that one of `grants` allows — the role Argo CD's
//! AppProject `sourceRepos` / `destinations` play. Anything else is
//! `Ready=False ConnectionNotGranted`, and nothing is sent to GitHub.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{GitHubApp, SecretKeyRef, webhook_config::default_api_url};

/// A glob: letters, digits and `-._/`, with `*` for any run of characters
/// (within one path segment for repositories).
const GLOB: &str = r"^[-._/*A-Za-z0-9]+$";

/// A GitHub API endpoint and the credential for it, declared by the
/// platform team, and which namespaces may use it for which repositories
/// and organizations.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hookwarden.io",
    version = "v1alpha1",
    kind = "GitHubConnection",
    plural = "githubconnections",
    shortname = "ghc",
    category = "hookwarden",
    doc = "A GitHub endpoint and credential owned by the platform team, lent to the namespaces its grants name.",
    derive = "PartialEq",
    printcolumn = r#"{"name":"API URL","type":"string","jsonPath":".spec.apiUrl"}"#,
    printcolumn = r#"{"name":"App","type":"integer","jsonPath":".spec.app.appId"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new("has(self.tokenSecretRef) != has(self.app)")
    .message("exactly one of tokenSecretRef or app must be set"))]
#[serde(rename_all = "camelCase")]
pub struct GitHubConnectionSpec {
    /// Base URL of the GitHub REST API (`https://HOST/api/v3` for GitHub
    /// Enterprise Server). The platform writes it, so it needs no entry in
    /// the operator's `--github-api-url` list; its `/meta` ranges join the
    /// receivers' allowlist.
    #[serde(default = "default_api_url")]
    #[schemars(extend("pattern" = r"^https?://[^\s]+$", "maxLength" = 2048))]
    pub api_url: String,

    /// Secret key, in the operator's namespace, holding a token (see
    /// `WebhookConfig.spec.github.tokenSecretRef` for the scopes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,

    /// A GitHub App installation; its private key Secret is in the
    /// operator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<GitHubApp>,

    /// Who may use the connection for what. A WebhookConfig may use it when
    /// one grant names its namespace and its target. None: nobody may.
    #[serde(default)]
    #[schemars(extend("maxItems" = 256))]
    pub grants: Vec<Grant>,
}

/// Namespaces, and the GitHub targets they may put hooks on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// Namespace names or globs (`team-a`, `team-a-*`).
    #[schemars(extend("minItems" = 1, "maxItems" = 256, "items" = {"type": "string", "pattern": GLOB, "maxLength": 253}))]
    pub namespaces: Vec<String>,
    /// Repositories as `owner/name` or globs (`acme/payments-*`, `acme/*`),
    /// compared without regard to case as GitHub does; `*` stays inside
    /// one segment.
    #[serde(default)]
    #[schemars(extend("maxItems" = 256, "items" = {"type": "string", "pattern": GLOB, "maxLength": 140}))]
    pub repositories: Vec<String>,
    /// Organizations whose organization-wide hook the namespaces may manage
    /// (such a hook sees every repository of the organization, so a
    /// repository grant never implies it).
    #[serde(default)]
    #[schemars(extend("maxItems" = 256, "items" = {"type": "string", "pattern": GLOB, "maxLength": 39}))]
    pub organizations: Vec<String>,
}

/// What a WebhookConfig wants a connection for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use<'a> {
    Repository(&'a str),
    Organization(&'a str),
}

impl GitHubConnectionSpec {
    /// The repository globs `namespace` is granted.
    pub fn granted_repositories(&self, namespace: &str) -> Vec<String> {
        let mut globs: Vec<String> = self
            .grants
            .iter()
            .filter(|g| g.namespaces.iter().any(|p| glob(p, namespace, false)))
            .flat_map(|g| g.repositories.iter().cloned())
            .collect();
        globs.sort();
        globs.dedup();
        globs
    }

    /// May `namespace` use the connection for `target`?
    pub fn grants(&self, namespace: &str, target: Use<'_>) -> bool {
        self.grants.iter().any(|g| {
            g.namespaces.iter().any(|p| glob(p, namespace, false))
                && match target {
                    Use::Repository(r) => g.repositories.iter().any(|p| repository_glob(p, r)),
                    Use::Organization(o) => g.organizations.iter().any(|p| glob(p, o, true)),
                }
        })
    }
}

/// `owner/name` against `owner-glob/name-glob`: `*` never crosses the `/`.
pub fn repository_glob(pattern: &str, repository: &str) -> bool {
    match (pattern.split_once('/'), repository.split_once('/')) {
        (Some((po, pn)), Some((o, n))) => !n.contains('/') && glob(po, o, true) && glob(pn, n, true),
        _ => false,
    }
}

/// `text` against `pattern`, where `*` is any run of characters.
fn glob(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = if ignore_case {
        (pattern.to_lowercase().chars().collect(), text.to_lowercase().chars().collect())
    } else {
        (pattern.chars().collect(), text.chars().collect())
    };
    // Greedy match with backtracking to the last `*`: linear in practice.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < t.len() {
        if i < p.len() && p[i] != '*' && p[i] == t[j] {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(grants: &[(&[&str], &[&str], &[&str])]) -> GitHubConnectionSpec {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        GitHubConnectionSpec {
            api_url: default_api_url(),
            token_secret_ref: None,
            app: None,
            grants: grants
                .iter()
                .map(|(n, r, o)| Grant { namespaces: v(n), repositories: v(r), organizations: v(o) })
                .collect(),
        }
    }

    #[test]
    fn grants_name_namespaces_and_targets() {
        let s = spec(&[
            (&["team-a", "team-a-*"], &["acme/a-*", "acme/shared"], &[]),
            (&["platform"], &["*/*"], &["acme"]),
        ]);
        use Use::*;
        for (ns, target, want) in [
            ("team-a", Repository("acme/a-one"), true),
            ("team-a", Repository("ACME/A-One"), true),
            ("team-a-dev", Repository("acme/shared"), true),
            ("team-a", Repository("acme/b-one"), false),
            ("team-a", Repository("acme/a-one/x"), false),
            ("team-a", Repository("other/a-one"), false),
            ("team-a", Organization("acme"), false),
            ("team-b", Repository("acme/a-one"), false),
            ("Team-a", Repository("acme/a-one"), false),
            ("team-ab", Repository("acme/a-one"), false),
            ("platform", Repository("anyone/anything"), true),
            ("platform", Organization("acme"), true),
            ("platform", Organization("acme2"), false),
        ] {
            assert_eq!(s.grants(ns, target), want, "{ns} {target:?}");
        }
        assert!(!spec(&[]).grants("team-a", Use::Repository("acme/a")), "no grant: nobody");
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "abc", true),
            ("a*c", "abc", true),
            ("a*c", "abcd", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("abc", "abc", true),
            ("abc", "ab", false),
            ("", "", true),
            ("", "a", false),
            ("**", "x", true),
        ] {
            assert_eq!(glob(p, t, false), want, "{p:?} {t:?}");
        }
        assert!(!repository_glob("*", "acme/x"), "a repository pattern has its slash");
    }
}
