//! HMAC key material of one hook, as kept in its Kubernetes Secret: the
//! contract between the operator (which writes keys) and the receivers (which
//! verify with every key present).
//!
//! Layout: one data entry per valid key, named `key-<version>`, where the
//! version is the key's creation time in Unix seconds, zero-padded so that
//! name order is age order. The value is the secret string GitHub is given
//! (64 hex characters from 32 random bytes of the OS RNG).
//!
//! Each receiver replica reports which key versions it has loaded in a Lease
//! of its own (label [`RECEIVER_COMPONENT`], annotation [`LOADED_KEYS_ANNOTATION`]:
//! JSON `{"namespace/secret": ["version", ...]}`), renewed every few seconds.
//! Before switching GitHub to a new key, the operator waits until
//! [`replicas_missing`] is empty.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::api::core::v1::Secret;
use rand::TryRngCore;

/// Prefix of the data entries that hold keys.
pub const KEY_PREFIX: &str = "key-";
/// Label every Secret managed by hookwarden carries; receivers watch only these.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "hookwarden");
/// Label naming the WebhookConfig a Secret belongs to.
pub const WEBHOOK_CONFIG_LABEL: &str = "hookwarden.io/webhookconfig";

/// Label value (`app.kubernetes.io/component`) of the receivers' Leases.
pub const RECEIVER_COMPONENT: &str = "receiver";
/// Annotation of a receiver's Lease listing the key versions it has loaded.
pub const LOADED_KEYS_ANNOTATION: &str = "hookwarden.io/loaded-keys";
/// A receiver whose Lease was not renewed for this long is gone.
pub const RECEIVER_LEASE_SECONDS: i32 = 30;

/// The label selector `key=value` of one label.
pub fn selector((key, value): (&str, &str)) -> String {
    format!("{key}={value}")
}

/// The label selector of the receivers' Leases.
pub fn receiver_lease_selector() -> String {
    format!("{},app.kubernetes.io/component={RECEIVER_COMPONENT}", selector(MANAGED_BY))
}

/// Key versions loaded per Secret (`namespace/name`), as receivers report them.
pub type LoadedKeys = BTreeMap<String, Vec<String>>;

/// The live receivers (Lease renewed within its duration at `now`) that
/// have not yet loaded `version` of `secret` (`namespace/name`). Empty when
/// every live receiver can verify with the key, or when none is live.
pub fn replicas_missing(
    leases: &[k8s_openapi::api::coordination::v1::Lease],
    now: k8s_openapi::jiff::Timestamp,
    secret: &str,
    version: &str,
) -> Vec<String> {
    leases
        .iter()
        .filter(|lease| {
            let spec = lease.spec.as_ref();
            let duration = spec.and_then(|s| s.lease_duration_seconds).unwrap_or(RECEIVER_LEASE_SECONDS);
            spec.and_then(|s| s.renew_time.as_ref())
                .is_some_and(|t| now.as_second() - t.0.as_second() <= i64::from(duration))
        })
        .filter(|lease| {
            let loaded: Option<LoadedKeys> = lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LOADED_KEYS_ANNOTATION))
                .and_then(|json| serde_json::from_str(json).ok());
            !loaded.is_some_and(|l| l.get(secret).is_some_and(|v| v.iter().any(|x| x == version)))
        })
        .map(|lease| lease.metadata.name.clone().unwrap_or_default())
        .collect()
}

/// One HMAC key. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct HmacKey {
    version: String,
    secret: Vec<u8>,
}

impl HmacKey {
    /// A fresh key from the OS RNG, versioned by `created_unix_secs`.
    pub fn generate(created_unix_secs: u64) -> Self {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.try_fill_bytes(&mut raw).expect("the OS RNG is available");
        Self { version: format!("{created_unix_secs:012}"), secret: hex::encode(raw).into_bytes() }
    }

    pub fn new(version: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        Self { version: version.into(), secret: secret.into() }
    }

    /// The version, e.g. `001732330000`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The Secret data entry name for this key.
    pub fn entry_name(&self) -> String {
        format!("{KEY_PREFIX}{}", self.version)
    }

    /// The secret bytes, as GitHub uses them for HMAC.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

impl AsRef<[u8]> for HmacKey {
    fn as_ref(&self) -> &[u8] {
        &self.secret
    }
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacKey").field("version", &self.version).field("secret", &"<redacted>").finish()
    }
}

/// Secret `name` of WebhookConfig `webhook_config` holding `keys`: the
/// labels receivers select on and one entry per key.
pub fn key_secret(name: &str, webhook_config: &str, keys: &[&HmacKey]) -> Secret {
    labelled_key_secret(name, (WEBHOOK_CONFIG_LABEL, webhook_config), keys)
}

/// Secret `name` holding `keys`, labelled as hookwarden's and with `owner`
/// (`label`, the owner's name).
pub fn labelled_key_secret(name: &str, (label, owner): (&str, &str), keys: &[&HmacKey]) -> Secret {
    let mut secret = Secret {
        data: Some(
            keys.iter().map(|k| (k.entry_name(), k8s_openapi::ByteString(k.secret().to_vec()))).collect(),
        ),
        ..Secret::default()
    };
    secret.metadata.name = Some(name.to_owned());
    secret.metadata.labels = Some(
        [(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()), (label.to_owned(), owner.to_owned())].into(),
    );
    secret
}

/// The keys held in a Secret, oldest first.
pub fn keys_from_secret(secret: &Secret) -> Vec<HmacKey> {
    let mut keys: Vec<HmacKey> = secret
        .data
        .iter()
        .flatten()
        .filter_map(|(name, value)| {
            let version = name.strip_prefix(KEY_PREFIX)?;
            (!value.0.is_empty()).then(|| HmacKey::new(version, value.0.clone()))
        })
        .collect();
    keys.sort_by(|a, b| a.version.cmp(&b.version));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn generated_keys_are_random_hex_and_versioned() {
        let a = HmacKey::generate(1_732_330_000);
        let b = HmacKey::generate(1_732_330_000);
        assert_ne!(a.secret(), b.secret());
        assert_eq!(a.secret().len(), 64);
        assert!(a.secret().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(a.entry_name(), "key-001732330000");
    }

    #[test]
    fn reads_keys_oldest_first_and_ignores_other_entries() {
        let secret = Secret {
            data: Some(
                [
                    ("key-001700000200", "new"),
                    ("key-001700000100", "old"),
                    ("note", "not a key"),
                    ("key-001700000300", ""),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
            ),
            ..Secret::default()
        };
        let keys = keys_from_secret(&secret);
        let versions: Vec<_> = keys.iter().map(HmacKey::version).collect();
        assert_eq!(versions, ["001700000100", "001700000200"]);
        assert_eq!(keys[1].secret(), b"new");
    }

    #[test]
    fn replicas_missing_a_key_are_the_live_ones_without_it() {
        use k8s_openapi::{
            api::coordination::v1::{Lease, LeaseSpec},
            apimachinery::pkg::apis::meta::v1::MicroTime,
            jiff::Timestamp,
        };
        let now = Timestamp::from_second(1_000_000).unwrap();
        let lease = |name: &str, renewed_ago: i64, loaded: &str| Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                annotations: Some([(LOADED_KEYS_ANNOTATION.to_owned(), loaded.to_owned())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(Timestamp::from_second(1_000_000 - renewed_ago).unwrap())),
                lease_duration_seconds: Some(30),
                ..Default::default()
            }),
        };
        let leases = [
            lease("has-both", 5, r#"{"team/hook-hmac":["001","002"]}"#),
            lease("has-old", 5, r#"{"team/hook-hmac":["001"]}"#),
            lease("other-secret", 5, r#"{"team/other":["002"]}"#),
            lease("garbled", 5, "not json"),
            lease("departed", 60, r#"{"team/hook-hmac":["001"]}"#),
        ];
        let missing = replicas_missing(&leases, now, "team/hook-hmac", "002");
        assert_eq!(missing, ["has-old", "other-secret", "garbled"]);
        assert!(replicas_missing(&leases[..1], now, "team/hook-hmac", "002").is_empty());
        assert!(
            replicas_missing(&leases[4..], now, "team/hook-hmac", "002").is_empty(),
            "a departed replica is not waited for"
        );
    }

    #[test]
    fn debug_redacts_the_secret() {
        let key = HmacKey::new("1", "s3cr3t-value");
        let shown = format!("{key:?}");
        assert!(!shown.contains("s3cr3t-value") && shown.contains("redacted"), "{shown}");
    }
}
