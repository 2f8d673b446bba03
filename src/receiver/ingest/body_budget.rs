//! How many bytes of request bodies may be held at once before their
//! signature is checked. Anyone on the internet can send 25 MB bodies;
//! without a bound, a few dozen at once are more than the pod's memory.
//!
//! A request reserves its declared `Content-Length` (GitHub always sends
//! one; a body without one reserves the body limit) before a byte is read,
//! and gives it back when its handling ends. One that does not fit is
//! answered 503 with `Retry-After` at once. Large bodies (over an eighth of
//! the budget) may together hold at most three quarters of it, so a flood
//! of large bodies always leaves room for GitHub's usual deliveries of a few
//! kilobytes.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default budget: two 25 MB deliveries at once (60 MiB for large bodies), and 20 MiB beside them.
pub const DEFAULT_UNAUTHENTICATED_BYTES: usize = 80 << 20;

pub struct BodyBudget {
    total: usize,
    all: Arc<Semaphore>,
    large: Arc<Semaphore>,
}

/// Bytes held for one request, given back when dropped.
#[derive(Debug)]
pub struct Reserved {
    _all: OwnedSemaphorePermit,
    _large: Option<OwnedSemaphorePermit>,
}

impl BodyBudget {
    pub fn new(total: usize) -> Self {
        let total = total.max(1);
        Self { total, all: Arc::new(Semaphore::new(total)), large: Arc::new(Semaphore::new(total / 4 * 3)) }
    }

    /// Reserves `bytes`, or says there is no room now.
    pub fn reserve(&self, bytes: usize) -> Option<Reserved> {
        let n = u32::try_from(bytes.max(1)).ok()?;
        let large = if bytes > self.total / 8 {
            Some(self.large.clone().try_acquire_many_owned(n).ok()?)
        } else {
            None
        };
        let all = self.all.clone().try_acquire_many_owned(n).ok()?;
        Some(Reserved { _all: all, _large: large })
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.total - self.all.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_leave_room_for_small_ones_and_bytes_come_back() {
        let budget = BodyBudget::new(64 << 20);
        let mb = 1 << 20;
        let first = budget.reserve(25 * mb).expect("one 25 MB body fits");
        let second = budget.reserve(20 * mb).expect("a second large one fits");
        assert!(budget.reserve(9 * mb).is_none(), "large bodies hold at most three quarters");
        let small: Vec<_> =
            (0..150).map(|_| budget.reserve(100 << 10).expect("room for small bodies")).collect();
        assert_eq!(budget.in_use(), 45 * mb + 150 * (100 << 10));
        assert!(budget.reserve(8 * mb).is_none(), "the rest is full");
        drop((first, second, small));
        assert_eq!(budget.in_use(), 0, "every byte comes back");
        assert!(budget.reserve(25 * mb).is_some());
        assert!(budget.reserve(usize::MAX).is_none(), "more than there is never fits");
    }
}
