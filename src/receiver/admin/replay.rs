//! `hookwarden admin replay --since`: a window of a policy's history
//! ([`crate::queue::history`]) sent again, to one agent or to every agent
//! the deliveries go to under today's filters.
//!
//! Which deliveries and agents is the pure [`pick`]: received in the window
//! (GitHub's receipt, not when it was routed), of the event asked for,
//! passing the filter asked for, and for each agent whose `events`,
//! `repositories` and filters take it now — so a new agent is backfilled
//! with exactly what it would have got. [`replay`] pages through the
//! history (a bounded number at a time) and queues the picks in bounded
//! batches, each refused whole when it would pass the queue limit.

use serde::{Deserialize, Serialize};

use super::filter_test_row;
use crate::receiver::{dispatch::targets, registry::PolicySettings};
use crate::{
    ObjectRef,
    filter::Filter,
    queue::{Delivery, Queue, QueueError},
};

/// What to replay (the admin API's request body).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayWindow {
    /// Deliveries received at or after this time (Unix ms)...
    pub since_ms: u64,
    /// ...and before this one; none: up to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// Only to this agent; none: every agent the delivery goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Only deliveries of this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Only deliveries this CEL expression is true for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Count, replay nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a replay did (the admin API's answer).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Deliveries in the window that matched.
    pub deliveries: u64,
    /// Sends they make: one per delivery and agent.
    pub sends: u64,
    /// Sends queued (0 for a dry run).
    pub queued: u64,
    /// When the oldest delivery still kept was received (Unix ms): a window
    /// that starts before it is partly gone. None: nothing is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_since_ms: Option<u64>,
}

/// Why a replay was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("policy {0} keeps no history: set spec.history (for example 24h) to replay windows")]
    NoHistory(ObjectRef),
    #[error("no agent {0} in the policy")]
    UnknownAgent(String),
    #[error("the filter does not compile {0}")]
    BadFilter(String),
    #[error("more than {MAX_SENDS} sends: narrow the window, or name an agent or an event")]
    TooMany,
    #[error("the queue limit was reached after {queued} of {sends} sends: let it drain and replay the rest")]
    Full { queued: u64, sends: u64 },
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The most sends one replay makes.
pub const MAX_SENDS: usize = 100_000;
/// Deliveries read from the history, and sends queued, per Redis call.
const PAGE: usize = 500;

/// The agents `d` is sent to again under `window` (`filter` is its filter,
/// compiled); none when it is not in the window.
pub fn pick(
    settings: &PolicySettings,
    window: &ReplayWindow,
    filter: Option<&Filter>,
    d: &Delivery,
) -> Vec<String> {
    let in_window =
        d.received_ms >= window.since_ms && window.until_ms.is_none_or(|until| d.received_ms < until);
    let event = window.event.as_ref().is_none_or(|e| *e == d.event);
    let passes = filter.is_none_or(|f| filter_test_row(f, None, settings, d).result == "match");
    if !(in_window && event && passes) {
        return Vec::new();
    }
    let first = Delivery { agent: None, ..d.clone() };
    targets(settings, &first)
        .go
        .into_iter()
        .filter_map(Result::ok)
        .map(|a| a.name.clone())
        .filter(|name| window.agent.as_ref().is_none_or(|a| a == name))
        .collect()
}

/// Replays `window` of `policy`'s history under `settings`.
pub async fn replay(
    queue: &Queue,
    policy: &ObjectRef,
    settings: &PolicySettings,
    window: &ReplayWindow,
) -> Result<ReplayReport, ReplayError> {
    if settings.history_ms == 0 {
        return Err(ReplayError::NoHistory(policy.clone()));
    }
    if let Some(agent) = &window.agent
        && !settings.agents.iter().any(|a| &a.name == agent)
    {
        return Err(ReplayError::UnknownAgent(agent.clone()));
    }
    let filter = match &window.filter {
        None => None,
        Some(source) => {
            Some(crate::filter::compile(source).map_err(|e| ReplayError::BadFilter(e.to_string()))?)
        }
    };
    let oldest = queue.history(policy, 0, None, 1).await?;
    let mut report =
        ReplayReport { kept_since_ms: oldest.first().map(|(_, d)| d.received_ms), ..ReplayReport::default() };
    let mut picks: Vec<(String, String)> = Vec::new();
    let mut after: Option<String> = None;
    // NB: routed (the history's order) may be later than received: read on
    // to the end rather than stop at `until`.
    loop {
        let page = queue.history(policy, window.since_ms, after.as_deref(), PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (id, d) in &page {
            let agents = pick(settings, window, filter.as_ref(), d);
            report.deliveries += u64::from(!agents.is_empty());
            picks.extend(agents.into_iter().map(|agent| (id.clone(), agent)));
        }
        if picks.len() > MAX_SENDS {
            return Err(ReplayError::TooMany);
        }
    }
    report.sends = picks.len() as u64;
    if window.dry_run {
        return Ok(report);
    }
    for batch in picks.chunks(PAGE) {
        match queue.replay_history(policy, batch, settings.queue_limit).await {
            Ok(n) => report.queued += n,
            Err(QueueError::Full { .. }) => {
                return Err(ReplayError::Full { queued: report.queued, sends: report.sends });
            }
            Err(other) => return Err(other.into()),
        }
    }
    Ok(report)
}

/// A time on the command line: an RFC 3339 time (`2026-12-05T10:00:00Z`)
/// or a duration before `now_ms` (`90m`, `1h30m`), as Unix ms.
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, String> {
    if let Ok(ago) = text.parse::<crate::api::Duration>() {
        return Ok(now_ms.saturating_sub(ago.get().as_millis() as u64));
    }
    let at: k8s_openapi::jiff::Timestamp = text.parse().map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time (2026-12-05T10:00:00Z) nor a duration ago (90m)")
    })?;
    u64::try_from(at.as_millisecond()).map_err(|_| format!("{text:?} is before 1970"))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::api::{Agent, AgentPolicy};

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        let now = 1_764_928_800_000; // 2025-12-05T10:00:00Z
        let rows = [
            ("1h", Ok(now - 3_600_000)),
            ("90m", Ok(now - 5_400_000)),
            ("2025-12-05T09:00:00Z", Ok(now - 3_600_000)),
            ("2025-12-05T10:00:00+01:00", Ok(now - 3_600_000)),
            ("yesterday", Err(())),
            ("1969-12-31T00:00:00Z", Err(())),
        ];
        for (text, want) in rows {
            assert_eq!(parse_time(text, now).map_err(|_| ()), want, "{text}");
        }
    }

    #[test]
    fn a_window_picks_its_deliveries_and_the_agents_they_go_to_today() {
        let agent = |name: &str, events: &[&str]| -> Agent {
            serde_json::from_value(serde_json::json!({"name": name, "url": "http://a/", "events": events}))
                .unwrap()
        };
        let mut settings = PolicySettings::from_policy(&AgentPolicy::new(
            "p",
            serde_json::from_value(serde_json::json!({})).unwrap(),
        ));
        settings.agents = vec![agent("reviewer", &["pull_request"]), agent("audit", &[]), agent("new", &[])];
        settings.filters.agents.insert("new".into(), crate::filter::compile("action == 'opened'"));
        let hook = ObjectRef::new("team", "repo");
        let at = |ms: u64, event: &str, action: &str| {
            let body = format!(r#"{{"action":"{action}"}}"#);
            Delivery { received_ms: ms, ..Delivery::parse("g", event, &hook, Bytes::from(body)).unwrap() }
        };
        let window = |agent: Option<&str>| ReplayWindow {
            since_ms: 1_000,
            until_ms: Some(2_000),
            agent: agent.map(str::to_owned),
            ..ReplayWindow::default()
        };
        let only_issues = ReplayWindow { event: Some("issues".into()), ..window(None) };
        let closed = crate::filter::compile("action == 'closed'").unwrap();
        // (what, window, its filter, delivery) -> the agents it goes to again
        type Row<'a> = (&'a str, ReplayWindow, Option<&'a Filter>, Delivery, &'a [&'a str]);
        let rows: [Row; 8] = [
            (
                "in the window: every agent it goes to today",
                window(None),
                None,
                at(1_000, "pull_request", "opened"),
                &["reviewer", "audit", "new"],
            ),
            (
                "filters as today: new wants opened ones",
                window(None),
                None,
                at(1_500, "pull_request", "closed"),
                &["reviewer", "audit"],
            ),
            ("before the window", window(None), None, at(999, "pull_request", "opened"), &[]),
            ("at its end: not in it", window(None), None, at(2_000, "pull_request", "opened"), &[]),
            ("one agent: only it", window(Some("new")), None, at(1_000, "issues", "opened"), &["new"]),
            (
                "one agent that does not take it: nobody",
                window(Some("reviewer")),
                None,
                at(1_000, "issues", "opened"),
                &[],
            ),
            ("another event than asked", only_issues, None, at(1_000, "pull_request", "opened"), &[]),
            (
                "the replay's own filter",
                window(None),
                Some(&closed),
                at(1_000, "pull_request", "opened"),
                &[],
            ),
        ];
        for (what, window, filter, d, want) in rows {
            assert_eq!(pick(&settings, &window, filter, &d), want, "{what}");
        }
    }
}
