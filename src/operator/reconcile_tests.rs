//! Reconciles against a scripted apiserver: kube's `Client` over a mock
//! service that answers each request from a script and records it, so the
//! I/O around the pure decisions is tested in milliseconds, without a
//! cluster — what was read, what was written, and what was never touched.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::{Request, Response};
use kube::{Client, client::Body, runtime::events::Recorder};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::{Context, agent_policy, webhook_config};
use crate::{
    api::{AgentPolicy, WebhookConfig},
    github::{Limits, Shared, endpoints::AllowedApis},
    telemetry::OperatorMetrics,
};

/// One request the apiserver saw: method, path, body.
type Seen = (String, String, Value);

/// Answers requests in order from `script` (method, path, status, body);
/// a request the script does not expect fails the test with what it was.
fn apiserver(script: Vec<(&'static str, String, u16, Value)>) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        for (method, path, status, answer) in script {
            let Some((request, send)) = handle.next_request().await else { return };
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let got = (parts.method.to_string(), parts.uri.path().to_owned());
            log.lock().unwrap().push((got.0.clone(), got.1.clone(), body));
            assert_eq!(got, (method.to_owned(), path.clone()), "the reconcile's next request");
            let response =
                Response::builder().status(status).body(Body::from(answer.to_string().into_bytes()));
            send.send_response(response.unwrap());
        }
    });
    (Client::new(service, "default"), seen)
}

fn context(client: Client, allowed: &[&str]) -> Arc<Context> {
    let metrics = Arc::new(OperatorMetrics::new());
    let reporter = kube::runtime::events::Reporter { controller: "test".into(), instance: None };
    Arc::new(Context {
        client: client.clone(),
        namespace: None,
        recorder: Recorder::new(client, reporter),
        metrics: metrics.clone(),
        queue: Arc::new(OnceCell::new()),
        public_base_url: Some("https://hooks.example.com".into()),
        resync: Duration::from_secs(300),
        github: Arc::new(Shared::new(
            Duration::ZERO,
            Limits::default(),
            metrics.github_requests.clone(),
            metrics.github_rate_limit_remaining.clone(),
        )),
        lease_namespace: "hookwarden".into(),
        redelivery_interval: None,
        recovery_way: webhook_config::RecoveryWay::Redeliver,
        recovery: Default::default(),
        allowed_apis: AllowedApis::new(allowed).unwrap(),
    })
}

fn webhook_config(api_url: &str) -> WebhookConfig {
    serde_json::from_value(json!({
        "apiVersion": "hookwarden.io/v1alpha1", "kind": "WebhookConfig",
        "metadata": { "name": "svc", "namespace": "team", "uid": "u-1", "generation": 1,
                      "finalizers": [webhook_config::FINALIZER] },
        "spec": { "repository": "acme/svc", "events": ["push"],
                  "github": { "apiUrl": api_url, "tokenSecretRef": { "name": "github-token", "key": "token" } } }
    }))
    .unwrap()
}

const WHC: &str = "/apis/hookwarden.io/v1alpha1/namespaces/team/webhookconfigs/svc";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team/events";

/// The Ready condition a status patch wrote.
fn ready_of(patch: &Value) -> (String, String) {
    let ready = patch["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready");
    let ready = ready.expect("a Ready condition");
    (ready["reason"].as_str().unwrap().to_owned(), ready["message"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn an_api_the_platform_does_not_allow_is_refused_before_a_secret_is_read() {
    let whc = webhook_config("https://evil.example.com/api/v3");
    let object = serde_json::to_value(&whc).unwrap();
    let (client, seen) = apiserver(vec![
        ("GET", WHC.into(), 200, object.clone()),
        ("PATCH", format!("{WHC}/status"), 200, object.clone()),
        ("POST", EVENTS.into(), 201, json!({})),
    ]);
    let ctx = context(client, &["https://api.github.com"]);
    let result = webhook_config::reconcile(Arc::new(whc), ctx).await;
    assert!(result.is_err(), "the reconcile fails, to be retried");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert!(seen.iter().all(|(_, path, _)| !path.contains("/secrets")), "no Secret read: {seen:#?}");
    let (reason, message) = ready_of(&seen[1].2);
    assert_eq!(reason, "ApiUrlNotAllowed");
    assert!(message.contains("nothing was sent"), "{message}");
}

#[tokio::test]
async fn a_key_secret_that_is_not_its_own_is_never_written() {
    let whc = webhook_config("http://127.0.0.1:1");
    let object = serde_json::to_value(&whc).unwrap();
    let token = json!({ "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "github-token", "namespace": "team" },
        "data": { "token": "Z2hwX3Rlc3Q=" } });
    // The team's own Secret of the same name: no hookwarden labels, another owner.
    let theirs = json!({ "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "svc-hmac", "namespace": "team" },
        "data": { "password": "aHVudGVyMg==" } });
    let (client, seen) = apiserver(vec![
        ("GET", WHC.into(), 200, object.clone()),
        ("GET", "/api/v1/namespaces/team/secrets/github-token".into(), 200, token),
        ("GET", "/api/v1/namespaces/team/secrets/svc-hmac".into(), 200, theirs),
        ("PATCH", format!("{WHC}/status"), 200, object.clone()),
        ("POST", EVENTS.into(), 201, json!({})),
    ]);
    let ctx = context(client, &["http://127.0.0.1:*"]);
    assert!(webhook_config::reconcile(Arc::new(whc), ctx).await.is_err());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5, "{seen:#?}");
    let writes: Vec<&Seen> = seen.iter().filter(|(m, p, _)| m != "GET" && p.contains("/secrets")).collect();
    assert!(writes.is_empty(), "their Secret was written: {writes:#?}");
    assert_eq!(ready_of(&seen[3].2).0, "SecretConflict");
    let rendered = serde_json::to_string(&seen).unwrap();
    assert!(!rendered.contains("hunter2") && !rendered.contains("aHVudGVyMg"), "their data went nowhere");
}

#[tokio::test]
async fn an_agent_policy_gets_its_effective_settings_and_an_event_when_dispatch_starts() {
    let policy: AgentPolicy = serde_json::from_value(json!({
        "apiVersion": "hookwarden.io/v1alpha1", "kind": "AgentPolicy",
        "metadata": { "name": "agents", "namespace": "team", "uid": "u-2", "generation": 3 },
        "spec": { "concurrency": 3, "agents": [
            { "name": "good", "url": "http://good/", "filter": "event == 'push'" },
            { "name": "bad", "url": "http://bad/", "filter": "event ==" } ] }
    }))
    .unwrap();
    let object = serde_json::to_value(&policy).unwrap();
    let path = "/apis/hookwarden.io/v1alpha1/namespaces/team/agentpolicies/agents/status";
    let (client, seen) =
        apiserver(vec![("PATCH", path.into(), 200, object.clone()), ("POST", EVENTS.into(), 201, json!({}))]);
    agent_policy::reconcile(Arc::new(policy), context(client, &[])).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let status = &seen[0].2["status"];
    assert_eq!((status["enabled"].clone(), status["concurrency"].clone()), (json!(true), json!(3)));
    let filters = status["agentFilters"].to_string();
    assert!(filters.contains("good") && filters.contains("bad"), "both agents' filters reported: {filters}");
    assert_eq!(seen[1].2["reason"], "DispatchEnabled", "{:#}", seen[1].2);
}

#[tokio::test]
async fn a_new_webhook_config_gets_the_finalizer_before_anything_is_sent_to_github() {
    let mut whc = webhook_config("https://api.github.com");
    whc.metadata.finalizers = None;
    let object = serde_json::to_value(&whc).unwrap();
    let (client, seen) = apiserver(vec![("PATCH", WHC.into(), 200, object)]);
    let ctx = context(client, &["https://api.github.com"]);
    webhook_config::reconcile(Arc::new(whc), ctx).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "only the finalizer: {seen:#?}");
    assert!(seen[0].2.to_string().contains(webhook_config::FINALIZER), "{:#}", seen[0].2);
}

#[tokio::test]
async fn a_deletion_without_credentials_keeps_the_finalizer_and_says_what_to_do() {
    let mut whc = webhook_config("https://api.github.com");
    whc.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    whc.status = Some(crate::api::WebhookConfigStatus { hook_id: Some(4), ..Default::default() });
    let object = serde_json::to_value(&whc).unwrap();
    let gone = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
        "code": 404, "message": "secrets \"github-token\" not found" });
    let (client, seen) = apiserver(vec![
        ("GET", "/api/v1/namespaces/team/secrets/github-token".into(), 404, gone),
        ("PATCH", format!("{WHC}/status"), 200, object),
        ("POST", EVENTS.into(), 201, json!({})),
    ]);
    let ctx = context(client, &["https://api.github.com"]);
    assert!(webhook_config::reconcile(Arc::new(whc), ctx).await.is_err(), "retried later");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert!(
        seen.iter().all(|(m, p, _)| !(m == "PATCH" && p == WHC)),
        "the finalizer stays: the hook still delivers"
    );
    let (reason, message) = ready_of(&seen[1].2);
    assert_eq!(reason, "DeletionBlocked");
    assert!(
        message.contains("hook 4")
            && message.contains("github-token")
            && message.contains(webhook_config::FINALIZER),
        "{message}"
    );
}

#[tokio::test]
async fn an_agent_policy_whose_status_is_current_is_not_written_again() {
    let mut policy: AgentPolicy = serde_json::from_value(json!({
        "apiVersion": "hookwarden.io/v1alpha1", "kind": "AgentPolicy",
        "metadata": { "name": "agents", "namespace": "team", "uid": "u-2", "generation": 3 },
        "spec": { "concurrency": 2, "agents": [{ "name": "a", "url": "http://a/" }] }
    }))
    .unwrap();
    let object = serde_json::to_value(&policy).unwrap();
    let path = "/apis/hookwarden.io/v1alpha1/namespaces/team/agentpolicies/agents/status";
    let (client, seen) =
        apiserver(vec![("PATCH", path.into(), 200, object), ("POST", EVENTS.into(), 201, json!({}))]);
    agent_policy::reconcile(Arc::new(policy.clone()), context(client, &[])).await.unwrap();
    let written = seen.lock().unwrap()[0].2["status"].clone();
    policy.status = Some(serde_json::from_value(written).unwrap());
    // The same policy with that status: nothing to say, nothing sent.
    let (client, seen) = apiserver(vec![]);
    agent_policy::reconcile(Arc::new(policy), context(client, &[])).await.unwrap();
    assert!(seen.lock().unwrap().is_empty(), "{:#?}", seen.lock().unwrap());
}

#[tokio::test]
async fn the_pending_age_is_the_oldest_of_all_the_hooks_and_grows_between_passes() {
    use crate::api::RecoveryStatus;
    let (client, _) = apiserver(vec![]);
    let ctx = context(client, &[]);
    let whc = webhook_config("https://api.github.com");
    let at = |secs: i64| RecoveryStatus {
        oldest_pending_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
        )),
        ..Default::default()
    };
    let gauge = || ctx.metrics.recovery_pending_age.with_label_values(&["team", "svc"]).get();
    let hooks = [Some(at(1_000)), None, Some(at(1_050)), Some(RecoveryStatus::default())];
    webhook_config::recovery::report_pending_age(&ctx, &whc, &hooks, 1_100);
    assert_eq!(gauge(), 100, "the oldest of the hooks");
    webhook_config::recovery::report_pending_age(&ctx, &whc, &hooks, 1_160);
    assert_eq!(gauge(), 160, "it grows while nothing is recovered");
    webhook_config::recovery::report_pending_age(&ctx, &whc, &[None], 1_160);
    assert_eq!(gauge(), 0, "none pending");
}
