//! Hostile input never takes down a shared part. A team may point its
//! WebhookConfig at any API the platform allows, and the internet may send
//! the receiver anything: the operator and the receiver must stay up, keep
//! their memory bounded, say what is wrong on the object that caused it,
//! and keep serving every other team.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use common::{Process, TestEnv, TestNamespace, WAIT, eventually, free_port};
use hookwarden::{api::WebhookConfig, keys, signature};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// What the fake API saw: method and path of every request.
type Seen = Arc<Mutex<Vec<String>>>;

/// A fake GitHub API whose every answer is hostile in the way the
/// repository's name says:
/// - `evil/pages`: the hook list has a next page, forever;
/// - `evil/huge`: the hook list is a 1 GB body;
/// - `evil/drip`: the hook list arrives a byte a second;
/// - `evil/payload`: a hook whose failed delivery's payload is the JSON string `"x"`.
async fn hostile_api() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new().fallback(hostile).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, app).into_future());
    (url, seen)
}

async fn hostile(State(seen): State<Seen>, request: Request) -> Response {
    let (method, uri, headers) = (request.method().clone(), request.uri().clone(), request.headers().clone());
    seen.lock().unwrap().push(format!("{method} {}", uri.path()));
    let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap_or_default();
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let json = |status: StatusCode, v: Value| (status, axum::Json(v)).into_response();
    let hook = |url: &str| {
        json!({ "id": 7, "active": true, "events": ["push"], "last_response": { "code": 502 },
            "config": { "url": url, "content_type": "json" } })
    };
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["repos", "evil", "pages", "hooks"]) => {
            let page: u64 = uri.query().and_then(|q| q.split("page=").nth(1)?.parse().ok()).unwrap_or(1);
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned();
            let link = format!(
                "<http://{host}/repos/evil/pages/hooks?per_page=100&page={}>; rel=\"next\"",
                page + 1
            );
            (StatusCode::OK, [(header::LINK, link)], axum::Json(json!([]))).into_response()
        }
        ("GET", ["repos", "evil", "huge", "hooks"]) => {
            // 1 GB of a JSON array that never closes, as fast as it is read.
            let chunk = bytes::Bytes::from(vec![b' '; 1 << 20]);
            let chunks = futures::stream::iter(
                std::iter::once(bytes::Bytes::from_static(b"[")).chain(std::iter::repeat_n(chunk, 1024)),
            )
            .map(Ok::<_, std::io::Error>);
            Response::new(Body::from_stream(chunks))
        }
        ("GET", ["repos", "evil", "drip", "hooks"]) => {
            let drip = futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b" ")), ()))
            });
            Response::new(Body::from_stream(drip))
        }
        ("GET", ["repos", "evil", "payload", "hooks"]) => json(StatusCode::OK, json!([])),
        ("POST", ["repos", "evil", "payload", "hooks"]) => {
            let sent: Value = serde_json::from_slice(&body).unwrap_or_default();
            json(StatusCode::CREATED, hook(sent["config"]["url"].as_str().unwrap_or("")))
        }
        ("GET", ["repos", "evil", "payload", "hooks", "7"]) => {
            json(StatusCode::OK, hook(&format!("{PUBLIC_BASE}/hooks/{}/payload", NS.lock().unwrap())))
        }
        ("GET", ["repos", "evil", "payload", "hooks", "7", "deliveries"]) => {
            let delivered_at = k8s_openapi::jiff::Timestamp::now().to_string();
            json(
                StatusCode::OK,
                json!([{ "id": 99, "guid": "0b7c1e2a-0000-4000-8000-000000000099", "delivered_at": delivered_at,
                    "redelivery": false, "status_code": 502, "event": "push", "duration": 0.1,
                    "status": "Bad Gateway", "action": null, "installation_id": null, "repository_id": 1 }]),
            )
        }
        ("GET", ["repos", "evil", "payload", "hooks", "7", "deliveries", "99"]) => json(
            StatusCode::OK,
            json!({ "id": 99, "guid": "0b7c1e2a-0000-4000-8000-000000000099", "event": "push",
                "request": { "headers": {}, "payload": "x" } }),
        ),
        ("POST", ["repos", "evil", "payload", "hooks", "7", "deliveries", "99", "attempts"]) => {
            json(StatusCode::ACCEPTED, json!({}))
        }
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

const PUBLIC_BASE: &str = "http://127.0.0.1:9/receiver";
/// The test's namespace, for the fake API's hook URL.
static NS: Mutex<String> = Mutex::new(String::new());

use futures::StreamExt;

/// Peak resident memory of process `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next());
    kb.and_then(|k| k.parse::<u64>().ok()).unwrap_or(0) / 1024
}

#[tokio::test]
async fn a_hostile_github_api_costs_only_its_own_webhookconfigs() {
    let env = TestEnv::load();
    let ns = TestNamespace::create(&env).await;
    *NS.lock().unwrap() = ns.name.clone();
    let (api, seen) = hostile_api().await;
    let sim = env.var("GITHUB_API_URL").to_owned();
    let client = env.client().await;
    let http = reqwest::Client::new();

    // Another team's hook on the real (simulated) GitHub, in the same operator.
    let id = format!("{:08x}", rand::random::<u32>());
    let (repo, token) = (format!("team-{id}/service"), format!("ghp_{id}"));
    for (path, body) in [("tokens", json!({ "token": token })), ("repos", json!({ "full_name": repo }))] {
        http.post(format!("{sim}/_sim/{path}")).json(&body).send().await.unwrap().error_for_status().unwrap();
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let mut s = Secret::default();
    s.metadata.name = Some("github-token".into());
    s.string_data = Some([("token".to_owned(), token.clone())].into());
    secrets.create(&PostParams::default(), &s).await.unwrap();

    let listen = format!("127.0.0.1:{}", free_port());
    let allowed = format!("{sim},http://127.0.0.1:*");
    let args = [
        "operator",
        "--listen",
        &listen,
        "--public-base-url",
        PUBLIC_BASE,
        "--resync-seconds",
        "2",
        "--redelivery-seconds",
        "1",
        "--github-mutation-interval-ms",
        "100",
    ];
    let vars = [
        ("HOOKWARDEN_NAMESPACE", ns.name.as_str()),
        ("POD_NAMESPACE", ns.name.as_str()),
        ("HOOKWARDEN_GITHUB_API_URLS", allowed.as_str()),
        ("REDIS_URL", env.var("REDIS_URL")),
        ("HOOKWARDEN_REDIS_PREFIX", &common::redis_prefix()),
    ];
    let operator = Process::start(&env, "hostile-operator", &args, &vars);

    let spec = |repository: &str, api: &str| {
        json!({ "repository": repository, "events": ["push"],
            "github": { "apiUrl": api, "tokenSecretRef": { "name": "github-token", "key": "token" } } })
    };
    for name in ["pages", "huge", "drip", "payload"] {
        common::apply_webhook_config(client.clone(), &ns.name, name, spec(&format!("evil/{name}"), &api))
            .await;
    }
    common::apply_webhook_config(client.clone(), &ns.name, "neighbour", spec(&repo, &sim)).await;

    let whcs: Api<WebhookConfig> = Api::namespaced(client.clone(), &ns.name);
    let ready = |name: &'static str| {
        let whcs = whcs.clone();
        async move {
            let whc = whcs.get(name).await.ok()?;
            whc.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| (c.status, c.reason, c.message))
        }
    };
    // Each hostile answer is an error on its own WebhookConfig, with why.
    for (name, says) in [("pages", "more than 10 pages of hooks"), ("huge", "larger than")] {
        let (_, reason, message) = eventually(&format!("{name} to fail"), WAIT, || async {
            ready(name).await.filter(|(s, ..)| s == "False")
        })
        .await;
        assert_eq!(reason, "BadAnswer", "{name}: {message}");
        assert!(message.contains(says), "{name}: {message}");
    }
    // The payload that is not an event is not queued: GitHub is asked to
    // send it again, through the receiver's checks.
    eventually("a redelivery asked for instead of a panic", WAIT, || async {
        let seen = seen.lock().unwrap();
        seen.iter().any(|r| r == "POST /repos/evil/payload/hooks/7/deliveries/99/attempts").then_some(())
    })
    .await;
    // The neighbour's hook is registered, and it keeps reconciling: an edit
    // of its events reaches GitHub while the hostile API keeps answering.
    eventually("the neighbour Ready", WAIT, || async {
        ready("neighbour").await.filter(|(s, ..)| s == "True")
    })
    .await;
    let patch = json!({ "spec": { "events": ["push", "issues"] } });
    whcs.patch("neighbour", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    eventually("the neighbour's edit on GitHub", WAIT, || async {
        let hooks: Vec<Value> = http.get(format!("{sim}/_sim/hooks")).send().await.ok()?.json().await.ok()?;
        hooks
            .iter()
            .any(|h| {
                h["url"].as_str().is_some_and(|u| u.contains(&repo))
                    && h["events"].as_array().is_some_and(|e| e.len() == 2)
            })
            .then_some(())
    })
    .await;

    // Still the same process, and it never held the 1 GB answer.
    let pid = operator.pid();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the operator exited:\n{}",
        operator.log()
    );
    assert!(!operator.log().contains("panicked"), "{}", operator.log());
    let peak = peak_rss_mib(pid);
    assert!(peak < 200, "the operator's peak RSS was {peak} MiB");
    let pages = seen.lock().unwrap().iter().filter(|r| *r == "GET /repos/evil/pages/hooks").count();
    assert!(pages <= 10 * 30, "pages were followed without end: {pages}");
    drop(operator);
}

/// A WebhookConfig `repo-hook` with a key, in a namespace of its own, and
/// a receiver for it on `redis_url`, ready: the receiver process, the
/// hook's URL and its key.
async fn receiver_for_a_hook(
    env: &TestEnv,
    redis_url: &str,
) -> (Process, String, keys::HmacKey, TestNamespace) {
    let ns = TestNamespace::create(env).await;
    let client = env.client().await;
    let key = keys::HmacKey::generate(1);
    let hook: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "hookwarden.io/v1alpha1", "kind": "WebhookConfig", "metadata": { "name": "repo-hook" },
        "spec": { "repository": "octo-org/hello-world", "events": ["*"],
            "github": { "tokenSecretRef": { "name": "github-token", "key": "token" } } }
    }))
    .unwrap();
    let ar = kube::api::ApiResource::erase::<WebhookConfig>(&());
    Api::<DynamicObject>::namespaced_with(client.clone(), &ns.name, &ar)
        .create(&PostParams::default(), &hook)
        .await
        .unwrap();
    Api::<Secret>::namespaced(client, &ns.name)
        .create(&PostParams::default(), &keys::key_secret("repo-hook-hmac", "repo-hook", &[&key]))
        .await
        .unwrap();
    let (port, admin) = (free_port(), free_port());
    let (listen, admin_listen) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{admin}"));
    let args = ["receiver", "--listen", &listen, "--admin-listen", &admin_listen, "--consumer", "hostile"];
    let vars = [
        ("HOOKWARDEN_NAMESPACE", ns.name.as_str()),
        ("POD_NAMESPACE", ns.name.as_str()),
        ("REDIS_URL", redis_url),
        ("HOOKWARDEN_REDIS_PREFIX", &common::redis_prefix()),
    ];
    let receiver = Process::start(env, "hostile-receiver", &args, &vars);
    let http = reqwest::Client::new();
    eventually("the receiver ready", WAIT, || async {
        http.get(format!("http://{listen}/readyz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    let url = format!("http://{listen}/hooks/{}/repo-hook", ns.name);
    (receiver, url, key, ns)
}

/// A signed push as GitHub sends it (distinct each time); its HTTP status
/// and `Retry-After`.
async fn signed_push(http: &reqwest::Client, url: &str, key: &keys::HmacKey) -> (u16, Option<String>) {
    let body = json!({ "ref": "refs/heads/main", "after": common::commit_sha(),
        "repository": { "full_name": "octo-org/hello-world" } })
    .to_string();
    signed_post(http, url, key, body).await
}

/// `body` as a push signed with `key`; the HTTP status and `Retry-After`.
async fn signed_post(
    http: &reqwest::Client,
    url: &str,
    key: &keys::HmacKey,
    body: String,
) -> (u16, Option<String>) {
    let r = http
        .post(url)
        .header("x-github-event", "push")
        .header("x-github-delivery", common::guid())
        .header("x-hub-signature-256", signature::sign(key.secret(), body.as_bytes()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (r.status().as_u16(), retry_after)
}

#[tokio::test]
async fn a_flood_of_unsigned_25_mb_bodies_leaves_memory_bounded_and_github_served() {
    let env = TestEnv::load();
    let (receiver, url, key, _ns) = receiver_for_a_hook(&env, env.var("REDIS_URL")).await;
    let http = reqwest::Client::new();

    // 64 strangers, each sending three unsigned 25 MB bodies as fast as the
    // receiver takes them...
    let huge = bytes::Bytes::from(vec![b'{'; 25 << 20]);
    let strangers: Vec<_> = (0..64)
        .map(|_| {
            let (http, url, huge) = (reqwest::Client::new(), url.clone(), huge.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..3 {
                    let sent = http
                        .post(&url)
                        .header("x-github-event", "push")
                        .header("x-github-delivery", common::guid())
                        .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
                        .header("content-type", "application/json")
                        .body(huge.clone())
                        .send()
                        .await;
                    statuses.push(sent.map_or(0, |r| r.status().as_u16()));
                }
                statuses
            })
        })
        .collect();
    // ...while GitHub delivers, signed, 20 a second.
    let mut github = Vec::new();
    for _ in 0..60 {
        github.push(signed_push(&http, &url, &key).await.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stranger_statuses = Vec::new();
    for s in strangers {
        stranger_statuses.extend(s.await.unwrap());
    }
    let pid = receiver.pid();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the receiver exited:\n{}",
        receiver.log()
    );
    let peak = peak_rss_mib(pid);
    println!("receiver peak RSS under the flood: {peak} MiB");
    assert!(peak < 256, "the receiver's peak RSS was {peak} MiB (its pod's limit is 256 MiB)");
    assert!(github.iter().all(|s| *s == 202), "GitHub's deliveries: {github:?}");
    // 0: the connection closed while the body was still being sent.
    assert!(stranger_statuses.iter().all(|s| [0, 401, 408, 503].contains(s)), "{stranger_statuses:?}");
    assert!(stranger_statuses.contains(&503), "the budget refused some: {stranger_statuses:?}");
}

#[tokio::test]
async fn redis_at_maxmemory_gets_503s_then_recovers_with_nothing_accepted_lost() {
    let env = TestEnv::load();
    let redis = common::PrivateRedis::start();
    let (_receiver, url, key, ns) = receiver_for_a_hook(&env, &redis.url).await;
    let http = reqwest::Client::new();
    let mut conn =
        redis::Client::open(redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap();
    let used: u64 = info.lines().find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok()).unwrap();
    // Room for a few hundred deliveries, then full, as the chart's Redis is
    // configured: refused, never evicted.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 400_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut accepted = 0u64;
    let refused = loop {
        match signed_push(&http, &url, &key).await {
            (202, _) => accepted += 1,
            other => break other,
        }
        assert!(accepted < 20_000, "Redis never filled up");
    };
    assert_eq!(refused, (503, Some("30".to_owned())), "after {accepted} accepted");
    assert!(accepted > 0);
    // Still full: still 503, not 500, and the process is up.
    assert_eq!(signed_push(&http, &url, &key).await.0, 503);
    // Room again: it recovers by itself.
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query_async(&mut conn).await.unwrap();
    eventually("deliveries accepted again", WAIT, || async {
        (signed_push(&http, &url, &key).await.0 == 202).then_some(())
    })
    .await;
    accepted += 1;
    // Every delivery that got a 202 is in the policy's stream.
    let keys: Vec<String> = redis::cmd("KEYS").arg("*:events").query_async(&mut conn).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].contains(&ns.name));
    let queued: u64 = redis::cmd("XLEN").arg(&keys[0]).query_async(&mut conn).await.unwrap();
    assert_eq!(queued, accepted, "every accepted delivery is queued");
}

#[tokio::test]
async fn a_4_mb_delivery_failing_for_64_agents_is_held_once_not_64_times() {
    let env = TestEnv::load();
    let redis_url = env.var("REDIS_URL").to_owned();
    let (receiver, url, key, ns) = receiver_for_a_hook(&env, &redis_url).await;
    // 64 agents, all down; one attempt each: 64 dead letters of one delivery.
    let agents: Vec<Value> =
        (0..64).map(|i| json!({ "name": format!("a{i}"), "url": "http://127.0.0.1:9/down" })).collect();
    let policy = json!({ "apiVersion": "hookwarden.io/v1alpha1", "kind": "AgentPolicy",
        "metadata": { "name": "default" },
        "spec": { "agents": agents, "retry": { "maxAttempts": 1 } } });
    env.tool_ok("kubectl", &["apply", "-n", &ns.name, "-f", "-"], Some(&policy.to_string()));
    // As the operator would: enabled.
    env.kubectl_ok(&[
        "patch",
        "ap",
        "default",
        "-n",
        &ns.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"enabled":true,"concurrency":1}}"#,
    ]);
    let http = reqwest::Client::new();
    let blob = "x".repeat(4 << 20);
    let body = json!({ "repository": { "full_name": "octo-org/hello-world" }, "blob": blob }).to_string();
    let sent = body.clone();
    assert_eq!(signed_post(&http, &url, &key, body).await.0, 202);
    let mut conn =
        redis::Client::open(redis_url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let dead_key = format!("*{}/default}}:dead", ns.name);
    eventually("64 dead letters", WAIT, || async {
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(&dead_key).query_async(&mut conn.clone()).await.ok()?;
        let n: u64 = redis::cmd("XLEN").arg(keys.first()?).query_async(&mut conn.clone()).await.ok()?;
        (n == 64).then_some(())
    })
    .await;
    // Each dead letter has the payload, whole.
    let keys: Vec<String> = redis::cmd("KEYS").arg(&dead_key).query_async(&mut conn).await.unwrap();
    let first: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(&keys[0])
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let packed = &first[0].1["payload_lz4"];
    let payload = lz4_flex::decompress_size_prepended(packed).unwrap();
    assert!(payload == sent.as_bytes(), "the payload, whole, in the dead letter");
    let peak = peak_rss_mib(receiver.pid());
    println!("receiver peak RSS with a 4 MB delivery failing for 64 agents: {peak} MiB");
    assert!(peak < 160, "the receiver's peak RSS was {peak} MiB");
}
