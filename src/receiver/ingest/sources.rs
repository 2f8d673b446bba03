//! Who is sending, and whether they have failed too often. A source that
//! keeps sending deliveries for unknown hooks or with bad signatures beyond a
//! rate is answered 429 for a while, before its body is read or any HMAC is
//! computed (governor's keyed GCRA limiter counts the failures).
//!
//! The source is the connection's peer, unless that peer is a trusted proxy
//! (an Ingress controller): then it is the nearest address in
//! `X-Forwarded-For` that is not a trusted proxy. Without the trusted-proxy
//! setting behind an Ingress, every delivery seems to come from the Ingress,
//! and one misbehaving client would get GitHub refused too: the limit is off
//! unless configured.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::HeaderMap;
use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};
use ipnet::IpNet;

/// The client behind `peer`: `peer` itself unless it is one of `trusted`,
/// else the rightmost `X-Forwarded-For` entry that is not trusted (entries
/// further left were written by the client and prove nothing).
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded.into_iter().rev().find(|ip| !is_trusted(ip)).unwrap_or(peer)
}

/// The optional allowlist of sources: GitHub's hook ranges (`GET /meta`),
/// as the operator publishes them.
#[derive(Default)]
pub struct Allowlist {
    enforced: bool,
    /// `None` until the published ranges were read.
    ranges: std::sync::RwLock<Option<Vec<IpNet>>>,
}

/// Why the allowlist refused a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAllowed {
    /// The ranges were not read yet: nothing can be allowed.
    NotLoaded,
    /// The source is outside every range (or unknown).
    Outside,
}

impl Allowlist {
    /// Every source allowed (the default).
    pub fn off() -> Self {
        Self::default()
    }

    /// Only sources within ranges given with [`Allowlist::set`].
    pub fn enforced() -> Self {
        Self { enforced: true, ..Self::default() }
    }

    pub fn set(&self, ranges: Vec<IpNet>) {
        *self.ranges.write().unwrap() = Some(ranges);
    }

    /// Is `source` in GitHub's published ranges (read, enforced or not)?
    /// Such a source is GitHub, shared by every team: never limited.
    pub fn publishes(&self, source: IpAddr) -> bool {
        let ranges = self.ranges.read().unwrap();
        ranges.as_ref().is_some_and(|r| r.iter().any(|net| net.contains(&source)))
    }

    /// May `source` (`None`: not known, as in-process tests) deliver?
    pub fn check(&self, source: Option<IpAddr>) -> Result<(), NotAllowed> {
        if !self.enforced {
            return Ok(());
        }
        let ranges = self.ranges.read().unwrap();
        let ranges = ranges.as_ref().ok_or(NotAllowed::NotLoaded)?;
        match source {
            Some(ip) if ranges.iter().any(|net| net.contains(&ip)) => Ok(()),
            _ => Err(NotAllowed::Outside),
        }
    }
}

/// Failures per source, and the proxies whose `X-Forwarded-For` is believed.
pub struct FailureLimit {
    trusted: Vec<IpNet>,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Sources over their budget, and until when they are refused.
    refused: Mutex<HashMap<IpAddr, Instant>>,
}

impl FailureLimit {
    /// `per_minute` failures a minute per source, with bursts of `burst`; 0 turns it off.
    pub fn new(per_minute: u32, burst: u32, trusted: Vec<IpNet>) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            governor::RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
        });
        Self { trusted, limiter, refused: Mutex::new(HashMap::new()) }
    }

    /// The limit off (the default).
    pub fn off() -> Self {
        Self::new(0, 0, Vec::new())
    }

    /// The client a request on a connection from `peer` comes from.
    pub fn source(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_address(peer, headers, &self.trusted)
    }

    /// How long `source` is still refused, if it is.
    pub fn refuses(&self, source: IpAddr) -> Option<Duration> {
        self.limiter.as_ref()?;
        let mut refused = self.refused.lock().unwrap();
        let until = *refused.get(&source)?;
        let left = until.checked_duration_since(Instant::now());
        if left.is_none() {
            refused.remove(&source);
        }
        left
    }

    /// Counts one failure of `source`; past its budget it is refused until
    /// the limiter would let it fail again.
    pub fn failed(&self, source: IpAddr) {
        let Some(limiter) = &self.limiter else { return };
        if let Err(not_until) = limiter.check_key(&source) {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            let mut refused = self.refused.lock().unwrap();
            refused.insert(source, Instant::now() + wait.max(Duration::from_secs(1)));
            // NB: keeps both maps bounded by the sources seen recently.
            if refused.len() > 10_000 {
                let now = Instant::now();
                refused.retain(|_, until| *until > now);
                limiter.retain_recent();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_admits_only_published_ranges_once_read() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let off = Allowlist::off();
        assert_eq!(off.check(ip("203.0.113.9")), Ok(()));
        assert_eq!(off.check(None), Ok(()));
        let on = Allowlist::enforced();
        assert_eq!(on.check(ip("140.82.115.1")), Err(NotAllowed::NotLoaded));
        on.set(vec!["140.82.112.0/20".parse().unwrap(), "2a0a:a440::/29".parse().unwrap()]);
        let cases = [
            (ip("140.82.115.1"), Ok(())),
            (ip("2a0a:a441::1"), Ok(())),
            (ip("140.82.128.1"), Err(NotAllowed::Outside)),
            (ip("127.0.0.1"), Err(NotAllowed::Outside)),
            (None, Err(NotAllowed::Outside)),
        ];
        for (source, want) in cases {
            assert_eq!(on.check(source), want, "{source:?}");
        }
        on.set(Vec::new());
        assert_eq!(on.check(ip("140.82.115.1")), Err(NotAllowed::Outside), "an empty list allows nothing");
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_address() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let rows = [
            // (peer, X-Forwarded-For, client)
            ("203.0.113.7", vec!["198.51.100.1"], "203.0.113.7"), // not a proxy: its header is ignored
            ("10.1.2.3", vec!["198.51.100.1"], "198.51.100.1"),
            ("10.1.2.3", vec!["1.1.1.1, 198.51.100.1, 10.9.9.9"], "198.51.100.1"), // the client wrote 1.1.1.1
            ("10.1.2.3", vec!["1.1.1.1", "198.51.100.1"], "198.51.100.1"), // several headers, in order
            ("10.1.2.3", vec![], "10.1.2.3"),
            ("10.1.2.3", vec!["garbage"], "10.1.2.3"),
        ];
        for (peer, xff, client) in rows {
            assert_eq!(client_address(ip(peer), &headers(&xff), &trusted), ip(client), "{peer} {xff:?}");
        }
        assert_eq!(client_address(ip("10.1.2.3"), &headers(&["198.51.100.1"]), &[]), ip("10.1.2.3"));
    }

    #[test]
    fn a_source_over_its_failure_budget_is_refused_and_others_are_not() {
        let limit = FailureLimit::new(60, 3, Vec::new());
        let (bad, good) = ("198.51.100.1".parse().unwrap(), "198.51.100.2".parse().unwrap());
        for _ in 0..3 {
            limit.failed(bad);
            assert_eq!(limit.refuses(bad), None, "within the burst");
        }
        limit.failed(bad);
        let left = limit.refuses(bad).expect("refused past the burst");
        assert!(left <= Duration::from_secs(2), "until one more failure is allowed: {left:?}");
        assert_eq!(limit.refuses(good), None);
        let off = FailureLimit::off();
        for _ in 0..100 {
            off.failed(bad);
        }
        assert_eq!(off.refuses(bad), None, "0 turns it off");
    }
}
