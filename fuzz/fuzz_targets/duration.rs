//! Durations (`90s`, `1h30m`): never panics; what parses prints back as the
//! same text and parses to the same value.
#![no_main]
use hookwarden::api::Duration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = text.parse::<Duration>() {
        assert_eq!(d.to_string(), text);
        assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
    }
});
