//! Deliveries for one policy queued together: one call of `enqueue.lua`
//! for all those that arrived while the policy's call before was in flight
//! (group commit). Each delivery's answer still waits for its own call (and
//! the replicas' `WAIT`), so nothing counts as queued before it is; a lone
//! delivery is sent at once, so no delay is added when the receiver is
//! quiet. Under load, Redis parses, dispatches and propagates one request
//! and reads the policy's queue lengths and tap switch once per batch
//! instead of per delivery.
//!
//! One task per policy sends its batches, one at a time (so its deliveries
//! are queued in the order they came); it exits after [`IDLE`] without
//! deliveries. A failed call fails every delivery of its batch: each is
//! answered 503 and comes back (GitHub's retry, the operator's recovery),
//! where the ones that were queued are refused as duplicates.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::sync::{mpsc, oneshot};

use super::{Enqueued, QueueError, Result};
use crate::ObjectRef;

/// Deliveries of one call at most, and the bytes of their arguments beyond
/// which no more are added: a batch holds Redis (single-threaded) for
/// about a millisecond at most, so other policies wait no longer.
pub const MAX_DELIVERIES: usize = 64;
pub const MAX_BYTES: usize = 512 * 1024;
/// The arguments of a delivery before its entry's (see `enqueue.lua`).
pub const HEADER: usize = 9;
/// A policy's task exits after this long without a delivery.
pub const IDLE: Duration = Duration::from_secs(60);

/// One delivery's part of a call: its lookup keys and its arguments (see
/// `enqueue.lua`), and where its answer goes.
pub struct Part {
    pub keys: Vec<String>,
    pub args: Vec<Vec<u8>>,
    pub limit: u64,
    pub answer: oneshot::Sender<Result<Enqueued>>,
}

impl Part {
    fn bytes(&self) -> usize {
        self.args.iter().map(Vec::len).sum()
    }
}

/// Whether a batch of `deliveries` holding `bytes` takes one more.
pub fn has_room(deliveries: usize, bytes: usize) -> bool {
    deliveries < MAX_DELIVERIES && bytes < MAX_BYTES
}

/// What one delivery's reply from `enqueue.lua` means; `replicas`: how
/// many replicas acknowledged the call, of how many wanted.
pub fn outcome(reply: String, limit: u64, replicas: Option<(u32, u32)>) -> Result<Enqueued> {
    match reply.as_str() {
        "full" => Err(QueueError::Full { limit }),
        "dead_full" => Err(QueueError::DeadLettersFull { limit }),
        _ => match replicas {
            // NB: a duplicate too: the first copy may not have reached them.
            Some((acked, wanted)) if acked < wanted => Err(QueueError::NotReplicated { acked, wanted }),
            _ => Ok(match reply.as_str() {
                "dup" => Enqueued::Duplicate,
                "replay" => Enqueued::Replay,
                _ => Enqueued::Queued(reply),
            }),
        },
    }
}

/// Takes from `parts` what joins `batch` now (without waiting).
pub fn fill(batch: &mut Vec<Part>, parts: &mut mpsc::UnboundedReceiver<Part>) {
    let mut bytes: usize = batch.iter().map(Part::bytes).sum();
    while has_room(batch.len(), bytes) {
        let Ok(part) = parts.try_recv() else { break };
        bytes += part.bytes();
        batch.push(part);
    }
}

/// The open tasks, one per policy: where each takes its deliveries.
#[derive(Default)]
pub struct Tasks {
    open: Mutex<HashMap<ObjectRef, mpsc::UnboundedSender<Part>>>,
}

impl Tasks {
    /// Hands `part` to `policy`'s task, started by `start` when there is
    /// none (or it stopped).
    pub fn send(&self, policy: &ObjectRef, part: Part, start: impl FnOnce(mpsc::UnboundedReceiver<Part>)) {
        let mut open = self.open.lock().expect("not poisoned");
        // NB: sent under the lock, so a task that found its channel empty
        // under it (`retire`) gets nothing more.
        let part = match open.get(policy) {
            Some(task) => match task.send(part) {
                Ok(()) => return,
                // Its task ended (a panic): a new one takes over.
                Err(mpsc::error::SendError(part)) => part,
            },
            None => part,
        };
        let (task, parts) = mpsc::unbounded_channel();
        task.send(part).expect("the receiver is here");
        open.insert(policy.clone(), task);
        start(parts);
    }

    /// Whether `policy`'s task, idle, may end: nothing came meanwhile. Its
    /// channel is forgotten, so the next delivery starts a new task.
    pub fn retire(&self, policy: &ObjectRef, parts: &mpsc::UnboundedReceiver<Part>) -> bool {
        let mut open = self.open.lock().expect("not poisoned");
        if !parts.is_empty() {
            return false;
        }
        open.remove(policy);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(bytes: usize) -> (Part, oneshot::Receiver<Result<Enqueued>>) {
        let (answer, rx) = oneshot::channel();
        (Part { keys: vec![], args: vec![vec![0; bytes]], limit: 10, answer }, rx)
    }

    #[test]
    fn a_batch_takes_what_waits_up_to_its_bounds() {
        for (what, waiting, sizes, taken) in [
            ("nothing waits", 0, 100, 1),
            ("all that waits", 9, 100, 10),
            ("at most its deliveries", 200, 100, MAX_DELIVERIES),
            ("big ones up to its bytes", 20, 100 * 1024, 6),
            ("a huge one alone", 3, MAX_BYTES * 4, 1),
        ] {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut answers = vec![];
            for _ in 0..waiting {
                let (p, a) = part(sizes);
                tx.send(p).unwrap();
                answers.push(a);
            }
            let (first, _a) = part(sizes);
            let mut batch = vec![first];
            fill(&mut batch, &mut rx);
            assert_eq!(batch.len(), taken, "{what}");
            assert_eq!(rx.len(), waiting + 1 - taken, "{what}: the rest waits for the next");
        }
    }

    #[test]
    fn each_reply_means_what_it_says() {
        let id = || "1-0".to_owned();
        for (reply, replicas, expected) in [
            (id(), None, "queued 1-0"),
            ("dup".into(), None, "duplicate"),
            ("replay".into(), None, "replay"),
            ("full".into(), None, "full 7"),
            ("dead_full".into(), None, "dead_full 7"),
            (id(), Some((1, 1)), "queued 1-0"),
            (id(), Some((0, 1)), "not replicated 0/1"),
            ("dup".into(), Some((1, 2)), "not replicated 1/2"),
            // Refused: nothing for the replicas to have.
            ("full".into(), Some((0, 1)), "full 7"),
            ("dead_full".into(), Some((0, 1)), "dead_full 7"),
        ] {
            let got = match outcome(reply.clone(), 7, replicas) {
                Ok(Enqueued::Queued(id)) => format!("queued {id}"),
                Ok(Enqueued::Duplicate) => "duplicate".into(),
                Ok(Enqueued::Replay) => "replay".into(),
                Err(QueueError::Full { limit }) => format!("full {limit}"),
                Err(QueueError::DeadLettersFull { limit }) => format!("dead_full {limit}"),
                Err(QueueError::NotReplicated { acked, wanted }) => {
                    format!("not replicated {acked}/{wanted}")
                }
                Err(e) => format!("{e}"),
            };
            assert_eq!(got, expected, "{reply} {replicas:?}");
        }
    }

    #[tokio::test]
    async fn a_policy_has_one_task_until_it_retires() {
        let tasks = Tasks::default();
        let policy = ObjectRef::new("ns", "p");
        let mut started = vec![];
        for _ in 0..3 {
            tasks.send(&policy, part(1).0, |rx| started.push(rx));
        }
        assert_eq!(started.len(), 1, "one task for the policy");
        assert_eq!(started[0].len(), 3, "it has all three");
        assert!(!tasks.retire(&policy, &started[0]), "not while deliveries wait");
        while started[0].try_recv().is_ok() {}
        assert!(tasks.retire(&policy, &started[0]), "idle");
        tasks.send(&policy, part(1).0, |rx| started.push(rx));
        assert_eq!(started.len(), 2, "a new task after it retired");
        drop(started.remove(1));
        tasks.send(&policy, part(1).0, |rx| started.push(rx));
        assert_eq!(started.len(), 2, "a task that ended is replaced");
        assert_eq!(started[1].len(), 1);
        tasks.send(&ObjectRef::new("ns", "other"), part(1).0, |rx| started.push(rx));
        assert_eq!(started.len(), 3, "one task per policy");
    }
}
