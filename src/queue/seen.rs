//! What the queue remembers to refuse duplicates (a GUID seen through a
//! hook) and replays (a signed body queued before under another GUID) for
//! their window: 8 bytes per delivery and kind in Redis' most compact set,
//! looked up in constant time however full the window is.
//!
//! Layout: each remembered value gets a SHA-256 digest (of its kind, the
//! hook and the value); its first 15 bits pick one of [`SHARDS`] shards, the
//! next 8 bytes are its member, a signed 64-bit integer. Time is cut into
//! buckets of a third of the window; a member goes into its shard of the
//! current bucket, a Redis set (`{prefix}:{ns/policy}:{kind}set:{bucket}:{shard}`),
//! which expires as a whole once no lookup can need it any more. A lookup
//! asks the member's shard in the current bucket and the three before it
//! (`SISMEMBER`).
//!
//! Why sets of integers: Redis keeps a set whose members are all integers,
//! up to `set-max-intset-entries` (512 by default), as an intset: a sorted
//! array of 8-byte integers, searched by bisection. A member costs its 8
//! bytes and a shard's key about 80 more, shared by its members. The layout
//! before this one appended 12-byte records to strings, which a lookup had
//! to copy into the script and scan: at a full 3-day window of 100
//! deliveries a second, 25 KB per string and 377 µs of Redis CPU per
//! delivery, against 45 µs with sets (`bench/enqueue`). 32,768 shards keep a
//! shard within the intset's 512 members up to about 190 deliveries a
//! second sustained per policy at the default window; beyond it a set
//! becomes a hash table (about 40 bytes a member more), still found in
//! constant time.
//!
//! The guarantees: a member is found by every lookup until at least its
//! window has passed (a bucket is looked at for three more buckets, each a
//! third of the window: [`buckets`] is tested for every offset); kept at most
//! a third longer. A distinct value is refused only if its 79 bits (shard
//! and member) collide with a remembered one's: about 10⁻⁹ over the 26
//! million deliveries of a window at 100 a second.
//!
//! The layout before (strings of 12-byte records, [`Legacy`]) is still read
//! by lookups, never written, so that a receiver upgraded within a window
//! still refuses what an older one accepted; its strings expire by
//! themselves within a window and a third. It is read only as long as an
//! older receiver's record can still be within the window ([`reads_legacy`]):
//! Redis remembers when the first process of this layout started
//! (`{prefix}:seen:sets-since`); a day for the older ones still running
//! through a rolling upgrade, and the window, after that the eight lookups
//! of absent strings are no longer made.

use sha2::Digest;

/// Shards per bucket and kind (the digest's first 15 bits).
pub const SHARDS: u16 = 32_768;
/// Buckets a lookup reads: the current one and three before it.
pub const LOOKED_AT: usize = 4;
/// Added to a shard's expiry, for receivers whose clocks differ a little.
const CLOCK_SLACK_SECS: u64 = 60;
/// How long older receivers (and operators) may still write the layout
/// before once the first process of this layout has started: a rolling
/// upgrade's old pods, with room to spare.
pub const UPGRADE_GRACE_SECS: u64 = 24 * 3600;
/// Bytes of one record of the layout before (strings of records).
pub const LEGACY_RECORD_LEN: usize = 12;

/// The two things remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Delivery GUIDs seen through a hook.
    Guid,
    /// MACs of signed bodies queued through a hook.
    Body,
}

impl Kind {
    /// Part of the digest, and the key of the layout before.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Guid => "guids",
            Kind::Body => "bodies",
        }
    }

    /// The key segment of its sets.
    pub fn set_name(self) -> &'static str {
        match self {
            Kind::Guid => "guidset",
            Kind::Body => "bodyset",
        }
    }
}

/// Where one value is remembered: its shard and member, and where the
/// layout before kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub shard: u16,
    pub member: i64,
    pub legacy: Legacy,
}

/// A record of the layout before: its string shard (of 4,096) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Legacy {
    pub shard: u16,
    pub bytes: [u8; LEGACY_RECORD_LEN],
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
    let first = u16::from_be_bytes([digest[0], digest[1]]);
    let mut member = [0; 8];
    member.copy_from_slice(&digest[2..10]);
    let mut bytes = [0; LEGACY_RECORD_LEN];
    bytes.copy_from_slice(&digest[2..2 + LEGACY_RECORD_LEN]);
    Record {
        shard: first >> 1,
        member: i64::from_be_bytes(member),
        legacy: Legacy { shard: first >> 4, bytes },
    }
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

/// When a shard of `bucket` may go (Unix seconds): once the last lookup
/// that reads it is over.
pub fn expires_at(bucket: u64, window_secs: u64) -> u64 {
    (bucket + LOOKED_AT as u64) * bucket_secs(window_secs) + CLOCK_SLACK_SECS
}

/// Whether a lookup at `now` still reads the layout before: while a record
/// an older process wrote can be younger than `window_secs`. `sets_since`:
/// when the first process of this layout started on this Redis (`None`:
/// not known yet, so read them: the safe side).
pub fn reads_legacy(sets_since: Option<u64>, now_secs: u64, window_secs: u64) -> bool {
    sets_since.is_none_or(|since| now_secs < since + UPGRADE_GRACE_SECS + window_secs + CLOCK_SLACK_SECS)
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
    fn the_layout_before_is_read_while_an_older_record_can_be_in_the_window() {
        let (since, window) = (1_000_000, 3 * 24 * 3600);
        // The last record an older process may write, and the last lookup
        // that may need it.
        let last_written = since + UPGRADE_GRACE_SECS;
        let last_needed = last_written + window - 1;
        for (what, sets_since, now, reads) in [
            ("not known", None, since + 100 * window, true),
            ("at the start", Some(since), since, true),
            ("during the upgrade", Some(since), last_written, true),
            ("its last record's last lookup", Some(since), last_needed, true),
            ("within the clocks' slack", Some(since), last_needed + CLOCK_SLACK_SECS, true),
            ("after", Some(since), last_needed + CLOCK_SLACK_SECS + 1, false),
            ("long after", Some(since), since + 10 * window, false),
            ("a short window", Some(since), last_written + 61 + CLOCK_SLACK_SECS, false),
        ] {
            let window = if what == "a short window" { 60 } else { window };
            assert_eq!(reads_legacy(sets_since, now, window), reads, "{what}");
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
        let records: Vec<Record> =
            (0..100_000).map(|i| record(Kind::Guid, "ns/h", format!("{i}").as_bytes())).collect();
        let shards: std::collections::HashSet<u16> = records.iter().map(|r| r.shard).collect();
        assert!(shards.len() > 30_000 && shards.iter().all(|s| *s < SHARDS), "{}", shards.len());
        let members: std::collections::HashSet<i64> = records.iter().map(|r| r.member).collect();
        assert_eq!(members.len(), records.len(), "members differ");
        assert!(
            records.iter().any(|r| r.member < 0) && records.iter().any(|r| r.member > 0),
            "the whole i64 range"
        );
    }

    #[test]
    fn the_record_of_the_layout_before_is_what_it_wrote() {
        // The layout before: 12 bits of shard, the next 12 bytes.
        let r = record(Kind::Body, "team/hook", &[7; 32]);
        let mut hash = sha2::Sha256::new();
        hash.update(b"bodies\0team/hook\0");
        hash.update([7; 32]);
        let digest = hash.finalize();
        assert_eq!(r.legacy.shard, u16::from_be_bytes([digest[0], digest[1]]) >> 4);
        assert_eq!(r.legacy.bytes[..], digest[2..14]);
        assert_eq!(r.shard, u16::from_be_bytes([digest[0], digest[1]]) >> 1);
        assert_eq!(r.member.to_be_bytes()[..], digest[2..10]);
    }
}
