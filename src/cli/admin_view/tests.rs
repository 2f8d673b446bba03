//! Tests of [`super`].

use super::*;
use crate::{ObjectRef, queue::ActivityFilter};
use serde_json::json;

const NOW: u64 = 1_800_000_000_000;

#[test]
fn ages_read_like_kubectls() {
    let cases = [
        (0, "0s"),
        (59_999, "59s"),
        (60_000, "1m"),
        (3_599_000, "59m"),
        (7_200_000, "2h"),
        (3 * 86_400_000, "3d"),
    ];
    for (before, want) in cases {
        assert_eq!(ago(NOW - before, NOW), want, "{before} ms ago");
    }
    assert_eq!(ago(NOW + 5_000, NOW), "0s", "a clock a little ahead is now");
}

#[test]
fn tail_records_are_real_json_and_yaml() {
    let data = r#"{"guid":"g","detail":"caf\u00e9 \"quoted\" \\ tab\t"}"#;
    let line = tail_record("delivery\u{7f}", data, Output::Json);
    assert!(line.ends_with('\n') && !line.trim_end().contains('\n'), "one line: {line}");
    let back: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(back["event"], "delivery\u{7f}");
    assert_eq!(back["data"]["detail"], "café \"quoted\" \\ tab\t");
    let yaml = tail_record("delivery", data, Output::Yaml);
    assert!(yaml.starts_with("---\n"), "{yaml}");
    let back: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(back["data"]["guid"], "g");
    let odd: Value = serde_json::from_str(&tail_record("gap", "not json", Output::Json)).unwrap();
    assert_eq!(odd["data"], "not json", "data that is not JSON stays a string");
}

#[test]
fn dead_letters_deliveries_and_purges_read_their_wire_types() {
    use crate::receiver::admin::{DeadLetterView, Purged};
    let policy = ObjectRef::new("team", "agents");
    let letter = DeadLetterView {
        id: "1700000000000-0".into(),
        guid: "g-1".into(),
        event: "push".into(),
        hook: "team/hook".into(),
        repository: Some("octo/app".into()),
        agent: Some("reviewer".into()),
        attempts: 5,
        error: "HTTP 500".into(),
        failed_ms: NOW - 90_000,
    };
    let answer = serde_json::to_value(vec![letter.clone()]).unwrap();
    assert_eq!(answer[0]["failedMs"], NOW - 90_000, "the wire name the status page reads");
    let got = render(&Call::DeadLetters { policy: policy.clone(), limit: 10 }, &answer, Output::Table, NOW);
    for cell in ["1700000000000-0", "1m", "reviewer", "push", "octo/app", "5", "HTTP 500"] {
        assert!(got.contains(cell), "{cell} in\n{got}");
    }
    let activity = crate::queue::Activity {
        at_ms: NOW - 2_000,
        guid: "g-2".into(),
        event: "pull_request".into(),
        hook: "team/hook".into(),
        policy: None,
        repository: None,
        status: "queued".into(),
        agent: None,
        detail: None,
    };
    let answer = serde_json::to_value(vec![activity]).unwrap();
    let call = Call::Deliveries { filter: Default::default(), limit: 10 };
    let got = render(&call, &answer, Output::Table, NOW);
    assert!(got.contains("2s") && got.contains("queued") && got.contains("g-2"), "{got}");
    let purged = serde_json::to_value(Purged { purged: 7 }).unwrap();
    assert_eq!(
        render(&Call::Purge { policy }, &purged, Output::Table, NOW),
        "7 dead letters of team/agents deleted\n"
    );
}

#[test]
fn policies_as_a_table() {
    use crate::receiver::admin::{AgentView, PolicyView};
    let agent = |name: &str, enabled, circuit: &str, queued| AgentView {
        name: name.into(),
        url: format!("http://{name}/"),
        enabled,
        circuit: circuit.into(),
        queued,
    };
    let views = vec![
        PolicyView {
            policy: "team/agents".into(),
            enabled: true,
            concurrency: 4,
            queue_limit: 10_000,
            reason: "enabled".into(),
            queued: 12,
            retrying: 1,
            dead_letters: 0,
            agents: vec![agent("reviewer", true, "closed", 9), agent("bot", false, "open", 3)],
        },
        PolicyView {
            policy: "team/quiet".into(),
            concurrency: 1,
            queue_limit: 10,
            reason: "disabled by spec.enabled".into(),
            dead_letters: 250,
            ..PolicyView::default()
        },
    ];
    let answer = serde_json::to_value(&views).unwrap();
    // The wire names the status page reads, and a round trip that loses nothing.
    assert_eq!(answer[0]["deadLetters"], 0);
    assert_eq!(answer[0]["queueLimit"], 10_000);
    assert_eq!(answer[0]["agents"][1]["queued"], 3);
    assert_eq!(serde_json::from_value::<Vec<PolicyView>>(answer.clone()).unwrap(), views);
    let got = render(&Call::Policies, &answer, Output::Table, NOW);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 3, "{got}");
    // Every cell starts where its header does.
    let starts: Vec<usize> = lines[0]
        .match_indices(|c: char| c.is_ascii_uppercase())
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || lines[0].as_bytes()[i - 1] == b' ')
        .collect();
    assert_eq!(starts.len(), 8, "{got}");
    for line in &lines[1..] {
        for &i in &starts[1..] {
            assert!(line.as_bytes()[i - 1] == b' ' && line.as_bytes()[i] != b' ', "column at {i}:\n{got}");
        }
    }
    assert_eq!(
        lines[2].split_whitespace().take(7).collect::<Vec<_>>(),
        ["team/quiet", "false", "1", "0", "0", "250", "-"]
    );
    assert!(lines[2].ends_with("disabled by spec.enabled"), "{got}");
    assert!(got.contains("reviewer(closed,9),bot(open,off,3)"), "{got}");
    assert_eq!(render(&Call::Policies, &json!([]), Output::Table, NOW), "No policies found.\n");
}

#[test]
fn deliveries_with_relative_times_and_dashes_for_what_is_not_there() {
    let answer = json!([
        {"atMs": NOW - 5_000, "status": "delivered", "event": "push", "repository": "octo/hello",
         "hook": "team/repo", "agent": "reviewer", "guid": "g-2"},
        {"atMs": NOW - 600_000, "status": "rejected", "event": "push", "hook": "team/repo",
         "guid": "g-1", "detail": "bad_signature"},
    ]);
    let call = Call::Deliveries { filter: ActivityFilter::default(), limit: 50 };
    let got = render(&call, &answer, Output::Table, NOW);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 3, "{got}");
    let cells = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(cells(lines[0]), ["AGE", "STATUS", "EVENT", "REPOSITORY", "HOOK", "AGENT", "GUID", "DETAIL"]);
    assert_eq!(
        cells(lines[1]),
        ["5s", "delivered", "push", "octo/hello", "team/repo", "reviewer", "g-2", "-"]
    );
    assert_eq!(cells(lines[2]), ["10m", "rejected", "push", "-", "team/repo", "-", "g-1", "bad_signature"]);
}

#[test]
fn actions_answer_in_a_sentence_and_machines_get_the_api_s_own_form() {
    let policy = ObjectRef::new("team", "agents");
    let off = Call::SetEnabled { policy: policy.clone(), enabled: false };
    let answer = json!({"policy": "team/agents", "specEnabled": false});
    assert_eq!(
        render(&off, &answer, Output::Table, NOW),
        "team/agents: spec.enabled set to false (dispatch stops; deliveries wait in the queue)\n"
    );
    assert_eq!(
        render(&Call::Purge { policy: policy.clone() }, &json!({"purged": 3}), Output::Table, NOW),
        "3 dead letters of team/agents deleted\n"
    );
    let json_out = render(&off, &answer, Output::Json, NOW);
    assert_eq!(serde_json::from_str::<Value>(&json_out).unwrap(), answer);
    let yaml_out = render(&off, &answer, Output::Yaml, NOW);
    assert_eq!(serde_yaml::from_str::<Value>(&yaml_out).unwrap(), answer);
    let none = render(&Call::DeadLetters { policy, limit: 10 }, &json!([]), Output::Table, NOW);
    assert_eq!(none, "No dead letters in team/agents.\n");
}
