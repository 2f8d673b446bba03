//! The receiver's ingest path against a real Redis: what GitHub sends is
//! verified and queued durably exactly once; everything else gets a clear
//! error and queues nothing. And its front door, as a slow or flooding
//! client meets it on a real socket: timeouts and caps.
//!
//! Over 400 lines: one suite per area, each test a scenario a user runs, with the world it needs.

mod common;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use common::{PrivateRedis, TestEnv, eventually, guid, redis_prefix, sample, webhook_examples};
use hookwarden::{
    ObjectRef,
    keys::HmacKey,
    queue::{ActivityFilter, Delivery, Queue, TAP_LEN},
    receiver::{
        ingest::{
            drain::{Drain, QUIET},
            http::{AppState, DEFAULT_BODY_LIMIT, router},
            rejections::{LOGGED_PER_SECOND, Rejections},
            serve::{Limits, serve},
            sources::{Allowlist, FailureLimit},
        },
        registry::{HookInfo, PolicySettings, Registry, Watched},
    },
    signature,
    telemetry::ReceiverMetrics,
};
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "It's a Secret to Everybody";

struct Harness {
    app: Router,
    registry: Arc<Registry>,
    queue: Queue,
    policy: ObjectRef,
    drain: Arc<Drain>,
    rejections: Arc<Rejections>,
    /// Not enforced; GitHub's ranges can be set on it.
    allowlist: Arc<Allowlist>,
}

async fn harness_with(redis_url: &str, body_limit: usize) -> Harness {
    harness_limited(redis_url, body_limit, Limits::default(), FailureLimit::off()).await
}

async fn harness_limited(
    redis_url: &str,
    body_limit: usize,
    limits: Limits,
    failures: FailureLimit,
) -> Harness {
    let queue = Queue::connect(redis_url, &redis_prefix()).await.expect("connect to redis");
    let registry = Arc::new(Registry::new());
    let secret = ObjectRef::new("team", "repo-hook-hmac");
    let policy = ObjectRef::new("team", "default");
    registry.set_hook(
        ObjectRef::new("team", "repo-hook"),
        HookInfo { secret: secret.clone(), policy: policy.clone(), ready: None, last_delivery: None },
    );
    registry.set_keys(secret, vec![HmacKey::new("000000000001", KEY)]);
    for watched in Watched::ALL {
        registry.mark_synced(watched);
    }
    let drain = Arc::new(Drain::default());
    let rejections = Arc::new(Rejections::default());
    let allowlist = Arc::new(Allowlist::off());
    let metrics = Arc::new(ReceiverMetrics::new());
    let queue = queue.batch_sizes(metrics.enqueue_batch.clone());
    let state = AppState {
        registry: registry.clone(),
        queue: queue.clone(),
        metrics,
        body_limit,
        drain: drain.clone(),
        limits,
        rejections: rejections.clone(),
        failures: Arc::new(failures),
        allowlist: allowlist.clone(),
        body_budget: Arc::new(hookwarden::receiver::ingest::body_budget::BodyBudget::new(
            limits.unauthenticated_bytes,
        )),
    };
    Harness { app: router(state), registry, queue, policy, drain, rejections, allowlist }
}

impl Harness {
    /// What `/metrics` shows now.
    async fn metrics_text(&self) -> String {
        let res =
            self.app.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
        String::from_utf8(axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap()
    }
}

async fn harness() -> Harness {
    harness_with(TestEnv::load().var("REDIS_URL"), DEFAULT_BODY_LIMIT).await
}

/// A delivery as GitHub sends it.
fn delivery(
    event: &str,
    guid: &str,
    content_type: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> Request<Body> {
    let mut req = Request::post("/hooks/team/repo-hook")
        .header("x-github-event", event)
        .header("x-github-delivery", guid)
        .header("content-type", content_type)
        .header("user-agent", "GitHub-Hookshot/abc123");
    if let Some(sig) = signature {
        req = req.header("x-hub-signature-256", sig);
    }
    req.body(Body::from(body)).unwrap()
}

fn signed(event: &str, guid: &str, body: &[u8]) -> Request<Body> {
    delivery(event, guid, "application/json", body.to_vec(), Some(signature::sign(KEY.as_bytes(), body)))
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Value, Option<String>) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), retry_after)
}

#[tokio::test]
async fn githubs_test_vector_passes_the_signature_check() {
    let h = harness().await;
    // The published vector's body is not JSON: it must get past the signature
    // (not 401) and then fail parsing (400).
    let req = delivery(
        "push",
        &guid(),
        "application/json",
        b"Hello, World!".to_vec(),
        Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".into()),
    );
    let (status, body, _) = send(&h.app, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("malformed payload"), "{body}");
}

#[tokio::test]
async fn every_github_example_is_accepted_once_a_redelivery_is_a_duplicate_and_a_replay_is_refused() {
    let h = harness().await;
    let examples = webhook_examples();
    assert!(examples.len() > 300, "expected GitHub's full example set, got {}", examples.len());
    let mut queued = 0;
    let mut sent = Vec::new();
    // The set lists a few payloads twice, byte for byte (five in 7.6.1):
    // not distinct events, so the copy is refused as a replay. Every
    // distinct payload is accepted.
    let mut distinct = HashSet::new();
    let mut copies = 0;
    for (event, payload) in &examples {
        let body = serde_json::to_vec(payload).unwrap();
        let first = guid();
        let (status, reply, _) = send(&h.app, signed(event, &first, &body)).await;
        if event == "ping" {
            assert_eq!(status, StatusCode::OK, "{event}: {reply}");
        } else if distinct.insert(body.clone()) {
            assert_eq!(status, StatusCode::ACCEPTED, "{event}: {reply}");
            queued += 1;
            sent.push((event, body.clone(), first.clone()));
        } else {
            assert_eq!(status, StatusCode::CONFLICT, "{event}, a byte-identical copy: {reply}");
            copies += 1;
        }

        let mut tampered = body.clone();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 0x01;
        let sig = signature::sign(KEY.as_bytes(), &body);
        let req = delivery(event, &guid(), "application/json", tampered, Some(sig));
        let (status, reply, _) = send(&h.app, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{event} with a flipped byte: {reply}");
    }
    assert_eq!(
        h.queue.len(&h.policy).await.unwrap(),
        queued,
        "each accepted delivery queued once, no tampered one"
    );

    // GitHub's redelivery (same GUID, same body): a harmless duplicate. The
    // same captured body and signature under a new GUID: a replay, refused —
    // also when the signature's hex is written in upper case.
    assert_eq!(queued as usize, distinct.len(), "every distinct payload accepted ({copies} copies refused)");
    for (event, body, first) in &sent {
        let (status, reply, _) = send(&h.app, signed(event, first, body)).await;
        assert_eq!((status, reply["status"].as_str()), (StatusCode::OK, Some("duplicate")), "{event}");
        let (status, reply, _) = send(&h.app, signed(event, &guid(), body)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{event} replayed: {reply}");
        assert!(reply["error"].as_str().unwrap().starts_with("replay"), "{reply}");
        let upper = signature::sign(KEY.as_bytes(), body).to_uppercase().replacen("SHA256=", "sha256=", 1);
        let req = delivery(event, &guid(), "application/json", body.clone(), Some(upper));
        assert_eq!(send(&h.app, req).await.0, StatusCode::CONFLICT, "{event} replayed in upper case");
    }
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), queued, "no redelivery or replay queued");
    let replayed = h
        .rejections
        .matching(&ActivityFilter { status: Some("rejected".into()), ..ActivityFilter::default() }, 1000);
    assert!(replayed.iter().any(|a| a.detail.as_deref() == Some("replay")), "replays are listed");
}

#[tokio::test]
async fn form_encoded_deliveries_are_accepted_with_the_json_payload_queued() {
    let h = harness().await;
    let payload = json!({"action": "opened", "repository": {"full_name": "octo-org/hello-world"}});
    let body: String =
        form_urlencoded::Serializer::new(String::new()).append_pair("payload", &payload.to_string()).finish();
    let sig = signature::sign(KEY.as_bytes(), body.as_bytes());
    let req = delivery("issues", &guid(), "application/x-www-form-urlencoded", body.into_bytes(), Some(sig));
    let (status, reply, _) = send(&h.app, req).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");

    h.queue.ensure_group(&h.policy, None).await.unwrap();
    let entries = h.queue.read(&h.policy, None, "test", 10, 100).await.unwrap();
    assert_eq!(entries.len(), 1);
    let d = &entries[0].delivery;
    assert_eq!(serde_json::from_slice::<Value>(&d.payload).unwrap(), payload);
    assert_eq!(d.repository.as_deref(), Some("octo-org/hello-world"));
    assert_eq!(d.action.as_deref(), Some("opened"));
    assert_eq!(d.event, "issues");
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_queues_nothing() {
    let h = harness_with(TestEnv::load().var("REDIS_URL"), 64 * 1024).await;
    let body = br#"{"action":"opened"}"#.to_vec();
    let sig = Some(signature::sign(KEY.as_bytes(), &body));
    let big = serde_json::to_vec(&json!({"x": "y".repeat(70 * 1024)})).unwrap();
    let big_sig = Some(signature::sign(KEY.as_bytes(), &big));
    let sha1_only = Request::post("/hooks/team/repo-hook")
        .header("x-github-event", "push")
        .header("x-github-delivery", guid())
        .header("content-type", "application/json")
        .header("x-hub-signature", signature::sign_sha1(KEY.as_bytes(), &body))
        .body(Body::from(body.clone()))
        .unwrap();
    let unknown_hook = Request::post("/hooks/team/nope")
        .header("x-github-event", "push")
        .header("x-github-delivery", guid())
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sig.clone().unwrap())
        .body(Body::from(body.clone()))
        .unwrap();
    let no_guid = Request::post("/hooks/team/repo-hook")
        .header("x-github-event", "push")
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sig.clone().unwrap())
        .body(Body::from(body.clone()))
        .unwrap();
    let form_without_payload = b"other=1".to_vec();
    let form_sig = Some(signature::sign(KEY.as_bytes(), &form_without_payload));
    let wrong_key = Some(signature::sign(b"not the key", &body));

    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        (
            "unsigned",
            delivery("push", &guid(), "application/json", body.clone(), None),
            StatusCode::UNAUTHORIZED,
            "missing X-Hub-Signature-256",
        ),
        ("SHA-1 signature only", sha1_only, StatusCode::UNAUTHORIZED, "missing X-Hub-Signature-256"),
        (
            "signed with another key",
            delivery("push", &guid(), "application/json", body.clone(), wrong_key),
            StatusCode::UNAUTHORIZED,
            "does not match any current key",
        ),
        (
            "malformed signature",
            delivery("push", &guid(), "application/json", body.clone(), Some("sha256=abc".into())),
            StatusCode::UNAUTHORIZED,
            "malformed X-Hub-Signature-256",
        ),
        ("unknown hook", unknown_hook, StatusCode::NOT_FOUND, "no WebhookConfig team/nope"),
        (
            "body over the cap",
            delivery("push", &guid(), "application/json", big, big_sig),
            StatusCode::PAYLOAD_TOO_LARGE,
            "exceeds 65536 bytes",
        ),
        (
            "text/plain",
            delivery("push", &guid(), "text/plain", body.clone(), sig.clone()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported content type",
        ),
        (
            "malformed JSON",
            delivery(
                "push",
                &guid(),
                "application/json",
                b"{\"a\":".to_vec(),
                Some(signature::sign(KEY.as_bytes(), b"{\"a\":")),
            ),
            StatusCode::BAD_REQUEST,
            "malformed payload",
        ),
        (
            "JSON that is not an object",
            delivery(
                "push",
                &guid(),
                "application/json",
                b"[1,2]".to_vec(),
                Some(signature::sign(KEY.as_bytes(), b"[1,2]")),
            ),
            StatusCode::BAD_REQUEST,
            "malformed payload",
        ),
        (
            "form without payload",
            delivery("push", &guid(), "application/x-www-form-urlencoded", form_without_payload, form_sig),
            StatusCode::BAD_REQUEST,
            "no payload field",
        ),
        ("no delivery GUID", no_guid, StatusCode::BAD_REQUEST, "x-github-delivery"),
        (
            "event name with spaces",
            delivery("pull request", &guid(), "application/json", body.clone(), sig.clone()),
            StatusCode::BAD_REQUEST,
            "x-github-event",
        ),
    ];
    for (what, req, want, text) in cases {
        let (status, reply, _) = send(&h.app, req).await;
        assert_eq!(status, want, "{what}: {reply}");
        let message = reply["error"].as_str().unwrap_or_default();
        assert!(message.contains(text), "{what}: {message:?} lacks {text:?}");
        assert!(!message.contains(KEY), "{what}: error leaks the key");
    }
    let res = h
        .app
        .clone()
        .oneshot(Request::get("/hooks/team/repo-hook").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), 0, "nothing rejected was queued");

    // A hook whose keys are not loaded yet answers 503, so GitHub's record
    // shows a failure the operator's redelivery pass will retry.
    h.registry.set_keys(ObjectRef::new("team", "repo-hook-hmac"), vec![]);
    let (status, reply, retry_after) = send(&h.app, signed("push", &guid(), &body)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert!(retry_after.is_some());
}

#[tokio::test]
async fn a_redelivery_is_answered_but_not_queued_twice() {
    let h = harness().await;
    let id = guid();
    let body = br#"{"action":"opened"}"#;
    let (first, ..) = send(&h.app, signed("issues", &id, body)).await;
    let (second, reply, _) = send(&h.app, signed("issues", &id, body)).await;
    assert_eq!(first, StatusCode::ACCEPTED);
    assert_eq!(second, StatusCode::OK);
    assert_eq!(reply["status"], "duplicate");
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), 1);
}

#[tokio::test]
async fn the_queue_length_gauge_is_current_at_every_scrape() {
    let h = harness().await;
    for n in 0..5 {
        let body = format!(r#"{{"action":"opened","n":{n}}}"#);
        assert_eq!(send(&h.app, signed("issues", &guid(), body.as_bytes())).await.0, StatusCode::ACCEPTED);
    }
    // No dispatcher runs here: nothing but the scrape itself reads the queue.
    let text = h.metrics_text().await;
    let series = format!("github_webhook_queue_length{{policy=\"{}\"}} 5", h.policy);
    assert!(text.contains(&series), "{series} missing from:\n{text}");
}

#[tokio::test]
async fn a_draining_receiver_is_not_ready_but_still_accepts_and_closes_connections() {
    let h = harness().await;
    let ready = |app: &Router| {
        let app = app.clone();
        async move { app.oneshot(Request::get("/readyz").body(Body::empty()).unwrap()).await.unwrap() }
    };
    assert_eq!(ready(&h.app).await.status(), StatusCode::OK);
    let open = h.app.clone().oneshot(signed("issues", &guid(), br#"{"n":1}"#)).await.unwrap();
    assert!(open.headers().get("connection").is_none(), "no Connection: close before SIGTERM");

    h.drain.begin(); // what SIGTERM does first
    assert_eq!(ready(&h.app).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    let late = h.app.clone().oneshot(signed("issues", &guid(), br#"{"n":2}"#)).await.unwrap();
    assert_eq!(
        late.status(),
        StatusCode::ACCEPTED,
        "a delivery routed here during the delay is still accepted"
    );
    assert_eq!(late.headers()["connection"], "close");
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), 2);
}

/// As `run` serves it: the listener closes once the drain has settled.
#[tokio::test]
async fn a_draining_receiver_keeps_accepting_until_deliveries_stop_arriving() {
    let h = harness().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let delay = Duration::from_secs(2);
    let drain = h.drain.clone();
    let metrics = Arc::new(ReceiverMetrics::new());
    let served = tokio::spawn(serve(listener, h.app.clone(), Limits::default(), metrics, async move {
        drain.settled(delay).await;
    }));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let url = format!("http://{addr}/hooks/team/repo-hook");

    h.drain.begin();
    let began = std::time::Instant::now();
    // The Service's rules lag: deliveries still arrive past the delay, each
    // on a new connection (every answer said `Connection: close`).
    let mut sends = Vec::new();
    while began.elapsed() < delay + Duration::from_millis(800) {
        let body = format!(r#"{{"action":"opened","number":{}}}"#, sends.len()).into_bytes();
        let request = http
            .post(&url)
            .header("x-github-event", "issues")
            .header("x-github-delivery", guid())
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature::sign(KEY.as_bytes(), &body))
            .body(body);
        sends.push(tokio::spawn(request.send()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (n, send) in sends.iter_mut().enumerate() {
        let answer = send.await.unwrap().unwrap_or_else(|e| panic!("delivery {n} got no answer: {e:?}"));
        assert_eq!(answer.status(), StatusCode::ACCEPTED, "delivery {n}");
        assert_eq!(answer.headers()["connection"], "close");
    }
    assert!(sends.len() >= 60, "{} deliveries", sends.len());
    // None for QUIET: the listener closes; a late connection is refused, not
    // left waiting for an answer that never comes.
    eventually("the listener closed", QUIET + Duration::from_secs(1), || async {
        tokio::net::TcpStream::connect(addr).await.err().map(|_| ())
    })
    .await;
    tokio::time::timeout(Duration::from_secs(5), served).await.expect("serve returns").unwrap();
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), sends.len() as u64, "every accepted delivery queued");
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let h = harness().await;
    let settings = limited(2);
    h.registry.set_policy(h.policy.clone(), settings.clone());
    let body = |n: u32| format!(r#"{{"action":"opened","number":{n}}}"#).into_bytes();
    let first = guid();
    for (n, id) in [first.clone(), guid()].into_iter().enumerate() {
        assert_eq!(send(&h.app, signed("issues", &id, &body(n as u32))).await.0, StatusCode::ACCEPTED);
    }
    let refused = guid();
    let (status, reply, retry_after) = send(&h.app, signed("issues", &refused, &body(3))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert_eq!(retry_after.as_deref(), Some("30"));
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), 2);
    // A redelivery of something already queued is still a success.
    assert_eq!(send(&h.app, signed("issues", &first, &body(0))).await.0, StatusCode::OK);
    // The refused one left no mark: once there is room, GitHub's redelivery
    // of it (same GUID, same signed body) is queued, neither a duplicate nor a replay.
    h.registry.set_policy(h.policy.clone(), PolicySettings { queue_limit: 3, ..settings });
    assert_eq!(send(&h.app, signed("issues", &refused, &body(3))).await.0, StatusCode::ACCEPTED);
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), 3);
}

/// The policy's settings with `queue_limit`.
fn limited(queue_limit: u64) -> PolicySettings {
    PolicySettings { enabled: true, queue_limit, ..PolicySettings::default() }
}

#[tokio::test]
async fn deliveries_arriving_together_are_queued_in_batches_each_once_and_within_the_limit() {
    let h = harness().await;
    h.registry.set_policy(h.policy.clone(), limited(10_000));
    let body = |n: usize| format!(r#"{{"action":"opened","number":{n}}}"#).into_bytes();
    // 300 distinct deliveries; the first 100 also twice more under their
    // GUID (GitHub's redeliveries), and bodies 200..250 once more under a
    // new GUID (replays): all 550 at once, the copies of a body side by side.
    let guids: Vec<String> = (0..300).map(|_| guid()).collect();
    let mut sends: Vec<(usize, String)> = guids.iter().cloned().enumerate().collect();
    for _ in 0..2 {
        sends.extend(guids[..100].iter().cloned().enumerate());
    }
    sends.extend((200..250).map(|n| (n, guid())));
    let seed = guids[0].bytes().fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
    sends.sort_by_key(|(n, g)| (seed ^ (*n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15), g.clone()));
    let answers = futures::future::join_all(
        sends.iter().map(|(n, g)| async { send(&h.app, signed("issues", g, &body(*n))).await.0 }),
    )
    .await;
    let mut accepted = std::collections::HashMap::<usize, Vec<StatusCode>>::new();
    for ((n, _), status) in sends.iter().zip(&answers) {
        accepted.entry(*n).or_default().push(*status);
    }
    for (n, statuses) in &accepted {
        let queued = statuses.iter().filter(|s| **s == StatusCode::ACCEPTED).count();
        assert_eq!(queued, 1, "body {n} queued once: {statuses:?}");
        let expected_others = if *n < 100 { StatusCode::OK } else { StatusCode::CONFLICT };
        assert!(
            statuses.iter().all(|s| *s == StatusCode::ACCEPTED || *s == expected_others),
            "body {n}: the others are {expected_others}: {statuses:?}"
        );
    }
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), 300, "one entry per distinct body");
    let text = h.metrics_text().await;
    let series = |name| sample(&text, name).unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
    let (batched, calls) = (
        series("hookwarden_enqueue_batch_deliveries_sum"),
        series("hookwarden_enqueue_batch_deliveries_count"),
    );
    assert_eq!(batched, sends.len() as f64, "every delivery went to Redis once");
    assert!(calls < batched / 4.0, "deliveries arriving together share calls: {calls} for {batched}");

    // At the limit, deliveries arriving together are refused exactly
    // beyond it: 200 distinct ones with room for 100.
    h.registry.set_policy(h.policy.clone(), limited(400));
    let more: Vec<(usize, String)> = (300..500).map(|n| (n, guid())).collect();
    let answers = futures::future::join_all(
        more.iter().map(|(n, g)| async { send(&h.app, signed("issues", g, &body(*n))).await.0 }),
    )
    .await;
    let count = |status| answers.iter().filter(|s| **s == status).count();
    assert_eq!((count(StatusCode::ACCEPTED), count(StatusCode::SERVICE_UNAVAILABLE)), (100, 100));
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), 400);
}

/// A receiver runs its requests on one thread by default
/// (`--worker-threads`): a large delivery's hashing, parsing and compression
/// run apart (`hookwarden::cpu`), so the deliveries that arrive meanwhile are
/// answered while it is still being worked on, not after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_large_delivery_does_not_hold_up_the_others_on_a_one_thread_receiver() {
    let h = harness().await;
    let large = serde_json::to_vec(&json!({"action": "opened", "padding": "x".repeat(8 << 20)})).unwrap();
    let app = h.app.clone();
    let large_guid = guid();
    let large_one = tokio::spawn(async move { send(&app, signed("push", &large_guid, &large)).await.0 });
    // NB: on the one thread, this timer fires only once the large one's work
    // has left it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let small: Vec<_> = (0..20)
        .map(|n| {
            let app = h.app.clone();
            let body = format!(r#"{{"action":"opened","number":{n}}}"#).into_bytes();
            tokio::spawn(async move { send(&app, signed("push", &guid(), &body)).await.0 })
        })
        .collect();
    for answer in small {
        assert_eq!(answer.await.unwrap(), StatusCode::ACCEPTED);
    }
    assert!(!large_one.is_finished(), "the small deliveries were answered only after the large one");
    assert_eq!(large_one.await.unwrap(), StatusCode::ACCEPTED);
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), 21, "each queued once");
}

#[tokio::test]
async fn redis_down_means_503_never_a_silent_2xx() {
    // A Redis of this test's own, so stopping it disturbs no other test.
    let redis = common::PrivateRedis::start();
    let url = redis.url.clone();
    let h = harness_with(&url, DEFAULT_BODY_LIMIT).await;
    assert_eq!(send(&h.app, signed("push", &guid(), b"{}")).await.0, StatusCode::ACCEPTED);

    redis.kill();
    let (status, reply, retry_after) = send(&h.app, signed("push", &guid(), b"{}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert_eq!(reply["error"], "queue unavailable; retry later");
    assert!(retry_after.is_some());
}

#[tokio::test]
async fn a_ping_is_answered_recorded_and_not_queued() {
    let h = harness().await;
    let id = guid();
    let (status, reply, _) =
        send(&h.app, signed("ping", &id, br#"{"zen":"Keep it logically awesome.","hook_id":1}"#)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["status"], "pong");
    let ping = h.queue.last_ping(&ObjectRef::new("team", "repo-hook")).await.unwrap().expect("ping recorded");
    assert_eq!(ping["guid"], id.as_str());
    assert_eq!(ping["keyVersion"], "000000000001", "which key signed it");
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), 0, "pings are not dispatched");
}

#[tokio::test]
async fn before_its_watches_have_listed_everything_a_receiver_says_not_yet_never_404() {
    let queue = Queue::connect(TestEnv::load().var("REDIS_URL"), &redis_prefix()).await.unwrap();
    let registry = Arc::new(Registry::new());
    let state = AppState {
        registry: registry.clone(),
        queue: queue.clone(),
        metrics: Arc::new(ReceiverMetrics::new()),
        body_limit: DEFAULT_BODY_LIMIT,
        drain: Arc::default(),
        limits: Limits::default(),
        rejections: Default::default(),
        failures: Arc::new(FailureLimit::off()),
        allowlist: Arc::new(Allowlist::off()),
        body_budget: Arc::new(hookwarden::receiver::ingest::body_budget::BodyBudget::new(64 << 20)),
    };
    let app = router(state);
    // Nothing loaded yet: the hook may well exist.
    let (status, reply, retry_after) = send(&app, signed("push", &guid(), b"{}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert!(reply["error"].as_str().unwrap().starts_with("starting"), "{reply}");
    assert!(retry_after.is_some());
    // Hooks listed, keys not yet: still not yet.
    registry.mark_synced(Watched::Hooks);
    registry.mark_synced(Watched::Policies);
    assert_eq!(send(&app, signed("push", &guid(), b"{}")).await.0, StatusCode::SERVICE_UNAVAILABLE);
    // Keys listed, agents' Secrets not yet: still not yet.
    registry.mark_synced(Watched::Keys);
    assert_eq!(send(&app, signed("push", &guid(), b"{}")).await.0, StatusCode::SERVICE_UNAVAILABLE);
    registry.mark_synced(Watched::SigningKeys);
    assert_eq!(send(&app, signed("push", &guid(), b"{}")).await.0, StatusCode::SERVICE_UNAVAILABLE);
    registry.mark_synced(Watched::AgentHeaders);
    assert_eq!(send(&app, signed("push", &guid(), b"{}")).await.0, StatusCode::SERVICE_UNAVAILABLE);
    // Everything listed (Apps' webhooks last): now an unknown hook is truly unknown.
    registry.mark_synced(Watched::AppHooks);
    let (status, reply, _) = send(&app, signed("push", &guid(), b"{}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
}

/// The front door as a client reaches it: the router served by `serve` on a
/// loopback port, with small limits. Returns the address.
async fn front_door(limits: Limits) -> (std::net::SocketAddr, Harness) {
    front_door_with(limits, FailureLimit::off()).await
}

async fn front_door_with(limits: Limits, failures: FailureLimit) -> (std::net::SocketAddr, Harness) {
    let h = harness_limited(TestEnv::load().var("REDIS_URL"), DEFAULT_BODY_LIMIT, limits, failures).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(ReceiverMetrics::new());
    tokio::spawn(serve(listener, h.app.clone(), limits, metrics, std::future::pending()));
    (addr, h)
}

/// Reads what the server sends until it closes the connection or `within` passes.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut got)).await;
    read.ok().map(|_| String::from_utf8_lossy(&got).into_owned())
}

const SMALL: Limits = Limits {
    header_timeout: Duration::from_secs(1),
    idle_timeout: Duration::from_secs(3),
    body_timeout: Duration::from_secs(1),
    max_connections: 8,
    max_in_flight: 2,
    unauthenticated_bytes: 64 << 20,
};

/// Reads one answer to `GET /healthz` (its body is `ok`), within a second.
async fn read_healthz(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut chunk))
            .await
            .expect("an answer within a second")
            .unwrap();
        assert!(n > 0, "closed instead of answering: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn headers_that_never_finish_lose_their_connection_and_idle_keep_alive_lasts() {
    use tokio::io::AsyncWriteExt;
    const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    let (addr, _h) = front_door(SMALL).await;
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /hooks/team/repo-hook HTTP/1.1\r\nhost: x\r\nx-github-event: pu").await.unwrap();
    let started = Instant::now();
    assert!(read_until_closed(&mut slow, Duration::from_secs(5)).await.is_some(), "closed");
    assert!(started.elapsed() < Duration::from_secs(2), "within the header timeout: {:?}", started.elapsed());

    // Kept alive and idle past the header timeout (as a load balancer's pooled
    // connection is): still open, and the next request on it is answered.
    let mut pooled = tokio::net::TcpStream::connect(addr).await.unwrap();
    pooled.write_all(HEALTHZ).await.unwrap();
    assert!(read_healthz(&mut pooled).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(SMALL.header_timeout * 2).await;
    pooled.write_all(HEALTHZ).await.unwrap();
    assert!(read_healthz(&mut pooled).await.starts_with("HTTP/1.1 200"), "idle past the header timeout");

    // A head begun after idle time gets the header timeout from its first byte.
    tokio::time::sleep(SMALL.header_timeout / 2).await;
    pooled.write_all(b"GET /healthz HTTP/1.1\r\nhost:").await.unwrap();
    let began = Instant::now();
    assert!(read_until_closed(&mut pooled, Duration::from_secs(5)).await.is_some(), "closed");
    let cut = began.elapsed();
    assert!(after_about(SMALL.header_timeout, cut), "cut {cut:?} after the head's first byte");

    // Silence: the idle timeout closes a kept-alive connection.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(HEALTHZ).await.unwrap();
    assert!(read_healthz(&mut idle).await.starts_with("HTTP/1.1 200"));
    let since = Instant::now();
    assert!(read_until_closed(&mut idle, Duration::from_secs(6)).await.is_some(), "closed when idle");
    let idled = since.elapsed();
    assert!(after_about(SMALL.idle_timeout, idled), "closed after {idled:?} idle");
}

/// `took` is `limit`, give or take: not before (100 ms for timers), and not
/// a second period later.
fn after_about(limit: Duration, took: Duration) -> bool {
    took >= limit - Duration::from_millis(100) && took < limit * 2
}

#[tokio::test]
async fn a_trickled_body_gets_408_and_queues_nothing() {
    use tokio::io::AsyncWriteExt;
    let (addr, h) = front_door(SMALL).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /hooks/team/repo-hook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                x-github-event: issues\r\nx-github-delivery: 1\r\ncontent-length: 100\r\n\r\n{";
    s.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(b" ").await.is_err() {
                break;
            }
        }
        s
    });
    let mut s = trickle.await.unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(5)).await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 seconds"), "{answer}");
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), 0);
}

/// Limits small enough to reach, timeouts long enough to stay out of the way.
const CAPPED: Limits =
    Limits { header_timeout: Duration::from_secs(10), body_timeout: Duration::from_secs(10), ..SMALL };

#[tokio::test]
async fn beyond_the_in_flight_cap_a_delivery_gets_503_before_it_is_read() {
    use tokio::io::AsyncWriteExt;
    let (addr, h) = front_door(CAPPED).await;
    // Two deliveries holding the in-flight slots with bodies that have not arrived.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /hooks/team/repo-hook HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/hooks/team/repo-hook");
    let body = br#"{"action":"opened"}"#.to_vec();
    let sig = signature::sign(KEY.as_bytes(), &body);
    let send = || {
        http.post(&url)
            .header("x-github-event", "issues")
            .header("x-github-delivery", guid())
            .header("content-type", "application/json")
            .header("x-hub-signature-256", &sig)
            .body(body.clone())
            .send()
    };
    let overloaded = send().await.unwrap();
    assert_eq!(overloaded.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(overloaded.headers().contains_key("retry-after"));
    assert!(overloaded.text().await.unwrap().contains("overloaded"));
    // Probes are not deliveries: still answered.
    assert!(http.get(format!("http://{addr}/healthz")).send().await.unwrap().status().is_success());
    // Once the slow clients are gone, deliveries are served again.
    drop(held);
    eventually("a slot free again", Duration::from_secs(5), || async {
        (send().await.ok()?.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), 1, "only the delivery that was served is queued");
}

#[tokio::test]
async fn beyond_the_connection_cap_a_client_gets_503_and_is_closed() {
    let (addr, _h) = front_door(CAPPED).await;
    let mut open = Vec::new();
    for _ in 0..CAPPED.max_connections {
        open.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = tokio::net::TcpStream::connect(addr).await.unwrap();
    let answer = read_until_closed(&mut refused, Duration::from_secs(2)).await.expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("too many connections"), "{answer}");
    // One goes, one more may come.
    drop(open.pop());
    let http = reqwest::Client::new();
    eventually("a connection slot free again", Duration::from_secs(5), || async {
        http.get(format!("http://{addr}/healthz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
}

/// Commands Redis has executed, by name, from `INFO commandstats` (the INFO
/// calls themselves left out).
async fn redis_commands(url: &str) -> std::collections::BTreeMap<String, u64> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, stats) = l.split_once(':')?;
            let calls = stats.split(',').find_map(|f| f.strip_prefix("calls="))?.parse().ok()?;
            (name != "info").then(|| (name.to_owned(), calls))
        })
        .collect()
}

/// What a test's log subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The JSON lines whose message is `message`.
    fn lines(&self, message: &str) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    }
}

#[tokio::test]
async fn fifty_thousand_bad_signatures_cost_redis_nothing_and_are_still_seen() {
    // A Redis of its own: nothing else may touch its counters.
    let redis = PrivateRedis::start();
    let h = harness_with(&redis.url, DEFAULT_BODY_LIMIT).await;
    let before = redis_commands(&redis.url).await;
    let body = br#"{"action":"opened"}"#;
    let logs = Captured::default();
    let writer = logs.clone();
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt().json().with_writer(move || writer.clone()).finish(),
    );
    let forge = |n: u32| {
        let forged = signature::sign(b"not the key", format!("{n}").as_bytes());
        delivery("issues", &format!("forged-{n}"), "application/json", body.to_vec(), Some(forged))
    };
    let started = Instant::now();
    for n in 0..50_000 {
        let (status, ..) = send(&h.app, forge(n)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(redis_commands(&redis.url).await, before, "Redis did no work for them");
    // Not a log flood either: a burst, then LOGGED_PER_SECOND lines a second;
    // once the limit allows one more, its line counts every one not logged.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, ..) = send(&h.app, forge(50_000)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let lines = logs.lines("delivery rejected");
    let most = (LOGGED_PER_SECOND as f64 * (seconds + 1.0)) as usize + 1;
    assert!(lines.len() <= most, "{} lines in {seconds:.1} s", lines.len());
    let unlogged: u64 = lines.iter().map(|l| l["fields"]["unlogged"].as_u64().unwrap()).sum();
    assert_eq!(lines.len() as u64 + unlogged, 50_001, "every rejection logged or counted in a line");
    assert_eq!(lines.last().unwrap()["fields"]["reason"], "signature_mismatch");
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), 0);
    // Seen all the same: the newest are in the replica's window.
    let newest = h.rejections.matching(&Default::default(), 3);
    let guids: Vec<&str> = newest.iter().map(|a| a.guid.as_str()).collect();
    assert_eq!(guids, ["forged-50000", "forged-49999", "forged-49998"]);
    assert!(newest.iter().all(|a| a.detail.as_deref() == Some("signature_mismatch")));
}

#[tokio::test]
async fn a_source_sending_bad_signatures_is_refused_with_429_and_github_behind_the_proxy_is_not() {
    // The receiver behind an Ingress on loopback: 127.0.0.1 is the trusted proxy.
    let failures = FailureLimit::new(60, 5, vec!["127.0.0.0/8".parse().unwrap()]);
    let (addr, h) = front_door_with(CAPPED, failures).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/hooks/team/repo-hook");
    let body = br#"{"action":"opened"}"#.to_vec();
    let send = |from: &'static str, key: &'static [u8]| {
        http.post(&url)
            .header("x-forwarded-for", format!("6.6.6.6, {from}"))
            .header("x-github-event", "issues")
            .header("x-github-delivery", guid())
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature::sign(key, &body))
            .body(body.clone())
            .send()
    };
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(send("198.51.100.66", b"a guessed key").await.unwrap().status().as_u16());
    }
    // Five failures are the burst; the sixth goes over it (and is still
    // answered 401), then the source is refused.
    assert_eq!(codes, [401, 401, 401, 401, 401, 401, 429, 429], "the burst, then refused");
    let refused = send("198.51.100.66", KEY.as_bytes()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "refused before its signature is checked");
    assert!(refused.headers().contains_key("retry-after"));
    // Another source behind the same proxy (GitHub) is served.
    assert_eq!(send("140.82.115.1", KEY.as_bytes()).await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(h.queue.len(&h.policy).await.unwrap(), 1);
    // Counted once each as rejected signatures; the refusals as too_many_failures.
    let window = h.rejections.matching(&Default::default(), 100);
    assert_eq!(window.len(), 6, "refusals are not remembered one by one: {window:?}");
}

#[tokio::test]
async fn the_failure_limit_never_refuses_githubs_own_addresses() {
    let failures = FailureLimit::new(60, 5, vec!["127.0.0.0/8".parse().unwrap()]);
    let (addr, h) = front_door_with(CAPPED, failures).await;
    // GitHub's published ranges, as the operator's ConfigMap gives them (not enforced).
    h.allowlist.set(vec!["140.82.112.0/20".parse().unwrap()]);
    let http = reqwest::Client::new();
    let body = br#"{"action":"opened"}"#.to_vec();
    let send = |from: &'static str, hook: &'static str| {
        http.post(format!("http://{addr}/hooks/team/{hook}"))
            .header("x-forwarded-for", from)
            .header("x-github-event", "issues")
            .header("x-github-delivery", guid())
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature::sign(KEY.as_bytes(), &body))
            .body(body.clone())
            .send()
    };
    // One team's hook points GitHub at a path that does not exist: GitHub
    // fails, again and again, from its shared addresses...
    for _ in 0..20 {
        assert_eq!(send("140.82.115.1", "no-such-hook").await.unwrap().status(), StatusCode::NOT_FOUND);
    }
    // ...and every other team's deliveries from the same addresses are still taken.
    assert_eq!(send("140.82.115.1", "repo-hook").await.unwrap().status(), StatusCode::ACCEPTED);
    // A stranger doing the same is refused past its burst.
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(send("198.51.100.66", "no-such-hook").await.unwrap().status().as_u16());
    }
    assert_eq!(codes[6..], [429, 429], "{codes:?}");
}

#[tokio::test]
async fn every_reason_and_event_series_is_at_zero_right_after_start() {
    let h = harness().await;
    let text = h.metrics_text().await;
    for reason in hookwarden::receiver::ingest::http::REJECTION_REASONS {
        let series = format!("hookwarden_rejected_deliveries_total{{reason=\"{reason}\"}} 0");
        assert!(text.contains(&series), "{series} missing");
    }
    for event in hookwarden::api::GITHUB_EVENTS.iter().chain(&["ping"]) {
        for name in ["github_webhooks_total", "hookwarden_duplicate_deliveries_total"] {
            let series = format!("{name}{{event=\"{event}\"}} 0");
            assert!(text.contains(&series), "{series} missing");
        }
    }
}

#[tokio::test]
async fn a_tap_follower_away_for_more_than_the_tap_holds_is_told_of_the_gap() {
    let h = harness().await;
    let queue_one = |n: usize| {
        let delivery = Delivery::parse(
            &format!("tap-{n}"),
            "push",
            &ObjectRef::new("team", "repo-hook"),
            format!(r#"{{"n":{n}}}"#).into(),
        )
        .unwrap();
        let (queue, policy) = (h.queue.clone(), h.policy.clone());
        async move { queue.enqueue(&policy, &delivery, u64::MAX, None).await.unwrap() }
    };
    // Nobody follows: nothing is copied to the tap.
    queue_one(0).await;
    assert_eq!(h.queue.tap_after(&h.policy, "0-0", 10).await.unwrap().0.len(), 0);

    h.queue.tap_on(&h.policy, Duration::from_secs(60)).await.unwrap();
    queue_one(1).await;
    let (first, gap) = h.queue.tap_after(&h.policy, "0-0", 10).await.unwrap();
    assert_eq!((first.len(), gap), (1, false));
    let (seen, delivery) = &first[0];
    assert_eq!(delivery.guid, "tap-1");
    // A follower that keeps up: no gap.
    queue_one(2).await;
    let (next, gap) = h.queue.tap_after(&h.policy, seen, 10).await.unwrap();
    assert_eq!((next.len(), gap), (1, false));
    let caught_up = next[0].0.clone();

    // Then it goes away while more than the tap holds arrive.
    let away = TAP_LEN as usize + 500;
    for n in 3..3 + away {
        queue_one(n).await;
    }
    let (read, gap) = h.queue.tap_after(&h.policy, &caught_up, 100).await.unwrap();
    assert!(gap, "the follower is told that deliveries are gone");
    assert_eq!(read.len(), 100);
    let oldest: usize = read[0].1.guid.strip_prefix("tap-").unwrap().parse().unwrap();
    assert!(oldest > 3, "the oldest it missed ({oldest}) are gone from the tap");
    // Once it has read from what the tap still holds, it is told no more.
    let (_, gap) = h.queue.tap_after(&h.policy, &read[99].0, 100).await.unwrap();
    assert!(!gap, "told once");
}

/// De-duplication at scale, against the real Redis: 20,000 distinct
/// deliveries are queued once each; every one sent again (GitHub's
/// redelivery) is a duplicate and every body under a new GUID a replay, none
/// of them queued; once the window has passed both are forgotten.
#[tokio::test]
async fn de_duplication_holds_for_thousands_of_deliveries_and_forgets_after_its_window() {
    use futures::StreamExt;
    use hookwarden::queue::Enqueued;
    const N: usize = 20_000;
    let queue = Queue::connect(TestEnv::load().var("REDIS_URL"), &redis_prefix()).await.unwrap();
    let policy = ObjectRef::new("team", "default");
    let deliveries: Vec<(Delivery, [u8; 32])> = (0..N)
        .map(|i| {
            let body = format!(r#"{{"n":{i}}}"#);
            let mac = signature::digest(signature::sign(KEY.as_bytes(), body.as_bytes()).as_bytes()).unwrap();
            let d = Delivery {
                guid: guid(),
                event: "push".into(),
                hook: ObjectRef::new("team", "repo-hook"),
                repository: None,
                action: None,
                payload: bytes::Bytes::from(body),
                received_ms: 1,
                agent: None,
                attempt: 0,
                trace: None,
            };
            (d, mac)
        })
        .collect();
    let outcomes = |batch: Vec<(Delivery, [u8; 32])>| {
        let (queue, policy) = (queue.clone(), policy.clone());
        async move {
            futures::stream::iter(batch)
                .map(|(d, mac)| {
                    let (queue, policy) = (queue.clone(), policy.clone());
                    async move { queue.enqueue(&policy, &d, 1_000_000, Some(&mac)).await.unwrap() }
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await
        }
    };
    let count = |all: &[Enqueued], what: fn(&Enqueued) -> bool| all.iter().filter(|e| what(e)).count();
    let first = outcomes(deliveries.clone()).await;
    assert_eq!(count(&first, |e| matches!(e, Enqueued::Queued(_))), N, "each distinct delivery queued");
    let again = outcomes(deliveries.clone()).await;
    assert_eq!(count(&again, |e| matches!(e, Enqueued::Duplicate)), N, "each redelivery a duplicate");
    let replays: Vec<_> =
        deliveries.iter().map(|(d, mac)| (Delivery { guid: guid(), ..d.clone() }, *mac)).collect();
    let replayed = outcomes(replays).await;
    assert_eq!(count(&replayed, |e| matches!(e, Enqueued::Replay)), N, "each body under a new GUID a replay");
    assert_eq!(queue.len(&policy).await.unwrap(), N as u64, "nothing queued twice");

    // Past the window (and the bucket it ends in), a GUID and a body are new
    // again: a queue remembering them for 2 s.
    let window = Duration::from_secs(2);
    let short = Queue::connect(TestEnv::load().var("REDIS_URL"), &redis_prefix())
        .await
        .unwrap()
        .dedup_window(window)
        .replay_window(window);
    let sample = &deliveries[..100];
    let sent = Instant::now();
    for (d, mac) in sample {
        assert!(matches!(
            short.enqueue(&policy, d, 1_000_000, Some(mac)).await.unwrap(),
            Enqueued::Queued(_)
        ));
    }
    // NB: the last one sent is the last forgotten.
    let (d, mac) = &sample[99];
    assert_eq!(short.enqueue(&policy, d, 1_000_000, Some(mac)).await.unwrap(), Enqueued::Duplicate);
    eventually("the window to pass", Duration::from_secs(15), || async {
        matches!(short.enqueue(&policy, d, 1_000_000, Some(mac)).await.unwrap(), Enqueued::Queued(_))
            .then_some(())
    })
    .await;
    assert!(sent.elapsed() >= window, "forgotten within the window: {:?}", sent.elapsed());
    for (d, mac) in &sample[..99] {
        let again = short.enqueue(&policy, d, 1_000_000, Some(mac)).await.unwrap();
        assert!(matches!(again, Enqueued::Queued(_)), "{again:?}");
    }
}

/// A receiver upgraded within a window still refuses what one of the
/// layout before accepted: GUIDs and bodies it remembered in its strings of
/// 12-byte records are found, until no record of theirs can be within the
/// window any more; then the strings are no longer read.
#[tokio::test]
async fn what_the_layout_before_remembered_is_still_refused() {
    use hookwarden::queue::{Enqueued, seen};
    let url = TestEnv::load().var("REDIS_URL").to_owned();
    let prefix = redis_prefix();
    let queue = Queue::connect(&url, &prefix).await.unwrap();
    let policy = ObjectRef::new("team", "default");
    let hook = ObjectRef::new("team", "repo-hook");
    let delivery = |guid: String, body: &str| Delivery {
        guid,
        event: "push".into(),
        hook: hook.clone(),
        repository: None,
        action: None,
        payload: bytes::Bytes::from(body.to_owned()),
        received_ms: 1,
        agent: None,
        attempt: 0,
        trace: None,
    };
    let (seen_guid, seen_body) = (guid(), r#"{"n":"seen before"}"#);
    let mac = signature::digest(signature::sign(KEY.as_bytes(), seen_body.as_bytes()).as_bytes()).unwrap();
    // What an older receiver wrote: a record appended to the string of its
    // shard in the bucket two before the current one.
    let window = hookwarden::queue::DEDUP_TTL_SECS;
    let bucket = seen::buckets(hookwarden::now_ms() / 1000, window)[2];
    let mut conn =
        redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    for (kind, value) in [(seen::Kind::Guid, seen_guid.as_bytes()), (seen::Kind::Body, &mac[..])] {
        let record = seen::record(kind, &hook.to_string(), value).legacy;
        let key = format!("{prefix}:{{{policy}}}:{}:{bucket}:{:03x}", kind.name(), record.shard);
        // Another record before it: found at a record's boundary only.
        let _: i64 = redis::cmd("APPEND").arg(&key).arg(&[9u8; 12][..]).query_async(&mut conn).await.unwrap();
        let _: i64 =
            redis::cmd("APPEND").arg(&key).arg(&record.bytes[..]).query_async(&mut conn).await.unwrap();
    }
    let again = queue.enqueue(&policy, &delivery(seen_guid.clone(), "{}"), 1_000, None).await.unwrap();
    assert_eq!(again, Enqueued::Duplicate, "a GUID the layout before remembered");
    let replayed = queue.enqueue(&policy, &delivery(guid(), seen_body), 1_000, Some(&mac)).await.unwrap();
    assert_eq!(replayed, Enqueued::Replay, "a body the layout before remembered");
    let fresh = queue.enqueue(&policy, &delivery(guid(), r#"{"n":"new"}"#), 1_000, None).await.unwrap();
    assert!(matches!(fresh, Enqueued::Queued(_)), "{fresh:?}");
    // The first enqueue marked when this layout started here...
    let marker = format!("{prefix}:seen:sets-since");
    let since: u64 = redis::cmd("GET").arg(&marker).query_async(&mut conn).await.unwrap();
    assert!(since.abs_diff(hookwarden::now_ms() / 1000) < 60, "{since}");
    // ...and once no record of an older process can be within the window,
    // the strings are no longer read (a process that asks after that).
    let long_ago = since - seen::UPGRADE_GRACE_SECS - window - 3600;
    let _: () = redis::cmd("SET").arg(&marker).arg(long_ago).query_async(&mut conn).await.unwrap();
    let later = Queue::connect(&url, &prefix).await.unwrap();
    let queued = later.enqueue(&policy, &delivery(seen_guid, "{}"), 1_000, None).await.unwrap();
    assert!(matches!(queued, Enqueued::Queued(_)), "the strings were read: {queued:?}");
}
