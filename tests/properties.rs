//! A short property-based run over what the receiver parses from untrusted
//! input (the same functions `fuzz/run` fuzzes for minutes): signatures,
//! GitHub's form encoding, the payload envelope, durations, the admin
//! query, and the GitHub API's answers. No services needed.

use bytes::Bytes;
use hookwarden::{
    ObjectRef,
    api::Duration,
    queue::Delivery,
    receiver::{admin::deliveries_query, ingest::http::form_payload},
    signature,
};
use proptest::prelude::*;

/// Any JSON value, biased towards the keys GitHub's answers have, so the
/// parsers see near misses: the right key with the wrong type.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop_oneof![
        Just("id".to_owned()),
        Just("guid".to_owned()),
        Just("event".to_owned()),
        Just("token".to_owned()),
        Just("expires_at".to_owned()),
        Just("request".to_owned()),
        Just("payload".to_owned()),
        Just("config".to_owned()),
        Just("url".to_owned()),
        Just("events".to_owned()),
        Just("active".to_owned()),
        Just("hooks".to_owned()),
        Just("status_code".to_owned()),
        Just("delivered_at".to_owned()),
        "[a-z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn githubs_answers_of_any_shape_are_an_error_or_a_value_never_a_panic(body in json_value()) {
        use hookwarden::github::{self, Delivery, Hook};
        let _ = github::parse::<Hook>(body.clone());
        let _ = github::parse::<Vec<Hook>>(body.clone());
        let _ = github::parse::<Vec<Delivery>>(body.clone()).map(|p| p.iter().map(Delivery::delivered_unix).sum::<i64>());
        let _ = github::parse_installation_token(&body, 0);
        let _ = github::meta::parse_meta(body.to_string().as_bytes());
        if let Ok(d) = github::parse_delivery(body) {
            prop_assert!(d.payload.as_ref().is_none_or(|p| !p.is_null()));
        }
    }

    #[test]
    fn a_signature_verifies_only_its_own_body_and_key(
        key in prop::collection::vec(any::<u8>(), 1..64),
        body in prop::collection::vec(any::<u8>(), 0..512),
        flip in any::<prop::sample::Index>(),
    ) {
        let header = signature::sign(&key, &body);
        prop_assert_eq!(signature::verify(Some(header.as_bytes()), &body, &[&key]), Ok(0));
        // Any one changed character of the header is refused.
        let mut bad = header.clone().into_bytes();
        let i = flip.index(bad.len());
        bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
        prop_assert!(signature::verify(Some(&bad), &body, &[&key]).is_err());
        // As is the header under a key that is not the hook's. (Not `key`
        // plus a zero byte: HMAC pads short keys with zeros, so that is the
        // same key — which this test found.)
        let mut other = key.clone();
        other[0] ^= 1;
        prop_assert!(signature::verify(Some(header.as_bytes()), &body, &[&other]).is_err());
    }

    #[test]
    fn the_signature_header_parser_never_panics(header in prop::collection::vec(any::<u8>(), 0..100)) {
        let _ = signature::verify(Some(&header), b"{}", &[b"k"]);
    }

    #[test]
    fn form_encoding_round_trips_any_payload(payload in ".{0,300}", noise in "[a-z]{0,8}") {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("other", &noise)
            .append_pair("payload", &payload)
            .finish();
        prop_assert_eq!(form_payload(body.as_bytes()).unwrap(), payload.as_bytes());
    }

    #[test]
    fn the_envelope_reads_action_and_repository_from_any_object(
        action in proptest::option::of("[a-z_]{1,20}"),
        repo in proptest::option::of("[A-Za-z0-9-]{1,10}/[A-Za-z0-9._-]{1,10}"),
        extra in prop::collection::btree_map("[a-z]{1,8}", any::<i64>(), 0..5),
    ) {
        let mut payload = serde_json::json!(extra);
        if let Some(a) = &action { payload["action"] = a.clone().into(); }
        if let Some(r) = &repo { payload["repository"] = serde_json::json!({"full_name": r}); }
        let bytes = Bytes::from(payload.to_string());
        let d = Delivery::parse("g", "push", &ObjectRef::new("ns", "h"), bytes.clone()).unwrap();
        prop_assert_eq!(d.action, action);
        prop_assert_eq!(d.repository, repo);
        prop_assert_eq!(d.payload, bytes);
    }

    #[test]
    fn the_envelope_refuses_what_is_not_a_json_object(data in prop::collection::vec(any::<u8>(), 0..200)) {
        let parsed = Delivery::parse("g", "push", &ObjectRef::new("ns", "h"), Bytes::from(data.clone()));
        let is_object = serde_json::from_slice::<serde_json::Value>(&data).is_ok_and(|v| v.is_object());
        if !is_object {
            prop_assert!(parsed.is_err());
        }
    }

    #[test]
    fn durations_parse_to_their_sum_and_print_back(parts in prop::collection::vec((0u64..100_000, 0usize..4), 1..5)) {
        const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];
        let text: String = parts.iter().map(|(n, u)| format!("{n}{}", UNITS[*u].0)).collect();
        let millis: u64 = parts.iter().map(|(n, u)| n * UNITS[*u].1).sum();
        let d: Duration = text.parse().unwrap();
        prop_assert_eq!(d.get(), std::time::Duration::from_millis(millis));
        prop_assert_eq!(d.to_string(), text);
    }

    #[test]
    fn duration_parsing_never_panics(text in "\\PC{0,24}") {
        let _ = text.parse::<Duration>();
    }

    #[test]
    fn the_admin_query_reads_back_what_the_cli_writes(
        status in proptest::option::of(".{1,20}"),
        event in proptest::option::of("[a-z_]{1,20}"),
        repository in proptest::option::of(".{1,30}"),
        limit in 0usize..5000,
    ) {
        // The CLI's encoding: reqwest's query(), i.e. form_urlencoded.
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("limit", &limit.to_string());
        for (k, v) in [("status", &status), ("event", &event), ("repository", &repository)] {
            if let Some(v) = v { q.append_pair(k, v); }
        }
        let (filter, parsed_limit) = deliveries_query(&q.finish()).unwrap();
        prop_assert_eq!(filter.status, status);
        prop_assert_eq!(filter.event, event);
        prop_assert_eq!(filter.repository, repository);
        prop_assert_eq!(filter.hook, None);
        prop_assert_eq!(parsed_limit, limit.min(1000));
    }
}

#[test]
fn a_limit_that_is_not_a_number_is_a_clear_error() {
    let error = deliveries_query("limit=ten").unwrap_err();
    assert!(error.contains("limit must be a whole number"), "{error}");
    assert_eq!(deliveries_query("").unwrap().1, 100);
}
