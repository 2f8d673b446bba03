//! The simulator behaves like GitHub where GitHub is surprising.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use github_sim::Sim;
use serde_json::{Value, json};

const TOKEN: &str = "ghp_test";

/// What a webhook receiver got: headers and body per request.
type Got = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

struct World {
    sim: Sim,
    api: String,
    hook_url: String,
    got: Got,
    /// Status the receiver answers with.
    answer: Arc<Mutex<u16>>,
    http: reqwest::Client,
}

async fn world() -> World {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let sim = Sim::new(&api);
    sim.add_token(TOKEN);
    sim.add_repo("octo-org/hello-world");
    sim.add_org("octo-org");
    tokio::spawn(axum::serve(listener, sim.clone().router()).into_future());

    let got: Got = Arc::default();
    let answer = Arc::new(Mutex::new(200u16));
    let receiver = Router::new()
        .route(
            "/hook",
            post(|State((got, answer)): State<(Got, Arc<Mutex<u16>>)>, headers: HeaderMap, body: Bytes| async move {
                got.lock().unwrap().push((headers, body));
                axum::http::StatusCode::from_u16(*answer.lock().unwrap()).unwrap()
            }),
        )
        .with_state((got.clone(), answer.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, receiver).into_future());
    World { sim, api, hook_url, got, answer, http: reqwest::Client::new() }
}

impl World {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.api)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        let bytes = r.bytes().await.unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn create(&self, url: &str, events: Value, secret: Option<&str>) -> (u16, Value) {
        let mut config = json!({ "url": url });
        if let Some(s) = secret {
            config["secret"] = json!(s);
        }
        let (status, _, body) = self
            .call(
                reqwest::Method::POST,
                "/repos/octo-org/hello-world/hooks",
                Some(json!({ "config": config, "events": events })),
            )
            .await;
        (status, body)
    }

    async fn wait_for_deliveries(&self, n: usize) {
        for _ in 0..100 {
            if self.got.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("expected {n} deliveries, got {}", self.got.lock().unwrap().len());
    }

    async fn secret_of(&self, id: u64) -> Value {
        let hooks: Vec<Value> =
            self.http.get(format!("{}/_sim/hooks", self.api)).send().await.unwrap().json().await.unwrap();
        hooks.into_iter().find(|h| h["id"] == id).unwrap()["config"]["secret"].clone()
    }
}

#[tokio::test]
async fn create_uses_githubs_defaults_masks_the_secret_and_pings_signed() {
    let w = world().await;
    let (status, _, hook) = w
        .call(
            reqwest::Method::POST,
            "/repos/octo-org/hello-world/hooks",
            Some(json!({ "config": { "url": w.hook_url, "secret": "s3cret" } })),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(hook["config"]["content_type"], "form", "GitHub's default is form");
    assert_eq!(hook["events"], json!(["push"]));
    assert_eq!(hook["active"], true);
    assert_eq!(hook["config"]["secret"], "********");

    w.wait_for_deliveries(1).await;
    let (headers, body) = w.got.lock().unwrap()[0].clone();
    assert_eq!(headers["x-github-event"], "ping");
    assert_eq!(headers["x-github-hook-id"].to_str().unwrap(), hook["id"].to_string());
    assert_eq!(headers["x-github-hook-installation-target-type"], "repository");
    assert!(headers["user-agent"].to_str().unwrap().starts_with("GitHub-Hookshot/"));
    assert_eq!(headers["content-type"], "application/x-www-form-urlencoded");
    assert!(body.starts_with(b"payload="));
    let sig = headers.get("x-hub-signature-256").map(|v| v.as_bytes());
    assert_eq!(hookwarden::signature::verify(sig, &body, &["s3cret"]), Ok(0));
    assert!(headers.contains_key("x-hub-signature"), "the legacy SHA-1 header is sent too");
}

#[tokio::test]
async fn patch_without_the_secret_drops_it_but_patch_config_keeps_it() {
    let w = world().await;
    let (_, hook) = w.create(&w.hook_url, json!(["push"]), Some("keep-me")).await;
    let id = hook["id"].as_u64().unwrap();
    let path = format!("/repos/octo-org/hello-world/hooks/{id}");

    let (status, _, _) = w
        .call(reqwest::Method::PATCH, &format!("{path}/config"), Some(json!({ "content_type": "json" })))
        .await;
    assert_eq!(status, 200);
    assert_eq!(w.secret_of(id).await, "keep-me");

    let (status, _, updated) = w
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(json!({ "config": { "url": w.hook_url, "content_type": "json" } })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(w.secret_of(id).await, Value::Null, "PATCH /hooks/{{id}} without a secret removes it");
    assert!(updated["config"].get("secret").is_none());
}

#[tokio::test]
async fn duplicates_and_the_per_event_limit_are_422() {
    let w = world().await;
    assert_eq!(w.create(&w.hook_url, json!(["push", "issues"]), None).await.0, 201);
    let (status, body) = w.create(&w.hook_url, json!(["issues"]), None).await;
    assert_eq!(status, 422);
    assert!(body["message"].as_str().unwrap().contains("Hook already exists"), "{body}");
    assert_eq!(w.create(&w.hook_url, json!(["release"]), None).await.0, 201, "no overlap, no conflict");
    for i in 1..20 {
        assert_eq!(
            w.create(&format!("{}?n={i}", w.hook_url), json!(["push"]), None).await.0,
            201,
            "hook {i}"
        );
    }
    let (status, body) = w.create(&format!("{}?n=21", w.hook_url), json!(["push"]), None).await;
    assert_eq!(status, 422);
    assert!(body["message"].as_str().unwrap().contains("cannot have more than 20 hooks"), "{body}");
}

#[tokio::test]
async fn lists_paginate_with_link_headers() {
    let w = world().await;
    for i in 0..5 {
        w.create(&format!("{}?n={i}", w.hook_url), json!(["push"]), None).await;
    }
    let mut ids = Vec::new();
    let mut path = "/repos/octo-org/hello-world/hooks?per_page=2".to_owned();
    loop {
        let (status, headers, page) = w.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200);
        ids.extend(page.as_array().unwrap().iter().map(|h| h["id"].as_u64().unwrap()));
        let link = headers.get("link").map(|l| l.to_str().unwrap().to_owned()).unwrap_or_default();
        let Some(next) = link.split(", ").find(|l| l.ends_with("rel=\"next\"")) else { break };
        path = next.trim_start_matches('<').split('>').next().unwrap().trim_start_matches(&w.api).to_owned();
    }
    assert_eq!(ids.len(), 5);
}

#[tokio::test]
async fn conditional_gets_answer_304_for_free() {
    let w = world().await;
    let (_, hook) = w.create(&w.hook_url, json!(["push"]), None).await;
    let path = format!("/repos/octo-org/hello-world/hooks/{}", hook["id"]);
    // The creation ping updates last_response (and so the ETag) once answered.
    w.wait_for_deliveries(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, headers, _) = w.call(reqwest::Method::GET, &path, None).await;
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let remaining = |h: &HeaderMap| h["x-ratelimit-remaining"].to_str().unwrap().parse::<u32>().unwrap();
    let before = remaining(&headers);
    let r = w
        .http
        .get(format!("{}{path}", w.api))
        .bearer_auth(TOKEN)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(remaining(r.headers()), before, "a 304 costs nothing");
    let (_, headers, _) = w.call(reqwest::Method::GET, &path, None).await;
    assert_eq!(remaining(&headers), before - 1, "a full GET costs one unit");
    assert_eq!(headers["x-ratelimit-limit"], "5000");
}

#[tokio::test]
async fn bad_credentials_unknown_repos_and_the_secondary_limit() {
    let w = world().await;
    let r = w.http.get(format!("{}/repos/octo-org/hello-world/hooks", w.api)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let (status, _, _) = w.call(reqwest::Method::GET, "/repos/octo-org/nope/hooks", None).await;
    assert_eq!(status, 404);

    // A fault the simulator does not know is refused, not ignored.
    let r =
        w.http.post(format!("{}/_sim/faults", w.api)).json(&json!({ "latency_ms": 5 })).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("unknown field `latency_ms`"));
    w.http
        .post(format!("{}/_sim/faults", w.api))
        .json(&json!({ "secondaryMutationsPerMinute": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(w.create(&format!("{}?a", w.hook_url), json!(["push"]), None).await.0, 201);
    assert_eq!(w.create(&format!("{}?b", w.hook_url), json!(["push"]), None).await.0, 201);
    let mut config = json!({ "config": { "url": format!("{}?c", w.hook_url) } });
    config["events"] = json!(["push"]);
    let (status, headers, body) =
        w.call(reqwest::Method::POST, "/repos/octo-org/hello-world/hooks", Some(config)).await;
    assert_eq!(status, 403);
    assert_eq!(headers["retry-after"], "60");
    assert!(body["message"].as_str().unwrap().contains("secondary rate limit"));
}

#[tokio::test]
async fn failed_deliveries_are_listed_and_redelivered_with_the_same_guid() {
    let w = world().await;
    let (_, hook) = w.create(&w.hook_url, json!(["issues"]), Some("k")).await;
    let id = hook["id"].as_u64().unwrap();
    w.wait_for_deliveries(1).await; // the ping
    *w.answer.lock().unwrap() = 503;
    for _ in 0..3 {
        let r = w
            .http
            .post(format!("{}/_sim/hooks/{id}/events", w.api))
            .json(&json!({ "event": "issues", "payload": { "action": "opened" } }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let base = format!("/repos/octo-org/hello-world/hooks/{id}/deliveries");
    let (_, headers, first) = w.call(reqwest::Method::GET, &format!("{base}?per_page=2"), None).await;
    assert_eq!(first.as_array().unwrap().len(), 2);
    assert_eq!(first[0]["status_code"], 503);
    assert_eq!(first[0]["action"], "opened");
    let link = headers["link"].to_str().unwrap();
    assert!(link.contains("cursor=") && link.ends_with("rel=\"next\""), "{link}");
    let failed = first[0].clone();

    *w.answer.lock().unwrap() = 200;
    let (status, _, _) =
        w.call(reqwest::Method::POST, &format!("{base}/{}/attempts", failed["id"]), None).await;
    assert_eq!(status, 202);
    w.wait_for_deliveries(5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, _, all) = w.call(reqwest::Method::GET, &format!("{base}?per_page=100"), None).await;
    let newest = &all[0];
    assert_eq!(newest["guid"], failed["guid"], "a redelivery keeps the GUID");
    assert_eq!(newest["redelivery"], true);
    assert_eq!(newest["status_code"], 200);
    let (_, headers, _) = w.call(reqwest::Method::GET, &format!("{base}/{}", failed["id"]), None).await;
    assert!(headers.contains_key("etag"));
}

/// Every request of a session exercising every endpoint, checked against
/// GitHub's OpenAPI description: operation, status, request and response bodies.
#[tokio::test]
async fn the_simulator_speaks_githubs_openapi_description() {
    let spec_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../e2e/npm/node_modules/@octokit/openapi/generated/api.github.com.json");
    let spec = github_sim::openapi::Spec::load(&spec_path)
        .unwrap_or_else(|e| panic!("{e}: run e2e/up (or e2e/test), which installs the npm fixtures"));

    let w = world().await;
    use reqwest::Method as M;

    for owner in ["repos/octo-org/hello-world", "orgs/octo-org"] {
        let hooks = format!("/{owner}/hooks");
        let create = json!({ "name": "web", "active": true, "events": ["push", "issues"],
            "config": { "url": w.hook_url, "content_type": "json", "secret": "s", "insecure_ssl": "0" } });
        let (status, _, hook) = w.call(M::POST, &hooks, Some(create.clone())).await;
        assert_eq!(status, 201);
        let id = hook["id"].as_u64().unwrap();
        let one = format!("{hooks}/{id}");
        w.call(M::POST, &hooks, Some(create)).await; // 422 duplicate
        w.call(M::GET, &format!("{hooks}?per_page=1&page=1"), None).await;
        w.call(M::GET, &one, None).await;
        w.call(M::GET, &format!("{hooks}/999999"), None).await; // 404
        w.call(M::PATCH, &one, Some(json!({ "active": true, "add_events": ["release"], "config": { "url": w.hook_url, "content_type": "json", "secret": "t" } }))).await;
        w.call(M::GET, &format!("{one}/config"), None).await;
        w.call(M::PATCH, &format!("{one}/config"), Some(json!({ "content_type": "json", "secret": "u" })))
            .await;
        w.call(M::POST, &format!("{one}/pings"), None).await;
        if owner.starts_with("repos") {
            w.call(M::POST, &format!("{one}/tests"), None).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, _, deliveries) = w.call(M::GET, &format!("{one}/deliveries?per_page=1"), None).await;
        let delivery = deliveries[0]["id"].clone();
        w.call(M::GET, &format!("{one}/deliveries/{delivery}"), None).await;
        w.call(M::POST, &format!("{one}/deliveries/{delivery}/attempts"), None).await;
        w.call(M::DELETE, &one, None).await;
    }
    let (status, _, meta) = w.call(M::GET, "/meta", None).await;
    assert_eq!(status, 200);
    assert!(meta["hooks"].as_array().is_some_and(|h| !h.is_empty()), "{meta}");
    // The checker itself notices what GitHub would never do.
    let wrong = |status: u16, response: Value, body: Option<Value>| github_sim::Recorded {
        method: "POST".into(),
        path: "/repos/octo-org/hello-world/hooks".into(),
        query: None,
        body,
        status,
        response: Some(response),
    };
    let fine_body = Some(json!({ "config": { "url": "https://x.example/" } }));
    assert!(!spec.check(&wrong(418, json!({}), fine_body.clone())).is_empty(), "undocumented status");
    let missing_fields = spec.check(&wrong(201, json!({ "id": "one" }), fine_body));
    assert!(missing_fields.iter().any(|p| p.contains("response")), "{missing_fields:?}");
    let bad_request = spec.check(&wrong(
        422,
        json!({ "message": "m", "documentation_url": "d" }),
        Some(json!({ "events": "push" })),
    ));
    assert!(bad_request.iter().any(|p| p.contains("request")), "{bad_request:?}");

    let requests = w.sim.requests();
    assert!(requests.len() >= 25, "the session covered the API: {} requests", requests.len());
    let problems: Vec<String> = requests.iter().flat_map(|r| spec.check(r)).collect();
    assert!(
        problems.is_empty(),
        "{} disagreement(s) with GitHub's OpenAPI description:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test]
async fn organization_hooks_need_the_name_web() {
    let w = world().await;
    let body = |name: Value| json!({ "name": name, "config": { "url": w.hook_url }, "events": ["push"] });
    let (status, _, reply) =
        w.call(reqwest::Method::POST, "/orgs/octo-org/hooks", Some(body(Value::Null))).await;
    assert_eq!(status, 422, "{reply}");
    let (status, _, _) =
        w.call(reqwest::Method::POST, "/orgs/octo-org/hooks", Some(body(json!("web")))).await;
    assert_eq!(status, 201);
}
