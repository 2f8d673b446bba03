//! The receiver's world as real processes: a namespace with an AgentPolicy
//! and a WebhookConfig, its key Secret, a running operator, receivers started
//! on demand, an agent that records what it got; and the admin CLI and live
//! stream as a user drives them. Shared by the `receiver_*` suites.

use super::Process;
use super::TestEnv;
use super::TestNamespace;
use super::WAIT;
use super::eventually;
use super::free_port;
use super::guid;
use super::redis_prefix;
use super::sample;
use super::scrape;
use hookwarden::api::AgentPolicy;
use hookwarden::cli::sse::SseEvent;
use hookwarden::cli::sse::SseParser;
use hookwarden::keys;
use hookwarden::keys::HmacKey;
use hookwarden::sample_agent;
use hookwarden::sample_agent::Sink;
use hookwarden::signature;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub struct System {
    pub env: TestEnv,
    pub ns: TestNamespace,
    pub prefix: String,
    pub sink: Sink,
    pub http: reqwest::Client,
    pub _operator: Process,
}

impl System {
    /// A namespace with an AgentPolicy (agents in `agents`, each `(name, timeoutSeconds)`),
    /// a WebhookConfig `repo-hook`, its Secret holding `key`, and a running operator.
    pub async fn new(agents: &[(&str, i32)], key: &HmacKey) -> Self {
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

    pub async fn policy(&self) -> AgentPolicy {
        Api::<AgentPolicy>::namespaced(self.env.client().await, &self.ns.name).get("default").await.unwrap()
    }

    /// Starts a receiver replica and waits until it is ready.
    pub async fn receiver(&self, consumer: &str) -> (Process, String) {
        let (process, base, _) = self.receiver_with_admin(consumer).await;
        (process, base)
    }

    /// A receiver replica with its admin API on; returns its base and admin URLs.
    pub async fn receiver_with_admin(&self, consumer: &str) -> (Process, String, String) {
        self.receiver_with_env(consumer, &[]).await
    }

    /// The same, with more environment variables.
    pub async fn receiver_with_env(&self, consumer: &str, env: &[(&str, &str)]) -> (Process, String, String) {
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
    pub async fn deliver(&self, base: &str, key: &HmacKey, guid: &str) -> u16 {
        // Distinct per delivery, as GitHub's are (the same body under a new
        // GUID is refused as a replay).
        let body = json!({"action": "opened", "pull_request": {"head": {"sha": super::commit_sha()}},
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

    pub async fn deliver_many(&self, base: &str, key: &HmacKey, n: usize) -> Vec<String> {
        let mut guids = Vec::new();
        for _ in 0..n {
            let guid = guid();
            assert_eq!(self.deliver(base, key, &guid).await, 202);
            guids.push(guid);
        }
        guids
    }

    pub fn kubectl_patch_policy(&self, patch: &str) {
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

    pub fn ids(&self, agent: &str) -> Vec<String> {
        self.sink.received(agent).into_iter().map(|r| r.id).collect()
    }

    pub async fn until_received(&self, agent: &str, want: &[String]) {
        eventually(&format!("{agent} to receive {} events", want.len()), WAIT, || async {
            let got: HashSet<String> = self.ids(agent).into_iter().collect();
            want.iter().all(|id| got.contains(id)).then_some(())
        })
        .await;
    }

    pub async fn metric(&self, base: &str, line_prefix: &str) -> Option<f64> {
        sample(&scrape(&self.http, &format!("{base}/metrics")).await, line_prefix)
    }
}

pub fn key_secret(keys: &[&HmacKey]) -> Secret {
    keys::key_secret("repo-hook-hmac", "repo-hook", keys)
}

/// `hookwarden admin -o json ...` against a receiver; returns the parsed JSON output.
pub fn admin_cli(admin: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    admin_cli_text(admin, &[&["-o", "json"], args].concat()).map(|text| serde_json::from_str(&text).unwrap())
}

/// `hookwarden admin ...` against a receiver; returns what it prints.
pub fn admin_cli_text(admin: &str, args: &[&str]) -> Result<String, String> {
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

/// Follows `/admin/stream` in the background; what it received so far.
pub fn follow(admin: &str, last_event_id: Option<String>) -> Arc<Mutex<Vec<SseEvent>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
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

pub fn deliveries(events: &[SseEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.event == "delivery")
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            (v["guid"].as_str().unwrap().to_owned(), v["status"].as_str().unwrap().to_owned())
        })
        .collect()
}
