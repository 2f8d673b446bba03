//! `/admin/deliveries`' query string: never panics, the limit stays within
//! bounds, and the filter matches an activity that has the values it asks for.
#![no_main]
use hookwarden::{queue::Activity, receiver::admin::deliveries_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok((filter, limit)) = deliveries_query(text) {
        assert!(limit <= 1000);
        let or = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_owned());
        let activity = Activity {
            at_ms: 0,
            guid: "g".into(),
            event: or(&filter.event, "push"),
            hook: or(&filter.hook, "ns/hook"),
            policy: None,
            repository: filter.repository.clone(),
            status: or(&filter.status, "queued"),
            agent: None,
            detail: None,
        };
        assert!(filter.matches(&activity));
    }
});
