//! Signing what hookwarden sends to agents, as the Standard Webhooks spec
//! defines it (<https://www.standardwebhooks.com>, "Signature scheme"):
//!
//! - `webhook-id`: the message id — here the GitHub delivery GUID, the same
//!   for every retry and replay, so an agent can de-duplicate;
//! - `webhook-timestamp`: seconds since the epoch at the time of the attempt
//!   (a retry hours later is signed afresh, within any verifier's tolerance);
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`,
//!   one per key, separated by spaces, so an agent holding either the old or
//!   the new key accepts the message while a key is rotated.
//!
//! Keys are written as the spec's `whsec_<base64>`; the key is the decoded
//! bytes. An agent names a Secret (`signingSecretRef`) whose `whsec_` values
//! are its current keys.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const ID: &str = "webhook-id";
pub const TIMESTAMP: &str = "webhook-timestamp";
pub const SIGNATURE: &str = "webhook-signature";
const PREFIX: &str = "whsec_";
/// How far a timestamp may be from the verifier's clock (the spec's and
/// its reference libraries' five minutes).
pub const TOLERANCE_SECONDS: u64 = 5 * 60;

/// One signing key. Debug never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Why a key or a signed message was not accepted. Never contains key
/// material or signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("signing key must be whsec_ followed by base64")]
    MalformedKey,
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("webhook-timestamp is not a number of seconds")]
    MalformedTimestamp,
    #[error("webhook-timestamp is more than five minutes from now")]
    Stale,
    #[error("no webhook-signature matches a current key")]
    Mismatch,
}

impl SigningKey {
    /// Parses `whsec_<base64>` (surrounding whitespace, as from a file,
    /// ignored).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let encoded = text.trim().strip_prefix(PREFIX).ok_or(Error::MalformedKey)?;
        let key = STANDARD.decode(encoded).map_err(|_| Error::MalformedKey)?;
        if key.is_empty() {
            return Err(Error::MalformedKey);
        }
        Ok(Self(key))
    }

    /// A fresh random key (32 bytes), as `whsec_<base64>`.
    pub fn generate() -> String {
        let bytes: [u8; 32] = rand::random();
        format!("{PREFIX}{}", STANDARD.encode(bytes))
    }

    fn mac(&self, id: &str, timestamp: u64, body: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// The `webhook-signature` value for a message under every key in `keys`.
pub fn signature(keys: &[SigningKey], id: &str, timestamp: u64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| format!("v1,{}", STANDARD.encode(key.mac(id, timestamp, body))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The three headers for a message sent at `now_seconds`.
pub fn headers(keys: &[SigningKey], id: &str, now_seconds: u64, body: &[u8]) -> [(&'static str, String); 3] {
    [
        (ID, id.to_owned()),
        (TIMESTAMP, now_seconds.to_string()),
        (SIGNATURE, signature(keys, id, now_seconds, body)),
    ]
}

/// Verifies a received message: the timestamp within [`TOLERANCE_SECONDS`]
/// of `now_seconds`, and any `v1` signature made with any of `keys`
/// (compared in constant time). Other versions are ignored, as the spec asks.
pub fn verify(
    keys: &[SigningKey],
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now_seconds: u64,
) -> Result<(), Error> {
    let id = id.ok_or(Error::Missing(ID))?;
    let timestamp = timestamp.ok_or(Error::Missing(TIMESTAMP))?;
    let signatures = signatures.ok_or(Error::Missing(SIGNATURE))?;
    let ts: u64 = timestamp.trim().parse().map_err(|_| Error::MalformedTimestamp)?;
    if ts.abs_diff(now_seconds) > TOLERANCE_SECONDS {
        return Err(Error::Stale);
    }
    let expected: Vec<[u8; 32]> = keys.iter().map(|k| k.mac(id, ts, body)).collect();
    let matched = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|given| expected.iter().any(|e| bool::from(e.as_slice().ct_eq(&given))));
    if matched { Ok(()) } else { Err(Error::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Computed with the `standardwebhooks` npm package 1.1.1:
    // new Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").sign(
    //   "msg_p5jXN8AQM9LWM0D4loKWxJek", new Date(1614265330 * 1000), '{"test": 2432232314}')
    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID_: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_as_the_reference_implementation() {
        let key = SigningKey::parse(KEY).unwrap();
        assert_eq!(signature(&[key], ID_, TS, BODY), EXPECTED);
    }

    #[test]
    fn verifies_with_any_current_key_and_rejects_the_rest() {
        let old = SigningKey::parse(KEY).unwrap();
        let new = SigningKey::parse(&SigningKey::generate()).unwrap();
        let both = signature(&[old.clone(), new.clone()], ID_, TS, BODY);
        let (old, new) = ([old], [new]);
        let check = |keys: &[SigningKey], sig: &str, body: &[u8], now: u64| {
            verify(keys, Some(ID_), Some(&TS.to_string()), Some(sig), body, now)
        };
        assert_eq!(check(&old, &both, BODY, TS), Ok(()));
        assert_eq!(check(&new, &both, BODY, TS + 299), Ok(()));
        assert_eq!(check(&new, EXPECTED, BODY, TS), Err(Error::Mismatch));
        assert_eq!(check(&old, &both, b"{}", TS), Err(Error::Mismatch));
        assert_eq!(check(&old, &both, BODY, TS + 301), Err(Error::Stale));
        assert_eq!(check(&old, "v2,abc v1,!!", BODY, TS), Err(Error::Mismatch));
        assert_eq!(verify(&old, Some(ID_), None, Some(&both), BODY, TS), Err(Error::Missing(TIMESTAMP)));
    }

    #[test]
    fn keys_must_be_whsec_base64() {
        assert!(SigningKey::parse(" whsec_AAAA\n").is_ok());
        for bad in ["", "whsec_", "AAAA", "whsec_!!!", "sk_AAAA"] {
            assert_eq!(SigningKey::parse(bad), Err(Error::MalformedKey), "{bad:?}");
        }
        assert!(!format!("{:?}", SigningKey::parse(KEY).unwrap()).contains("MfKQ"));
    }
}
