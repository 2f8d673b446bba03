//! The requests this replica turned away, kept in memory only: a request
//! that proved nothing (no hook, no valid signature, a malformed payload)
//! costs no Redis write, so an unauthenticated client cannot make Redis work
//! at its own rate. They are counted in `github_webhook_errors_total` and the
//! most recent ones are listed by the admin API (`/admin/deliveries`) beside
//! the activity log in Redis. Each is logged too, up to
//! [`LOGGED_PER_SECOND`]: beyond that a flood of rejections is counted, and
//! the next line logged says how many were not (`unlogged`).

use std::{
    collections::VecDeque,
    num::NonZeroU32,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use governor::{DefaultDirectRateLimiter, Quota};

use crate::queue::{Activity, ActivityFilter};

/// How many rejections each replica remembers.
pub const REMEMBERED: usize = 1000;
/// How many rejections each replica logs per second at most (also the burst).
pub const LOGGED_PER_SECOND: u32 = 10;

/// A bounded window of the most recent rejections, oldest dropped first.
pub struct Rejections {
    capacity: usize,
    recent: Mutex<VecDeque<Activity>>,
    logged: DefaultDirectRateLimiter,
    unlogged: AtomicU64,
}

impl Default for Rejections {
    fn default() -> Self {
        Self::new(REMEMBERED)
    }
}

impl Rejections {
    pub fn new(capacity: usize) -> Self {
        let per_second = NonZeroU32::new(LOGGED_PER_SECOND).expect("not zero");
        Self {
            capacity,
            recent: Mutex::new(VecDeque::with_capacity(capacity)),
            logged: DefaultDirectRateLimiter::direct(Quota::per_second(per_second)),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Whether this rejection may be logged: `Some(n)`, with the number of
    /// rejections not logged since the last line, or `None` (counted).
    pub fn to_log(&self) -> Option<u64> {
        if self.logged.check().is_ok() {
            Some(self.unlogged.swap(0, Ordering::Relaxed))
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    pub fn push(&self, rejected: Activity) {
        let mut recent = self.recent.lock().unwrap();
        if recent.len() == self.capacity {
            recent.pop_front();
        }
        recent.push_back(rejected);
    }

    /// Up to `limit` of those matching `filter`, newest first.
    pub fn matching(&self, filter: &ActivityFilter, limit: usize) -> Vec<Activity> {
        self.recent.lock().unwrap().iter().rev().filter(|a| filter.matches(a)).take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(n: u64, event: &str) -> Activity {
        Activity {
            at_ms: n,
            guid: format!("g{n}"),
            event: event.into(),
            hook: "team/hook".into(),
            policy: None,
            repository: None,
            status: "rejected".into(),
            agent: None,
            detail: Some("signature_mismatch".into()),
        }
    }

    #[test]
    fn keeps_the_newest_within_its_capacity_newest_first() {
        let r = Rejections::new(3);
        for n in 0..5 {
            r.push(rejected(n, if n % 2 == 0 { "push" } else { "issues" }));
        }
        let all: Vec<u64> = r.matching(&ActivityFilter::default(), 10).iter().map(|a| a.at_ms).collect();
        assert_eq!(all, [4, 3, 2]);
        let push = ActivityFilter { event: Some("push".into()), ..ActivityFilter::default() };
        let pushes: Vec<u64> = r.matching(&push, 10).iter().map(|a| a.at_ms).collect();
        assert_eq!(pushes, [4, 2]);
        assert_eq!(r.matching(&ActivityFilter::default(), 1).len(), 1);
    }

    #[test]
    fn a_flood_is_logged_at_the_limit_and_the_next_line_counts_the_rest() {
        let r = Rejections::default();
        let first: Vec<_> = (0..1000).map(|_| r.to_log()).collect();
        let logged = first.iter().filter(|l| l.is_some()).count();
        assert!(logged <= LOGGED_PER_SECOND as usize + 1, "{logged} lines for 1,000 rejections");
        assert!(first[..LOGGED_PER_SECOND as usize].iter().all(|l| *l == Some(0)), "the burst is logged");
        std::thread::sleep(std::time::Duration::from_millis(1100 / u64::from(LOGGED_PER_SECOND)));
        assert_eq!(r.to_log(), Some(1000 - logged as u64), "the next line says how many were not");
        assert_eq!(r.unlogged.load(Ordering::Relaxed), 0);
    }
}
