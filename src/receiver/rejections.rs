//! The requests this replica turned away, kept in memory only: a request
//! that proved nothing (no hook, no valid signature, a malformed payload)
//! costs no Redis write, so an unauthenticated client cannot make Redis work
//! at its own rate. They are counted in `github_webhook_errors_total` and the
//! most recent ones are listed by the admin API (`/admin/deliveries`) beside
//! the activity log in Redis.

use std::{collections::VecDeque, sync::Mutex};

use crate::queue::{Activity, ActivityFilter};

/// How many rejections each replica remembers.
pub const REMEMBERED: usize = 1000;

/// A bounded window of the most recent rejections, oldest dropped first.
#[derive(Debug)]
pub struct Rejections {
    capacity: usize,
    recent: Mutex<VecDeque<Activity>>,
}

impl Default for Rejections {
    fn default() -> Self {
        Self::new(REMEMBERED)
    }
}

impl Rejections {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, recent: Mutex::new(VecDeque::with_capacity(capacity)) }
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
}
