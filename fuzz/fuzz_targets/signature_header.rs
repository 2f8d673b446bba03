//! `X-Hub-Signature-256` against a body: the first line of the input is the
//! header, the rest the body. Never panics; accepts only `sha256=` and the
//! right MAC in hex (either case: the same bytes).
#![no_main]
use hookwarden::signature;
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzzing-key";

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let accepted = signature::verify(Some(header), body, &[KEY]).is_ok();
    let expected = signature::sign(KEY, body);
    let right = header.len() == expected.len()
        && header.starts_with(b"sha256=")
        && header[7..].eq_ignore_ascii_case(&expected.as_bytes()[7..]);
    assert_eq!(accepted, right);
});
