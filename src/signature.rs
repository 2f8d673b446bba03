//! GitHub's webhook signature: `X-Hub-Signature-256: sha256=<hex>` where the
//! hex is HMAC-SHA256 of the raw request body, keyed with the hook's secret.
//!
//! Verification is strict (exactly `sha256=` and 64 hex digits), runs on the
//! raw bytes before anything is parsed, compares in constant time, and accepts
//! a body signed with any of the keys currently valid for the hook, which is
//! what makes rotation free of rejected deliveries.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header GitHub signs with. The legacy SHA-1 `X-Hub-Signature` is
/// never accepted on its own.
pub const HEADER: &str = "x-hub-signature-256";
const PREFIX: &str = "sha256=";

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was not accepted. Messages never include key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("malformed X-Hub-Signature-256 header: expected sha256= followed by 64 hex digits")]
    Malformed,
    #[error("signature does not match any current key")]
    Mismatch,
}

impl SignatureError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Missing => "signature_missing",
            Self::Malformed => "signature_malformed",
            Self::Mismatch => "signature_mismatch",
        }
    }
}

/// The `X-Hub-Signature-256` value GitHub would send for `body` under `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(body);
    format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
}

/// The legacy SHA-1 `X-Hub-Signature` value, which GitHub still sends
/// alongside the SHA-256 one. Only for simulating GitHub.
pub fn sign_sha1(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks `header` (the raw `X-Hub-Signature-256` value, if any) against
/// `body` under each of `keys`; returns the index of the key that matched.
pub fn verify<K: AsRef<[u8]>>(
    header: Option<&[u8]>,
    body: &[u8],
    keys: &[K],
) -> Result<usize, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let digest = parse(header)?;
    keys.iter()
        .position(|key| {
            let mut mac = HmacSha256::new_from_slice(key.as_ref()).expect("any key length");
            mac.update(body);
            // NB: verify_slice compares in constant time.
            mac.verify_slice(&digest).is_ok()
        })
        .ok_or(SignatureError::Mismatch)
}

/// The MAC a well-formed header carries (upper- or lower-case hex alike),
/// the identity of a signed body: replaying a captured body means replaying
/// this MAC, since no one else can sign it.
pub fn digest(header: &[u8]) -> Option<[u8; 32]> {
    parse(header).ok()
}

fn parse(header: &[u8]) -> Result<[u8; 32], SignatureError> {
    let hex_digits = header.strip_prefix(PREFIX.as_bytes()).ok_or(SignatureError::Malformed)?;
    if hex_digits.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut digest).map_err(|_| SignatureError::Malformed)?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    // GitHub's published test vector ("Validating webhook deliveries").
    const SECRET: &str = "It's a Secret to Everybody";
    const BODY: &str = "Hello, World!";
    const EXPECTED: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_test_vector() {
        assert_eq!(sign(SECRET.as_bytes(), BODY.as_bytes()), EXPECTED);
        assert_eq!(verify(Some(EXPECTED.as_bytes()), BODY.as_bytes(), &[SECRET]), Ok(0));
    }

    #[test]
    fn any_current_key_is_accepted() {
        let keys = ["old-key", SECRET, "newer-key"];
        assert_eq!(verify(Some(EXPECTED.as_bytes()), BODY.as_bytes(), &keys), Ok(1));
    }

    #[test]
    fn rejects_wrong_key_body_or_shape() {
        let header = Some(EXPECTED.as_bytes());
        assert_eq!(verify(header, BODY.as_bytes(), &["other"]), Err(SignatureError::Mismatch));
        assert_eq!(verify(header, b"Hello, World?", &[SECRET]), Err(SignatureError::Mismatch));
        assert_eq!(verify::<&str>(header, BODY.as_bytes(), &[]), Err(SignatureError::Mismatch));
        assert_eq!(verify(None, BODY.as_bytes(), &[SECRET]), Err(SignatureError::Missing));
        let upper = EXPECTED.replace("sha256=", "SHA256=");
        let sha1 = sign_sha1(SECRET.as_bytes(), BODY.as_bytes());
        for bad in [
            &EXPECTED[..EXPECTED.len() - 1], // 63 digits
            &format!("{EXPECTED}0"),         // 65 digits
            &EXPECTED["sha256=".len()..],    // no prefix
            &upper,                          // wrong prefix case
            &EXPECTED.replace('7', "g"),     // not hex
            &format!(" {EXPECTED}"),         // padding
            &sha1,                           // SHA-1 in the SHA-256 header
        ] {
            assert_eq!(
                verify(Some(bad.as_bytes()), BODY.as_bytes(), &[SECRET]),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn upper_case_hex_digits_are_the_same_digest() {
        let upper = format!("sha256={}", EXPECTED["sha256=".len()..].to_uppercase());
        assert_eq!(verify(Some(upper.as_bytes()), BODY.as_bytes(), &[SECRET]), Ok(0));
    }
}
