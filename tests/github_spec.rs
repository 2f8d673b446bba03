//! hookwarden's knowledge of GitHub, checked against GitHub's own published
//! descriptions (npm `@octokit/openapi-webhooks`), so it cannot drift.

mod common;

use std::collections::BTreeSet;

use hookwarden::api::GITHUB_EVENTS;

#[test]
fn event_list_matches_githubs_webhook_descriptions() {
    let path = common::npm_fixtures().join("openapi-webhooks/generated/api.github.com.json");
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let published: BTreeSet<String> = spec["webhooks"]
        .as_object()
        .expect("webhooks section")
        .values()
        .map(|w| w["post"]["x-github"]["subcategory"].as_str().expect("subcategory").replace('-', "_"))
        .filter(|e| e != "ping") // sent by GitHub on its own, never subscribed to
        .collect();
    let ours: BTreeSet<String> = GITHUB_EVENTS.iter().map(|e| e.to_string()).collect();
    let missing: Vec<_> = published.difference(&ours).collect();
    let extra: Vec<_> = ours.difference(&published).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "events GitHub has that we lack: {missing:?}; events we accept that GitHub lacks: {extra:?}"
    );
}
