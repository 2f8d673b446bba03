//! GitHub's form encoding (`payload=<urlencoded JSON>`): never panics, and
//! what it decodes re-encodes to an equivalent form.
#![no_main]
use hookwarden::receiver::ingest::http::form_payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = form_payload(data) {
        let text = String::from_utf8_lossy(&payload).into_owned();
        let encoded: String = form_urlencoded::Serializer::new(String::new()).append_pair("payload", &text).finish();
        assert_eq!(form_payload(encoded.as_bytes()).unwrap(), text.as_bytes());
    }
});
