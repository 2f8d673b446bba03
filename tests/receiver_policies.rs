//! The policy as the receivers obey it, changed the way a user changes it: the kill switch and
//! concurrency by `kubectl patch`, the dead-letter safety rule, and agents' filters checked by the
//! operator, applied live and tried from the CLI.
//!
//! Real processes against the real apiserver and Redis (`tests/common/system.rs`),
//! driven the way a user drives them.

mod common;

use common::WAIT;
use common::eventually;
use common::system::{System, admin_cli, admin_cli_text};
use hookwarden::api::AgentPolicy;
use hookwarden::keys::HmacKey;
use hookwarden::sample_agent::Mode;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use std::time::Instant;

#[tokio::test]
async fn kill_switch_and_concurrency_follow_kubectl_patch_live() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("reviewer", 10)], &key).await;
    let (_receiver, base) = s.receiver("r1").await;
    let first = s.deliver_many(&base, &key, 3).await;
    s.until_received("reviewer", &first).await;

    // Off: the receiver stops dispatching within a second of the patch...
    let enabled_metric = format!("agents_enabled{{policy=\"{}/default\"}}", s.ns.name);
    let patched = Instant::now();
    s.kubectl_patch_policy(r#"{"spec":{"enabled":false}}"#);
    eventually("the receiver to see the switch", Duration::from_secs(5), || async {
        (s.metric(&base, &enabled_metric).await == Some(0.0)).then_some(())
    })
    .await;
    let took = patched.elapsed();
    assert!(took < Duration::from_secs(1), "kill switch took {took:?}");
    // ...but keeps accepting and queuing.
    let held = s.deliver_many(&base, &key, 10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.ids("reviewer").len(), 3, "nothing dispatched while off");
    let policy = s.policy().await;
    assert_eq!(policy.status.as_ref().unwrap().reason.as_deref(), Some("disabled in spec"));

    // On again: everything held arrives, once.
    s.kubectl_patch_policy(r#"{"spec":{"enabled":true}}"#);
    s.until_received("reviewer", &held).await;
    let got = s.ids("reviewer");
    assert_eq!(got.len(), 13, "each event exactly once: {got:?}");

    // Concurrency follows the patch without a restart.
    s.sink.set_mode("reviewer", Mode::Slow(400));
    s.kubectl_patch_policy(r#"{"spec":{"concurrency":1}}"#);
    eventually("concurrency 1 in status", WAIT, || async {
        (s.policy().await.status?.concurrency == Some(1)).then_some(())
    })
    .await;
    s.sink.reset_max_in_flight("reviewer");
    let slow1 = s.deliver_many(&base, &key, 4).await;
    s.until_received("reviewer", &slow1).await;
    assert_eq!(s.sink.max_in_flight("reviewer"), 1);
    s.kubectl_patch_policy(r#"{"spec":{"concurrency":3}}"#);
    eventually("concurrency 3 in status", WAIT, || async {
        (s.policy().await.status?.concurrency == Some(3)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slow3 = s.deliver_many(&base, &key, 9).await;
    s.until_received("reviewer", &slow3).await;
    assert_eq!(s.sink.max_in_flight("reviewer"), 3);
}

#[tokio::test]
async fn dead_letters_above_the_safety_limit_trip_the_switch_until_cleared() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("broken", 5)], &key).await;
    let (_receiver, base, admin) = s.receiver_with_admin("r1").await;
    let policy = format!("{}/default", s.ns.name);
    s.kubectl_patch_policy(r#"{"spec":{"safety":{"maxDeadLetters":1},"retry":{"maxAttempts":1}}}"#);
    s.sink.set_mode("broken", Mode::Fail);
    s.deliver_many(&base, &key, 2).await;

    let status = eventually("the safety rule to trip", WAIT, || async {
        let status = s.policy().await.status?;
        (status.enabled == Some(false)).then_some(status)
    })
    .await;
    let reason = status.reason.unwrap();
    assert!(reason.contains("2 dead letters exceed safety.maxDeadLetters 1"), "{reason}");
    let dispatching = status.conditions.iter().find(|c| c.type_ == "Dispatching").unwrap();
    assert_eq!(
        (dispatching.status.as_str(), dispatching.reason.as_str()),
        ("False", "DeadLettersAboveLimit")
    );
    let events = s.env.kubectl_ok(&["get", "events", "-n", &s.ns.name, "-o", "jsonpath={.items[*].reason}"]);
    assert!(events.contains("DispatchDisabled"), "{events}");
    // The spec still says enabled: the operator tripped the effective switch only.
    assert!(s.policy().await.spec.enabled);

    // A person looks at the dead letters, purges them: dispatch resumes.
    assert_eq!(admin_cli(&admin, &["purge", &policy]).unwrap()["purged"], 2);
    eventually("dispatch to resume", WAIT, || async {
        (s.policy().await.status?.enabled == Some(true)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn filters_are_checked_by_the_operator_applied_live_and_tried_from_the_cli() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("opened", 5), ("closed", 5)], &key).await;
    let policy = format!("{}/default", s.ns.name);
    let urls: std::collections::HashMap<String, String> =
        s.policy().await.spec.agents.into_iter().map(|a| (a.name, a.url)).collect();
    let with_filters = |opened: &str, closed: &str| {
        let agents: Vec<serde_json::Value> = ["opened", "closed"]
            .iter()
            .zip([opened, closed])
            .map(|(name, filter)| {
                json!({"name": name, "url": urls[*name], "timeoutSeconds": 5, "filter": filter})
            })
            .collect();
        json!({"spec": {"agents": agents}}).to_string()
    };
    let ready = |p: &AgentPolicy| {
        let status = p.status.clone()?;
        let c = status.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
        Some((
            status.observed_generation == p.metadata.generation,
            c.status,
            c.reason,
            c.message,
            status.agent_filters,
        ))
    };

    // A typo: the operator says where and why, and the agent gets nothing
    // (no filter of it ever compiled); its neighbour's filter applies.
    s.kubectl_patch_policy(&with_filters("acton == 'opened'", "action == 'closed'"));
    let (_, _, reason, message, filters) = eventually("the operator to refuse the filter", WAIT, || async {
        let r = ready(&s.policy().await)?;
        (r.0 && r.1 == "False").then_some(r)
    })
    .await;
    assert_eq!(reason, "InvalidFilter");
    assert!(
        message.contains("agent opened's filter does not compile at 1:1: unknown variable 'acton'"),
        "{message}"
    );
    assert_eq!(filters.get("opened").map(String::as_str), Some("false"));
    assert_eq!(filters.get("closed").map(String::as_str), Some("action == 'closed'"));

    let (_receiver, base, admin) = s.receiver_with_admin("r1").await;
    let first = s.deliver_many(&base, &key, 5).await;
    let filtered_for = |agent: &str| {
        let rows = admin_cli(&admin, &["deliveries", "--status", "filtered", "--limit", "100"]).unwrap();
        let rows = rows.as_array().unwrap().clone();
        rows.iter()
            .filter(|r| r["agent"] == agent)
            .map(|r| r["guid"].as_str().unwrap().to_owned())
            .collect::<HashSet<_>>()
    };
    let want: HashSet<String> = first.iter().cloned().collect();
    eventually("every delivery to be logged as filtered for both agents", WAIT, || async {
        (filtered_for("opened") == want && filtered_for("closed") == want).then_some(())
    })
    .await;
    assert!(s.ids("opened").is_empty() && s.ids("closed").is_empty(), "nothing sent");
    let table = admin_cli_text(&admin, &["deliveries", "--status", "filtered"]).unwrap();
    assert!(table.contains("agent filter is false"), "{table}");

    // Tried from the CLI before it is applied: on the deliveries that came.
    let tried = admin_cli_text(
        &admin,
        &["filter-test", "--policy", &policy, "--agent", "opened", "action == 'opened'"],
    )
    .unwrap();
    assert!(tried.contains("5 of 5 recent deliveries match"), "{tried}");
    let tried =
        admin_cli(&admin, &["filter-test", "--policy", &policy, "body.pull_request.nope == 1"]).unwrap();
    assert_eq!(tried.as_array().unwrap().len(), 5);
    assert!(tried.as_array().unwrap().iter().all(|r| r["result"] == "error"), "{tried}");
    let refused = admin_cli_text(&admin, &["filter-test", "--policy", &policy, "action =="]).unwrap_err();
    assert!(refused.contains("does not compile at 1:"), "{refused}");

    // Fixed: Ready again, and the next deliveries reach it, the earlier ones not again.
    s.kubectl_patch_policy(&with_filters(
        "action == 'opened' && body.pull_request.head.sha != ''",
        "action == 'closed'",
    ));
    eventually("the operator to accept the filter", WAIT, || async {
        let r = ready(&s.policy().await)?;
        (r.0 && r.1 == "True").then_some(())
    })
    .await;
    // The receiver follows the status it watches; give the change a moment.
    eventually("the receiver to apply the new filter", WAIT, || async {
        let probe = s.deliver_many(&base, &key, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.ids("opened").iter().any(|id| probe.contains(id)).then_some(())
    })
    .await;
    let next = s.deliver_many(&base, &key, 3).await;
    s.until_received("opened", &next).await;
    assert!(
        s.ids("opened").iter().all(|id| !first.contains(id)),
        "filtered deliveries are settled, not sent later"
    );
    assert!(s.ids("closed").is_empty());
    let metric =
        format!("hookwarden_filtered_total{{agent=\"closed\",policy=\"{policy}\",reason=\"no_match\"}}");
    let closed = s.metric(&base, &metric).await.unwrap();
    assert!(closed >= 9.0, "{closed}");
}
