//! What `hookwarden admin` prints: a table for people by default, like
//! kubectl (upper-case headers, aligned columns, times relative to now, a
//! sentence for an action or an empty list), or the API's JSON or YAML for
//! machines (`-o json|yaml`). Pure: the answer and `now` in, text out.

use serde_json::Value;

use super::admin_client::Call;
use crate::{
    queue::Activity,
    receiver::admin::{DeadLetterView, FilterTestRow, PolicyView, Purged, replay::ReplayReport},
};

/// The answer as its wire type; an answer of another shape (another
/// version of the receiver) shows as empty rather than as wrong values.
fn read<T: serde::de::DeserializeOwned + Default>(answer: &Value) -> T {
    serde_json::from_value(answer.clone()).unwrap_or_default()
}

/// The form of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// `answer` (what the admin API returned for `call`) as text ending in a newline.
pub fn render(call: &Call, answer: &Value, output: Output, now_ms: u64) -> String {
    match output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(answer).unwrap_or_default()),
        Output::Yaml => serde_yaml::to_string(answer).unwrap_or_default(),
        Output::Table => table_of(call, answer, now_ms),
    }
}

/// One event of `hookwarden admin tail` for machines: with `-o json` a JSON
/// object on one line (for `jq`), with `-o yaml` a YAML document, each
/// `{event, data}` with the event's data as the JSON it is (a string when
/// it is not JSON).
pub fn tail_record(kind: &str, data: &str, output: Output) -> String {
    let data = serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned()));
    let record = serde_json::json!({ "event": kind, "data": data });
    match output {
        Output::Yaml => format!("---\n{}", serde_yaml::to_string(&record).unwrap_or_default()),
        Output::Json | Output::Table => format!("{record}\n"),
    }
}

/// One line of `hookwarden admin tail` for an event of the stream.
pub fn tail_line(kind: &str, data: &str, now_ms: u64) -> String {
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let text = |v: &Value| {
        v.as_str().map_or_else(|| if v.is_null() { "-".to_owned() } else { v.to_string() }, str::to_owned)
    };
    match kind {
        "snapshot" => table_of(&Call::Policies, &v, now_ms),
        "delivery" => format!(
            "{:<11} {:<14} {:<24} {:<20} {:<14} {} {}\n",
            text(&v["status"]),
            text(&v["event"]),
            text(&v["repository"]),
            text(&v["hook"]),
            text(&v["agent"]),
            text(&v["guid"]),
            text(&v["detail"]),
        ),
        "policy" => format!(
            "policy {}: enabled={} concurrency={}\n",
            text(&v["policy"]),
            v["enabled"],
            v["concurrency"]
        ),
        "circuit" => {
            format!("circuit {} {}: {}\n", text(&v["policy"]), text(&v["agent"]), text(&v["circuit"]))
        }
        other => format!("{other}: {data}\n"),
    }
}

/// How long ago `then_ms` was, as kubectl shows ages: `42s`, `5m`, `3h`, `2d`.
pub fn ago(then_ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn table_of(call: &Call, answer: &Value, now_ms: u64) -> String {
    match call {
        Call::Policies => {
            let policies: Vec<PolicyView> = read(answer);
            let dash = |s: &str| if s.is_empty() { "-".to_owned() } else { s.to_owned() };
            table(
                "No policies found.",
                &["POLICY", "ENABLED", "CONCURRENCY", "QUEUED", "RETRYING", "DEAD", "AGENTS", "REASON"],
                policies
                    .iter()
                    .map(|p| {
                        let agents: Vec<String> = p
                            .agents
                            .iter()
                            .map(|a| {
                                let off = if a.enabled { "" } else { ",off" };
                                format!("{}({}{off},{})", a.name, a.circuit, a.queued)
                            })
                            .collect();
                        vec![
                            p.policy.clone(),
                            p.enabled.to_string(),
                            p.concurrency.to_string(),
                            p.queued.to_string(),
                            p.retrying.to_string(),
                            p.dead_letters.to_string(),
                            if agents.is_empty() { "-".into() } else { agents.join(",") },
                            dash(&p.reason),
                        ]
                    })
                    .collect(),
            )
        }
        Call::SetEnabled { policy, enabled } => {
            let effect =
                if *enabled { "dispatch resumes" } else { "dispatch stops; deliveries wait in the queue" };
            format!("{policy}: spec.enabled set to {enabled} ({effect})\n")
        }
        Call::DeadLetters { policy, .. } => {
            let letters: Vec<DeadLetterView> = read(answer);
            let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
            table(
                &format!("No dead letters in {policy}."),
                &["ID", "FAILED", "AGENT", "EVENT", "REPOSITORY", "ATTEMPTS", "ERROR"],
                letters
                    .iter()
                    .map(|l| {
                        vec![
                            l.id.clone(),
                            ago(l.failed_ms, now_ms),
                            opt(&l.agent),
                            l.event.clone(),
                            opt(&l.repository),
                            l.attempts.to_string(),
                            l.error.clone(),
                        ]
                    })
                    .collect(),
            )
        }
        Call::Replay { policy, id } => format!("dead letter {id} of {policy} is queued again\n"),
        Call::Purge { policy } => {
            format!("{} dead letters of {policy} deleted\n", read::<Purged>(answer).purged)
        }
        Call::ReplayWindow { policy, window } => {
            let report: ReplayReport = read(answer);
            let kept = report.kept_since_ms.map_or("nothing is kept yet".to_owned(), |ms| {
                format!("history kept since {} ago", ago(ms, now_ms))
            });
            match window.dry_run {
                true => format!(
                    "{policy}: {} deliveries, {} sends would be queued (dry run; {kept})\n",
                    report.deliveries, report.sends
                ),
                false => format!(
                    "{policy}: {} deliveries, {} of {} sends queued ({kept})\n",
                    report.deliveries, report.queued, report.sends
                ),
            }
        }
        Call::FilterTest { policy, .. } => {
            let rows: Vec<FilterTestRow> = read(answer);
            let matched = rows.iter().filter(|r| r.result == "match").count();
            let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
            let mut out = table(
                &format!("No recent deliveries of {policy} to test against."),
                &["AGE", "RESULT", "EVENT", "ACTION", "REPOSITORY", "GUID", "DETAIL"],
                rows.iter()
                    .map(|r| {
                        vec![
                            ago(r.received_ms, now_ms),
                            r.result.clone(),
                            r.event.clone(),
                            opt(&r.action),
                            opt(&r.repository),
                            r.guid.clone(),
                            opt(&r.detail),
                        ]
                    })
                    .collect(),
            );
            if !rows.is_empty() {
                out.push_str(&format!("{matched} of {} recent deliveries match\n", rows.len()));
            }
            out
        }
        Call::Deliveries { .. } => {
            let list: Vec<Activity> = read(answer);
            let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
            table(
                "No deliveries found.",
                &["AGE", "STATUS", "EVENT", "REPOSITORY", "HOOK", "AGENT", "GUID", "DETAIL"],
                list.iter()
                    .map(|a| {
                        vec![
                            ago(a.at_ms, now_ms),
                            a.status.clone(),
                            a.event.clone(),
                            opt(&a.repository),
                            a.hook.clone(),
                            opt(&a.agent),
                            a.guid.clone(),
                            opt(&a.detail),
                        ]
                    })
                    .collect(),
            )
        }
    }
}

/// Aligned columns three spaces apart, the last one unpadded; `empty` when
/// there is no row.
pub(crate) fn table(empty: &str, headers: &[&str], rows: Vec<Vec<String>>) -> String {
    if rows.is_empty() {
        return format!("{empty}\n");
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i == last { (*c).to_owned() } else { format!("{c:<w$}", w = widths[i]) })
            .collect();
        format!("{}\n", padded.join("   "))
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests;
