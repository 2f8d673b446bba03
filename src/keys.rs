//! HMAC key material of one hook, as kept in its Kubernetes Secret: the
//! contract between the operator (which writes keys) and the receivers (which
//! verify with every key present).
//!
//! Layout: one data entry per valid key, named `key-<version>`, where the
//! version is the key's creation time in Unix seconds, zero-padded so that
//! name order is age order. The value is the secret string GitHub is given
//! (64 hex characters from 32 random bytes of the OS RNG).

use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use rand::TryRngCore;

/// Prefix of the data entries that hold keys.
pub const KEY_PREFIX: &str = "key-";
/// Label every Secret managed by hookwarden carries; receivers watch only these.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "hookwarden");
/// Label naming the WebhookConfig a Secret belongs to.
pub const WEBHOOK_CONFIG_LABEL: &str = "hookwarden.io/webhookconfig";

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
    fn debug_redacts_the_secret() {
        let key = HmacKey::new("1", "s3cr3t-value");
        let shown = format!("{key:?}");
        assert!(!shown.contains("s3cr3t-value") && shown.contains("redacted"), "{shown}");
    }
}
