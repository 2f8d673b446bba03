//! The user's journey, end to end on the local control plane: `helm install`
//! for real, then the operator and a receiver run as local processes
//! authenticated as the chart's own ServiceAccounts, so the chart's RBAC is
//! what is exercised (the chart's own pods are kept from starting with
//! `image.pullPolicy=Never` on an image the node does not have; tests/pods.rs
//! runs them). Everything after the install goes through kubectl and HTTP, as
//! a platform engineer would.
//!
//! Over 400 lines: one suite per area, each test a scenario a user runs, with the world it needs.

mod common;

use std::time::{Duration, Instant};

use common::{
    Process, PushFlow, TestEnv, TestNamespace, WAIT, eventually, free_port, redis_prefix, rotate_now, sample,
    scrape, webhook_examples,
};
use hookwarden::sample_agent::{self, Sink};
use serde_json::{Value, json};

const RELEASE: &str = "hw";
const FULLNAME: &str = "hw-hookwarden";

struct Journey {
    env: TestEnv,
    ns: TestNamespace,
    github: String,
    http: reqwest::Client,
    repo: String,
    receiver: String,
}

impl Journey {
    fn kubectl(&self, args: &[&str]) -> String {
        self.env.kubectl_ok(args)
    }

    fn kubectl_in(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-n", &self.ns.name]);
        self.env.kubectl_ok(&all)
    }

    fn apply(&self, yaml: &str) {
        self.env.tool_ok("kubectl", &["apply", "-n", &self.ns.name, "-f", "-"], Some(yaml));
    }

    /// A kubeconfig that authenticates as ServiceAccount `sa` of the release.
    fn service_account_kubeconfig(&self, sa: &str) -> std::path::PathBuf {
        let token = self.kubectl_in(&["create", "token", sa, "--duration", "1h"]);
        let server = self.kubectl(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]);
        let ca = self.kubectl(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ]);
        let path = std::env::temp_dir().join(format!("{}-{sa}.kubeconfig", self.ns.name));
        let config = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{ "name": "local", "cluster": { "server": server, "certificate-authority-data": ca } }],
            "users": [{ "name": sa, "user": { "token": token.trim() } }],
            "contexts": [{ "name": "sa", "context": { "cluster": "local", "user": sa, "namespace": self.ns.name } }],
        });
        std::fs::write(&path, config.to_string()).unwrap();
        path
    }

    /// `kubectl patch agentpolicy default` — the kill switch.
    fn set_enabled(&self, enabled: bool) {
        let patch = json!({ "spec": { "enabled": enabled } }).to_string();
        self.kubectl_in(&["patch", "agentpolicy", "default", "--type", "merge", "-p", &patch]);
    }

    async fn sim(&self, path: &str, body: Value) -> Value {
        let r = self.http.post(format!("{}/_sim/{path}", self.github)).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    async fn hooks(&self) -> Vec<Value> {
        let all: Vec<Value> =
            self.http.get(format!("{}/_sim/hooks", self.github)).send().await.unwrap().json().await.unwrap();
        let owner = format!("/repos/{}/hooks/", self.repo);
        all.into_iter().filter(|h| h["url"].as_str().unwrap().contains(&owner)).collect()
    }

    /// The simulator emits a new occurrence of `event` to hook `id`; returns
    /// the delivery it recorded.
    async fn emit(&self, id: i64, event: &str, payload: &Value) -> Value {
        let payload = common::occurrence(payload);
        self.sim(&format!("hooks/{id}/events"), json!({ "event": event, "payload": payload })).await
    }

    async fn metric(&self, series: &str) -> Option<f64> {
        sample(&scrape(&self.http, &format!("{}/metrics", self.receiver)).await, series)
    }
}

#[tokio::test]
async fn a_platform_engineer_installs_with_helm_and_runs_webhooks_end_to_end() {
    let env = TestEnv::load();
    let ns = TestNamespace::create(&env).await;
    let github = env.var("GITHUB_API_URL").to_owned();
    let id = format!("{:08x}", rand::random::<u32>());
    let repo = format!("journey-{id}/service");
    let token = format!("ghp_journey_{id}");
    let receiver_port = free_port();
    let j = Journey {
        env,
        ns,
        github,
        http: reqwest::Client::new(),
        repo,
        receiver: format!("http://127.0.0.1:{receiver_port}"),
    };
    j.sim("tokens", json!({ "token": token })).await;
    j.sim("repos", json!({ "full_name": j.repo })).await;

    // The sample agent, where the default AgentPolicy sends events.
    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_url = format!("http://{}/reviewer", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, sample_agent::router(sink.clone())).into_future());

    // helm install, namespaced to this namespace, Redis external (the local one).
    let prefix = redis_prefix();
    let agents =
        json!([{ "name": "reviewer", "url": agent_url, "events": ["pull_request", "push"] }]).to_string();
    let sets = format!(
        "watchNamespace={ns},redis.url={redis},redis.prefix={prefix},publicBaseUrl={public},operator.resyncSeconds=10,image.pullPolicy=Never",
        ns = j.ns.name,
        redis = j.env.var("REDIS_URL"),
        public = j.receiver,
    );
    let installed = j.env.tool_ok(
        "helm",
        &[
            "install",
            RELEASE,
            "charts/hookwarden",
            "-n",
            &j.ns.name,
            "--set",
            &sets,
            "--set-json",
            &format!("defaultAgentPolicy.agents={agents}"),
        ],
        None,
    );
    assert!(
        installed.contains(&format!("{}/hooks/<namespace>/<webhookconfig>", j.receiver)),
        "NOTES: {installed}"
    );
    let admin_token = j.kubectl_in(&[
        "get",
        "secret",
        &format!("{FULLNAME}-admin"),
        "-o",
        "go-template={{.data.token | base64decode}}",
    ]);
    assert!(admin_token.len() >= 48, "a generated admin token");

    // The operator and a receiver, as the chart's ServiceAccounts, configured as its Deployments are.
    let keys_ns = format!("{}-keys", j.ns.name);
    let operator_kubeconfig = j.service_account_kubeconfig(&format!("{FULLNAME}-operator"));
    let receiver_kubeconfig = j.service_account_kubeconfig(&format!("{FULLNAME}-receiver"));
    let shared = |kubeconfig: &std::path::Path| {
        vec![
            ("KUBECONFIG", kubeconfig.to_str().unwrap().to_owned()),
            ("POD_NAMESPACE", j.ns.name.clone()),
            ("HOOKWARDEN_NAMESPACE", j.ns.name.clone()),
            ("HOOKWARDEN_KEYS_NAMESPACE", keys_ns.clone()),
            ("REDIS_URL", j.env.var("REDIS_URL").to_owned()),
            ("HOOKWARDEN_REDIS_PREFIX", prefix.clone()),
            ("HOOKWARDEN_GITHUB_META_CONFIGMAP", format!("{FULLNAME}-github-meta")),
        ]
    };
    let mut operator_env = shared(&operator_kubeconfig);
    operator_env.push(("HOOKWARDEN_PUBLIC_BASE_URL", j.receiver.clone()));
    operator_env.push(("HOOKWARDEN_RESYNC", "10s".into()));
    operator_env.push(("HOOKWARDEN_GITHUB_MUTATION_INTERVAL", "200ms".into()));
    let vars: Vec<(&str, &str)> = operator_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let operator_listen = format!("127.0.0.1:{}", free_port());
    let mut operator =
        Process::start(&j.env, "journey-operator", &["operator", "--listen", &operator_listen], &vars);
    let mut receiver_env = shared(&receiver_kubeconfig);
    receiver_env.push(("HOOKWARDEN_ADMIN_TOKEN", admin_token.clone()));
    let vars: Vec<(&str, &str)> = receiver_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let admin_listen = format!("127.0.0.1:{}", free_port());
    let mut receiver = Process::start(
        &j.env,
        "journey-receiver",
        &["receiver", "--listen", &format!("127.0.0.1:{receiver_port}"), "--admin-listen", &admin_listen],
        &vars,
    );
    eventually("the receiver to be ready", WAIT, || async {
        j.http.get(format!("{}/readyz", j.receiver)).send().await.ok()?.status().is_success().then_some(())
    })
    .await;

    // 1. A WebhookConfig becomes a hook on GitHub, with its Secret.
    j.kubectl_in(&["create", "secret", "generic", "github-token", &format!("--from-literal=token={token}")]);
    j.apply(&format!(
        "apiVersion: hookwarden.io/v1alpha1\nkind: WebhookConfig\nmetadata: {{name: service}}\nspec:\n  repository: {}\n  events: [pull_request, push]\n  secretRotation: {{interval: 720h, overlap: 2s}}\n  github: {{apiUrl: \"{}\", tokenSecretRef: {{name: github-token, key: token}}}}\n",
        j.repo, j.github
    ));
    let hook = eventually("the hook on GitHub", WAIT, || async { j.hooks().await.into_iter().next() }).await;
    let hook_id = hook["id"].as_i64().unwrap();
    assert_eq!(hook["config"]["url"], format!("{}/hooks/{}/service", j.receiver, j.ns.name));
    eventually("Ready in kubectl get", WAIT, || async {
        let table = j.kubectl_in(&["get", "whc", "service"]);
        (table.contains("True") && table.contains(&hook_id.to_string())).then_some(())
    })
    .await;
    j.kubectl_in(&["get", "secret", "service-hmac"]);
    // ...copied into the keys namespace, the only place the receiver reads
    // Secrets (it verifies the deliveries below with the copy), and so are
    // agents' signing Secrets; a team's other Secrets are not.
    j.kubectl_in(&[
        "create",
        "secret",
        "generic",
        "signing",
        "--from-literal=k=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ]);
    j.kubectl_in(&["label", "secret", "signing", "hookwarden.io/agent-signing=true"]);
    let copy_data = |name: &str| {
        let out = j.env.kubectl(&["get", "secret", name, "-n", &keys_ns, "-o", "jsonpath={.data}"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let copy_of = |name: &str| format!("{}.{name}", j.ns.name);
    for source in ["service-hmac", "signing"] {
        let copied =
            eventually(&format!("{source}'s copy"), WAIT, || async { copy_data(&copy_of(source)) }).await;
        assert_eq!(copied, j.kubectl_in(&["get", "secret", source, "-o", "jsonpath={.data}"]), "{source}");
    }
    let copies = j.env.kubectl_ok(&["get", "secrets", "-n", &keys_ns, "-o", "name"]);
    assert_eq!(copies.lines().count(), 2, "only the receivers' Secrets are copied: {copies}");
    let described = j.kubectl_in(&["describe", "whc", "service"]);
    assert!(described.contains("Created") && described.contains(&format!("hook {hook_id}")), "{described}");

    // 2. GitHub sends a signed pull_request; the agent gets the CloudEvent.
    let (_, pull_request) = webhook_examples()
        .into_iter()
        .find(|(event, p)| event == "pull_request" && p["action"] == "opened")
        .unwrap();
    let delivery = j.emit(hook_id, "pull_request", &pull_request).await;
    assert_eq!(delivery["status_code"], 202, "{delivery}");
    let guid = delivery["guid"].as_str().unwrap().to_owned();
    eventually("the CloudEvent at the agent", WAIT, || async {
        sink.received("reviewer").iter().any(|r| r.id == guid).then_some(())
    })
    .await;

    // 3. The kill switch: dispatch stops within a second, events queue, then all arrive once.
    let enabled = format!("agents_enabled{{policy=\"{}/default\"}}", j.ns.name);
    let flipped = Instant::now();
    j.set_enabled(false);
    eventually("dispatch to stop", Duration::from_secs(5), || async {
        (j.metric(&enabled).await? == 0.0).then_some(())
    })
    .await;
    let took = flipped.elapsed();
    assert!(took < Duration::from_secs(1), "the kill switch took {took:?}");
    let mut held = Vec::new();
    for _ in 0..5 {
        let d = j.emit(hook_id, "pull_request", &pull_request).await;
        assert_eq!(d["status_code"], 202, "accepted while disabled");
        held.push(d["guid"].as_str().unwrap().to_owned());
    }
    // An upgrade in the middle of an incident leaves the kill switch alone,
    // and keeps the generated admin token.
    j.env.tool_ok(
        "helm",
        &[
            "upgrade",
            RELEASE,
            "charts/hookwarden",
            "-n",
            &j.ns.name,
            "--reuse-values",
            "--set",
            "operator.replicas=3",
        ],
        None,
    );
    assert_eq!(j.kubectl_in(&["get", "agentpolicy", "default", "-o", "jsonpath={.spec.enabled}"]), "false");
    let token_after = j.kubectl_in(&[
        "get",
        "secret",
        &format!("{FULLNAME}-admin"),
        "-o",
        "go-template={{.data.token | base64decode}}",
    ]);
    assert_eq!(token_after, admin_token, "helm upgrade kept the admin token");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = sink.received("reviewer");
    assert!(held.iter().all(|g| !got.iter().any(|r| &r.id == g)), "dispatched while disabled");
    j.set_enabled(true);
    eventually("the held events to arrive", WAIT, || async {
        let got = sink.received("reviewer");
        held.iter().all(|g| got.iter().any(|r| &r.id == g)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = sink.received("reviewer");
    for g in held.iter().chain([&guid]) {
        assert_eq!(got.iter().filter(|r| &r.id == g).count(), 1, "{g} arrived once");
    }

    // 4. A forced rotation while events flow (a push every 50 ms) rejects nothing.
    let flow = PushFlow::start(&j.github, &j.repo, hook_id, 20.0, None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    rotate_now(&j.env, &j.ns.name, "service", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let codes: Vec<u64> = flow.stop().await.into_iter().map(|(_, code)| code).collect();
    assert!(codes.len() >= 20, "events flowed during the rotation: {}", codes.len());
    assert!(codes.iter().all(|c| *c == 202), "rejected during the rotation: {codes:?}");
    let reasons = j.kubectl_in(&["get", "events", "-o", "jsonpath={.items[*].reason}"]);
    assert!(reasons.contains("Rotated"), "{reasons}");

    // 7. Each ServiceAccount may do what the code needs, and nothing more.
    let operator_exactly = [
        "agentpolicies.hookwarden.io [get list watch]",
        "agentpolicies.hookwarden.io/status [get patch update]",
        "appwebhooks.hookwarden.io [get list watch]",
        "appwebhooks.hookwarden.io/status [get patch update]",
        "configmaps [get create patch]",
        "events.events.k8s.io [create patch]",
        "githubconnections.hookwarden.io [get list watch]",
        "leases.coordination.k8s.io [get list create update delete]",
        "secrets [get list watch create update patch]",
        "webhookconfigs.hookwarden.io [get list watch patch update]",
        "webhookconfigs.hookwarden.io/status [get patch update]",
    ];
    let receiver_exactly = [
        "agentpolicies.hookwarden.io [get list watch patch]",
        "appwebhooks.hookwarden.io [get list watch]",
        "configmaps [get list watch]",
        "leases.coordination.k8s.io [get create patch delete]",
        // Who calls the admin API, and what RBAC lets them do there.
        "subjectaccessreviews.authorization.k8s.io [create]",
        "tokenreviews.authentication.k8s.io [create]",
        "webhookconfigs.hookwarden.io [get list watch]",
    ];
    for (sa, exact, allowed, denied) in [
        (
            "operator",
            &operator_exactly[..],
            vec![
                "patch webhookconfigs.hookwarden.io",
                "create secrets",
                "patch webhookconfigs.hookwarden.io/status",
                "create events.events.k8s.io",
                "update leases.coordination.k8s.io",
            ],
            vec![
                "delete secrets",
                "delete webhookconfigs.hookwarden.io",
                "get pods",
                "patch agentpolicies.hookwarden.io",
                "create deployments.apps",
            ],
        ),
        (
            "receiver",
            &receiver_exactly[..],
            vec![
                "watch webhookconfigs.hookwarden.io",
                "patch agentpolicies.hookwarden.io",
                "patch leases.coordination.k8s.io",
            ],
            vec![
                "get secrets",
                "watch secrets",
                "create secrets",
                "update secrets",
                "patch webhookconfigs.hookwarden.io",
                "delete agentpolicies.hookwarden.io",
                "patch webhookconfigs.hookwarden.io/status",
                "get pods",
            ],
        ),
    ] {
        let user = format!("system:serviceaccount:{}:{FULLNAME}-{sa}", j.ns.name);
        let can = |verb_resource: &str, ns: &str| {
            let (verb, resource) = verb_resource.split_once(' ').unwrap();
            let out = j.env.kubectl(&["auth", "can-i", verb, resource, "--as", &user, "-n", ns]);
            String::from_utf8_lossy(&out.stdout).trim() == "yes"
        };
        for a in &allowed {
            assert!(can(a, &j.ns.name), "{sa} cannot {a}");
        }
        for d in &denied {
            assert!(!can(d, &j.ns.name), "{sa} may {d}");
        }
        assert!(!can("get secrets", "default"), "{sa} reads Secrets outside its namespace");
        // The copies of the Secrets receivers read: the receiver reads them
        // there and nowhere else, the operator keeps them.
        assert!(can("watch secrets", &keys_ns), "{sa} cannot watch the copies");
        assert_eq!(can("delete secrets", &keys_ns), sa == "operator", "{sa} and deleting copies");
        assert_eq!(can("get secrets", &j.ns.name), sa == "operator", "{sa} and the team's Secrets");
        // Beyond what every authenticated user gets (self-reviews, discovery URLs).
        let list = j.kubectl_in(&["auth", "can-i", "--list", "--as", &user]);
        let mut held: Vec<String> = list
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with(' ') && !l.starts_with("selfsubject"))
            .map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                format!("{} {}", cols[0], l[l.rfind('[').unwrap()..].trim())
            })
            .collect();
        held.sort();
        assert_eq!(held, exact, "{sa}'s permissions");
    }

    // 5. Deleting the WebhookConfig deletes the hook and the Secret.
    j.kubectl_in(&["delete", "whc", "service", "--wait=true", "--timeout=60s"]);
    assert!(j.hooks().await.is_empty(), "the hook is gone from GitHub");
    eventually("the key Secret to go", Duration::from_secs(60), || async {
        let out = j.env.kubectl(&["get", "secret", "service-hmac", "-n", &j.ns.name]);
        (!out.status.success()).then_some(())
    })
    .await;
    eventually("its copy to go", Duration::from_secs(60), || async {
        copy_data(&copy_of("service-hmac")).is_none().then_some(())
    })
    .await;

    // 6. helm uninstall leaves nothing of hookwarden but the CRDs.
    operator.terminate();
    receiver.terminate();
    j.env.tool_ok("helm", &["uninstall", RELEASE, "-n", &j.ns.name, "--wait"], None);
    // The Deployments' pods (never started here) go with them, in the background.
    eventually("the release's pods gone", Duration::from_secs(60), || async {
        j.kubectl_in(&["get", "pods", "-o", "name"]).is_empty().then_some(())
    })
    .await;
    let left = j.kubectl_in(&[
        "get",
        "all,serviceaccounts,roles,rolebindings,secrets,configmaps,leases,poddisruptionbudgets,agentpolicies,webhookconfigs,networkpolicies",
        "-o",
        "name",
    ]);
    let left: Vec<&str> = left
        .lines()
        .filter(|l| {
            !l.contains("kube-root-ca.crt")
                && !l.ends_with("serviceaccount/default")
                && !l.ends_with("secret/github-token")
                && !l.ends_with("secret/signing")
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let cluster = j.kubectl(&[
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE}"),
        "-o",
        "name",
    ]);
    assert!(cluster.trim().is_empty(), "cluster objects left: {cluster}");
    // The keys namespace goes with the release, copies and all.
    let keys = j.env.kubectl(&["get", "namespace", &keys_ns, "-o", "jsonpath={.status.phase}"]);
    assert!(!keys.status.success() || keys.stdout == b"Terminating", "{keys_ns} stays");
    j.kubectl(&["get", "crd", "webhookconfigs.hookwarden.io", "agentpolicies.hookwarden.io"]);
}
