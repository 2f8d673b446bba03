//! The admin API's wire format: the type of every answer, written by the
//! handlers and read back by the CLI ([`crate::cli::admin_view`]), so a
//! renamed field is a compile error on both sides, not a `-` in a table.
//! (The status page reads the same JSON; its field names are these.)

use serde::{Deserialize, Serialize};

use crate::api::DeliverySummary;

/// One policy as `GET /admin/policies` (and the live stream's snapshot)
/// shows it: the handler writes it, the CLI and the status page read it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub policy: String,
    pub enabled: bool,
    pub concurrency: usize,
    pub queue_limit: u64,
    pub reason: String,
    /// Deliveries not yet settled by every agent they go to.
    pub queued: u64,
    pub retrying: u64,
    pub dead_letters: u64,
    pub agents: Vec<AgentView>,
}

/// One agent of a [`PolicyView`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub name: String,
    pub url: String,
    /// The agent's own switch.
    pub enabled: bool,
    /// `closed`, `open` or `half_open`.
    pub circuit: String,
    /// Deliveries waiting or in flight in its lane.
    pub queued: u64,
}

/// One WebhookConfig as `GET /admin/hooks` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookView {
    /// `namespace/name`.
    pub hook: String,
    /// The AgentPolicy it delivers to, `namespace/name`.
    pub policy: String,
    /// Its Ready condition as the operator last wrote it: `True`,
    /// `False`, `Unknown`; none before the operator wrote one.
    pub ready: Option<String>,
    /// GitHub's latest delivery, as the operator last read it.
    pub last_delivery: Option<DeliverySummary>,
}

/// One dead letter as `GET .../dead-letters` lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    pub id: String,
    pub guid: String,
    pub event: String,
    pub hook: String,
    pub repository: Option<String>,
    /// The agent it failed for.
    pub agent: Option<String>,
    pub attempts: u32,
    pub error: String,
    pub failed_ms: u64,
}

/// The answer to `POST .../enable` and `.../disable`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Enabled {
    pub policy: String,
    pub spec_enabled: bool,
}

/// The answer to `POST .../dead-letters/{id}/replay`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    pub replayed: String,
}

/// The answer to `DELETE .../dead-letters`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    pub purged: u64,
}

#[cfg(test)]
mod tests {
    use serde::{Serialize, de::DeserializeOwned};
    use serde_json::json;

    use super::*;

    /// `value` read back from its JSON is itself, and the JSON has `names`.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T, names: &[&str]) {
        let wire = serde_json::to_value(&value).unwrap();
        for name in names {
            assert!(wire.get(name).is_some(), "{name} in {wire}");
        }
        assert_eq!(serde_json::from_value::<T>(wire).unwrap(), value);
    }

    #[test]
    fn every_answer_reads_back_as_written_under_the_names_clients_use() {
        let agent = AgentView {
            name: "a".into(),
            url: "http://a/".into(),
            enabled: true,
            circuit: "closed".into(),
            queued: 2,
        };
        round_trip(agent.clone(), &["name", "url", "enabled", "circuit", "queued"]);
        let policy = PolicyView {
            policy: "t/p".into(),
            agents: vec![agent],
            dead_letters: 3,
            queue_limit: 10,
            ..PolicyView::default()
        };
        round_trip(
            policy,
            &[
                "policy",
                "enabled",
                "concurrency",
                "queueLimit",
                "reason",
                "queued",
                "retrying",
                "deadLetters",
                "agents",
            ],
        );
        let delivery: DeliverySummary = serde_json::from_value(json!({
            "guid": "g", "event": "push", "statusCode": 502, "deliveredAt": "2026-12-05T10:00:00Z"
        }))
        .unwrap();
        let hook = HookView {
            hook: "t/h".into(),
            policy: "t/p".into(),
            ready: Some("True".into()),
            last_delivery: Some(delivery),
        };
        round_trip(hook, &["hook", "policy", "ready", "lastDelivery"]);
        let letter = DeadLetterView {
            id: "1-0".into(),
            attempts: 5,
            failed_ms: 7,
            agent: Some("a".into()),
            ..DeadLetterView::default()
        };
        round_trip(letter, &["id", "guid", "event", "hook", "agent", "attempts", "error", "failedMs"]);
        round_trip(Enabled { policy: "t/p".into(), spec_enabled: false }, &["policy", "specEnabled"]);
        round_trip(Replayed { replayed: "1-0".into() }, &["replayed"]);
        round_trip(Purged { purged: 4 }, &["purged"]);
    }
}
