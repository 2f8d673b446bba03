//! Keys and secrets the receivers load live: a hook's HMAC keys rotated while deliveries flow,
//! the keys each replica reports it loaded, agents' Standard Webhooks signing keys and their
//! credentials as headers.
//!
//! Real processes against the real apiserver and Redis (`tests/common/system.rs`),
//! driven the way a user drives them.

mod common;

use common::WAIT;
use common::eventually;
use common::guid;
use common::scrape;
use common::system::{System, key_secret};
use hookwarden::keys;
use hookwarden::keys::HmacKey;
use hookwarden::standard_webhooks::SigningKey;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::Patch;
use kube::api::PatchParams;
use kube::api::PostParams;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

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
