//! The WebhookConfig controller against the real apiserver and the GitHub
//! simulator that `e2e/up` runs: register, adopt, update, repair, delete,
//! and the conditions a person reads when GitHub says no.

mod common;

use std::time::Duration;

use common::{Process, TestEnv, TestNamespace, eventually, free_port};
use hookwarden::{api::WebhookConfig, keys::keys_from_secret};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const PUBLIC_BASE: &str = "http://127.0.0.1:9/receiver";

struct World {
    env: TestEnv,
    ns: TestNamespace,
    github: String,
    http: reqwest::Client,
    repo: String,
    org: String,
    token: String,
    _operator: Process,
}

impl World {
    async fn new() -> Self {
        let env = TestEnv::load();
        let ns = TestNamespace::create(&env).await;
        let github = env.var("GITHUB_API_URL").to_owned();
        let http = reqwest::Client::new();
        let id = format!("{:08x}", rand::random::<u32>());
        let (repo, org, token) = (format!("team-{id}/service"), format!("org-{id}"), format!("ghp_{id}"));
        for (path, body) in [
            ("tokens", json!({ "token": token })),
            ("repos", json!({ "full_name": repo })),
            ("orgs", json!({ "login": org })),
        ] {
            let r = http.post(format!("{github}/_sim/{path}")).json(&body).send().await.unwrap();
            assert!(r.status().is_success());
        }
        let secrets: Api<Secret> = Api::namespaced(env.client().await, &ns.name);
        let mut token_secret = Secret::default();
        token_secret.metadata.name = Some("github-token".into());
        token_secret.string_data = Some([("token".to_owned(), token.clone())].into());
        secrets.create(&PostParams::default(), &token_secret).await.unwrap();
        let operator = Process::start(
            &env,
            "operator",
            &[
                "operator",
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--public-base-url",
                PUBLIC_BASE,
                "--resync-seconds",
                "2",
            ],
            &[("HOOKWARDEN_NAMESPACE", &ns.name)],
        );
        Self { env, ns, github, http, repo, org, token, _operator: operator }
    }

    fn hook_url(&self, name: &str) -> String {
        format!("{PUBLIC_BASE}/hooks/{}/{name}", self.ns.name)
    }

    async fn apply(&self, name: &str, target: Value, events: Value) {
        let mut spec = json!({ "events": events, "github": { "apiUrl": self.github, "tokenSecretRef": { "name": "github-token", "key": "token" } } });
        spec.as_object_mut().unwrap().extend(target.as_object().unwrap().clone());
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "hookwarden.io/v1alpha1", "kind": "WebhookConfig", "metadata": { "name": name }, "spec": spec
        }))
        .unwrap();
        let ar = kube::api::ApiResource::erase::<WebhookConfig>(&());
        let api = Api::<DynamicObject>::namespaced_with(self.env.client().await, &self.ns.name, &ar);
        api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&obj)).await.unwrap();
    }

    async fn whc(&self, name: &str) -> WebhookConfig {
        Api::<WebhookConfig>::namespaced(self.env.client().await, &self.ns.name).get(name).await.unwrap()
    }

    async fn ready(&self, name: &str) -> Option<(String, String)> {
        let whc = self.whc(name).await;
        let c = whc.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        Some((c.status, c.reason))
    }

    /// The simulator's hooks on `owner` (`repos/x/y` or `orgs/x`), secrets shown.
    async fn hooks(&self, owner: &str) -> Vec<Value> {
        let all: Vec<Value> =
            self.http.get(format!("{}/_sim/hooks", self.github)).send().await.unwrap().json().await.unwrap();
        all.into_iter().filter(|h| h["url"].as_str().unwrap().contains(&format!("/{owner}/hooks/"))).collect()
    }

    /// API requests the simulator served for `owner`'s hooks so far.
    async fn requests_for(&self, owner: &str) -> usize {
        let all: Vec<Value> = self
            .http
            .get(format!("{}/_sim/requests", self.github))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all.iter().filter(|r| r["path"].as_str().unwrap().starts_with(&format!("/{owner}/hooks"))).count()
    }

    /// Every request the operator sent GitHub for `owner`, and every answer,
    /// agrees with GitHub's OpenAPI description.
    async fn assert_github_agrees(&self, owner: &str) {
        let url = format!("{}/_sim/openapi-violations/{owner}", self.github);
        let problems: Vec<String> = self.http.get(url).send().await.unwrap().json().await.unwrap();
        assert!(
            problems.is_empty(),
            "disagreements with GitHub's OpenAPI description:\n{}",
            problems.join("\n")
        );
        assert!(self.requests_for(owner).await > 0, "the operator called GitHub");
    }

    async fn event_reasons(&self) -> String {
        self.env.kubectl_ok(&["get", "events", "-n", &self.ns.name, "-o", "jsonpath={.items[*].reason}"])
    }
}

#[tokio::test]
async fn a_repository_hook_is_registered_updated_repaired_and_deleted() {
    let w = World::new().await;
    let owner = format!("repos/{}", w.repo);
    w.apply("svc", json!({ "repository": w.repo }), json!(["pull_request"])).await;
    eventually("Ready", WAIT, || async {
        (w.ready("svc").await? == ("True".into(), "Ready".into())).then_some(())
    })
    .await;

    let whc = w.whc("svc").await;
    let status = whc.status.clone().unwrap();
    let hooks = w.hooks(&owner).await;
    assert_eq!(hooks.len(), 1);
    let hook = &hooks[0];
    assert_eq!(Some(hook["id"].as_i64().unwrap()), status.hook_id);
    assert_eq!(hook["config"]["url"], w.hook_url("svc"));
    assert_eq!(hook["config"]["content_type"], "json", "sent explicitly: GitHub's default is form");
    assert_eq!(hook["events"], json!(["pull_request"]));
    // GitHub signs with the key the Secret holds.
    let secret = Api::<Secret>::namespaced(w.env.client().await, &w.ns.name).get("svc-hmac").await.unwrap();
    let keys = keys_from_secret(&secret);
    assert_eq!(keys.len(), 1);
    assert_eq!(hook["config"]["secret"].as_str().unwrap().as_bytes(), keys[0].secret());
    assert_eq!(secret.metadata.owner_references.unwrap()[0].name, "svc");
    assert_eq!(status.secret_name.as_deref(), Some("svc-hmac"));
    assert!(status.rate_limit.unwrap().remaining < 5000);
    // Steady state: resyncs every 2 s answer with conditional GETs, which cost nothing.
    let remaining = || async {
        let r = w.http.get(format!("{}/rate_limit", w.github)).bearer_auth(&w.token).send().await.unwrap();
        r.headers()["x-ratelimit-remaining"].to_str().unwrap().parse::<u32>().unwrap()
    };
    let before = remaining().await;
    let requests_before = w.requests_for(&owner).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(remaining().await, before, "steady state spends no rate-limit budget");
    let resyncs = w.requests_for(&owner).await - requests_before;
    assert!((2..=8).contains(&resyncs), "about one conditional GET per resync, got {resyncs}");
    let table = w.env.kubectl_ok(&["get", "whc", "svc", "-n", &w.ns.name]);
    assert!(table.contains(&hook["id"].to_string()) && table.contains("True"), "{table}");

    // A spec change updates the hook, keeping the secret.
    w.apply("svc", json!({ "repository": w.repo }), json!(["pull_request", "issues"])).await;
    eventually("the events to change on GitHub", WAIT, || async {
        let hooks = w.hooks(&owner).await;
        (hooks[0]["events"] == json!(["pull_request", "issues"])).then_some(())
    })
    .await;
    assert_eq!(w.hooks(&owner).await[0]["config"]["secret"].as_str().unwrap().as_bytes(), keys[0].secret());

    // Someone deletes it on GitHub: it comes back.
    let old_id = hook["id"].as_i64().unwrap();
    w.http.delete(format!("{}/_sim/hooks/{old_id}", w.github)).send().await.unwrap();
    let repaired = eventually("the hook to be put back", WAIT, || async {
        let hooks = w.hooks(&owner).await;
        (hooks.len() == 1 && hooks[0]["id"] != old_id).then(|| hooks[0].clone())
    })
    .await;
    eventually("status to follow", WAIT, || async {
        (w.whc("svc").await.status?.hook_id == repaired["id"].as_i64()).then_some(())
    })
    .await;
    let reasons = w.event_reasons().await;
    assert!(
        reasons.contains("Created") && reasons.contains("Updated") && reasons.contains("Repaired"),
        "{reasons}"
    );

    // Deleting the resource deletes the hook, and the key Secret with it.
    let api = Api::<WebhookConfig>::namespaced(w.env.client().await, &w.ns.name);
    api.delete("svc", &DeleteParams::default()).await.unwrap();
    eventually("the hook to be deleted on GitHub", WAIT, || async {
        w.hooks(&owner).await.is_empty().then_some(())
    })
    .await;
    let secrets = Api::<Secret>::namespaced(w.env.client().await, &w.ns.name);
    eventually("the key Secret to be collected", Duration::from_secs(60), || async {
        secrets.get_opt("svc-hmac").await.unwrap().is_none().then_some(())
    })
    .await;
    w.assert_github_agrees(&owner).await;
}

#[tokio::test]
async fn an_existing_hook_with_the_same_url_is_adopted_not_duplicated() {
    let w = World::new().await;
    let owner = format!("orgs/{}", w.org);
    // A hook someone made by hand, with another secret and content type.
    let r = w
        .http
        .post(format!("{}/_sim/tokens", w.github))
        .json(&json!({ "token": "ghp_by_hand" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let created: Value = w
        .http
        .post(format!("{}/{owner}/hooks", w.github))
        .bearer_auth("ghp_by_hand")
        .json(&json!({ "name": "web", "config": { "url": w.hook_url("org"), "secret": "by-hand" }, "events": ["push"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    w.apply("org", json!({ "organization": w.org }), json!(["push", "issues"])).await;
    eventually("Ready", WAIT, || async { (w.ready("org").await?.0 == "True").then_some(()) }).await;
    let hooks = w.hooks(&owner).await;
    assert_eq!(hooks.len(), 1, "adopted, not duplicated");
    assert_eq!(hooks[0]["id"], created["id"]);
    assert_eq!(w.whc("org").await.status.unwrap().hook_id, created["id"].as_i64());
    assert_ne!(hooks[0]["config"]["secret"], "by-hand", "adopting sets hookwarden's own secret");
    assert_eq!(hooks[0]["config"]["content_type"], "json");
    assert!(w.event_reasons().await.contains("Adopted"));
    w.assert_github_agrees(&owner).await;
}

#[tokio::test]
async fn what_github_refuses_shows_as_a_condition_a_person_can_act_on() {
    let w = World::new().await;
    // Missing repository.
    w.apply("missing", json!({ "repository": format!("{}-nope", w.repo) }), json!(["push"])).await;
    // Bad token.
    let secrets: Api<Secret> = Api::namespaced(w.env.client().await, &w.ns.name);
    let mut bad = Secret::default();
    bad.metadata.name = Some("bad-token".into());
    bad.string_data = Some([("token".to_owned(), "ghp_wrong".to_owned())].into());
    secrets.create(&PostParams::default(), &bad).await.unwrap();
    let ar = kube::api::ApiResource::erase::<WebhookConfig>(&());
    let api = Api::<DynamicObject>::namespaced_with(w.env.client().await, &w.ns.name, &ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "hookwarden.io/v1alpha1", "kind": "WebhookConfig", "metadata": { "name": "badtoken" },
        "spec": { "repository": w.repo, "events": ["push"], "github": { "apiUrl": w.github, "tokenSecretRef": { "name": "bad-token", "key": "token" } } }
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    // The hook limit: 20 hooks on push already.
    for i in 0..20 {
        let r = w
            .http
            .post(format!("{}/repos/{}/hooks", w.github, w.repo))
            .bearer_auth(&w.token)
            .json(
                &json!({ "config": { "url": format!("https://elsewhere.example/{i}") }, "events": ["push"] }),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    w.apply("full", json!({ "repository": w.repo }), json!(["push"])).await;

    for (name, reason, text) in [
        ("missing", "NotFound", "does not exist, or the token cannot see it"),
        ("badtoken", "BadCredentials", "check the token Secret"),
        ("full", "Rejected", "cannot have more than 20 hooks"),
    ] {
        let (status, got) = eventually(&format!("{name}: a failed Ready"), WAIT, || async {
            let r = w.ready(name).await?;
            (r.0 == "False").then_some(r)
        })
        .await;
        assert_eq!((status.as_str(), got.as_str()), ("False", reason), "{name}");
        let message = w
            .whc(name)
            .await
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .message;
        assert!(message.contains(text), "{name}: {message}");
        assert!(!message.contains("ghp_"), "{name}: the token leaked into status");
    }
    w.assert_github_agrees(&format!("repos/{}", w.repo)).await;
}
