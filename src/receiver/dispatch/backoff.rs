//! Delay before the next attempt of a failed dispatch.

use std::time::Duration;

use crate::api::{RetryPolicy, RetryStrategy};

/// Delay after `attempts` failed attempts (1 = the first one failed), before
/// jitter: grows by the policy's strategy from `initialDelay`, capped at
/// `maxDelay`.
pub fn base_delay(policy: &RetryPolicy, attempts: u32) -> Duration {
    let n = attempts.max(1);
    let initial = policy.initial_delay.get();
    let factor: u64 = match policy.strategy {
        RetryStrategy::Fixed => 1,
        RetryStrategy::Linear => u64::from(n),
        RetryStrategy::Exponential => 1u64.checked_shl(n - 1).unwrap_or(u64::MAX),
        RetryStrategy::Fibonacci => fibonacci(n),
    };
    let millis = (initial.as_millis() as u64).saturating_mul(factor);
    Duration::from_millis(millis).min(policy.max_delay.get())
}

/// [`base_delay`] plus up to 20 % random jitter, still capped at `maxDelay`,
/// so that agents coming back are not hit by every retry at once.
pub fn delay(policy: &RetryPolicy, attempts: u32) -> Duration {
    jittered(policy, attempts, rand::random())
}

/// [`delay`] for a given draw `r` in [0, 1): `r` of the 20 % jitter.
pub fn jittered(policy: &RetryPolicy, attempts: u32, r: f64) -> Duration {
    let base = base_delay(policy, attempts);
    (base + base.mul_f64(r.clamp(0.0, 1.0) * 0.2)).min(policy.max_delay.get())
}

/// 1, 1, 2, 3, 5, ... (saturating).
fn fibonacci(n: u32) -> u64 {
    let (mut a, mut b) = (1u64, 1u64);
    for _ in 1..n {
        (a, b) = (b, a.saturating_add(b));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(strategy: RetryStrategy, initial: &str, max: &str) -> RetryPolicy {
        RetryPolicy {
            strategy,
            max_attempts: 10,
            initial_delay: initial.parse().unwrap(),
            max_delay: max.parse().unwrap(),
        }
    }

    fn secs(policy: &RetryPolicy, upto: u32) -> Vec<u64> {
        (1..=upto).map(|n| base_delay(policy, n).as_secs()).collect()
    }

    #[test]
    fn each_strategy_grows_as_named_and_stops_at_the_cap() {
        assert_eq!(secs(&policy(RetryStrategy::Exponential, "1s", "10s"), 6), [1, 2, 4, 8, 10, 10]);
        assert_eq!(secs(&policy(RetryStrategy::Linear, "2s", "7s"), 5), [2, 4, 6, 7, 7]);
        assert_eq!(secs(&policy(RetryStrategy::Fixed, "3s", "1h"), 4), [3, 3, 3, 3]);
        assert_eq!(secs(&policy(RetryStrategy::Fibonacci, "1s", "1h"), 7), [1, 1, 2, 3, 5, 8, 13]);
    }

    #[test]
    fn huge_attempt_counts_saturate_instead_of_overflowing() {
        let p = policy(RetryStrategy::Exponential, "1s", "5m");
        assert_eq!(base_delay(&p, 500), Duration::from_secs(300));
        let p = policy(RetryStrategy::Fibonacci, "1s", "5m");
        assert_eq!(base_delay(&p, 500), Duration::from_secs(300));
    }

    #[test]
    fn jitter_adds_at_most_a_fifth_and_never_passes_the_cap() {
        let p = policy(RetryStrategy::Exponential, "1s", "10s");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = delay(&p, 2);
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_millis(2400), "{d:?}");
            seen.insert(d);
            assert!(delay(&p, 10) <= Duration::from_secs(10));
        }
        assert!(seen.len() > 1, "jitter varies the delay");
    }
}
