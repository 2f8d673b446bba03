//! Per-agent limits that hold across receiver replicas: calls in flight
//! (`concurrency`), calls per unit of time (`rateLimit`) and the pause an
//! agent's `Retry-After` asks for. Held in Redis beside the policy's queue
//! (keys `p:{ns/policy}:agent:{name}:slots|rate|paused`, in the policy's
//! Cluster slot), each decision one Lua step (`lua/permit.lua`) on Redis'
//! clock, so replicas with skewed clocks still share one rate.
//!
//! A call's slot is a lease: released when the call ends, or by itself when
//! the lease does (the replica holding it died), so a crash never shrinks
//! an agent's concurrency for longer than the agent's timeout.

use std::sync::LazyLock;

use redis::Script;

use super::{Queue, Result};
use crate::{ObjectRef, api::RateLimit};

static PERMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/permit.lua")));

/// Sets the pause unless a longer one is set.
static PAUSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then \
         redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end",
    )
});

/// The limits of one agent, as the permit script takes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentLimits {
    /// Calls in flight at once across replicas; 0: unbounded.
    pub concurrency: u32,
    /// The steady rate as the time between two calls (µs) and the calls
    /// allowed at once after idle; `None`: no rate.
    pub rate: Option<(u64, u32)>,
}

impl AgentLimits {
    pub fn of(concurrency: Option<i32>, rate: Option<&RateLimit>) -> Self {
        Self {
            concurrency: concurrency.map_or(0, |c| c.max(1) as u32),
            rate: rate.map(|r| (r.interval_us().max(1), r.burst.max(1) as u32)),
        }
    }

    /// Is Redis asked before each call? Only for an agent with a limit; a
    /// `Retry-After` pauses such an agent on every replica, any other on
    /// the replica that got it.
    pub fn any(&self) -> bool {
        self.concurrency > 0 || self.rate.is_some()
    }
}

/// The answer to "may this call start?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    Granted,
    /// The agent asked every replica to wait (its `Retry-After`) this long.
    Paused {
        ms: u64,
    },
    /// Every slot is taken; the first lease ends in at most this long.
    Full {
        ms: u64,
    },
    /// Over the rate; the next call may start in this long.
    Rate {
        ms: u64,
    },
}

impl Queue {
    fn agent_key(&self, policy: &ObjectRef, agent: &str, what: &str) -> String {
        self.key(policy, &format!("agent:{agent}:{what}"))
    }

    /// Asks for a slot for one call to `agent` of `policy` under `limits`,
    /// held by `holder` for at most `lease_ms`; `now_ms` 0 uses Redis' clock
    /// (tests pass their own).
    pub async fn agent_permit(
        &self,
        policy: &ObjectRef,
        agent: &str,
        limits: AgentLimits,
        holder: &str,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Permit> {
        let (interval_us, burst) = limits.rate.unwrap_or((0, 1));
        let (kind, ms): (u8, u64) = PERMIT
            .key(self.agent_key(policy, agent, "slots"))
            .key(self.agent_key(policy, agent, "rate"))
            .key(self.agent_key(policy, agent, "paused"))
            .arg(holder)
            .arg(lease_ms)
            .arg(limits.concurrency)
            .arg(interval_us)
            .arg(burst)
            .arg(now_ms)
            .invoke_async(&mut self.conn.get())
            .await?;
        Ok(match kind {
            0 => Permit::Granted,
            1 => Permit::Paused { ms },
            2 => Permit::Full { ms },
            _ => Permit::Rate { ms },
        })
    }

    /// Gives back `holder`'s slot.
    pub async fn agent_release(&self, policy: &ObjectRef, agent: &str, holder: &str) -> Result<()> {
        let _: i64 = redis::cmd("ZREM")
            .arg(self.agent_key(policy, agent, "slots"))
            .arg(holder)
            .query_async(&mut self.conn.get())
            .await?;
        Ok(())
    }

    /// Pauses calls to `agent` on every replica for `ms` (an agent's
    /// `Retry-After`); a longer pause already set stays.
    pub async fn agent_pause(&self, policy: &ObjectRef, agent: &str, ms: u64) -> Result<()> {
        let _: () = PAUSE
            .key(self.agent_key(policy, agent, "paused"))
            .arg(ms.max(1))
            .invoke_async(&mut self.conn.get())
            .await?;
        Ok(())
    }
}
