//! `hookwarden forward`: a policy's deliveries on a developer's machine, re-signed, in order,
//! through outages, and from the kept history with `--since`.
//!
//! Real processes against the real apiserver and Redis (`tests/common/system.rs`),
//! driven the way a user drives them.

mod common;

use common::Process;
use common::WAIT;
use common::eventually;
use common::free_port;
use common::system::{ADMIN_TOKEN, System};
use hookwarden::keys::HmacKey;
use hookwarden::signature;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

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
    let conn = redis.get_multiplexed_async_connection().await.unwrap();
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
    // NB: an agent gets a delivery only after it was routed, and routing
    // writes the history in the same step: then these three are kept.
    let older = s.deliver_many(&base, &key, 3).await;
    s.until_received("agent", &older).await;
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
