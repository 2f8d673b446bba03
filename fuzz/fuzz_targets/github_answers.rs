//! GitHub's answers, as any server may send them (a WebhookConfig's
//! `apiUrl` is a team's to choose): a hook, a list of hooks, a deliveries
//! page, a delivery with its payload, an installation token, `/meta`, and a
//! `Link` header with its cursor. The first byte chooses the parser; none
//! may panic, whatever the rest is.
#![no_main]
use hookwarden::github::{self, Delivery, Hook, meta};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let json = || serde_json::from_slice::<serde_json::Value>(rest).ok();
    match which % 7 {
        0 => {
            if let Some(v) = json() {
                let _ = github::parse::<Hook>(v).map(|h| h.last_delivery_failed());
            }
        }
        1 => {
            if let Some(v) = json() {
                let _ = github::parse::<Vec<Hook>>(v);
            }
        }
        2 => {
            if let Some(v) = json() {
                if let Ok(page) = github::parse::<Vec<Delivery>>(v) {
                    for d in page {
                        let _ = (d.succeeded(), d.delivered_unix());
                    }
                }
            }
        }
        3 => {
            if let Some(v) = json() {
                let _ = github::parse_delivery(v);
            }
        }
        4 => {
            if let Some(v) = json() {
                let _ = github::parse_installation_token(&v, 1_700_000_000);
            }
        }
        5 => {
            let _ = meta::parse_meta(rest);
        }
        _ => {
            if let Ok(link) = std::str::from_utf8(rest) {
                let _ = github::next_of(link).as_deref().map(github::cursor_of);
            }
        }
    }
});
