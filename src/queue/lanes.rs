//! Lanes: one stream per agent of a policy, so that a slow, failing or
//! switched-off agent never holds up another. The policy's router reads
//! each delivery once from the policy's stream, applies the filters, and
//! copies it into the lane of every agent it goes to in the step that
//! settles it there ([`Queue::settle`] with `routed`); each lane is read
//! through its own consumer group and settled entry by entry. A lane is
//! created by the first delivery routed into it and retired, once empty,
//! when its agent left the policy.

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

use super::{LANES, Queue, Result};
use crate::ObjectRef;

/// Deletes an empty lane and forgets it: KEYS[1] the lane, KEYS[2] the set
/// of lanes; ARGV[1] its agent. Returns 1 when retired, 0 when not empty.
static RETIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('XLEN', KEYS[1]) > 0 then return 0 end \
         redis.call('DEL', KEYS[1]) redis.call('SREM', KEYS[2], ARGV[1]) return 1",
    )
});

impl Queue {
    /// The agents of `policy` with a lane (deliveries may wait in it).
    pub async fn lanes(&self, policy: &ObjectRef) -> Result<Vec<String>> {
        let mut agents: Vec<String> = self.conn.get().smembers(self.key(policy, LANES)).await?;
        agents.sort();
        Ok(agents)
    }

    /// Entries waiting or in flight in `agent`'s lane.
    pub async fn lane_len(&self, policy: &ObjectRef, agent: &str) -> Result<u64> {
        Ok(self.conn.get().xlen(self.stream(policy, Some(agent))).await?)
    }

    /// Deletes `agent`'s lane if it is empty; true when it was.
    pub async fn retire_lane(&self, policy: &ObjectRef, agent: &str) -> Result<bool> {
        let retired: i64 = RETIRE
            .key(self.stream(policy, Some(agent)))
            .key(self.key(policy, LANES))
            .arg(agent)
            .invoke_async(&mut self.conn.get())
            .await?;
        Ok(retired == 1)
    }
}
