//! The durable queue: Redis Streams, one stream per AgentPolicy.
//!
//! Keys, for policy `ns/policy` under the configured prefix `p`:
//! - `p:{ns/policy}:events`: the queue. Receivers read it through the consumer
//!   group [`GROUP`], so replicas share the work, and route each entry into
//!   the lane of every agent it goes to (filters decide); an entry is deleted
//!   once every agent it went to has settled it.
//! - `p:{ns/policy}:lane:{agent}`: an agent's lane ([`lanes`]), read the same
//!   way, so each agent progresses on its own; `p:{ns/policy}:lanes` the set
//!   of agents with one, and `p:{ns/policy}:lanes:refs` how many lane copies
//!   refer to each routed entry: a delivery's payload is kept once, in the
//!   policy's stream, until its last agent settled it, so `XLEN` of the
//!   stream is the queue's length.
//! - `p:{ns/policy}:history`: the deliveries kept for replays, when the
//!   policy asks for it ([`history`]).
//! - `p:{ns/policy}:retry`: sorted set of scheduled retries (score: due time).
//! - `p:{ns/policy}:dead`: the dead-letter stream.
//! - `p:{ns/policy}:guidset:{bucket}:{shard}`: delivery GUIDs seen through
//!   each hook in the last 3 days, and `p:{ns/policy}:bodyset:{bucket}:{shard}`:
//!   the signed bodies queued (replays), an 8-byte member each in sets of
//!   integers ([`seen`]; `guids:`/`bodies:` strings, the layout before, are
//!   read while they can hold a record within the window: `p:seen:sets-since`,
//!   outside any policy's slot, says since when this layout is written).
//! - `p:{ns/policy}:activity`: the activity log ([`activity`]).
//! - `p:{ns/policy}:agent:{name}:slots|rate|paused`: an agent's limits
//!   across replicas ([`limits`]).
//! - `p:{ns/policy}:tap`: copies of the last [`TAP_LEN`] queued deliveries,
//!   written only while `p:{ns/policy}:tap:on` exists (someone follows the
//!   policy with `hookwarden forward`, see [`Queue::tap_after`]).
//!
//! Every multi-step change is one Lua script, so a crash never leaves a
//! delivery half-queued or half-settled. Deliveries of one policy arriving
//! together are queued by one call of the enqueue script ([`batch`]).
//!
//! Over 400 lines: one short method per Redis operation that the receiver,
//! the operator and the admin API use; what they exchange ([`model`]) and the
//! activity log ([`activity`]) are apart.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock},
};

use redis::{AsyncCommands, Script};

use serde_json::json;

use crate::ObjectRef;
use connection::Connection;

pub mod activity;
pub mod batch;
pub mod connection;
pub mod history;
pub mod lanes;
pub mod limits;
pub mod model;
pub mod seen;

pub use activity::{ACTIVITY_LEN, Activity, ActivityFilter};
pub use model::{DeadLetter, Delivery, Enqueued, Entry, GiveUp, Retry, Settlement};

/// Consumer group all receivers join.
pub const GROUP: &str = "receivers";
/// GitHub keeps deliveries, and redelivers them with the same GUID, for 3 days.
pub const DEDUP_TTL_SECS: u64 = 3 * 24 * 3600;

/// The recent deliveries a policy keeps for `admin filter-test` (sampled, at
/// most ten a second per replica).
pub const RECENT_LEN: u64 = 100;

/// The deliveries a policy's tap keeps for a follower that reconnects.
pub const TAP_LEN: u64 = 1_000;

/// Errors from the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue is full ({limit} deliveries queued or waiting for a retry)")]
    Full { limit: u64 },
    /// Dead letters are bounded by the queue limit too: replay or purge them.
    #[error("the policy holds {limit} dead letters, its queue limit: replay or purge them")]
    DeadLettersFull { limit: u64 },
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
            Self::DeadLettersFull { .. } => "dead_letters_full",
            Self::Redis(_) => "redis_unavailable",
            Self::NotReplicated { .. } => "not_replicated",
            Self::Corrupt { .. } => "corrupt_entry",
        }
    }
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

static ENQUEUE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/enqueue.lua")));

static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/settle.lua")));

static PROMOTE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/promote.lua")));

static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/replay.lua")));

/// Drops an unreadable entry: KEYS[1] its stream, KEYS[2] the lanes'
/// references, KEYS[3] the policy's stream; ARGV group, id, and the entry
/// a lane's copy refers to ('' when none), let go of as in `settle.lua`.
static DROP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) \
         local gone = redis.call('XDEL', KEYS[1], ARGV[2]) \
         if gone == 1 and ARGV[3] ~= '' and redis.call('HINCRBY', KEYS[2], ARGV[3], -1) <= 0 then \
           redis.call('HDEL', KEYS[2], ARGV[3]) redis.call('XDEL', KEYS[3], ARGV[3]) end \
         return gone",
    )
});

/// `enqueue.lua`'s reply per delivery, and how many replicas acknowledged
/// them of how many wanted (when any must).
type Replies = (Vec<String>, Option<(u32, u32)>);

/// The set of a policy's agents with a lane, and how many lane copies
/// still refer to each routed entry of the policy's stream.
const LANES: &str = "lanes";
const REFS: &str = "lanes:refs";
/// Deliveries kept for replays ([`history`]).
const HISTORY: &str = "history";

/// What [`Queue::settle`] keeps of a delivery beside settling it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Keep {
    /// Among the policy's [`RECENT_LEN`] recent ones ([`Queue::recent`]).
    pub sample: bool,
    /// In its history for this long (ms; 0: not).
    pub history_ms: u64,
}

/// What one policy's queue holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lengths {
    /// Waiting or in flight (the stream's length).
    pub queued: u64,
    /// Waiting for a retry.
    pub retrying: u64,
    pub dead: u64,
    /// Each agent's lane: the deliveries (of `queued`) it has yet to settle.
    pub lanes: Vec<(String, u64)>,
}

/// Handle on the queue of every policy. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    conn: Connection,
    /// NB: shared, as a receiver's state is cloned per request.
    prefix: Arc<str>,
    /// Replicas that must have a delivery before it counts as queued, and
    /// how long to wait for them (Redis' `WAIT`).
    replicas: Option<(u32, u64)>,
    /// How long a delivery GUID is remembered against duplicates (s).
    dedup_window_secs: u64,
    /// How long a signed body is remembered against replays (s; 0: off).
    replay_window_secs: u64,
    /// When the first process of this de-duplication layout started on this
    /// Redis (Unix s; see [`seen::reads_legacy`]): asked once, when first needed.
    sets_since: Arc<tokio::sync::OnceCell<u64>>,
    /// Each policy's task that sends its deliveries in batches.
    tasks: Arc<batch::Tasks>,
    /// Where the deliveries per batch are counted, if anywhere.
    batch_sizes: Option<prometheus::Histogram>,
}

impl Queue {
    /// Connects (lazily reconnecting afterwards) to `redis_url` (one server,
    /// or `redis+sentinel://...`, see [`connection`]); every key
    /// starts with `prefix`.
    pub async fn connect(redis_url: &str, prefix: &str) -> Result<Self> {
        Ok(Self {
            conn: Connection::open(redis_url).await?,
            prefix: prefix.into(),
            replicas: None,
            dedup_window_secs: DEDUP_TTL_SECS,
            replay_window_secs: DEDUP_TTL_SECS,
            sets_since: Arc::default(),
            tasks: Arc::default(),
            batch_sizes: None,
        })
    }

    /// How long a delivery GUID is remembered, so that GitHub's redelivery of
    /// it (or a retry) is queued once (at least 1 s).
    pub fn dedup_window(mut self, window: std::time::Duration) -> Self {
        self.dedup_window_secs = window.as_secs().max(1);
        self
    }

    /// How long a queued body is remembered, so that the same signed body
    /// under another GUID is refused as a replay; 0 turns the check off.
    pub fn replay_window(mut self, window: std::time::Duration) -> Self {
        self.replay_window_secs = window.as_secs();
        self
    }

    /// Counts the deliveries of each enqueue call ([`batch`]) in `sizes`.
    pub fn batch_sizes(mut self, sizes: prometheus::Histogram) -> Self {
        self.batch_sizes = Some(sizes);
        self
    }

    /// A delivery counts as queued only once `replicas` replicas have it,
    /// waited for at most `timeout`: a failover to a replica then loses no
    /// delivery that was acknowledged. 0 turns it off.
    pub fn acknowledged_by(mut self, replicas: u32, timeout: std::time::Duration) -> Self {
        self.replicas = (replicas > 0).then_some((replicas, timeout.as_millis() as u64));
        self
    }

    /// A key of `policy`: `{prefix}:{ns/policy}:{what}`, hash-tagged so
    /// every key of a policy is in one Redis Cluster slot.
    fn key(&self, policy: &ObjectRef, what: &str) -> String {
        // NB: pushed, not format!ted: an enqueue names 22 keys.
        let mut key = String::with_capacity(
            self.prefix.len() + policy.namespace.len() + policy.name.len() + what.len() + 5,
        );
        for part in [&self.prefix[..], ":{", &policy.namespace, "/", &policy.name, "}:", what] {
            key.push_str(part);
        }
        key
    }

    /// The stream a worker reads: the policy's own (`lane` none), where
    /// deliveries arrive and are routed from, or an agent's lane.
    fn stream(&self, policy: &ObjectRef, lane: Option<&str>) -> String {
        match lane {
            None => self.key(policy, "events"),
            Some(agent) => self.key(policy, &format!("lane:{agent}")),
        }
    }

    /// The keys of `record` in the buckets a lookup at `now` reads, the
    /// current one first: its sets, then (with `legacy`) the layout
    /// before's strings; and when the current set expires.
    fn seen_keys(
        &self,
        policy: &ObjectRef,
        kind: seen::Kind,
        record: &seen::Record,
        now_secs: u64,
        window_secs: u64,
        legacy: bool,
    ) -> (Vec<String>, u64) {
        let buckets = seen::buckets(now_secs, window_secs);
        let mut keys: Vec<String> = buckets
            .iter()
            .map(|b| self.key(policy, &format!("{}:{b}:{:04x}", kind.set_name(), record.shard)))
            .collect();
        if legacy {
            keys.extend(
                buckets
                    .iter()
                    .map(|b| self.key(policy, &format!("{}:{b}:{:03x}", kind.name(), record.legacy.shard))),
            );
        }
        (keys, seen::expires_at(buckets[0], window_secs))
    }

    /// When the first process of this de-duplication layout started on this
    /// Redis: set by the first to ask (`SET NX GET`), read by the others;
    /// `None` while Redis cannot tell (lookups read the layout before meanwhile).
    async fn sets_since(&self, now_secs: u64) -> Option<u64> {
        let ask = || async {
            let before: Option<u64> = redis::cmd("SET")
                .arg(format!("{}:seen:sets-since", self.prefix))
                .arg(now_secs)
                .arg("NX")
                .arg("GET")
                .query_async(&mut self.conn.get())
                .await?;
            Ok::<_, redis::RedisError>(before.unwrap_or(now_secs))
        };
        self.sets_since.get_or_try_init(ask).await.ok().copied()
    }

    /// Is Redis answering?
    pub async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn.get()).await?;
        Ok(())
    }

    /// Queues `delivery` for `policy` unless its GUID was seen, or the queue
    /// holds `limit` deliveries already (queued and waiting for a retry), or
    /// `limit` dead letters.
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
        let now = crate::now_ms() / 1000;
        let hook = delivery.hook.to_string();
        let guid = seen::record(seen::Kind::Guid, &hook, delivery.guid.as_bytes());
        let window = self.dedup_window_secs.max(self.replay_window_secs);
        let legacy = seen::reads_legacy(self.sets_since(now).await, now, window);
        let (mut guid_keys, guid_expiry) =
            self.seen_keys(policy, seen::Kind::Guid, &guid, now, self.dedup_window_secs, legacy);
        // NB: without a MAC (or with replays not checked) the body's keys
        // are not read; they are passed all the same, as scripts declare
        // every key they may touch.
        let body = signed_mac
            .filter(|_| self.replay_window_secs > 0)
            .map(|mac| seen::record(seen::Kind::Body, &hook, mac));
        let body_window = self.replay_window_secs.max(1);
        let (mut body_keys, body_expiry) = self.seen_keys(
            policy,
            seen::Kind::Body,
            body.as_ref().unwrap_or(&guid),
            now,
            body_window,
            legacy,
        );
        // The sets of both kinds, then (while read) the strings of both.
        let guid_legacy = guid_keys.split_off(seen::LOOKED_AT);
        let body_legacy = body_keys.split_off(seen::LOOKED_AT);
        let keys: Vec<String> =
            guid_keys.into_iter().chain(body_keys).chain(guid_legacy).chain(body_legacy).collect();
        let fields = crate::cpu::heavy(delivery.payload.len(), || delivery.to_fields());
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(batch::HEADER + 2 * fields.len());
        args.push(limit.to_string().into_bytes());
        args.push(keys.len().to_string().into_bytes());
        args.push(guid.member.to_string().into_bytes());
        args.push(guid_expiry.to_string().into_bytes());
        args.push(body.as_ref().map_or(String::new(), |b| b.member.to_string()).into_bytes());
        args.push(body_expiry.to_string().into_bytes());
        args.push(if legacy { guid.legacy.bytes.to_vec() } else { vec![] });
        args.push(body.as_ref().filter(|_| legacy).map_or(vec![], |b| b.legacy.bytes.to_vec()));
        args.push((2 * fields.len()).to_string().into_bytes());
        debug_assert_eq!(args.len(), batch::HEADER);
        for (k, v) in fields {
            args.push(k.as_bytes().to_vec());
            args.push(v);
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.tasks.send(policy, batch::Part { keys, args, limit, answer }, |parts| {
            tokio::spawn(self.clone().send_batches(policy.clone(), parts));
        });
        answered.await.unwrap_or_else(|_| {
            Err(QueueError::Redis(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the batch of this delivery was abandoned",
            ))))
        })
    }

    /// `policy`'s task: sends its deliveries in batches ([`batch`]) until
    /// idle.
    async fn send_batches(
        self,
        policy: ObjectRef,
        mut parts: tokio::sync::mpsc::UnboundedReceiver<batch::Part>,
    ) {
        loop {
            let first = match tokio::time::timeout(batch::IDLE, parts.recv()).await {
                Ok(Some(part)) => part,
                Ok(None) => return,
                Err(_idle) if self.tasks.retire(&policy, &parts) => return,
                Err(_idle) => continue,
            };
            let mut parts_of_batch = vec![first];
            batch::fill(&mut parts_of_batch, &mut parts);
            self.send_batch(&policy, parts_of_batch).await;
        }
    }

    /// One call of `enqueue.lua` for `parts`, each answered.
    async fn send_batch(&self, policy: &ObjectRef, parts: Vec<batch::Part>) {
        if let Some(sizes) = &self.batch_sizes {
            sizes.observe(parts.len() as f64);
        }
        let mut script = ENQUEUE.prepare_invoke();
        script
            .key(self.key(policy, "events"))
            .key(self.key(policy, "activity"))
            .key(self.key(policy, "tap"))
            .key(self.key(policy, "tap:on"))
            .key(self.key(policy, "retry"))
            .key(self.key(policy, "dead"));
        for key in parts.iter().flat_map(|p| &p.keys) {
            script.key(key);
        }
        script.arg(ACTIVITY_LEN).arg(TAP_LEN);
        for arg in parts.iter().flat_map(|p| &p.args) {
            script.arg(&arg[..]);
        }
        let answer = self.call_enqueue(&script).await;
        let answer = answer.and_then(|(replies, replicas)| {
            if replies.len() == parts.len() {
                Ok((replies, replicas))
            } else {
                Err(redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "a reply per delivery")))
            }
        });
        match answer {
            Ok((replies, replicas)) => {
                for (part, reply) in parts.into_iter().zip(replies) {
                    let _gone = part.answer.send(batch::outcome(reply, part.limit, replicas));
                }
            }
            Err(e) => {
                for part in parts {
                    let _gone = part.answer.send(Err(QueueError::Redis(e.clone())));
                }
            }
        }
    }

    /// Calls `enqueue.lua` (and waits for the replicas): a reply per
    /// delivery and, when replicas must have them, how many of how many do.
    async fn call_enqueue(&self, script: &redis::ScriptInvocation<'_>) -> redis::RedisResult<Replies> {
        match self.replicas {
            None => script.invoke_async(&mut self.conn.get()).await.map(|replies| (replies, None)),
            Some((wanted, timeout_ms)) => {
                // NB: one pipeline, so WAIT runs on the connection that wrote.
                let mut conn = self.conn.get();
                let mut pipe = redis::pipe();
                pipe.invoke_script(script).cmd("WAIT").arg(wanted).arg(timeout_ms);
                let answer: redis::RedisResult<(Vec<String>, u32)> = match pipe.query_async(&mut conn).await {
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        script.load_async(&mut conn).await?;
                        pipe.query_async(&mut conn).await
                    }
                    other => other,
                };
                answer.map(|(replies, acked)| (replies, Some((acked, wanted))))
            }
        }
    }

    /// Deliveries waiting or in flight for `policy`: each in its stream
    /// until every agent it goes to has settled it.
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

    /// How many deliveries each of `policies` holds: one round trip per
    /// policy (its keys share a slot), and one more for its lanes, all at once.
    pub async fn lengths(&self, policies: &[ObjectRef]) -> Result<Vec<Lengths>> {
        let asks = policies.iter().map(|policy| async move {
            let mut pipe = redis::pipe();
            pipe.xlen(self.key(policy, "events"))
                .zcard(self.key(policy, "retry"))
                .xlen(self.key(policy, "dead"))
                .smembers(self.key(policy, LANES));
            let (queued, retrying, dead, mut agents) =
                pipe.query_async::<(u64, u64, u64, Vec<String>)>(&mut self.conn.get()).await?;
            agents.sort();
            let mut pipe = redis::pipe();
            agents.iter().for_each(|agent| _ = pipe.xlen(self.stream(policy, Some(agent))));
            let lens: Vec<u64> =
                if agents.is_empty() { Vec::new() } else { pipe.query_async(&mut self.conn.get()).await? };
            let lanes = agents.into_iter().zip(lens).collect();
            Ok::<_, redis::RedisError>(Lengths { queued, retrying, dead, lanes })
        });
        Ok(futures::future::try_join_all(asks).await?)
    }

    /// Creates the consumer group (and the stream) if missing.
    pub async fn ensure_group(&self, policy: &ObjectRef, lane: Option<&str>) -> Result<()> {
        let res: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream(policy, lane))
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
        lane: Option<&str>,
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
            .arg(self.stream(policy, lane))
            .arg(">")
            .query_async(&mut self.conn.get())
            .await?;
        let ids = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
        self.usable(policy, lane, ids).await
    }

    /// Takes over entries another consumer left unacknowledged for longer
    /// than `min_idle_ms` (it crashed, or lost its connection).
    pub async fn reclaim(
        &self,
        policy: &ObjectRef,
        lane: Option<&str>,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<Entry>> {
        let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.stream(policy, lane))
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.get())
            .await?;
        self.usable(policy, lane, reply.claimed).await
    }

    /// Removes consumers (replicas long gone: pod names change on every
    /// restart) that have nothing pending and were idle over `idle_ms`.
    pub async fn prune_consumers(
        &self,
        policy: &ObjectRef,
        lane: Option<&str>,
        keep: &str,
        idle_ms: u64,
    ) -> Result<usize> {
        let key = self.stream(policy, lane);
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

    /// The payload of `policy`'s entry `id` (which lane copies refer to);
    /// `None` when it is gone.
    pub async fn payload(&self, policy: &ObjectRef, id: &str) -> Result<Option<bytes::Bytes>> {
        let reply: redis::streams::StreamRangeReply =
            self.conn.get().xrange(self.key(policy, "events"), id, id).await?;
        let Some(e) = reply.ids.into_iter().next() else { return Ok(None) };
        Ok(Some(Delivery::from_fields(&e.id, bytes_map(e.map))?.payload))
    }

    /// Parses stream entries. One that cannot be read (written by something
    /// other than a receiver) is logged and removed, so it can never wedge a
    /// worker or every later reclaim.
    async fn usable(
        &self,
        policy: &ObjectRef,
        lane: Option<&str>,
        ids: Vec<redis::streams::StreamId>,
    ) -> Result<Vec<Entry>> {
        let mut entries = Vec::with_capacity(ids.len());
        for sid in ids {
            let mut map = bytes_map(sid.map);
            // A lane's copy has no payload: it refers to the policy's entry.
            let origin = map.remove("payload_at").and_then(|o| String::from_utf8(o).ok());
            if origin.is_some() {
                map.entry("payload".into()).or_default();
            }
            match Delivery::from_fields(&sid.id, map) {
                Ok(delivery) => entries.push(Entry { id: sid.id, delivery, origin }),
                Err(error) => {
                    tracing::error!(%policy, lane, entry = %sid.id, %error, "dropping unreadable queue entry");
                    let _: i64 = DROP
                        .key(self.stream(policy, lane))
                        .key(self.key(policy, REFS))
                        .key(self.key(policy, "events"))
                        .arg(GROUP)
                        .arg(&sid.id)
                        .arg(origin.as_deref().unwrap_or(""))
                        .invoke_async(&mut self.conn.get())
                        .await?;
                }
            }
        }
        Ok(entries)
    }

    /// Acknowledges and deletes entry `id`, atomically copying it into the
    /// lanes, scheduling the retries and writing the dead letters `outcome`
    /// lists, and keeping what `keep` says.
    pub async fn settle(
        &self,
        policy: &ObjectRef,
        lane: Option<&str>,
        entry: &Entry,
        outcome: &Settlement,
        now_ms: u64,
        keep: Keep,
    ) -> Result<()> {
        let sample = keep.sample;
        let mut script = SETTLE.prepare_invoke();
        script
            .key(self.stream(policy, lane))
            .key(self.key(policy, "retry"))
            .key(self.key(policy, "dead"))
            .key(self.key(policy, "activity"))
            .key(self.key(policy, "recent"))
            .key(self.key(policy, LANES))
            .key(self.key(policy, REFS))
            .key(self.key(policy, HISTORY))
            .key(self.key(policy, "events"));
        for agent in &outcome.routed {
            script.key(self.stream(policy, Some(agent)));
        }
        let d = &entry.delivery;
        script.arg(GROUP).arg(&entry.id).arg(ACTIVITY_LEN);
        script.arg(&d.guid).arg(&d.event).arg(d.hook.to_string()).arg(d.repository.as_deref().unwrap_or(""));
        // The payload once, whatever the number of retries and dead letters:
        // as text for the retries (their members are JSON), compressed for
        // the dead letters (stream fields, as the queue's own entries).
        script.arg(if outcome.retries.is_empty() { &[][..] } else { &d.payload[..] });
        let packed = match outcome.dead.is_empty() && !sample {
            true => Vec::new(),
            false => lz4_flex::compress_prepend_size(&d.payload),
        };
        script.arg(packed);
        script.arg(outcome.retries.len());
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
            script.arg(status).arg(agent).arg(detail.unwrap_or(""));
        }
        script.arg(if sample { RECENT_LEN } else { 0 });
        if sample {
            script.arg(d.to_flat_json(&[]));
        }
        script.arg(entry.origin.as_deref().unwrap_or("")).arg(keep.history_ms).arg(outcome.routed.len());
        for agent in &outcome.routed {
            script.arg(agent);
        }
        let _: i64 = script.invoke_async(&mut self.conn.get()).await?;
        Ok(())
    }

    /// The policy's recent deliveries (samples kept by [`Queue::settle`]),
    /// newest first, at most `count`.
    pub async fn recent(&self, policy: &ObjectRef, count: usize) -> Result<Vec<Delivery>> {
        let reply: redis::streams::StreamRangeReply =
            self.conn.get().xrevrange_count(self.key(policy, "recent"), "+", "-", count).await?;
        // NB: a sample that does not read is skipped: it is only a sample.
        Ok(reply
            .ids
            .into_iter()
            .filter_map(|e| {
                let mut d = Delivery::from_fields(&e.id, bytes_map(e.map)).ok()?;
                // When it was sampled (settled), the order the list is in.
                d.received_ms = stream_id(&e.id)?.0;
                Some(d)
            })
            .collect())
    }

    /// Moves retries that are due into the queue; returns how many, and
    /// when the next one left is due (Unix ms).
    pub async fn promote_due(
        &self,
        policy: &ObjectRef,
        now_ms: u64,
        max: usize,
    ) -> Result<(u64, Option<u64>)> {
        let mut script = PROMOTE.prepare_invoke();
        script.key(self.key(policy, "retry")).key(self.key(policy, "events")).arg(now_ms).arg(max);
        let (moved, next): (u64, i64) = script.invoke_async(&mut self.conn.get()).await?;
        Ok((moved, u64::try_from(next).ok()))
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

/// A Redis stream id, `ms-seq`, as its two numbers.
pub fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Is stream id `a` later than `b`?
fn stream_id_after(a: &str, b: &str) -> bool {
    stream_id(a).unwrap_or_default() > stream_id(b).unwrap_or_default()
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
    /// The most recent activity of `policies` matching `filter`, newest
    /// first, at most `limit`.
    pub async fn activity(
        &self,
        policies: &[ObjectRef],
        filter: &ActivityFilter,
        limit: usize,
    ) -> Result<Vec<Activity>> {
        let mut lists = Vec::with_capacity(policies.len());
        for policy in policies {
            lists.push(self.policy_activity(policy, filter, limit).await?);
        }
        Ok(activity::newest(lists, limit))
    }

    /// `policy`'s log entries after entry id `after` (exclusive), oldest
    /// first, at most `count`, each with its id.
    pub async fn activity_after(
        &self,
        policy: &ObjectRef,
        after: &str,
        count: usize,
    ) -> Result<Vec<(String, Activity)>> {
        let reply: redis::streams::StreamRangeReply = self
            .conn
            .get()
            .xrange_count(self.key(policy, "activity"), format!("({after}"), "+", count)
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .filter_map(|sid| {
                let a = Activity::from_entry(policy, &sid.id, bytes_map(sid.map))?;
                Some((sid.id, a))
            })
            .collect())
    }

    /// Keeps `policy`'s tap on for `ttl` more: queued deliveries are copied
    /// to it. Followers renew it while they follow; it goes off by itself.
    pub async fn tap_on(&self, policy: &ObjectRef, ttl: std::time::Duration) -> Result<()> {
        Ok(self.conn.get().set_ex(self.key(policy, "tap:on"), 1, ttl.as_secs().max(1)).await?)
    }

    /// The tap's deliveries after entry `after` (at most `count`), and
    /// whether some it held after `after` were trimmed since (a gap: the
    /// follower was away for more than [`TAP_LEN`] deliveries).
    pub async fn tap_after(
        &self,
        policy: &ObjectRef,
        after: &str,
        count: usize,
    ) -> Result<(Vec<(String, Delivery)>, bool)> {
        let key = self.key(policy, "tap");
        let mut conn = self.conn.get();
        let range: redis::streams::StreamRangeReply =
            conn.xrange_count(&key, format!("({after}"), "+", count).await?;
        // NB: XINFO fails on a stream that does not exist yet: nothing was trimmed.
        let info: redis::RedisResult<HashMap<String, redis::Value>> =
            redis::cmd("XINFO").arg("STREAM").arg(&key).query_async(&mut conn).await;
        let trimmed = info
            .ok()
            .and_then(|i| {
                i.get("max-deleted-entry-id").and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            })
            .is_some_and(|deleted| stream_id_after(&deleted, after));
        let deliveries = range
            .ids
            .into_iter()
            .map(|sid| Ok((sid.id.clone(), Delivery::from_fields(&sid.id, bytes_map(sid.map))?)))
            .collect::<Result<_>>()?;
        Ok((deliveries, trimmed))
    }

    /// Reads `policy`'s log newest first, a page at a time, until `limit`
    /// entries match or the log ends.
    async fn policy_activity(
        &self,
        policy: &ObjectRef,
        filter: &ActivityFilter,
        limit: usize,
    ) -> Result<Vec<Activity>> {
        const PAGE: usize = 500;
        let key = self.key(policy, "activity");
        let mut found = Vec::new();
        let mut end = "+".to_owned();
        loop {
            let reply: redis::streams::StreamRangeReply =
                self.conn.get().xrevrange_count(&key, &end, "-", PAGE).await?;
            let read = reply.ids.len();
            for sid in reply.ids {
                end = format!("({}", sid.id);
                let Some(a) = Activity::from_entry(policy, &sid.id, bytes_map(sid.map)) else { continue };
                if filter.matches(&a) {
                    found.push(a);
                    if found.len() == limit {
                        return Ok(found);
                    }
                }
            }
            if read < PAGE {
                return Ok(found);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stream_id_after;

    #[test]
    fn stream_ids_compare_by_time_then_sequence() {
        let cases = [
            ("later time", "1700000000001-0", "1700000000000-5", true),
            ("same time, later sequence", "1700000000000-10", "1700000000000-9", true),
            ("the same id", "1700000000000-1", "1700000000000-1", false),
            ("earlier", "1699999999999-99", "1700000000000-0", false),
            ("nothing trimmed yet", "0-0", "1700000000000-0", false),
        ];
        for (what, a, b, want) in cases {
            assert_eq!(stream_id_after(a, b), want, "{what}");
        }
    }
}
