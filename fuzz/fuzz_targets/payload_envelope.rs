//! The payload envelope (`Delivery::parse`: JSON object, `action`,
//! `repository.full_name`): never panics; an accepted payload survives the
//! queue's encoding unchanged.
#![no_main]
use bytes::Bytes;
use hookwarden::{ObjectRef, queue::Delivery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hook = ObjectRef::new("ns", "hook");
    if let Ok(d) = Delivery::parse("guid", "push", &hook, Bytes::copy_from_slice(data)) {
        assert_eq!(&d.payload[..], data);
    }
});
