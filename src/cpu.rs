//! Work on large inputs off the runtime's threads. A receiver runs its
//! requests and dispatch on one thread by default (`--worker-threads`): a
//! 25 MB delivery's HMAC, JSON check and compression, and on dispatch its
//! unpacking and its agents' filters, take tens of milliseconds, and on that
//! thread every other request would wait for them. From [`APART_BYTES`] on,
//! [`heavy`] runs the work where it blocks nothing else; below, where it is
//! (a hand-off would cost more than the work).

/// Inputs from this size are worked on apart: about 0.3 ms of hashing and
/// parsing, against tens of µs for the hand-off.
pub const APART_BYTES: usize = 256 * 1024;

/// Whether work on `bytes` of input runs apart.
pub fn apart(bytes: usize) -> bool {
    bytes >= APART_BYTES
}

/// Runs `work` on `bytes` of input: apart (the runtime's other tasks move
/// to another thread meanwhile, `block_in_place`) when [`apart`], here
/// otherwise, and always here outside a multi-threaded runtime (where tasks
/// cannot move).
pub fn heavy<T>(bytes: usize, work: impl FnOnce() -> T) -> T {
    let movable = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if apart(bytes) && movable { tokio::task::block_in_place(work) } else { work() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_inputs_are_worked_on_apart() {
        for (bytes, want) in
            [(0, false), (21 * 1024, false), (APART_BYTES - 1, false), (APART_BYTES, true), (25 << 20, true)]
        {
            assert_eq!(apart(bytes), want, "{bytes}");
        }
    }

    #[test]
    fn outside_a_multi_threaded_runtime_the_work_runs_here() {
        assert_eq!(heavy(APART_BYTES, || 7), 7, "no runtime");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(async { heavy(APART_BYTES, || 8) }), 8, "a current-thread runtime");
    }
}
