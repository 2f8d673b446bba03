//! A policy's history: every delivery it routed, kept for the policy's
//! `history` (at most 7 days) so that a window can be replayed — to one
//! agent (a new one backfilled, one that lost its data) or to all — with the
//! original GUID as `ce-id`, so agents can de-duplicate.
//!
//! Written by the router in the step that routes the delivery (a stream
//! trimmed by age on Redis' clock: `XADD MINID`), so it holds exactly what
//! was accepted, filtered or not, once each; retries and replays are not
//! written again. A replay puts one entry per agent into the policy's
//! stream, as a dead letter's replay does: the router sends it to that
//! agent's lane, where the kill switch, the agent's switch, its limits and
//! its breaker apply as to any delivery, and the queue limit bounds it.

use std::sync::LazyLock;

use redis::Script;

use super::{HISTORY, Queue, QueueError, Result, bytes_map, model::Delivery};
use crate::ObjectRef;

/// Puts history entries back in the policy's stream, one per agent.
/// KEYS[1] history, KEYS[2] events, KEYS[3] retry set; ARGV[1] the queue
/// limit, then (history id, agent) pairs.
/// Returns how many were queued, or -1 when they would pass the limit
/// (then none is).
static REPLAY_WINDOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = (#ARGV - 1) / 2
local queued = redis.call('XLEN', KEYS[2]) + redis.call('ZCARD', KEYS[3])
if queued + n > tonumber(ARGV[1]) then return -1 end
local done = 0
for i = 2, #ARGV, 2 do
  local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1]
  if e then
    local out = {}
    for j = 1, #e[2], 2 do
      local k = e[2][j]
      if k ~= 'agent' and k ~= 'attempt' then out[#out + 1] = k; out[#out + 1] = e[2][j + 1] end
    end
    out[#out + 1] = 'agent'; out[#out + 1] = ARGV[i + 1]
    out[#out + 1] = 'attempt'; out[#out + 1] = '0'
    redis.call('XADD', KEYS[2], '*', unpack(out))
    done = done + 1
  end
end
return done
",
    )
});

impl Queue {
    /// Up to `count` kept deliveries of `policy` routed after stream id
    /// `after` (exclusive; `None`: from those routed at `from_ms` on), in
    /// order, with their history ids.
    pub async fn history(
        &self,
        policy: &ObjectRef,
        from_ms: u64,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<(String, Delivery)>> {
        let start = after.map_or_else(|| from_ms.to_string(), |id| format!("({id}"));
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.key(policy, HISTORY))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.get())
            .await?;
        // NB: an entry that does not read is skipped, as in the recent samples.
        Ok(reply
            .ids
            .into_iter()
            .filter_map(|e| Some((e.id.clone(), Delivery::from_fields(&e.id, bytes_map(e.map)).ok()?)))
            .collect())
    }

    /// Queues the kept deliveries `picks` (history id, agent) again, each
    /// for its agent with a fresh attempt budget, unless they would take the
    /// queue past `limit`; returns how many were queued.
    pub async fn replay_history(
        &self,
        policy: &ObjectRef,
        picks: &[(String, String)],
        limit: u64,
    ) -> Result<u64> {
        if picks.is_empty() {
            return Ok(0);
        }
        let mut script = REPLAY_WINDOW.prepare_invoke();
        script
            .key(self.key(policy, HISTORY))
            .key(self.key(policy, "events"))
            .key(self.key(policy, "retry"))
            .arg(limit);
        for (id, agent) in picks {
            script.arg(id).arg(agent);
        }
        let done: i64 = script.invoke_async(&mut self.conn.get()).await?;
        u64::try_from(done).map_err(|_| QueueError::Full { limit })
    }
}
