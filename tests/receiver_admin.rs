//! What an operator of hookwarden sees and does: the admin API and CLI, the live stream, the
//! status page in a real browser, and each delivery's trace in a real collector.
//!
//! Real processes against the real apiserver and Redis (`tests/common/system.rs`),
//! driven the way a user drives them.
//!
//! Over 400 lines: four views of one system, and the Jaeger harness the trace needs.

mod common;

use common::WAIT;
use common::browser::Browser;
use common::eventually;
use common::free_port;
use common::guid;
use common::system::{ADMIN_TOKEN, System, admin_cli, admin_cli_text, deliveries, follow};
use common::tempfile_dir;
use hookwarden::cli::sse::SseEvent;
use hookwarden::keys::HmacKey;
use hookwarden::sample_agent::Mode;
use std::time::Duration;
use std::time::Instant;

#[tokio::test]
async fn admin_api_and_cli_manage_policies_dead_letters_and_show_deliveries() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("flaky", 5)], &key).await;
    let (_receiver, base, admin) = s.receiver_with_admin("r1").await;
    let policy = format!("{}/default", s.ns.name);

    // No token, wrong token: 401, and the token is never echoed.
    for auth in [None, Some("Bearer wrong"), Some(ADMIN_TOKEN)] {
        let mut req = s.http.get(format!("{admin}/admin/policies"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert!(!r.text().await.unwrap().contains(ADMIN_TOKEN));
    }
    let listed = admin_cli(&admin, &["policies"]).unwrap();
    assert_eq!(listed[0]["policy"], policy.as_str());
    assert_eq!(listed[0]["agents"][0]["circuit"], "closed");
    // For people: a table, like kubectl's; YAML on request.
    let table = admin_cli_text(&admin, &["policies"]).unwrap();
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("POLICY "), "{table}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!((row[0], row[1]), (policy.as_str(), "true"), "{table}");
    assert!(row[6].starts_with("flaky(closed,"), "the agent, its circuit and its lane: {table}");
    let yaml = admin_cli_text(&admin, &["policies", "-o", "yaml"]).unwrap();
    assert!(yaml.starts_with("- ") && yaml.contains(&format!("policy: {policy}")), "{yaml}");

    // disable/enable patch the AgentPolicy spec, so kubectl agrees.
    admin_cli(&admin, &["disable", &policy]).unwrap();
    let spec_enabled =
        s.env.kubectl_ok(&["get", "ap", "default", "-n", &s.ns.name, "-o", "jsonpath={.spec.enabled}"]);
    assert_eq!(spec_enabled, "false");
    eventually("status to follow", WAIT, || async {
        (s.policy().await.status?.enabled == Some(false)).then_some(())
    })
    .await;
    admin_cli(&admin, &["enable", &policy]).unwrap();
    eventually("status to follow", WAIT, || async {
        (s.policy().await.status?.enabled == Some(true)).then_some(())
    })
    .await;
    let missing = admin_cli(&admin, &["disable", &format!("{}/nope", s.ns.name)]).unwrap_err();
    assert!(missing.contains("404") && missing.contains("no AgentPolicy"), "{missing}");

    // A failing agent's delivery ends as a dead letter; replay delivers it.
    s.sink.set_mode("flaky", Mode::Fail);
    let guid = s.deliver_many(&base, &key, 1).await.remove(0);
    let letters = eventually("a dead letter", WAIT, || async {
        let l = admin_cli(&admin, &["dead-letters", &policy]).ok()?;
        (l.as_array()?.len() == 1).then_some(l)
    })
    .await;
    assert_eq!(letters[0]["guid"], guid.as_str());
    assert_eq!(letters[0]["agent"], "flaky");
    assert_eq!(letters[0]["error"], "agent answered HTTP 500");
    s.sink.set_mode("flaky", Mode::Ok);
    let id = letters[0]["id"].as_str().unwrap();
    admin_cli(&admin, &["replay", &policy, id]).unwrap();
    s.until_received("flaky", std::slice::from_ref(&guid)).await;
    let again = admin_cli(&admin, &["replay", &policy, id]).unwrap_err();
    assert!(again.contains("404"), "{again}");
    assert_eq!(admin_cli(&admin, &["purge", &policy]).unwrap()["purged"], 0);

    // Recent deliveries, filtered.
    let unsigned = s
        .http
        .post(format!("{base}/hooks/{}/repo-hook", s.ns.name))
        .header("x-github-event", "issues")
        .header("x-github-delivery", "not-signed-1")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    // The activity log is written when the dispatch settles, just after the agent answered.
    eventually("the delivery in the activity log", WAIT, || async {
        let delivered = admin_cli(&admin, &["deliveries", "--status", "delivered"]).ok()?;
        delivered
            .as_array()?
            .iter()
            .any(|d| d["guid"] == guid.as_str() && d["agent"] == "flaky")
            .then_some(())
    })
    .await;
    let dead =
        admin_cli(&admin, &["deliveries", "--status", "dead_letter", "--repository", "octo-org/hello-world"])
            .unwrap();
    assert!(dead.as_array().unwrap().iter().all(|d| d["status"] == "dead_letter"));
    assert!(!dead.as_array().unwrap().is_empty());
    let rejected = admin_cli(&admin, &["deliveries", "--status", "rejected", "--event", "issues"]).unwrap();
    let rejected = rejected.as_array().unwrap();
    assert!(
        rejected.iter().any(|d| d["guid"] == "not-signed-1" && d["detail"] == "signature_missing"),
        "{rejected:?}"
    );

    // Every series the runbook's alerts and dashboards use is exported.
    let metrics = s.http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for series in [
        "github_webhooks_total{event=\"pull_request\"}",
        "github_webhook_processed_total{",
        "github_webhook_errors_total{",
        "github_webhook_queue_length{",
        "github_webhook_processing_duration_seconds_bucket{",
        "webhook_circuit_breaker_open{",
        "agents_enabled{",
        "hookwarden_dead_letters{",
        "hookwarden_rejected_deliveries_total{reason=\"signature_missing\"} 1",
    ] {
        assert!(metrics.contains(series), "/metrics lacks {series}");
    }
}

#[tokio::test]
async fn the_live_stream_shows_deliveries_and_the_switch_and_resumes_without_gaps_or_repeats() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("agent", 5)], &key).await;
    let (_receiver, base, admin) = s.receiver_with_admin("r1").await;
    let policy = format!("{}/default", s.ns.name);
    let live = follow(&admin, None);
    eventually("the snapshot", WAIT, || async {
        let seen = live.lock().unwrap();
        let first = seen.first()?;
        let snapshot: serde_json::Value = serde_json::from_str(&first.data).ok()?;
        (first.event == "snapshot" && snapshot[0]["policy"] == policy.as_str()).then_some(())
    })
    .await;

    // Each delivery shows as queued, then delivered, within a second or so.
    let guids = s.deliver_many(&base, &key, 6).await;
    eventually("every delivery queued and delivered on the stream", WAIT, || async {
        let seen = deliveries(&live.lock().unwrap());
        guids
            .iter()
            .all(|g| ["queued", "delivered"].iter().all(|st| seen.contains(&(g.clone(), (*st).to_owned()))))
            .then_some(())
    })
    .await;

    // The kill switch shows as a policy change.
    admin_cli(&admin, &["disable", &policy]).unwrap();
    eventually("the switch on the stream", WAIT, || async {
        live.lock()
            .unwrap()
            .iter()
            .any(|e| e.event == "policy" && e.data.contains("\"enabled\":false"))
            .then_some(())
    })
    .await;
    admin_cli(&admin, &["enable", &policy]).unwrap();

    // A client that reconnects from the third delivery event gets exactly
    // what came after it: no gap, no repeat.
    let later = s.deliver_many(&base, &key, 3).await;
    eventually("the later deliveries on the stream", WAIT, || async {
        let seen = deliveries(&live.lock().unwrap());
        later.iter().all(|g| seen.contains(&(g.clone(), "delivered".to_owned()))).then_some(())
    })
    .await;
    let all: Vec<SseEvent> = live.lock().unwrap().iter().filter(|e| e.event == "delivery").cloned().collect();
    let resumed = follow(&admin, all[2].id.clone());
    let want = deliveries(&all[3..]);
    eventually("the resumed stream to catch up", WAIT, || async {
        (deliveries(&resumed.lock().unwrap()).len() >= want.len()).then_some(())
    })
    .await;
    let got = deliveries(&resumed.lock().unwrap());
    assert_eq!(got[..want.len()], want[..], "resumed after the third delivery event");

    // `hookwarden admin tail` prints it for people.
    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_hookwarden"))
        .args(["admin", "tail", "--policy", &policy])
        .env("HOOKWARDEN_ADMIN_URL", &admin)
        .env("HOOKWARDEN_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stdout = tail.stdout.take().unwrap();
    let reader = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            reader.lock().unwrap().push(line);
        }
    });
    eventually("tail's snapshot", WAIT, || async {
        lines.lock().unwrap().first().is_some_and(|l| l.starts_with("POLICY ")).then_some(())
    })
    .await;
    let guid = s.deliver_many(&base, &key, 1).await.remove(0);
    eventually("tail to show the delivery", WAIT, || async {
        lines.lock().unwrap().iter().any(|l| l.starts_with("delivered ") && l.contains(&guid)).then_some(())
    })
    .await;
    let _ = tail.kill();
    let _ = tail.wait();
}

#[tokio::test]
async fn the_status_page_signs_in_shows_deliveries_live_and_flips_the_switch_in_a_real_browser() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("agent", 5)], &key).await;
    let (_receiver, base, admin) = s.receiver_with_admin("r1").await;
    let policy = format!("{}/default", s.ns.name);
    let row = format!("#policies tr[data-policy='{policy}']");
    let mut page = Browser::phone().await;

    // Nothing is shown without the token; a wrong one is refused.
    page.open(&format!("{admin}/admin")).await;
    page.until("the sign-in form", "!document.querySelector('#sign-in').hidden").await;
    page.eval("document.querySelector('#token').value = 'not-the-token'; document.querySelector('#sign-in').requestSubmit()").await;
    page.until("the refusal", "document.querySelector('#sign-in-error').textContent.includes('refused')")
        .await;
    page.eval(&format!(
        "document.querySelector('#token').value = '{ADMIN_TOKEN}'; document.querySelector('#sign-in').requestSubmit()"
    ))
    .await;
    page.until("the policy", &format!("!!document.querySelector(\"{row}\")")).await;
    page.until("the live badge", "document.querySelector('#live').textContent === 'live'").await;
    page.until(
        "the hook",
        &format!("!!document.querySelector(\"#hooks tr[data-hook='{}/repo-hook']\")", s.ns.name),
    )
    .await;

    // A delivery shows within a second of its 202.
    let guid = guid();
    assert_eq!(s.deliver(&base, &key, &guid).await, 202);
    let accepted = Instant::now();
    page.until("the delivery", &format!("!!document.querySelector(\"#deliveries tr[data-guid='{guid}']\")"))
        .await;
    let shown = accepted.elapsed();
    assert!(shown < Duration::from_secs(1), "the delivery showed {shown:?} after its 202");
    page.until(
        "its dispatch",
        &format!("!!document.querySelector(\"#deliveries tr[data-guid='{guid}'][data-status='delivered']\")"),
    )
    .await;

    // The switch flipped with kubectl shows; flipped from the page (after a
    // confirmation), it is the AgentPolicy that changes.
    let state = format!("document.querySelector(\"{row} .dispatch .badge\").textContent");
    s.kubectl_patch_policy(r#"{"spec":{"enabled":false}}"#);
    page.until("the switch off", &format!("{state} === 'disabled'")).await;
    page.eval(&format!("document.querySelector(\"{row} .flip\").click()")).await;
    page.until("the confirmation", "document.querySelector('#confirm').open").await;
    assert!(!s.policy().await.spec.enabled, "nothing changes before the confirmation");
    page.eval("document.querySelector('#confirm-yes').click()").await;
    eventually("spec.enabled true", WAIT, || async { s.policy().await.spec.enabled.then_some(()) }).await;
    page.until("the switch on", &format!("{state} === 'enabled'")).await;

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    page.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a screenshot of the page");
    eprintln!("screenshot: {}", shot.display());
}

/// A span as Jaeger shows it: name, span id, parent span id, failed.
type TraceSpan = (String, String, Option<String>, bool);

/// Jaeger, built from the Go module proxy by `e2e/up`: its OTLP/HTTP
/// receiver and its query API, in-memory storage, on free ports.
struct Jaeger {
    child: std::process::Child,
    otlp: String,
    query: String,
    _dir: tempfile_dir::Dir,
}

impl Jaeger {
    async fn start() -> Self {
        let dir = tempfile_dir::Dir::new();
        let (otlp, query, grpc) = (free_port(), free_port(), free_port());
        let config = format!(
            "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {{receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}}
  telemetry: {{metrics: {{level: none}}, logs: {{level: warn}}}}
extensions:
  jaeger_storage: {{backends: {{memory: {{memory: {{max_traces: 10000}}}}}}}}
  jaeger_query:
    storage: {{traces: memory}}
    http: {{endpoint: 127.0.0.1:{query}}}
    grpc: {{endpoint: 127.0.0.1:{grpc}}}
receivers:
  otlp: {{protocols: {{http: {{endpoint: 127.0.0.1:{otlp}}}}}}}
processors:
  batch: {{timeout: 100ms}}
exporters:
  jaeger_storage_exporter: {{trace_storage: memory}}
"
        );
        let path = dir.0.join("jaeger.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.0.join("jaeger.log")).unwrap();
        let child = std::process::Command::new("jaeger")
            .arg("--config")
            .arg(format!("file:{}", path.display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("jaeger (e2e/up builds it)");
        let jaeger = Self {
            child,
            otlp: format!("http://127.0.0.1:{otlp}"),
            query: format!("http://127.0.0.1:{query}"),
            _dir: dir,
        };
        eventually("jaeger's query API", WAIT, || async {
            reqwest::get(format!("{}/api/services", jaeger.query))
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        })
        .await;
        jaeger
    }

    /// The spans of trace `id`, oldest first.
    async fn spans(&self, id: &str) -> Vec<TraceSpan> {
        let trace: serde_json::Value = match reqwest::get(format!("{}/api/traces/{id}", self.query))
            .await
            .and_then(|r| r.error_for_status())
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => return vec![],
        };
        let mut spans: Vec<(u64, TraceSpan)> = trace["data"][0]["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let parent = s["references"]
                    .as_array()
                    .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
                    .map(|r| r["spanID"].as_str().unwrap().to_owned());
                let error = s["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["key"] == "error" && t["value"] == true);
                let name = s["operationName"].as_str().unwrap().to_owned();
                (
                    s["startTime"].as_u64().unwrap(),
                    (name, s["spanID"].as_str().unwrap().to_owned(), parent, error),
                )
            })
            .collect();
        spans.sort_by_key(|(start, _)| *start);
        spans.into_iter().map(|(_, s)| s).collect()
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_deliverys_trace_holds_ingest_enqueue_and_every_attempt_in_order_in_a_real_collector() {
    let jaeger = Jaeger::start().await;
    let key = HmacKey::generate(1);
    let s = System::new(&[("agent", 5)], &key).await;
    let (receiver, base, _) =
        s.receiver_with_env("r1", &[("OTEL_EXPORTER_OTLP_ENDPOINT", &jaeger.otlp)]).await;

    // The agent fails the first call: the retry is in the same trace.
    s.sink.set_mode("agent", Mode::Fail);
    let guid = guid();
    assert_eq!(s.deliver(&base, &key, &guid).await, 202);
    eventually("a failed call", WAIT, || async {
        s.sink.calls("agent").iter().any(|(id, _)| id == &guid).then_some(())
    })
    .await;
    s.sink.set_mode("agent", Mode::Ok);
    let received = eventually("the retry accepted", WAIT, || async {
        s.sink.received("agent").into_iter().find(|r| r.id == guid)
    })
    .await;

    // The agent got the W3C trace context of the attempt that reached it.
    let traceparent = received.traceparent.expect("a traceparent header");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{traceparent}");
    let (trace_id, agents_parent) = (parts[1].to_owned(), parts[2].to_owned());

    let spans = eventually("the whole trace in jaeger", WAIT, || async {
        let spans = jaeger.spans(&trace_id).await;
        let attempts = spans.iter().filter(|s| s.0 == "attempt").count();
        (attempts >= 2 && spans.last().is_some_and(|s| s.1 == agents_parent)).then_some(spans)
    })
    .await;
    let names: Vec<&str> = spans.iter().map(|s| s.0.as_str()).collect();
    let attempts = names.iter().filter(|n| **n == "attempt").count();
    // Each attempt: routed into the agent's lane, then dispatched from it.
    let mut want = vec!["ingest", "enqueue"];
    for _ in 0..attempts {
        want.extend(["route", "dispatch", "attempt"]);
    }
    assert_eq!(names, want, "in the order they started");
    let id = |name: &str| spans.iter().find(|s| s.0 == name).unwrap().1.clone();
    let parent = |i: usize| spans[i].2.clone();
    assert_eq!(parent(0), None, "ingest is the root");
    assert_eq!(parent(1), Some(id("ingest")));
    for i in (2..spans.len()).step_by(3) {
        for (step, what) in [(i, "route"), (i + 1, "dispatch")] {
            assert_eq!(
                parent(step),
                Some(id("enqueue")),
                "each {what} continues from the enqueue, across the queue"
            );
        }
        assert_eq!(parent(i + 2), Some(spans[i + 1].1.clone()), "each attempt is in its dispatch");
    }
    assert!(spans[4].3, "the first attempt failed");
    assert!(!spans.last().unwrap().3, "the last one did not");

    // Every log line about the delivery carries its trace id.
    let log = receiver.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&guid)).collect();
    assert!(lines.len() >= 2, "queued, then retry scheduled: {lines:?}");
    for line in lines {
        assert!(line.contains(&trace_id), "a line without the trace id: {line}");
    }
}
