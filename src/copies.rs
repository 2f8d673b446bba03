//! Copies of the Secrets receivers read, kept by the operator in one
//! namespace of the platform's (the chart's `keysNamespace`): the contract
//! between the operator's mirror (`operator::mirror`) and the receivers.
//!
//! Why: the receivers face the internet. Reading key Secrets where they are
//! would need Secret read in every namespace they serve, and RBAC cannot
//! narrow a list or watch to labelled Secrets: a compromised receiver could
//! read every team's tokens and App keys. With copies, the receivers'
//! ServiceAccount reads Secrets in the keys namespace only, which holds
//! nothing but copies of what they verify and sign with.
//!
//! What is copied: hookwarden's key Secrets (label
//! `app.kubernetes.io/managed-by=hookwarden`), agents' signing Secrets
//! (label `hookwarden.io/agent-signing=true`) and agents' credentials
//! (label `hookwarden.io/agent-headers=true`), from the namespaces the
//! operator watches. A copy is named `{namespace}.{name}` (a namespace name
//! has no dot, so two sources never share a copy; a hash when that is too
//! long), carries label [`COPY_LABEL`] with the [`Kind`], and annotations
//! naming its source, under which receivers file its keys: the key reports
//! the operator waits for before a rotation stay keyed by the source Secret.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use sha2::Digest;

use crate::ObjectRef;

/// Label of a copy: its [`Kind`] (`keys`, `signing` or `headers`).
pub const COPY_LABEL: &str = "hookwarden.io/copy";
/// Annotations of a copy naming the Secret it copies.
pub const SOURCE_NAMESPACE: &str = "hookwarden.io/source-namespace";
pub const SOURCE_NAME: &str = "hookwarden.io/source-name";
/// The label that makes a Secret an agent's signing Secret, the only kind of
/// user Secret receivers read.
pub const AGENT_SIGNING_LABEL: (&str, &str) = ("hookwarden.io/agent-signing", "true");
/// The label that makes a Secret an agent's credentials (request headers).
pub const AGENT_HEADERS_LABEL: (&str, &str) = ("hookwarden.io/agent-headers", "true");

/// The kinds of Secret receivers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// hookwarden's own key Secrets (HMAC keys of hooks).
    Keys,
    /// Agents' Standard Webhooks signing Secrets.
    Signing,
    /// Agents' credentials: request headers.
    Headers,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Keys, Kind::Signing, Kind::Headers];

    fn value(self) -> &'static str {
        match self {
            Kind::Keys => "keys",
            Kind::Signing => "signing",
            Kind::Headers => "headers",
        }
    }

    /// The label selector of the Secrets of this kind where they are.
    pub fn source_selector(self) -> String {
        crate::keys::selector(match self {
            Kind::Keys => crate::keys::MANAGED_BY,
            Kind::Signing => AGENT_SIGNING_LABEL,
            Kind::Headers => AGENT_HEADERS_LABEL,
        })
    }

    /// The label selector of their copies in the keys namespace.
    pub fn copy_selector(self) -> String {
        crate::keys::selector((COPY_LABEL, self.value()))
    }
}

/// The name of the copy of `source`: `{namespace}.{name}`, or, beyond the
/// 253 characters a Secret name may have, `copy-` and a hash of both.
pub fn copy_name(source: &ObjectRef) -> String {
    let name = format!("{}.{}", source.namespace, source.name);
    if name.len() <= 253 {
        return name;
    }
    let digest = sha2::Sha256::digest(name.as_bytes());
    format!("copy-{}", hex::encode(&digest[..16]))
}

/// The Secret a copy copies, from its annotations; `None` for anything else.
pub fn source_of(copy: &Secret) -> Option<ObjectRef> {
    let annotations = copy.metadata.annotations.as_ref()?;
    Some(ObjectRef::new(annotations.get(SOURCE_NAMESPACE)?, annotations.get(SOURCE_NAME)?))
}

/// The copy of `source` (of `kind`) in `namespace`: its data, nothing of its
/// metadata but where it came from.
pub fn copy_of(source: &Secret, kind: Kind, namespace: &str) -> Secret {
    let from = ObjectRef::of(source);
    Secret {
        metadata: ObjectMeta {
            name: Some(copy_name(&from)),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(COPY_LABEL.to_owned(), kind.value().to_owned())])),
            annotations: Some(BTreeMap::from([
                (SOURCE_NAMESPACE.to_owned(), from.namespace),
                (SOURCE_NAME.to_owned(), from.name),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(source.data.clone().unwrap_or_default()),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The copies (by name) to delete: those whose source is not among `sources`.
/// A copy without source annotations was not written by hookwarden's mirror
/// and is left alone.
pub fn stale<'a>(copies: &'a [Secret], sources: &HashSet<ObjectRef>) -> Vec<&'a str> {
    copies
        .iter()
        .filter(|copy| source_of(copy).is_some_and(|source| !sources.contains(&source)))
        .filter_map(|copy| copy.metadata.name.as_deref())
        .collect()
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;

    use super::*;

    fn secret(ns: &str, name: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".into(), "hookwarden".into())])),
                owner_references: Some(vec![Default::default()]),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([("key-1".into(), k8s_openapi::ByteString(b"s3cret".to_vec()))])),
            ..Secret::default()
        }
    }

    #[test]
    fn a_copy_has_the_data_and_names_its_source_but_keeps_nothing_else() {
        let copy = copy_of(&secret("team-a", "svc-hmac"), Kind::Keys, "keys");
        assert_eq!(copy.metadata.name.as_deref(), Some("team-a.svc-hmac"));
        assert_eq!(copy.metadata.namespace.as_deref(), Some("keys"));
        assert_eq!(copy.data, secret("team-a", "svc-hmac").data);
        assert_eq!(source_of(&copy), Some(ObjectRef::new("team-a", "svc-hmac")));
        assert_eq!(copy.metadata.labels, Some(BTreeMap::from([(COPY_LABEL.into(), "keys".into())])));
        assert!(copy.metadata.owner_references.is_none(), "no owner across namespaces");
        assert_eq!(copy_of(&secret("b", "s"), Kind::Signing, "k").labels()[COPY_LABEL], "signing");
    }

    #[test]
    fn copy_names_never_collide_and_fit() {
        // A namespace has no dot: "a-b"+"c" and "a"+"b-c" (or "b.c") differ.
        let names: HashSet<String> = [("a-b", "c"), ("a", "b-c"), ("a", "b.c"), ("a-b", "c.d")]
            .iter()
            .map(|(ns, n)| copy_name(&ObjectRef::new(*ns, *n)))
            .collect();
        assert_eq!(names.len(), 4);
        let long = ObjectRef::new("n".repeat(63), "s".repeat(253));
        let name = copy_name(&long);
        assert!(name.len() <= 253 && name.starts_with("copy-"), "{name}");
        assert_ne!(name, copy_name(&ObjectRef::new("n".repeat(63), "t".repeat(253))));
        assert_eq!(copy_name(&ObjectRef::new("n".repeat(63), "s".repeat(189))).len(), 253);
    }

    #[test]
    fn stale_copies_are_those_whose_source_is_gone() {
        let copies = vec![
            copy_of(&secret("a", "one"), Kind::Keys, "k"),
            copy_of(&secret("a", "two"), Kind::Keys, "k"),
            // Not a copy: no source annotations.
            secret("k", "someone-elses"),
        ];
        let sources = HashSet::from([ObjectRef::new("a", "one")]);
        assert_eq!(stale(&copies, &sources), vec!["a.two"]);
        assert!(
            stale(&copies, &HashSet::from([ObjectRef::new("a", "one"), ObjectRef::new("a", "two")]))
                .is_empty()
        );
        assert_eq!(stale(&copies, &HashSet::new()), vec!["a.one", "a.two"]);
    }
}
