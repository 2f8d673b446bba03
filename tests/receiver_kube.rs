//! The receiver and operator as real processes against the real apiserver and
//! Redis, driven the way a user drives them: `kubectl patch`, Secret updates,
//! signed HTTP deliveries, SIGKILL and SIGTERM.
//!
//! Over 400 lines: one suite per area, each test a scenario a user runs, with the world it needs.

mod common;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    Process, TestEnv, TestNamespace, WAIT, browser::Browser, eventually, free_port, guid, redis_prefix,
    sample, scrape, tempfile_dir,
};
use hookwarden::{
    api::AgentPolicy,
    cli::sse::{SseEvent, SseParser},
    keys::{self, HmacKey},
    sample_agent::{self, Mode, Sink},
    signature,
    standard_webhooks::SigningKey,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

struct System {
    env: TestEnv,
    ns: TestNamespace,
    prefix: String,
    sink: Sink,
    http: reqwest::Client,
    _operator: Process,
}

impl System {
    /// A namespace with an AgentPolicy (agents in `agents`, each `(name, timeoutSeconds)`),
    /// a WebhookConfig `repo-hook`, its Secret holding `key`, and a running operator.
    async fn new(agents: &[(&str, i32)], key: &HmacKey) -> Self {
        let env = TestEnv::load();
        let ns = TestNamespace::create(&env).await;
        let prefix = redis_prefix();
        let sink = Sink::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(axum::serve(listener, sample_agent::router(sink.clone())).into_future());

        let agents: Vec<_> = agents
            .iter()
            .map(|(name, timeout)| json!({"name": name, "url": format!("{sink_url}/{name}"), "timeoutSeconds": timeout}))
            .collect();
        let policy = json!({
            "apiVersion": "hookwarden.io/v1alpha1", "kind": "AgentPolicy",
            "metadata": {"name": "default"},
            "spec": {"concurrency": 4, "agents": agents,
                     "retry": {"strategy": "fixed", "initialDelay": "200ms", "maxDelay": "1s", "maxAttempts": 10},
                     "circuitBreaker": {"resetTimeoutSeconds": 1}}
        });
        let hook = json!({
            "apiVersion": "hookwarden.io/v1alpha1", "kind": "WebhookConfig",
            "metadata": {"name": "repo-hook"},
            "spec": {"repository": "octo-org/hello-world", "events": ["*"],
                     "github": {"tokenSecretRef": {"name": "github-token", "key": "token"}}}
        });
        let client = env.client().await;
        let pp = PostParams::default();
        let dynamic = |kind| {
            let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                "hookwarden.io",
                "v1alpha1",
                kind,
            ));
            Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), &ns.name, &ar)
        };
        dynamic("AgentPolicy").create(&pp, &serde_json::from_value(policy).unwrap()).await.unwrap();
        dynamic("WebhookConfig").create(&pp, &serde_json::from_value(hook).unwrap()).await.unwrap();
        let secrets: Api<Secret> = Api::namespaced(client, &ns.name);
        secrets.create(&pp, &key_secret(&[key])).await.unwrap();

        let operator = Process::start(
            &env,
            "operator",
            &["operator", "--listen", &format!("127.0.0.1:{}", free_port())],
            &[
                ("HOOKWARDEN_NAMESPACE", &ns.name),
                ("POD_NAMESPACE", &ns.name),
                ("REDIS_URL", env.var("REDIS_URL")),
                ("HOOKWARDEN_REDIS_PREFIX", &prefix),
            ],
        );
        let system = Self { env, ns, prefix, sink, http: reqwest::Client::new(), _operator: operator };
        eventually("the operator to write the policy's status", WAIT, || async {
            (system.policy().await.status?.enabled == Some(true)).then_some(())
        })
        .await;
        system
    }

    async fn policy(&self) -> AgentPolicy {
        Api::<AgentPolicy>::namespaced(self.env.client().await, &self.ns.name).get("default").await.unwrap()
    }

    /// Starts a receiver replica and waits until it is ready.
    async fn receiver(&self, consumer: &str) -> (Process, String) {
        let (process, base, _) = self.receiver_with_admin(consumer).await;
        (process, base)
    }

    /// A receiver replica with its admin API on; returns its base and admin URLs.
    async fn receiver_with_admin(&self, consumer: &str) -> (Process, String, String) {
        self.receiver_with_env(consumer, &[]).await
    }

    /// The same, with more environment variables.
    async fn receiver_with_env(&self, consumer: &str, env: &[(&str, &str)]) -> (Process, String, String) {
        let (port, admin_port) = (free_port(), free_port());
        let process = Process::start(
            &self.env,
            consumer,
            &[
                "receiver",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
                "--consumer",
                consumer,
                "--reclaim-after-seconds",
                "1",
            ],
            &[
                ("HOOKWARDEN_NAMESPACE", self.ns.name.as_str()),
                ("REDIS_URL", self.env.var("REDIS_URL")),
                ("HOOKWARDEN_REDIS_PREFIX", self.prefix.as_str()),
                ("HOOKWARDEN_ADMIN_TOKEN", ADMIN_TOKEN),
                ("POD_NAMESPACE", self.ns.name.as_str()),
            ]
            .into_iter()
            .chain(env.iter().copied())
            .collect::<Vec<_>>(),
        );
        let base = format!("http://127.0.0.1:{port}");
        let ready = format!("{base}/readyz");
        eventually(&format!("receiver {consumer} ready"), WAIT, || async {
            let r = self.http.get(&ready).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        (process, base, format!("http://127.0.0.1:{admin_port}"))
    }

    /// POSTs a signed delivery; returns the HTTP status.
    async fn deliver(&self, base: &str, key: &HmacKey, guid: &str) -> u16 {
        // Distinct per delivery, as GitHub's are (the same body under a new
        // GUID is refused as a replay).
        let body = json!({"action": "opened", "pull_request": {"head": {"sha": common::commit_sha()}},
                          "repository": {"full_name": "octo-org/hello-world"}})
        .to_string();
        let r = self
            .http
            .post(format!("{base}/hooks/{}/repo-hook", self.ns.name))
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", guid)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature::sign(key.secret(), body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    }

    async fn deliver_many(&self, base: &str, key: &HmacKey, n: usize) -> Vec<String> {
        let mut guids = Vec::new();
        for _ in 0..n {
            let guid = guid();
            assert_eq!(self.deliver(base, key, &guid).await, 202);
            guids.push(guid);
        }
        guids
    }

    fn kubectl_patch_policy(&self, patch: &str) {
        self.env.kubectl_ok(&[
            "patch",
            "agentpolicy",
            "default",
            "-n",
            &self.ns.name,
            "--type",
            "merge",
            "-p",
            patch,
        ]);
    }

    fn ids(&self, agent: &str) -> Vec<String> {
        self.sink.received(agent).into_iter().map(|r| r.id).collect()
    }

    async fn until_received(&self, agent: &str, want: &[String]) {
        eventually(&format!("{agent} to receive {} events", want.len()), WAIT, || async {
            let got: HashSet<String> = self.ids(agent).into_iter().collect();
            want.iter().all(|id| got.contains(id)).then_some(())
        })
        .await;
    }

    async fn metric(&self, base: &str, line_prefix: &str) -> Option<f64> {
        sample(&scrape(&self.http, &format!("{base}/metrics")).await, line_prefix)
    }
}

fn key_secret(keys: &[&HmacKey]) -> Secret {
    keys::key_secret("repo-hook-hmac", "repo-hook", keys)
}

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
async fn keys_rotate_while_deliveries_flow_without_a_rejection() {
    let old = HmacKey::generate(1);
    let new = HmacKey::generate(2);
    let s = Arc::new(System::new(&[("reviewer", 10)], &old).await);
    let (_receiver, base) = s.receiver("r1").await;

    // GitHub keeps delivering throughout, signing with whichever key it has.
    let use_new = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, rejected) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (s, base, old, new) = (s.clone(), base.clone(), old.clone(), new.clone());
        let (use_new, stop, sent, rejected) = (use_new.clone(), stop.clone(), sent.clone(), rejected.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let key = if use_new.load(Ordering::SeqCst) { &new } else { &old };
                if s.deliver(&base, key, &guid()).await != 202 {
                    rejected.fetch_add(1, Ordering::SeqCst);
                }
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let secrets: Api<Secret> = Api::namespaced(s.env.client().await, &s.ns.name);
    let pp = PatchParams::default();
    // 1. The new key joins the old one.
    secrets
        .replace("repo-hook-hmac", &PostParams::default(), &{
            let mut sec = key_secret(&[&old, &new]);
            sec.metadata.resource_version =
                secrets.get("repo-hook-hmac").await.unwrap().metadata.resource_version;
            sec
        })
        .await
        .unwrap();
    // 2. The receiver has loaded it (a probe signed with it is accepted).
    eventually("the receiver to load the new key", WAIT, || async {
        (s.deliver(&base, &new, &guid()).await == 202).then_some(())
    })
    .await;
    // 3. GitHub switches to the new key.
    use_new.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 4. After the overlap the old key goes.
    let remove_old = json!({"data": {old.entry_name(): null}});
    secrets.patch("repo-hook-hmac", &pp, &Patch::Merge(&remove_old)).await.unwrap();
    eventually("the receiver to drop the old key", WAIT, || async {
        (s.deliver(&base, &old, &guid()).await == 401).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    assert!(sent.load(Ordering::SeqCst) > 20, "traffic flowed throughout");
    assert_eq!(rejected.load(Ordering::SeqCst), 0, "no delivery rejected during rotation");
}

#[tokio::test]
async fn a_replica_killed_mid_dispatch_hands_its_work_to_another() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("slow", 5)], &key).await;
    s.sink.set_mode("slow", Mode::Slow(1500));
    let (mut first, base) = s.receiver("r1").await;
    let guids = s.deliver_many(&base, &key, 8).await;
    eventually("dispatches in flight", WAIT, || async { (s.sink.max_in_flight("slow") > 0).then_some(()) })
        .await;
    first.kill(); // SIGKILL: no settling, no goodbye

    let (_second, _) = s.receiver("r2").await;
    s.until_received("slow", &guids).await;
    let got = s.ids("slow");
    // At-least-once: what was mid-call when r1 died may arrive twice (same
    // CloudEvent id), everything arrives.
    assert!(got.len() >= 8 && got.len() <= 12, "{got:?}");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_work_and_exits_promptly() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("slow", 10)], &key).await;
    s.sink.set_mode("slow", Mode::Slow(2000));
    let (mut receiver, base) = s.receiver("r1").await;
    let guids = s.deliver_many(&base, &key, 2).await;
    eventually("dispatches in flight", WAIT, || async { (s.sink.max_in_flight("slow") == 2).then_some(()) })
        .await;
    // NB: terminate() blocks until the process exits; keep it off the
    // runtime that serves the sample agent the receiver is still calling.
    let (took, receiver) =
        tokio::task::spawn_blocking(move || (receiver.terminate(), receiver)).await.unwrap();
    assert!(took < Duration::from_secs(30), "shutdown took {took:?}");
    // The dispatches in flight were finished, not abandoned.
    s.until_received("slow", &guids).await;
    assert!(receiver.log().contains("receiver stopped"), "{}", receiver.log());
}

/// `hookwarden admin -o json ...` against a receiver; returns the parsed JSON output.
fn admin_cli(admin: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    admin_cli_text(admin, &[&["-o", "json"], args].concat()).map(|text| serde_json::from_str(&text).unwrap())
}

/// `hookwarden admin ...` against a receiver; returns what it prints.
fn admin_cli_text(admin: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookwarden"))
        .arg("admin")
        .args(args)
        .env("HOOKWARDEN_ADMIN_URL", admin)
        .env("HOOKWARDEN_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

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
async fn each_replica_reports_the_keys_it_has_loaded() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::ListParams;
    let old = HmacKey::generate(1);
    let new = HmacKey::generate(2);
    let s = System::new(&[("a", 5)], &old).await;
    let (_r1, _) = s.receiver("r1").await;
    let (r2, _) = s.receiver("r2").await;
    let client = s.env.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &s.ns.name);
    let receivers = ListParams::default().labels("app.kubernetes.io/component=receiver");
    let secret = format!("{}/repo-hook-hmac", s.ns.name);
    let missing = |version: String| {
        let (leases, receivers, secret) = (leases.clone(), receivers.clone(), secret.clone());
        async move {
            let list = leases.list(&receivers).await.unwrap().items;
            (
                list.len(),
                keys::replicas_missing(&list, k8s_openapi::jiff::Timestamp::now(), &secret, &version),
            )
        }
    };
    eventually("both replicas to report the current key", WAIT, || async {
        let (n, missing) = missing(old.version().to_owned()).await;
        (n == 2 && missing.is_empty()).then_some(())
    })
    .await;
    assert_eq!(missing(new.version().to_owned()).await.1.len(), 2, "nobody has the new key yet");

    let secrets: Api<Secret> = Api::namespaced(client, &s.ns.name);
    let add = json!({"data": {new.entry_name(): k8s_openapi::ByteString(new.secret().to_vec())}});
    secrets.patch("repo-hook-hmac", &PatchParams::default(), &Patch::Merge(&add)).await.unwrap();
    eventually("both replicas to report the new key", WAIT, || async {
        missing(new.version().to_owned()).await.1.is_empty().then_some(())
    })
    .await;

    // A replica that stops cleanly withdraws its report.
    let mut r2 = r2;
    tokio::task::spawn_blocking(move || r2.terminate()).await.unwrap();
    assert_eq!(missing(new.version().to_owned()).await.0, 1);
}

/// The Standard Webhooks verifier from npm (e2e/npm/standard-webhooks-agent.js),
/// killed when dropped.
struct ReferenceAgent {
    child: std::process::Child,
    url: String,
}

impl ReferenceAgent {
    fn start() -> Self {
        use std::io::BufRead;
        let script = common::npm_fixtures().join("../../standard-webhooks-agent.js");
        let mut child = std::process::Command::new("node")
            .arg(script)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node (installed with the npm fixtures)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().expect("the reference agent prints its port");
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }

    async fn accept_keys(&self, http: &reqwest::Client, keys: &[&str]) {
        let r = http.put(format!("{}/_keys", self.url)).json(keys).send().await.unwrap();
        assert!(r.status().is_success());
    }

    async fn received(&self, http: &reqwest::Client) -> serde_json::Value {
        common::get_json(http, &format!("{}/_received", self.url)).await
    }

    async fn verified(&self, http: &reqwest::Client, agent: &str) -> Vec<String> {
        let got = self.received(http).await;
        serde_json::from_value(got["verified"][agent].clone()).unwrap_or_default()
    }
}

impl Drop for ReferenceAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signing_secret(name: &str, keys: &[(&str, &str)]) -> Secret {
    let mut secret = Secret {
        string_data: Some(keys.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        ..Secret::default()
    };
    secret.metadata.name = Some(name.into());
    secret.metadata.labels = Some([("hookwarden.io/agent-signing".to_owned(), "true".to_owned())].into());
    secret
}

#[tokio::test]
async fn agents_get_calls_signed_as_standard_webhooks_and_keys_rotate_without_a_refusal() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("reviewer", 10)], &key).await;
    let reference = ReferenceAgent::start();
    let (old, new) = (SigningKey::generate(), SigningKey::generate());
    reference.accept_keys(&s.http, &[&old]).await;
    // The reference really verifies: an unsigned call is refused.
    let r = s.http.post(format!("{}/probe", reference.url)).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);

    let secrets: Api<Secret> = Api::namespaced(s.env.client().await, &s.ns.name);
    let pp = PostParams::default();
    secrets.create(&pp, &signing_secret("agent-signing", &[("current", &old)])).await.unwrap();
    let agents = json!([
        {"name": "signed", "url": format!("{}/signed", reference.url), "timeoutSeconds": 5,
         "signingSecretRef": {"name": "agent-signing"}},
        {"name": "late", "url": format!("{}/late", reference.url), "timeoutSeconds": 5,
         "signingSecretRef": {"name": "late-signing"}},
    ]);
    s.kubectl_patch_policy(&json!({"spec": {"agents": agents}}).to_string());
    let (_receiver, base) = s.receiver("r1").await;

    // Signed with the current key, verified by the reference implementation.
    let first = s.deliver_many(&base, &key, 5).await;
    eventually("the reference agent to verify 5 calls", WAIT, || async {
        let got = reference.verified(&s.http, "signed").await;
        first.iter().all(|g| got.contains(g)).then_some(())
    })
    .await;

    // An agent whose Secret does not exist yet gets nothing, unsigned or otherwise...
    let refused_before = reference.received(&s.http).await["refused"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(reference.verified(&s.http, "late").await.is_empty());
    let text = s.http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let unsigned = |l: &&str| {
        l.starts_with("github_webhook_errors_total")
            && l.contains(r#"agent="late""#)
            && l.contains(r#"reason="unsigned""#)
    };
    assert!(text.lines().filter(unsigned).any(|l| !l.ends_with(" 0")), "unsigned failures counted:\n{text}");
    // ...until the Secret appears: its retries then arrive, signed (with
    // two keys: the reference accepts the one it knows).
    secrets.create(&pp, &signing_secret("late-signing", &[("a", &old), ("b", &new)])).await.unwrap();
    eventually("the late agent's retries to arrive signed", WAIT, || async {
        let got = reference.verified(&s.http, "late").await;
        first.iter().all(|g| got.contains(g)).then_some(())
    })
    .await;

    // Rotation: add the new key beside the old, move the agent to the new
    // key, then drop the old one. No call is refused at any step.
    let patch = |keys: serde_json::Value| Patch::Merge(json!({"stringData": keys}));
    secrets.patch("agent-signing", &PatchParams::default(), &patch(json!({"next": new}))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    reference.accept_keys(&s.http, &[&new]).await;
    let second = s.deliver_many(&base, &key, 5).await;
    eventually("calls verified with the new key", WAIT, || async {
        let got = reference.verified(&s.http, "signed").await;
        second.iter().all(|g| got.contains(g)).then_some(())
    })
    .await;
    let received = reference.received(&s.http).await;
    assert_eq!(received["refused"].as_u64().unwrap(), refused_before, "{received}");
    let verified = reference.verified(&s.http, "signed").await;
    assert_eq!(verified.len(), 10, "each call once: {verified:?}");
}

#[tokio::test]
async fn agents_get_their_credentials_as_headers_reloaded_live_and_never_logged() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("reviewer", 5)], &key).await;
    let url = s.policy().await.spec.agents[0].url.clone();
    let agents = json!([{"name": "reviewer", "url": url, "timeoutSeconds": 5,
                         "headersSecretRef": {"name": "reviewer-credentials"}}]);
    s.kubectl_patch_policy(&json!({"spec": {"agents": agents}}).to_string());
    let (receiver, base) = s.receiver("r1").await;

    // No credentials loaded: nothing is sent, and the failure says why.
    let first = s.deliver_many(&base, &key, 3).await;
    eventually("calls held for their credentials", WAIT, || async {
        let text = scrape(&s.http, &format!("{base}/metrics")).await;
        let series = r#"github_webhook_errors_total{agent="reviewer",policy=""#;
        text.lines()
            .any(|l| l.starts_with(series) && l.contains(r#"reason="no_credentials""#) && !l.ends_with(" 0"))
            .then_some(())
    })
    .await;
    assert!(s.sink.calls("reviewer").is_empty(), "nothing sent without its credentials");

    // The Secret appears (labelled): the retries arrive with its headers.
    let secrets: Api<Secret> = Api::namespaced(s.env.client().await, &s.ns.name);
    let mut secret = Secret {
        string_data: Some(
            [("Authorization", "Bearer first-t0ken\n"), ("X-Api-Key", "k3y-one"), ("ce-id", "forged")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
        ),
        ..Secret::default()
    };
    secret.metadata.name = Some("reviewer-credentials".into());
    secret.metadata.labels = Some([("hookwarden.io/agent-headers".to_owned(), "true".to_owned())].into());
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let auth = |ids: &[String]| {
        let got = s.sink.received("reviewer");
        ids.iter()
            .map(|id| got.iter().find(|r| &r.id == id).map(|r| r.authorization.clone().unwrap_or_default()))
            .collect::<Option<Vec<_>>>()
    };
    let sent = eventually("the held calls to arrive with credentials", WAIT, || async { auth(&first) }).await;
    assert!(sent.iter().all(|a| a == "Bearer first-t0ken"), "{sent:?}");
    let ids: Vec<String> = s.sink.received("reviewer").into_iter().map(|r| r.id).collect();
    assert!(first.iter().all(|g| ids.contains(g)), "a credentials entry cannot forge ce-id: {ids:?}");

    // Rotated in place: the next calls carry the new value, no restart.
    let patch = Patch::Merge(json!({"stringData": {"Authorization": "Bearer second-t0ken"}}));
    secrets.patch("reviewer-credentials", &PatchParams::default(), &patch).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let one = s.deliver_many(&base, &key, 1).await;
        let sent = eventually("the call to arrive", WAIT, || async { auth(&one) }).await;
        if sent[0] == "Bearer second-t0ken" {
            break;
        }
        assert_eq!(sent[0], "Bearer first-t0ken", "the old value until the new one is loaded");
        assert!(Instant::now() < deadline, "the rotated credentials never came into use");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Never in a log line: the entries are named, their values are not.
    let log = receiver.log();
    assert!(
        log.contains("credentials Secret entry skipped") && log.contains("ce-id"),
        "the forged entry is named"
    );
    for secret in ["first-t0ken", "second-t0ken", "k3y-one"] {
        assert!(!log.contains(secret), "{secret} logged by the receiver");
    }
}

/// Follows `/admin/stream` in the background; what it received so far.
fn follow(admin: &str, last_event_id: Option<String>) -> std::sync::Arc<std::sync::Mutex<Vec<SseEvent>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (admin, sink) = (admin.to_owned(), seen.clone());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut request = http.get(format!("{admin}/admin/stream")).bearer_auth(ADMIN_TOKEN);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let mut response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut parser = SseParser::default();
        while let Ok(Some(chunk)) = response.chunk().await {
            sink.lock().unwrap().extend(parser.push(&chunk));
        }
    });
    seen
}

fn deliveries(events: &[SseEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.event == "delivery")
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            (v["guid"].as_str().unwrap().to_owned(), v["status"].as_str().unwrap().to_owned())
        })
        .collect()
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

/// A developer's agent for `hookwarden forward`: checks each call's
/// signature with its own secret, records the GUIDs in the order they came;
/// stops (closing every connection) and starts again on its port.
struct LocalAgent {
    port: u16,
    got: Arc<std::sync::Mutex<Vec<String>>>,
    badly_signed: Arc<AtomicUsize>,
    stop: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl LocalAgent {
    const SECRET: &[u8] = b"the-laptop-secret";

    async fn start(port: u16) -> Self {
        let mut agent = Self { port, got: Default::default(), badly_signed: Default::default(), stop: None };
        agent.resume().await;
        agent
    }

    async fn resume(&mut self) {
        let (got, bad) = (self.got.clone(), self.badly_signed.clone());
        let app = axum::Router::new().route(
            "/webhook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (got, bad) = (got.clone(), bad.clone());
                async move {
                    let signed = headers.get(signature::HEADER).map(|v| v.as_bytes());
                    if signature::verify(signed, &body, &[LocalAgent::SECRET]).is_err() {
                        bad.fetch_add(1, Ordering::SeqCst);
                        return axum::http::StatusCode::UNAUTHORIZED;
                    }
                    let guid = headers["x-github-delivery"].to_str().unwrap().to_owned();
                    got.lock().unwrap().push(guid);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async { rx.await.unwrap_or(()) }).await;
        });
        self.stop = Some((tx, server));
    }

    async fn halt(&mut self) {
        let (tx, server) = self.stop.take().expect("running");
        tx.send(()).unwrap();
        server.await.unwrap();
    }

    fn got(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

/// A TCP relay whose connections can all be cut at once (a lost port-forward).
struct Relay {
    port: u16,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn to(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let live = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                live.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Self { port, connections }
    }

    fn cut(&self) {
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

#[tokio::test]
async fn forward_brings_a_policys_deliveries_to_a_local_agent_re_signed_in_order_through_outages() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("agent", 5)], &key).await;
    let (_receiver, base, admin) = s.receiver_with_admin("r1").await;
    let relay = Relay::to(&admin).await;
    let mut laptop = LocalAgent::start(free_port()).await;
    let forward = Process::start(
        &s.env,
        "forward",
        &[
            "forward",
            "--url",
            &format!("http://127.0.0.1:{}", relay.port),
            "--policy",
            &format!("{}/default", s.ns.name),
            "--to",
            &format!("http://127.0.0.1:{}/webhook", laptop.port),
        ],
        &[
            ("HOOKWARDEN_ADMIN_TOKEN", ADMIN_TOKEN),
            ("HOOKWARDEN_FORWARD_SECRET", std::str::from_utf8(LocalAgent::SECRET).unwrap()),
        ],
    );
    // The tap is written from the moment forward follows it.
    let redis = redis::Client::open(s.env.var("REDIS_URL")).unwrap();
    let conn = redis.get_multiplexed_async_connection().await.unwrap();
    let switch = format!("{}:{{{}/default}}:tap:on", s.prefix, s.ns.name);
    eventually("forward follows the tap", WAIT, || {
        let (mut conn, switch) = (conn.clone(), switch.clone());
        async move { redis::AsyncCommands::exists::<_, bool>(&mut conn, &switch).await.ok()?.then_some(()) }
    })
    .await;

    // Each delivery reaches the laptop, signed with its own secret, in order.
    let mut sent = s.deliver_many(&base, &key, 5).await;
    eventually("the first five on the laptop", WAIT, || async { (laptop.got() == sent).then_some(()) }).await;

    // The local agent stops: forward says so, holds the deliveries, and sends
    // them, in order, once the agent is back.
    laptop.halt().await;
    sent.extend(s.deliver_many(&base, &key, 5).await);
    eventually("forward says the local agent is down", WAIT, || async {
        forward.log().contains("is down").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    laptop.resume().await;
    eventually("the held deliveries on the laptop", WAIT, || async { (laptop.got() == sent).then_some(()) })
        .await;
    assert!(forward.log().contains("is back"), "{}", forward.log());

    // The connection to the cluster breaks (a port-forward that died) while
    // deliveries keep coming: forward resumes after the last one it handled.
    relay.cut();
    sent.extend(s.deliver_many(&base, &key, 5).await);
    relay.cut();
    sent.extend(s.deliver_many(&base, &key, 5).await);
    eventually("every delivery once, in order, after the cuts", WAIT, || async {
        (laptop.got() == sent).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(laptop.got(), sent, "nothing repeated after the last one");
    assert!(forward.log().contains("reconnecting from the last event"), "{}", forward.log());
    assert_eq!(laptop.badly_signed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn forward_since_starts_with_the_kept_history_and_goes_on_live_without_a_gap_or_a_repeat() {
    let key = HmacKey::generate(1);
    let s = System::new(&[("agent", 5)], &key).await;
    s.kubectl_patch_policy(r#"{"spec":{"history":"1h"}}"#);
    let (_receiver, base, admin) = s.receiver_with_admin("r1").await;
    let redis = redis::Client::open(s.env.var("REDIS_URL")).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let history = format!("{}:{{{}/default}}:history", s.prefix, s.ns.name);
    // The receiver keeps history once it has read the policy's new spec.
    eventually("history kept", WAIT, || {
        let (mut conn, history) = (conn.clone(), history.clone());
        let (s, base, key) = (&s, &base, &key);
        async move {
            s.deliver_many(base, key, 1).await;
            (redis::AsyncCommands::xlen::<_, u64>(&mut conn, &history).await.ok()? > 0).then_some(())
        }
    })
    .await;
    let before: u64 = redis::AsyncCommands::xlen(&mut conn, &history).await.unwrap();
    s.deliver_many(&base, &key, 3).await;
    eventually("the older ones routed", WAIT, || {
        let (mut conn, history) = (conn.clone(), history.clone());
        async move {
            (redis::AsyncCommands::xlen::<_, u64>(&mut conn, &history).await.ok()? == before + 3)
                .then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = k8s_openapi::jiff::Timestamp::now().to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut sent = s.deliver_many(&base, &key, 10).await;

    let laptop = LocalAgent::start(free_port()).await;
    let forward = Process::start(
        &s.env,
        "forward-since",
        &[
            "forward",
            "--url",
            &admin,
            "--policy",
            &format!("{}/default", s.ns.name),
            "--to",
            &format!("http://127.0.0.1:{}/webhook", laptop.port),
            "--since",
            &since,
        ],
        &[
            ("HOOKWARDEN_ADMIN_TOKEN", ADMIN_TOKEN),
            ("HOOKWARDEN_FORWARD_SECRET", std::str::from_utf8(LocalAgent::SECRET).unwrap()),
        ],
    );
    // Deliveries keep coming while forward reads the history and crosses
    // over to the live tap.
    for _ in 0..15 {
        sent.extend(s.deliver_many(&base, &key, 1).await);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    eventually("every delivery since then on the laptop", WAIT, || async {
        (laptop.got().len() >= sent.len()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // NB: the kept ones come in the order they were routed, which the
    // router's concurrency may swap; the live ones in the order queued.
    let got = laptop.got();
    let (mut got_sorted, mut sent_sorted) = (got.clone(), sent.clone());
    got_sorted.sort();
    sent_sorted.sort();
    assert_eq!(got_sorted, sent_sorted, "kept and live deliveries once each, none from before --since");
    assert_eq!(got[got.len() - 5..], sent[sent.len() - 5..], "the live ones in order");
    assert_eq!(laptop.badly_signed.load(Ordering::SeqCst), 0);
    drop(forward);

    // A policy that keeps no history says so instead of starting from now.
    s.kubectl_patch_policy(r#"{"spec":{"history":null}}"#);
    let url = format!("{admin}/admin/policies/{}/default/tap?sinceMs=0", s.ns.name);
    let answer = eventually("the refusal", WAIT, || async {
        let r = s.http.get(&url).bearer_auth(ADMIN_TOKEN).send().await.ok()?;
        (r.status() == 400).then_some(r)
    })
    .await;
    assert!(answer.text().await.unwrap().contains("keeps no history"));
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

/// A span as Jaeger shows it: name, span id, parent span id, failed.
type TraceSpan = (String, String, Option<String>, bool);

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
