//! What the queue remembers to refuse duplicates (a GUID seen through a
//! hook) and replays (a signed body queued before under another GUID) for
//! their window: about 12 bytes per delivery and kind, not a key each.
//!
//! Layout: each remembered value becomes a 14-byte digest (SHA-256 of its
//! kind, the hook and the value); its first 12 bits pick one of [`SHARDS`]
//! shards, the next [`RECORD_LEN`] bytes are its record. Time is cut into
//! buckets of a third of the window; a record goes into the shard of the
//! current bucket, a Redis string that records are appended to
//! (`{prefix}:{ns/policy}:{kind}:{bucket}:{shard}`), and a shard string
//! expires as a whole once no lookup can need it any more. A lookup reads
//! the record's shard in the current bucket and the three before it.
//!
//! Why strings: a Redis key costs about 100 bytes before its value, a hash
//! field past a small hash's 128 entries about 60; appended records cost
//! their own 12 bytes and the string's spare capacity. 4,096 shards keep a
//! shard string small (a few KB at 100 deliveries a second) so that the
//! scan a lookup does stays in microseconds, and the key count per policy
//! bounded (2 kinds × 4 buckets × 4,096).
//!
//! The guarantees: a record is found by every lookup until at least its
//! window has passed (a bucket is looked at for three more buckets, each a
//! third of the window: [`buckets`] is tested for every offset); kept at most
//! a third longer. A distinct value is refused only if its 108 bits collide
//! with a remembered one's: about 10⁻¹⁸ for 26 million deliveries.

use sha2::Digest;

/// Bytes of one record in a shard string.
pub const RECORD_LEN: usize = 12;
/// Shards per bucket and kind (the digest's first 12 bits).
pub const SHARDS: u16 = 4096;
/// Buckets a lookup reads: the current one and three before it.
pub const LOOKED_AT: usize = 4;
/// Added to a shard's expiry, for receivers whose clocks differ a little.
const CLOCK_SLACK_SECS: u64 = 60;

/// The two things remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Delivery GUIDs seen through a hook.
    Guid,
    /// MACs of signed bodies queued through a hook.
    Body,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Guid => "guids",
            Kind::Body => "bodies",
        }
    }
}

/// Where one value is remembered: its shard and its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub shard: u16,
    pub bytes: [u8; RECORD_LEN],
}

/// The record of `value` of `kind`, seen through `hook` (`ns/name`).
pub fn record(kind: Kind, hook: &str, value: &[u8]) -> Record {
    let mut hash = sha2::Sha256::new();
    hash.update(kind.name().as_bytes());
    hash.update([0]);
    hash.update(hook.as_bytes());
    hash.update([0]);
    hash.update(value);
    let digest = hash.finalize();
    let shard = u16::from_be_bytes([digest[0], digest[1]]) >> 4;
    let mut bytes = [0; RECORD_LEN];
    bytes.copy_from_slice(&digest[2..2 + RECORD_LEN]);
    Record { shard, bytes }
}

/// How long one bucket lasts for `window_secs`: a third of it, at least 1 s.
pub fn bucket_secs(window_secs: u64) -> u64 {
    window_secs.div_ceil(3).max(1)
}

/// The buckets a lookup at `now` reads, the current one (where a record is
/// written) first.
pub fn buckets(now_secs: u64, window_secs: u64) -> [u64; LOOKED_AT] {
    let current = now_secs / bucket_secs(window_secs);
    std::array::from_fn(|i| current.saturating_sub(i as u64))
}

/// When a shard string of `bucket` may go (Unix seconds): once the last
/// lookup that reads it is over.
pub fn expires_at(bucket: u64, window_secs: u64) -> u64 {
    (bucket + LOOKED_AT as u64) * bucket_secs(window_secs) + CLOCK_SLACK_SECS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_found_for_its_whole_window_and_gone_soon_after() {
        for window in [1, 2, 3, 7, 60, 3600, 3 * 24 * 3600] {
            let bucket = bucket_secs(window);
            // Written at every offset within a bucket.
            for written in (10 * bucket..11 * bucket).step_by((bucket / 7).max(1) as usize) {
                let at = buckets(written, window)[0];
                for later in [written, written + window / 2, written + window - 1] {
                    assert!(
                        buckets(later, window).contains(&at),
                        "window {window}: written {written}, looked {later}"
                    );
                }
                // Its shard outlives every lookup that reads its bucket.
                let last_reader = (at + LOOKED_AT as u64) * bucket - 1;
                assert!(buckets(last_reader, window).contains(&at));
                assert!(!buckets(last_reader + 1, window).contains(&at));
                assert!(expires_at(at, window) > last_reader);
                // ...and is kept at most four buckets (a third longer than
                // the window, when three divides it) and the slack.
                assert!(expires_at(at, window) - written <= 4 * bucket + CLOCK_SLACK_SECS);
            }
        }
    }

    #[test]
    fn records_differ_by_kind_hook_and_value_and_spread_over_the_shards() {
        let a = record(Kind::Guid, "ns/hook", b"guid-1");
        assert_eq!(a, record(Kind::Guid, "ns/hook", b"guid-1"), "deterministic");
        assert_ne!(a, record(Kind::Body, "ns/hook", b"guid-1"));
        assert_ne!(a, record(Kind::Guid, "ns/other", b"guid-1"));
        assert_ne!(a, record(Kind::Guid, "ns/hook", b"guid-2"));
        // NB: the separator keeps ("ns/a", "b…") apart from ("ns/ab", "…").
        assert_ne!(record(Kind::Guid, "ns/a", b"bc"), record(Kind::Guid, "ns/ab", b"c"));
        let shards: std::collections::HashSet<u16> =
            (0..20_000).map(|i| record(Kind::Guid, "ns/h", format!("{i}").as_bytes()).shard).collect();
        assert!(shards.len() > 4000 && shards.iter().all(|s| *s < SHARDS), "{}", shards.len());
    }
}
