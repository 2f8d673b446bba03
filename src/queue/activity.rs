//! The activity log: what happened to each delivery, newest first, for the
//! admin API.
//!
//! One Redis stream per policy (`p:{ns/policy}:activity`, in the policy's
//! hash slot, so the Lua scripts that queue and settle a delivery write it in
//! the same call). The scripts compose each entry from the delivery's own
//! fields — `status`, `guid`, `event`, `hook`, and when set `repository`,
//! `agent`, `detail` — so nothing is rendered ahead for outcomes that do not
//! happen. The time is the stream id's; the policy is the stream's.

use std::collections::HashMap;

use crate::ObjectRef;

/// Entries kept in each policy's log (approximately: trimmed lazily).
pub const ACTIVITY_LEN: u64 = 10_000;

/// One line of the activity log that the admin API lists: a delivery
/// accepted, recognised as a duplicate, rejected, or dispatched to an agent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    pub at_ms: u64,
    pub guid: String,
    pub event: String,
    pub hook: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// `queued`, `duplicate`, `rejected`, `delivered`, `retry`, `dead_letter`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Why, for `rejected`, `retry` and `dead_letter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Activity {
    /// An entry of `policy`'s log, as the scripts write it; `None` when it
    /// is not one.
    pub fn from_entry(policy: &ObjectRef, id: &str, mut fields: HashMap<String, Vec<u8>>) -> Option<Self> {
        let mut text = |name: &str| fields.remove(name).and_then(|v| String::from_utf8(v).ok());
        Some(Self {
            at_ms: id.split_once('-')?.0.parse().ok()?,
            status: text("status")?,
            guid: text("guid")?,
            event: text("event")?,
            hook: text("hook")?,
            policy: Some(policy.to_string()),
            repository: text("repository"),
            agent: text("agent"),
            detail: text("detail"),
        })
    }
}

/// Filters for the activity log; `None` matches anything.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct ActivityFilter {
    pub status: Option<String>,
    pub event: Option<String>,
    pub repository: Option<String>,
    pub hook: Option<String>,
}

impl ActivityFilter {
    pub fn matches(&self, a: &Activity) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have.is_some_and(|h| h.eq_ignore_ascii_case(w)))
        };
        eq(&self.status, Some(&a.status))
            && eq(&self.event, Some(&a.event))
            && eq(&self.repository, a.repository.as_deref())
            && eq(&self.hook, Some(&a.hook))
    }
}

/// The `limit` newest of several newest-first lists.
pub fn newest(lists: impl IntoIterator<Item = Vec<Activity>>, limit: usize) -> Vec<Activity> {
    let mut all: Vec<Activity> = lists.into_iter().flatten().collect();
    all.sort_by_key(|a| std::cmp::Reverse(a.at_ms));
    all.truncate(limit);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, Vec<u8>> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn an_entry_reads_as_the_scripts_write_it() {
        let policy = ObjectRef::new("team", "agents");
        let entry = fields(&[
            ("status", "retry"),
            ("guid", "g-1"),
            ("event", "push"),
            ("hook", "team/repo"),
            ("repository", "octo/hello"),
            ("agent", "reviewer"),
            ("detail", "HTTP 503"),
        ]);
        let a = Activity::from_entry(&policy, "1700000000123-4", entry).unwrap();
        assert_eq!(
            a,
            Activity {
                at_ms: 1_700_000_000_123,
                guid: "g-1".into(),
                event: "push".into(),
                hook: "team/repo".into(),
                policy: Some("team/agents".into()),
                repository: Some("octo/hello".into()),
                status: "retry".into(),
                agent: Some("reviewer".into()),
                detail: Some("HTTP 503".into()),
            }
        );
        let minimal = fields(&[("status", "queued"), ("guid", "g"), ("event", "ping"), ("hook", "a/b")]);
        let a = Activity::from_entry(&policy, "5-0", minimal).unwrap();
        assert_eq!((a.repository, a.agent, a.detail), (None, None, None));
        for (what, id, entry) in [
            ("no status", "5-0", fields(&[("guid", "g"), ("event", "ping"), ("hook", "a/b")])),
            (
                "not a stream id",
                "x",
                fields(&[("status", "queued"), ("guid", "g"), ("event", "e"), ("hook", "h")]),
            ),
        ] {
            assert_eq!(Activity::from_entry(&policy, id, entry), None, "{what}");
        }
    }

    #[test]
    fn the_newest_of_several_logs() {
        let at = |at_ms| Activity {
            at_ms,
            guid: String::new(),
            event: String::new(),
            hook: String::new(),
            policy: None,
            repository: None,
            status: "queued".into(),
            agent: None,
            detail: None,
        };
        let got: Vec<u64> = newest([vec![at(9), at(4), at(1)], vec![at(8), at(7)], vec![]], 4)
            .iter()
            .map(|a| a.at_ms)
            .collect();
        assert_eq!(got, vec![9, 8, 7, 4]);
    }
}
