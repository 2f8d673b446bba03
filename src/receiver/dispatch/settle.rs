//! The pure step after an entry's calls: per agent, delivered, retried
//! (when) or given up on — and the failure vocabulary it decides from.

use tokio::time::Instant;

use super::backoff;
use crate::{
    ObjectRef,
    api::RetryPolicy,
    queue::{GiveUp, Retry, Settlement},
};

/// Why one call to one agent failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("circuit open")]
    CircuitOpen { retry_at: Instant },
    #[error("timed out")]
    Timeout,
    #[error("agent answered HTTP {0}")]
    Status(u16),
    /// A 429 or 503 with `Retry-After`: retried no sooner, and not held
    /// against the agent's circuit.
    #[error("agent answered HTTP {status}, retry after {wait_s}s")]
    Throttled { status: u16, retry_at: Instant, wait_s: u64 },
    /// Never followed: the body and its signatures would go to whatever
    /// host the agent named.
    #[error("agent answered HTTP {0}, a redirect (redirects are not followed)")]
    Redirect(u16),
    /// Kept coarse ("could not connect"): a dead letter's text must not
    /// tell a tenant which ports of which hosts are open.
    #[error("request failed: {0}")]
    Transport(&'static str),
    /// Not retried: see [`super::routes`].
    #[error("entry names hook {0}, which does not deliver to this policy: not delivered")]
    Misrouted(ObjectRef),
    /// Not retried: the receiver refuses this destination.
    #[error(transparent)]
    Denied(#[from] super::destinations::Denied),
    #[error("agent no longer in the policy")]
    AgentGone,
    /// The agent asks for signed calls and its signing Secret has no key
    /// loaded (missing, unlabelled or without a `whsec_` value): nothing is
    /// sent unsigned.
    #[error(
        "no signing key loaded from Secret {0} (it must exist, carry the label hookwarden.io/agent-signing=true and hold whsec_ keys)"
    )]
    Unsigned(ObjectRef),
    /// The agent names a credentials Secret that is not loaded (missing or
    /// unlabelled): nothing is sent without its credentials.
    #[error(
        "credentials Secret {0} not loaded (it must exist and carry the label hookwarden.io/agent-headers=true)"
    )]
    NoCredentials(ObjectRef),
    /// Not called: the agent's limits across replicas (`concurrency`,
    /// `rateLimit`, a `Retry-After` pause) hold it until `retry_at`. Not an
    /// attempt, and not held against the agent's circuit.
    #[error("held by the agent's {limit}")]
    Limited { retry_at: Instant, limit: &'static str },
}

/// The pure step after the calls: for each agent's outcome of one attempt
/// of a delivery (`attempt` attempts made before it), whether it was
/// delivered, is retried (when: the policy's backoff with draw `jitter` of
/// its 20 % jitter, or later if the agent's circuit opens later), or is
/// given up on (attempts exhausted, or the agent left the policy).
pub fn settle(
    outcomes: &[(String, Result<(), Failure>)],
    retry: &RetryPolicy,
    attempt: u32,
    now_ms: u64,
    now: Instant,
    jitter: f64,
) -> Settlement {
    let mut settlement = Settlement::default();
    let attempts = attempt + 1;
    for (agent, outcome) in outcomes {
        let agent = agent.clone();
        let Err(failure) = outcome else {
            settlement.delivered.push(agent);
            continue;
        };
        let error = failure.to_string();
        if let Failure::Limited { retry_at, .. } = failure {
            let due_ms = now_ms + retry_at.saturating_duration_since(now).as_millis() as u64;
            settlement.retries.push(Retry { agent, due_ms, attempts: attempt, error });
            continue;
        }
        if matches!(failure, Failure::AgentGone | Failure::Denied(_) | Failure::Misrouted(_))
            || attempts >= retry.max_attempts.max(1) as u32
        {
            settlement.dead.push(GiveUp { agent, attempts, error });
            continue;
        }
        let mut wait = backoff::jittered(retry, attempts, jitter);
        if let Failure::CircuitOpen { retry_at } | Failure::Throttled { retry_at, .. } = failure {
            wait = wait.max(retry_at.saturating_duration_since(now));
        }
        settlement.retries.push(Retry { agent, due_ms: now_ms + wait.as_millis() as u64, attempts, error });
    }
    settlement
}

/// The longest `Retry-After` obeyed: an agent cannot park a delivery for
/// longer than this per attempt.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// How long a 429 or 503 answer asks to wait: its `Retry-After` as
/// delta-seconds or an HTTP date (`now` is the wall clock, Unix seconds),
/// at most [`MAX_RETRY_AFTER`]; `None` for other answers or no usable value.
pub fn retry_after(status: u16, value: Option<&str>, now_s: i64) -> Option<std::time::Duration> {
    if !matches!(status, 429 | 503) {
        return None;
    }
    let value = value?.trim();
    let seconds = match value.parse::<u64>() {
        Ok(s) => s,
        Err(_) => {
            let at = k8s_openapi::jiff::fmt::rfc2822::parse(value).ok()?.timestamp().as_second();
            u64::try_from(at.saturating_sub(now_s)).unwrap_or(0)
        }
    };
    Some(std::time::Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// How a dispatch ends (`result` of `github_webhook_processed_total`).
pub const RESULTS: &[&str] = &["success", "retry", "dead_letter"];

impl Failure {
    /// Every `reason` of `github_webhook_errors_total`.
    pub const REASONS: &[&str] = &[
        "circuit_open",
        "timeout",
        "http_status",
        "throttled",
        "redirect",
        "transport",
        "agent_gone",
        "unsigned",
        "no_credentials",
        "limited",
        "denied",
        "misrouted",
    ];

    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::CircuitOpen { .. } => "circuit_open",
            Self::Timeout => "timeout",
            Self::Status(_) => "http_status",
            Self::Throttled { .. } => "throttled",
            Self::Redirect(_) => "redirect",
            Self::Transport(_) => "transport",
            Self::AgentGone => "agent_gone",
            Self::Unsigned(_) => "unsigned",
            Self::NoCredentials(_) => "no_credentials",
            Self::Limited { .. } => "limited",
            Self::Denied(_) => "denied",
            Self::Misrouted(_) => "misrouted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn settle_delivers_retries_or_gives_up_per_agent() {
        use crate::api::RetryStrategy;
        let retry = RetryPolicy {
            strategy: RetryStrategy::Exponential,
            max_attempts: 3,
            initial_delay: "1s".parse().unwrap(),
            max_delay: "1m".parse().unwrap(),
        };
        let now = Instant::now();
        let (t, ok) = (1_000_000u64, Ok(()));
        let one = |outcome: Result<(), Failure>, attempt: u32, jitter: f64| {
            settle(&[("a".to_owned(), outcome)], &retry, attempt, t, now, jitter)
        };
        let retry_at = |due_ms, attempts, error: &str| Settlement {
            retries: vec![Retry { agent: "a".into(), due_ms, attempts, error: error.into() }],
            ..Settlement::default()
        };
        let dead = |attempts, error: &str| Settlement {
            dead: vec![GiveUp { agent: "a".into(), attempts, error: error.into() }],
            ..Settlement::default()
        };
        let open_for = |secs| Failure::CircuitOpen { retry_at: now + Duration::from_secs(secs) };
        let cases = [
            // (outcome, attempts made before, jitter draw) -> settlement
            (one(ok, 0, 0.0), Settlement { delivered: vec!["a".into()], ..Settlement::default() }),
            (one(Err(Failure::Timeout), 0, 0.0), retry_at(t + 1_000, 1, "timed out")),
            (one(Err(Failure::Timeout), 0, 0.5), retry_at(t + 1_100, 1, "timed out")),
            (one(Err(Failure::Status(503)), 1, 0.0), retry_at(t + 2_000, 2, "agent answered HTTP 503")),
            (one(Err(Failure::Status(503)), 2, 0.0), dead(3, "agent answered HTTP 503")),
            (one(Err(Failure::AgentGone), 0, 0.0), dead(1, "agent no longer in the policy")),
            (
                one(
                    Err(Failure::Denied(super::super::destinations::Denied("the receiver's own listener"))),
                    0,
                    0.0,
                ),
                dead(1, "destination denied: the receiver's own listener"),
            ),
            (
                one(Err(Failure::Redirect(307)), 0, 0.0),
                retry_at(t + 1_000, 1, "agent answered HTTP 307, a redirect (redirects are not followed)"),
            ),
            // An open circuit waits for the circuit when that is later...
            (one(Err(open_for(30)), 0, 0.0), retry_at(t + 30_000, 1, "circuit open")),
            // ... and a busy agent for its Retry-After.
            (
                one(
                    Err(Failure::Throttled {
                        status: 429,
                        retry_at: now + Duration::from_secs(20),
                        wait_s: 20,
                    }),
                    0,
                    0.0,
                ),
                retry_at(t + 20_000, 1, "agent answered HTTP 429, retry after 20s"),
            ),
            // ...and for the backoff when that is later.
            (one(Err(open_for(0)), 1, 0.0), retry_at(t + 2_000, 2, "circuit open")),
            // Held by its limits: when they allow, with the attempt not used
            // up, even at the last attempt.
            (
                one(
                    Err(Failure::Limited { retry_at: now + Duration::from_millis(700), limit: "rateLimit" }),
                    2,
                    0.0,
                ),
                retry_at(t + 700, 2, "held by the agent's rateLimit"),
            ),
        ];
        for (i, (got, want)) in cases.into_iter().enumerate() {
            assert_eq!(got, want, "case {i}");
        }
        // Agents are settled independently; max_attempts 0 means one attempt.
        let both = settle(
            &[("a".into(), Ok(())), ("b".into(), Err(Failure::Timeout))],
            &RetryPolicy { max_attempts: 0, ..retry.clone() },
            0,
            t,
            now,
            0.0,
        );
        assert_eq!((both.delivered.len(), both.retries.len(), both.dead.len()), (1, 0, 1));
    }

    #[test]
    fn retry_after_is_read_from_busy_answers_only_and_capped() {
        let now = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
        let rows = [
            (429, Some("120"), Some(120)),
            (503, Some(" 5 "), Some(5)),
            (503, Some("Sun, 06 Nov 1994 08:50:37 GMT"), Some(60)),
            (503, Some("Sun, 06 Nov 1994 08:40:37 GMT"), Some(0)),
            (429, Some("999999"), Some(3600)),
            (429, Some("soon"), None),
            (429, None, None),
            (500, Some("10"), None),
            (200, Some("10"), None),
        ];
        for (status, value, want) in rows {
            assert_eq!(retry_after(status, value, now).map(|d| d.as_secs()), want, "{status} {value:?}");
        }
    }

    #[test]
    fn every_failure_reason_is_created_at_zero() {
        let failures = [
            Failure::CircuitOpen { retry_at: Instant::now() },
            Failure::Timeout,
            Failure::Status(500),
            Failure::Throttled { status: 503, retry_at: Instant::now(), wait_s: 0 },
            Failure::Redirect(302),
            Failure::Transport("could not connect"),
            Failure::AgentGone,
            Failure::Unsigned(ObjectRef::new("ns", "s")),
            Failure::Denied(super::super::destinations::Denied("x")),
            Failure::Misrouted(ObjectRef::new("a", "hook")),
            Failure::NoCredentials(ObjectRef::new("ns", "s")),
            Failure::Limited { retry_at: Instant::now(), limit: "concurrency" },
        ];
        for failure in failures {
            assert!(Failure::REASONS.contains(&failure.metric_label()), "{failure}");
        }
        assert_eq!(Failure::REASONS.len(), 12);
    }
}
