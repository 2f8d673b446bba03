//! Agents' credentials: the entries of a Secret (label
//! `hookwarden.io/agent-headers: "true"`) become request headers of every
//! call to the agents that name it in `headersSecretRef`.
//!
//! What is refused, and why: an entry whose name is not an HTTP header name
//! or whose value is not a header value (a newline would split the
//! request); and an entry naming a header hookwarden sets itself — the
//! CloudEvents and Standard Webhooks headers (a team's Secret must not
//! change what an agent verifies), the trace context, and the framing and
//! hop-by-hop headers the HTTP client owns. Values are marked sensitive, so
//! they never appear in a `Debug` print, and only entry names are logged.

use reqwest::header::{HeaderName, HeaderValue};

use crate::receiver::registry::AgentHeaders;

/// Header names, or prefixes ending in `-`, that no credentials entry may set.
const RESERVED: &[&str] = &[
    "ce-",
    "webhook-",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-",
    "traceparent",
    "tracestate",
];

/// Why an entry is not sent.
fn refusal(name: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), &'static str> {
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| "not an HTTP header name")?;
    let lower = header.as_str();
    let reserved = RESERVED.iter().any(|r| match r.strip_suffix('-') {
        Some(_) => lower.starts_with(r),
        None => lower == *r,
    });
    if reserved {
        return Err("a header hookwarden sets itself");
    }
    let trimmed = value.trim_ascii();
    if trimmed.is_empty() {
        return Err("empty value");
    }
    let mut value = HeaderValue::from_bytes(trimmed).map_err(|_| "not an HTTP header value")?;
    value.set_sensitive(true);
    Ok((header, value))
}

/// The headers of a credentials Secret's entries (`data`, in entry-name
/// order), and the entries skipped with why. Surrounding whitespace of a
/// value (a trailing newline from `kubectl create secret --from-file`) is
/// dropped.
pub fn headers_from<'a>(
    data: impl IntoIterator<Item = (&'a String, &'a k8s_openapi::ByteString)>,
) -> (AgentHeaders, Vec<(String, &'static str)>) {
    let (mut headers, mut skipped) = (Vec::new(), Vec::new());
    for (name, value) in data {
        match refusal(name, &value.0) {
            Ok(header) => headers.push(header),
            Err(why) => skipped.push((name.clone(), why)),
        }
    }
    (headers, skipped)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    #[test]
    fn entries_become_headers_and_those_hookwarden_owns_or_cannot_send_are_skipped() {
        let rows: &[(&str, &[u8], Result<&str, &str>)] = &[
            ("Authorization", b"Bearer t0ken\n", Ok("Bearer t0ken")),
            ("X-Api-Key", b"k3y", Ok("k3y")),
            ("x-tenant", b" team-a ", Ok("team-a")),
            ("ce-id", b"forged", Err("a header hookwarden sets itself")),
            ("CE-Type", b"forged", Err("a header hookwarden sets itself")),
            ("webhook-signature", b"v1,forged", Err("a header hookwarden sets itself")),
            ("Content-Type", b"text/plain", Err("a header hookwarden sets itself")),
            ("content-length", b"1", Err("a header hookwarden sets itself")),
            ("host", b"elsewhere", Err("a header hookwarden sets itself")),
            ("Proxy-Authorization", b"Basic x", Err("a header hookwarden sets itself")),
            ("traceparent", b"00-x", Err("a header hookwarden sets itself")),
            ("te", b"trailers", Err("a header hookwarden sets itself")),
            ("tenant", b"ok", Ok("ok")), // only `te` itself is reserved, not every name starting so
            ("x-split", b"a\r\nX-Injected: 1", Err("not an HTTP header value")),
            ("bad name", b"v", Err("not an HTTP header name")),
            ("x-empty", b"  \n", Err("empty value")),
        ];
        for (name, value, want) in rows {
            let data = BTreeMap::from([(name.to_string(), ByteString(value.to_vec()))]);
            let (headers, skipped) = headers_from(&data);
            match want {
                Ok(v) => {
                    assert!(skipped.is_empty(), "{name}: {skipped:?}");
                    assert_eq!(headers[0].0.as_str(), name.to_ascii_lowercase());
                    assert_eq!(headers[0].1.to_str().unwrap(), *v, "{name}");
                    assert!(headers[0].1.is_sensitive(), "{name}: values are sensitive");
                }
                Err(why) => {
                    assert!(headers.is_empty(), "{name}");
                    assert_eq!(skipped, [(name.to_string(), *why)], "{name}");
                }
            }
        }
    }

    #[test]
    fn a_value_never_shows_in_a_debug_print() {
        let data = BTreeMap::from([("Authorization".to_string(), ByteString(b"Bearer s3cret".to_vec()))]);
        let (headers, _) = headers_from(&data);
        let printed = format!("{headers:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
    }
}
