//! Receiver replicas that die or are stopped: SIGKILL mid-dispatch hands the work to another,
//! SIGTERM finishes what is in flight and exits promptly.
//!
//! Real processes against the real apiserver and Redis (`tests/common/system.rs`),
//! driven the way a user drives them.

mod common;

use common::WAIT;
use common::eventually;
use common::system::System;
use hookwarden::keys::HmacKey;
use hookwarden::sample_agent::Mode;
use std::time::Duration;

#[tokio::test]
async fn a_replica_killed_mid_dispatch_hands_its_work_to_another() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("slow", 5)], &key).await;
    s.sink.set_mode("slow", Mode::Slow(1500));
    let (mut first, base) = s.receiver("r1").await;
    let guids = s.deliver_many(&base, &key, 8).await;
    eventually("dispatches in flight", WAIT, || async { (s.sink.max_in_flight("slow") > 0).then_some(()) })
        .await;
    first.kill(); // SIGKILL: no settling, no goodbye

    let (_second, _) = s.receiver("r2").await;
    s.until_received("slow", &guids).await;
    let got = s.ids("slow");
    // At-least-once: what was mid-call when r1 died may arrive twice (same
    // CloudEvent id), everything arrives.
    assert!(got.len() >= 8 && got.len() <= 12, "{got:?}");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_work_and_exits_promptly() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("slow", 10)], &key).await;
    s.sink.set_mode("slow", Mode::Slow(2000));
    let (mut receiver, base) = s.receiver("r1").await;
    let guids = s.deliver_many(&base, &key, 2).await;
    eventually("dispatches in flight", WAIT, || async { (s.sink.max_in_flight("slow") == 2).then_some(()) })
        .await;
    // NB: terminate() blocks until the process exits; keep it off the
    // runtime that serves the sample agent the receiver is still calling.
    let (took, receiver) =
        tokio::task::spawn_blocking(move || (receiver.terminate(), receiver)).await.unwrap();
    assert!(took < Duration::from_secs(30), "shutdown took {took:?}");
    // The dispatches in flight were finished, not abandoned.
    s.until_received("slow", &guids).await;
    assert!(receiver.log().contains("receiver stopped"), "{}", receiver.log());
}
