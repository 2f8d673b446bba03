//! What the queue holds: a delivery and its encoding as stream fields
//! (payload LZ4-compressed), and what dispatch decides about it.

use std::collections::HashMap;

use bytes::Bytes;

use super::{QueueError, Result};
use crate::{ObjectRef, now_ms};

/// One accepted delivery, as queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// `X-GitHub-Delivery`.
    pub guid: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The WebhookConfig it arrived through.
    pub hook: ObjectRef,
    /// `repository.full_name`, when the payload has one.
    pub repository: Option<String>,
    /// `action`, when the payload has one.
    pub action: Option<String>,
    /// The JSON payload (decoded from `payload=` for form deliveries).
    pub payload: Bytes,
    /// When the receiver accepted it, Unix milliseconds.
    pub received_ms: u64,
    /// Set on a retry or replay: the one agent it is for.
    pub agent: Option<String>,
    /// Attempts already made for `agent`.
    pub attempt: u32,
    /// The W3C `traceparent` of the span that queued it: its dispatch
    /// attempts continue that trace ([`crate::trace`]).
    pub trace: Option<String>,
}

impl Delivery {
    /// A new delivery of `event` through `hook`, its payload checked to be
    /// JSON, with the two fields dispatch filters on read from it.
    pub fn parse(
        guid: &str,
        event: &str,
        hook: &ObjectRef,
        payload: Bytes,
    ) -> std::result::Result<Self, serde_json::Error> {
        let envelope: Envelope = serde_json::from_slice(&payload)?;
        Ok(Self {
            guid: guid.to_owned(),
            event: event.to_owned(),
            hook: hook.clone(),
            repository: envelope.repository.map(|r| r.full_name.into_owned()),
            action: envelope.action.map(std::borrow::Cow::into_owned),
            payload,
            received_ms: now_ms(),
            agent: None,
            attempt: 0,
            trace: None,
        })
    }

    /// Stream fields. The payload is LZ4-compressed (`payload_lz4`): GitHub's
    /// JSON shrinks several times, and Redis memory, AOF bytes and copies with it.
    pub(super) fn to_fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        self.fields(("payload_lz4", lz4_flex::compress_prepend_size(&self.payload)))
    }

    fn fields(&self, payload: (&'static str, Vec<u8>)) -> Vec<(&'static str, Vec<u8>)> {
        let mut f = vec![
            ("guid", self.guid.clone().into_bytes()),
            ("event", self.event.clone().into_bytes()),
            ("hook", self.hook.to_string().into_bytes()),
            ("received", self.received_ms.to_string().into_bytes()),
            ("attempt", self.attempt.to_string().into_bytes()),
            payload,
        ];
        for (name, value) in [
            ("repository", &self.repository),
            ("action", &self.action),
            ("agent", &self.agent),
            ("traceparent", &self.trace),
        ] {
            if let Some(v) = value {
                f.push((name, v.clone().into_bytes()));
            }
        }
        f
    }

    pub(super) fn from_fields(id: &str, mut map: HashMap<String, Vec<u8>>) -> Result<Self> {
        let corrupt = |what| QueueError::Corrupt { id: id.to_owned(), what };
        let mut text = |name: &'static str| -> Option<String> {
            map.remove(name).and_then(|v| String::from_utf8(v).ok())
        };
        let hook = text("hook").ok_or_else(|| corrupt("hook"))?;
        let (namespace, name) = hook.split_once('/').ok_or_else(|| corrupt("hook"))?;
        Ok(Self {
            guid: text("guid").ok_or_else(|| corrupt("guid"))?,
            event: text("event").ok_or_else(|| corrupt("event"))?,
            hook: ObjectRef::new(namespace, name),
            repository: text("repository"),
            action: text("action"),
            received_ms: text("received").and_then(|v| v.parse().ok()).ok_or_else(|| corrupt("received"))?,
            agent: text("agent"),
            attempt: text("attempt").and_then(|v| v.parse().ok()).unwrap_or(0),
            trace: text("traceparent"),
            payload: match map.remove("payload_lz4") {
                Some(packed) => {
                    let size = lz4_flex::block::uncompressed_size(&packed).map_or(0, |(size, _)| size);
                    let unpacked = crate::cpu::heavy(size, || lz4_flex::decompress_size_prepended(&packed));
                    Bytes::from(unpacked.map_err(|_| corrupt("payload"))?)
                }
                None => map.remove("payload").map(Bytes::from).ok_or_else(|| corrupt("payload"))?,
            },
        })
    }

    /// Flat `[field, value, ...]` JSON for storing inside Lua-managed sets,
    /// without the payload: the settle script adds it (the `payload` field,
    /// uncompressed: JSON carries text), from the one copy it is sent, so a
    /// delivery that fails for 64 agents is sent to Redis once, not 64 times.
    pub(super) fn to_flat_json(&self, extra: &[(&str, String)]) -> String {
        let mut flat: Vec<serde_json::Value> = Vec::new();
        let mut fields = self.fields(("payload", Vec::new()));
        fields.retain(|(k, _)| *k != "payload");
        for (k, v) in fields {
            flat.push(k.into());
            flat.push(String::from_utf8_lossy(&v).into_owned().into());
        }
        for (k, v) in extra {
            flat.push((*k).into());
            flat.push(v.clone().into());
        }
        serde_json::Value::Array(flat).to_string()
    }
}

/// The two fields of a payload dispatch filters on; the rest is skipped
/// (but still has to be valid JSON).
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    action: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    repository: Option<Repository<'a>>,
}

#[derive(serde::Deserialize)]
struct Repository<'a> {
    #[serde(borrow)]
    full_name: std::borrow::Cow<'a, str>,
}

/// A queued delivery together with its stream entry id.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: String,
    pub delivery: Delivery,
    /// For a lane's copy, the entry of the policy's stream that holds its
    /// payload (until then `delivery.payload` is empty).
    pub origin: Option<String>,
}

/// What enqueueing did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Newly queued under this entry id.
    Queued(String),
    /// Seen before (a redelivery): not queued again.
    Duplicate,
    /// Its body was queued before under another GUID: a captured delivery
    /// sent again. Not queued.
    Replay,
}

/// A dead letter: a delivery one agent never accepted.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub id: String,
    pub delivery: Delivery,
    pub error: String,
    pub failed_ms: u64,
}

/// How one delivery ended for each agent, applied atomically by
/// [`super::Queue::settle`]; decided by `dispatch::settle`.
#[derive(Debug, Default, PartialEq)]
pub struct Settlement {
    /// Agents that accepted it.
    pub delivered: Vec<String>,
    /// Agents to try again later.
    pub retries: Vec<Retry>,
    /// Agents given up on: a dead letter each.
    pub dead: Vec<GiveUp>,
    /// Agents whose filters refused it, and why: `(agent, detail)`; an
    /// empty agent when no agent's `events` and `repositories` take it.
    pub filtered: Vec<(String, String)>,
    /// Agents whose lanes it is copied into (by the policy's router), each
    /// to be delivered and settled there on its own.
    pub routed: Vec<String>,
}

/// One agent's next attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub agent: String,
    /// When, Unix ms.
    pub due_ms: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why the last one failed.
    pub error: String,
}

/// An agent given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiveUp {
    pub agent: String,
    pub attempts: u32,
    pub error: String,
}

impl Settlement {
    /// `(agent, status, detail)` for the activity log.
    pub(super) fn log(&self) -> impl Iterator<Item = (&str, &'static str, Option<&str>)> {
        let delivered = self.delivered.iter().map(|a| (a.as_str(), "delivered", None));
        let retries = self.retries.iter().map(|r| (r.agent.as_str(), "retry", Some(r.error.as_str())));
        let dead = self.dead.iter().map(|d| (d.agent.as_str(), "dead_letter", Some(d.error.as_str())));
        let filtered = self.filtered.iter().map(|(a, why)| (a.as_str(), "filtered", Some(why.as_str())));
        delivered.chain(retries).chain(dead).chain(filtered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delivery(repository: Option<&str>, agent: Option<&str>) -> Delivery {
        let payload = Bytes::from(
            serde_json::json!({ "action": "opened", "repository": repository.map(|r| json!({ "full_name": r })) })
                .to_string(),
        );
        let mut d =
            Delivery::parse("guid-1", "pull_request", &ObjectRef::new("team", "hook"), payload).unwrap();
        d.agent = agent.map(str::to_owned);
        d.attempt = 3;
        d
    }

    #[test]
    fn a_delivery_reads_back_as_it_was_written() {
        for d in [delivery(Some("octo/hello"), Some("reviewer")), delivery(None, None)] {
            let fields: HashMap<String, Vec<u8>> =
                d.to_fields().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            assert!(fields.contains_key("payload_lz4") && !fields.contains_key("payload"), "compressed");
            assert_eq!(Delivery::from_fields("1-0", fields).unwrap(), d);
        }
    }

    #[test]
    fn the_payload_gives_repository_and_action_and_must_be_json() {
        let d = delivery(Some("octo/hello"), None);
        assert_eq!((d.repository.as_deref(), d.action.as_deref()), (Some("octo/hello"), Some("opened")));
        assert!(
            Delivery::parse("g", "push", &ObjectRef::new("a", "b"), Bytes::from_static(b"{nope")).is_err()
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        let mut fields: HashMap<String, Vec<u8>> =
            delivery(None, None).to_fields().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        fields.remove("guid");
        let err = Delivery::from_fields("7-0", fields).unwrap_err();
        assert_eq!(err.to_string(), "corrupt queue entry 7-0: guid");
    }
}
