//! The durable queue: Redis Streams, one stream per AgentPolicy.
//!
//! Keys, for policy `ns/policy` under the configured prefix `p`:
//! - `p:{ns/policy}:events`: the queue. Receivers read it through the consumer
//!   group [`GROUP`], so replicas share the work; an entry is deleted once it is
//!   settled, so `XLEN` is the queue length.
//! - `p:{ns/policy}:retry`: sorted set of scheduled retries (score: due time).
//! - `p:{ns/policy}:dead`: the dead-letter stream.
//! - `p:dedup:{ns/hook}:{guid}`: delivery GUIDs seen in the last 3 days.
//!
//! Every multi-step change is one Lua script, so a crash never leaves a
//! delivery half-queued or half-settled.

use std::{collections::HashMap, sync::LazyLock};

use bytes::Bytes;
use redis::{AsyncCommands, Script};

use super::connection::Connection;
use serde_json::json;

/// Consumer group all receivers join.
pub const GROUP: &str = "receivers";
/// GitHub keeps deliveries, and redelivers them with the same GUID, for 3 days.
pub const DEDUP_TTL_SECS: u64 = 3 * 24 * 3600;

/// Errors from the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue is full ({limit} deliveries)")]
    Full { limit: u64 },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("only {acked} of {wanted} Redis replicas have the delivery")]
    NotReplicated { acked: u32, wanted: u32 },
    #[error("corrupt queue entry {id}: {what}")]
    Corrupt { id: String, what: &'static str },
}

impl QueueError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Full { .. } => "queue_full",
            Self::Redis(_) => "redis_unavailable",
            Self::NotReplicated { .. } => "not_replicated",
            Self::Corrupt { .. } => "corrupt_entry",
        }
    }
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// A namespaced name: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

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
            received_ms: crate::receiver::http::now_ms(),
            agent: None,
            attempt: 0,
        })
    }

    /// Stream fields. The payload is LZ4-compressed (`payload_lz4`): GitHub's
    /// JSON shrinks several times, and Redis memory, AOF bytes and copies with it.
    fn to_fields(&self) -> Vec<(&'static str, Vec<u8>)> {
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
        for (name, value) in
            [("repository", &self.repository), ("action", &self.action), ("agent", &self.agent)]
        {
            if let Some(v) = value {
                f.push((name, v.clone().into_bytes()));
            }
        }
        f
    }

    fn from_fields(id: &str, mut map: HashMap<String, Vec<u8>>) -> Result<Self> {
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
            payload: match map.remove("payload_lz4") {
                Some(packed) => {
                    Bytes::from(lz4_flex::decompress_size_prepended(&packed).map_err(|_| corrupt("payload"))?)
                }
                None => map.remove("payload").map(Bytes::from).ok_or_else(|| corrupt("payload"))?,
            },
        })
    }

    /// Flat `[field, value, ...]` JSON for storing inside Lua-managed sets.
    fn to_flat_json(&self, extra: &[(&str, String)]) -> String {
        let mut flat: Vec<serde_json::Value> = Vec::new();
        // NB: JSON carries text, so the payload goes uncompressed here.
        for (k, v) in self.fields(("payload", self.payload.to_vec())) {
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
/// [`Queue::settle`]; decided by `dispatch::settle`.
#[derive(Debug, Default, PartialEq)]
pub struct Settlement {
    /// Agents that accepted it.
    pub delivered: Vec<String>,
    /// Agents to try again later.
    pub retries: Vec<Retry>,
    /// Agents given up on: a dead letter each.
    pub dead: Vec<GiveUp>,
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
    fn log(&self) -> impl Iterator<Item = (&str, &'static str, Option<&str>)> {
        let delivered = self.delivered.iter().map(|a| (a.as_str(), "delivered", None));
        let retries = self.retries.iter().map(|r| (r.agent.as_str(), "retry", Some(r.error.as_str())));
        let dead = self.dead.iter().map(|d| (d.agent.as_str(), "dead_letter", Some(d.error.as_str())));
        delivered.chain(retries).chain(dead)
    }
}

/// Entries kept in the activity log (approximately: trimmed lazily).
pub const ACTIVITY_LEN: u64 = 10_000;

/// One line of the activity log that the admin API lists: a delivery
/// accepted, recognised as a duplicate, rejected, or dispatched to an agent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    pub at_ms: u64,
    pub guid: String,
    pub event: String,
    pub hook: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// `queued`, `duplicate`, `rejected`, `delivered`, `retry`, `dead_letter`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Why, for `rejected`, `retry` and `dead_letter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Activity {
    pub fn of(
        d: &Delivery,
        policy: &ObjectRef,
        status: &str,
        agent: Option<String>,
        detail: Option<String>,
    ) -> Self {
        Self {
            at_ms: crate::receiver::http::now_ms(),
            guid: d.guid.clone(),
            event: d.event.clone(),
            hook: d.hook.to_string(),
            policy: Some(policy.to_string()),
            repository: d.repository.clone(),
            status: status.to_owned(),
            agent,
            detail,
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("activity serialises")
    }
}

/// Filters for [`Queue::activity`]; `None` matches anything.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct ActivityFilter {
    pub status: Option<String>,
    pub event: Option<String>,
    pub repository: Option<String>,
    pub hook: Option<String>,
}

impl ActivityFilter {
    pub fn matches(&self, a: &Activity) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have.is_some_and(|h| h.eq_ignore_ascii_case(w)))
        };
        eq(&self.status, Some(&a.status))
            && eq(&self.event, Some(&a.event))
            && eq(&self.repository, a.repository.as_deref())
            && eq(&self.hook, Some(&a.hook))
    }
}

static ENQUEUE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/enqueue.lua")));

static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/settle.lua")));

static PROMOTE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/promote.lua")));

static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/replay.lua")));

/// Handle on the queue of every policy. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    conn: Connection,
    prefix: String,
    /// Replicas that must have a delivery before it counts as queued, and
    /// how long to wait for them (Redis' `WAIT`).
    replicas: Option<(u32, u64)>,
    /// How long a signed body is remembered against replays (s; 0: off).
    replay_window_secs: u64,
}

impl Queue {
    /// Connects (lazily reconnecting afterwards) to `redis_url` (one server,
    /// or `redis+sentinel://...`, see [`super::connection`]); every key
    /// starts with `prefix`.
    pub async fn connect(redis_url: &str, prefix: &str) -> Result<Self> {
        Ok(Self {
            conn: Connection::open(redis_url).await?,
            prefix: prefix.to_owned(),
            replicas: None,
            replay_window_secs: DEDUP_TTL_SECS,
        })
    }

    /// A delivery counts as queued only once `replicas` replicas have it,
    /// waited for at most `timeout`: a failover to a replica then loses no
    /// delivery that was acknowledged. 0 turns it off.
    /// How long a queued body is remembered, so that the same signed body
    /// under another GUID is refused as a replay; 0 turns the check off.
    pub fn replay_window(mut self, window: std::time::Duration) -> Self {
        self.replay_window_secs = window.as_secs();
        self
    }

    pub fn acknowledged_by(mut self, replicas: u32, timeout: std::time::Duration) -> Self {
        self.replicas = (replicas > 0).then_some((replicas, timeout.as_millis() as u64));
        self
    }

    fn key(&self, policy: &ObjectRef, what: &str) -> String {
        format!("{}:{{{policy}}}:{what}", self.prefix)
    }

    fn dedup_key(&self, hook: &ObjectRef, guid: &str) -> String {
        format!("{}:dedup:{{{hook}}}:{guid}", self.prefix)
    }

    fn body_key(&self, hook: &ObjectRef, mac: &[u8; 32]) -> String {
        format!("{}:body:{{{hook}}}:{}", self.prefix, hex::encode(mac))
    }

    /// Is Redis answering?
    pub async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn.get()).await?;
        Ok(())
    }

    /// Queues `delivery` for `policy` unless its GUID was seen, or the queue
    /// holds `limit` deliveries already.
    ///
    /// `signed_mac` is the MAC GitHub signed the body with, when it came
    /// through the webhook (not from GitHub's API): a body already queued
    /// for the hook under another GUID within the replay window is refused.
    pub async fn enqueue(
        &self,
        policy: &ObjectRef,
        delivery: &Delivery,
        limit: u64,
        signed_mac: Option<&[u8; 32]>,
    ) -> Result<Enqueued> {
        let mut script = ENQUEUE.prepare_invoke();
        let replay_ttl = signed_mac.map_or(0, |_| self.replay_window_secs);
        script
            .key(self.key(policy, "events"))
            .key(self.dedup_key(&delivery.hook, &delivery.guid))
            .key(self.activity_key())
            .key(self.body_key(&delivery.hook, signed_mac.unwrap_or(&[0; 32])));
        script.arg(limit).arg(DEDUP_TTL_SECS).arg(ACTIVITY_LEN);
        for status in ["queued", "duplicate", "rejected"] {
            let detail = (status == "rejected").then(|| "queue_full".to_owned());
            script.arg(Activity::of(delivery, policy, status, None, detail).to_json());
        }
        script.arg(replay_ttl);
        for (k, v) in delivery.to_fields() {
            script.arg(k).arg(v);
        }
        let reply: String = match self.replicas {
            None => script.invoke_async(&mut self.conn.get()).await?,
            Some((wanted, timeout_ms)) => {
                // NB: one pipeline, so WAIT runs on the connection that wrote.
                let mut conn = self.conn.get();
                let mut pipe = redis::pipe();
                pipe.invoke_script(&script).cmd("WAIT").arg(wanted).arg(timeout_ms);
                let answer: redis::RedisResult<(String, u32)> = pipe.query_async(&mut conn).await;
                let (reply, acked) = match answer {
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        script.load_async(&mut conn).await?;
                        pipe.query_async(&mut conn).await?
                    }
                    other => other?,
                };
                if acked < wanted && reply != "full" {
                    return Err(QueueError::NotReplicated { acked, wanted });
                }
                reply
            }
        };
        match reply.as_str() {
            "dup" => Ok(Enqueued::Duplicate),
            "replay" => Ok(Enqueued::Replay),
            "full" => Err(QueueError::Full { limit }),
            _ => Ok(Enqueued::Queued(reply)),
        }
    }

    /// Deliveries waiting or in flight for `policy`.
    pub async fn len(&self, policy: &ObjectRef) -> Result<u64> {
        Ok(self.conn.get().xlen(self.key(policy, "events")).await?)
    }

    /// Scheduled retries for `policy`.
    pub async fn retry_len(&self, policy: &ObjectRef) -> Result<u64> {
        Ok(self.conn.get().zcard(self.key(policy, "retry")).await?)
    }

    /// Dead letters for `policy`.
    pub async fn dead_len(&self, policy: &ObjectRef) -> Result<u64> {
        Ok(self.conn.get().xlen(self.key(policy, "dead")).await?)
    }

    /// Creates the consumer group (and the stream) if missing.
    pub async fn ensure_group(&self, policy: &ObjectRef) -> Result<()> {
        let res: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.key(policy, "events"))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn.get())
            .await;
        match res {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Reads up to `count` new entries for `consumer`, waiting up to `block_ms`.
    pub async fn read(
        &self,
        policy: &ObjectRef,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Entry>> {
        let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(self.key(policy, "events"))
            .arg(">")
            .query_async(&mut self.conn.get())
            .await?;
        let ids = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
        self.usable(policy, ids).await
    }

    /// Takes over entries another consumer left unacknowledged for longer
    /// than `min_idle_ms` (it crashed, or lost its connection).
    pub async fn reclaim(
        &self,
        policy: &ObjectRef,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<Entry>> {
        let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.key(policy, "events"))
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.get())
            .await?;
        self.usable(policy, reply.claimed).await
    }

    /// Removes consumers (replicas long gone: pod names change on every
    /// restart) that have nothing pending and were idle over `idle_ms`.
    pub async fn prune_consumers(&self, policy: &ObjectRef, keep: &str, idle_ms: u64) -> Result<usize> {
        let key = self.key(policy, "events");
        let info: redis::streams::StreamInfoConsumersReply =
            self.conn.get().xinfo_consumers(&key, GROUP).await?;
        let mut removed = 0;
        for c in info.consumers {
            if c.name != keep && c.pending == 0 && c.idle > idle_ms as usize {
                let _: i64 = self.conn.get().xgroup_delconsumer(&key, GROUP, &c.name).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Parses stream entries. One that cannot be read (written by something
    /// other than a receiver) is logged and removed, so it can never wedge a
    /// worker or every later reclaim.
    async fn usable(&self, policy: &ObjectRef, ids: Vec<redis::streams::StreamId>) -> Result<Vec<Entry>> {
        let mut entries = Vec::with_capacity(ids.len());
        for sid in ids {
            match Delivery::from_fields(&sid.id, bytes_map(sid.map)) {
                Ok(delivery) => entries.push(Entry { id: sid.id, delivery }),
                Err(error) => {
                    tracing::error!(%policy, entry = %sid.id, %error, "dropping unreadable queue entry");
                    let key = self.key(policy, "events");
                    let _: () = redis::pipe()
                        .atomic()
                        .xack(&key, GROUP, &[&sid.id])
                        .ignore()
                        .xdel(&key, &[&sid.id])
                        .ignore()
                        .query_async(&mut self.conn.get())
                        .await?;
                }
            }
        }
        Ok(entries)
    }

    /// Acknowledges and deletes entry `id`, atomically scheduling the retries
    /// and writing the dead letters `outcome` lists.
    pub async fn settle(
        &self,
        policy: &ObjectRef,
        entry: &Entry,
        outcome: &Settlement,
        now_ms: u64,
    ) -> Result<()> {
        let mut script = SETTLE.prepare_invoke();
        script
            .key(self.key(policy, "events"))
            .key(self.key(policy, "retry"))
            .key(self.key(policy, "dead"))
            .key(self.activity_key());
        script.arg(GROUP).arg(&entry.id).arg(ACTIVITY_LEN).arg(outcome.retries.len());
        for r in &outcome.retries {
            let retry =
                Delivery { agent: Some(r.agent.clone()), attempt: r.attempts, ..entry.delivery.clone() };
            // NB: the id makes each member unique, so two retries never merge.
            script.arg(r.due_ms).arg(retry.to_flat_json(&[("origin", entry.id.clone())]));
        }
        script.arg(outcome.dead.len());
        for d in &outcome.dead {
            let dead =
                Delivery { agent: Some(d.agent.clone()), attempt: d.attempts, ..entry.delivery.clone() };
            script.arg(dead.to_flat_json(&[("error", d.error.clone()), ("failed", now_ms.to_string())]));
        }
        let log: Vec<_> = outcome.log().collect();
        script.arg(log.len());
        for (agent, status, detail) in log {
            let detail = detail.map(str::to_owned);
            let record = Activity::of(&entry.delivery, policy, status, Some(agent.to_owned()), detail);
            script.arg(record.to_json());
        }
        let _: i64 = script.invoke_async(&mut self.conn.get()).await?;
        Ok(())
    }

    /// Moves retries that are due into the queue; returns how many.
    pub async fn promote_due(&self, policy: &ObjectRef, now_ms: u64, max: usize) -> Result<u64> {
        let mut script = PROMOTE.prepare_invoke();
        script.key(self.key(policy, "retry")).key(self.key(policy, "events")).arg(now_ms).arg(max);
        Ok(script.invoke_async(&mut self.conn.get()).await?)
    }

    /// Up to `count` dead letters, oldest first.
    pub async fn dead_letters(&self, policy: &ObjectRef, count: usize) -> Result<Vec<DeadLetter>> {
        let reply: redis::streams::StreamRangeReply =
            self.conn.get().xrange_count(self.key(policy, "dead"), "-", "+", count).await?;
        reply
            .ids
            .into_iter()
            .map(|sid| {
                let mut map = bytes_map(sid.map);
                let error =
                    map.remove("error").map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
                let failed_ms = map
                    .remove("failed")
                    .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
                    .unwrap_or_default();
                Ok(DeadLetter {
                    delivery: Delivery::from_fields(&sid.id, map)?,
                    id: sid.id,
                    error,
                    failed_ms,
                })
            })
            .collect()
    }

    /// Puts dead letter `id` back in the queue, for its agent, with a fresh
    /// attempt budget. Returns false when no such dead letter exists.
    pub async fn replay(&self, policy: &ObjectRef, id: &str) -> Result<bool> {
        let mut script = REPLAY.prepare_invoke();
        script.key(self.key(policy, "dead")).key(self.key(policy, "events")).arg(id);
        let moved: i64 = script.invoke_async(&mut self.conn.get()).await?;
        Ok(moved == 1)
    }

    /// Deletes every dead letter of `policy`; returns how many there were.
    pub async fn purge_dead(&self, policy: &ObjectRef) -> Result<u64> {
        let key = self.key(policy, "dead");
        let (len, _): (u64, i64) =
            redis::pipe().atomic().xlen(&key).del(&key).query_async(&mut self.conn.get()).await?;
        Ok(len)
    }
}

fn bytes_map(map: HashMap<String, redis::Value>) -> HashMap<String, Vec<u8>> {
    map.into_iter()
        .filter_map(|(k, v)| match v {
            redis::Value::BulkString(b) => Some((k, b)),
            redis::Value::SimpleString(s) => Some((k, s.into_bytes())),
            _ => None,
        })
        .collect()
}

impl Queue {
    /// Remembers the latest verified ping of a hook, and which key signed it.
    pub async fn record_ping(&self, ping: &Delivery, key_version: &str) -> Result<()> {
        let key = format!("{}:ping:{{{}}}", self.prefix, ping.hook);
        let value = json!({ "guid": ping.guid, "keyVersion": key_version, "receivedMs": ping.received_ms });
        let _: () = self.conn.get().set_ex(key, value.to_string(), DEDUP_TTL_SECS).await?;
        Ok(())
    }

    /// The latest verified ping of `hook`, as recorded by [`Queue::record_ping`].
    pub async fn last_ping(&self, hook: &ObjectRef) -> Result<Option<serde_json::Value>> {
        let raw: Option<String> = self.conn.get().get(format!("{}:ping:{{{hook}}}", self.prefix)).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }
}

impl Queue {
    fn activity_key(&self) -> String {
        format!("{}:activity", self.prefix)
    }

    /// The most recent activity matching `filter`, newest first, at most `limit`.
    pub async fn activity(&self, filter: &ActivityFilter, limit: usize) -> Result<Vec<Activity>> {
        let reply: redis::streams::StreamRangeReply =
            self.conn.get().xrevrange_count(self.activity_key(), "+", "-", ACTIVITY_LEN as usize).await?;
        Ok(reply
            .ids
            .into_iter()
            .filter_map(|sid| match sid.map.get("json") {
                Some(redis::Value::BulkString(b)) => serde_json::from_slice::<Activity>(b).ok(),
                _ => None,
            })
            .filter(|a| filter.matches(a))
            .take(limit)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
