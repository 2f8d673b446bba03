//! One installation, many teams: what a team with rights only in its own
//! namespace can write (WebhookConfigs, Secrets) must never reach another
//! team's credentials or objects. Each test is an attack, tried against the
//! real operator, apiserver and GitHub simulator, and shown refused.
//! (Redis' password is shown by `tests/pods.rs`, from another namespace's pod.)

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{Process, TestEnv, TestNamespace, WAIT, browser::Browser, eventually, free_port};
use hookwarden::api::{GitHubConnection, WebhookConfig};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};

struct World {
    env: TestEnv,
    ns: TestNamespace,
    /// The operator's own namespace (the platform's), where a
    /// GitHubConnection's credentials live.
    platform: TestNamespace,
    github: String,
    http: reqwest::Client,
    _operator: Process,
}

impl World {
    /// A namespace and an operator for it, allowed to call the simulator
    /// only (unless `extra` says otherwise).
    async fn new(extra: &[&str]) -> Self {
        let env = TestEnv::load();
        let ns = TestNamespace::create(&env).await;
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["operator", "--listen", &listen, "--public-base-url", "http://127.0.0.1:9/r"];
        args.extend_from_slice(&["--resync-seconds", "2", "--github-mutation-interval-ms", "100"]);
        args.extend_from_slice(extra);
        let platform = TestNamespace::create(&env).await;
        let vars = [("HOOKWARDEN_NAMESPACE", ns.name.as_str()), ("POD_NAMESPACE", platform.name.as_str())];
        let operator = Process::start(&env, "tenancy-operator", &args, &vars);
        let github = env.var("GITHUB_API_URL").to_owned();
        Self { env, ns, platform, github, http: reqwest::Client::new(), _operator: operator }
    }

    async fn sim_post(&self, path: &str, body: Value) -> Value {
        let r = self.http.post(format!("{}/_sim/{path}", self.github)).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    async fn secret(&self, name: &str, data: &[(&str, &str)]) {
        self.secret_in(&self.ns.name, name, data).await
    }

    async fn secret_in(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let secrets: Api<Secret> = Api::namespaced(self.env.client().await, ns);
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.string_data = Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }

    async fn apply(&self, name: &str, spec: Value) {
        common::apply_webhook_config(self.env.client().await, &self.ns.name, name, spec).await;
    }

    async fn whcs(&self) -> Api<WebhookConfig> {
        Api::namespaced(self.env.client().await, &self.ns.name)
    }

    /// The Ready condition once it has one with `status`: (reason, message).
    async fn ready_is(&self, name: &str, status: &str) -> (String, String) {
        eventually(&format!("{name} Ready={status}"), WAIT, || async {
            let whc = self.whcs().await.get(name).await.ok()?;
            let c = whc.status?.conditions.into_iter().find(|c| c.type_ == "Ready" && c.status == status)?;
            Some((c.reason, c.message))
        })
        .await
    }

    /// The simulator's hooks on `owner` (`orgs/x` or `repos/x/y`).
    async fn hooks(&self, owner: &str) -> Vec<Value> {
        let all: Vec<Value> =
            self.http.get(format!("{}/_sim/hooks", self.github)).send().await.unwrap().json().await.unwrap();
        all.into_iter().filter(|h| h["url"].as_str().unwrap().contains(&format!("/{owner}/hooks/"))).collect()
    }
}

#[tokio::test]
async fn a_forged_key_never_gets_another_teams_cached_installation_token() {
    let w = World::new(&[]).await;
    let id = format!("{:08x}", rand::random::<u32>());
    let org = format!("org-{id}");
    w.sim_post("orgs", json!({ "login": org })).await;
    let (app_id, installation) = (rand::random::<u32>() as u64 + 1, rand::random::<u32>() as u64 + 1);
    let real =
        w.sim_post("apps", json!({ "id": app_id, "installations": { installation.to_string(): org } })).await;
    // Any RSA key will do for the forger: another App's, freshly made.
    let forged = w.sim_post("apps", json!({ "id": app_id + 1, "installations": {} })).await;
    w.secret("team-a-app", &[("pem", real["private_key"].as_str().unwrap())]).await;
    w.secret("forged-app", &[("pem", forged["private_key"].as_str().unwrap())]).await;
    let github = |secret: &str| {
        json!({ "apiUrl": w.github, "app": { "appId": app_id, "installationId": installation,
            "privateKeySecretRef": { "name": secret, "key": "pem" } } })
    };
    w.apply("team-a", json!({ "organization": org, "events": ["push"], "github": github("team-a-app") }))
        .await;
    w.ready_is("team-a", "True").await;
    // The installation token is cached now; the forger names the same App
    // and installation with its own key, and a URL of its own.
    w.apply(
        "forger",
        json!({ "organization": org, "events": ["issues"], "url": "https://attacker.example/steal",
            "github": github("forged-app") }),
    )
    .await;
    let (reason, message) = w.ready_is("forger", "False").await;
    assert_eq!(reason, "BadCredentials", "{message}");
    let hooks = w.hooks(&format!("orgs/{org}")).await;
    assert_eq!(hooks.len(), 1, "only team A's hook: {hooks:?}");
    assert!(hooks.iter().all(|h| h["config"]["url"] != "https://attacker.example/steal"));
    // Team A is unaffected.
    w.ready_is("team-a", "True").await;
}

/// Deletes the (cluster-scoped) GitHubConnection when the test ends.
struct Connection<'a>(&'a TestEnv, String);

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        // NB: Drop cannot await; kubectl is synchronous (as TestNamespace's).
        self.0.kubectl(&["delete", "githubconnection", &self.1, "--wait=false"]);
    }
}

#[tokio::test]
async fn a_platform_connection_serves_only_the_namespaces_and_targets_it_grants() {
    let w = World::new(&[]).await;
    let id = format!("{:08x}", rand::random::<u32>());
    let (org, other_org) = (format!("org-{id}"), format!("other-{id}"));
    for login in [&org, &other_org] {
        w.sim_post("orgs", json!({ "login": login })).await;
    }
    let (app_id, installation) = (rand::random::<u32>() as u64 + 1, rand::random::<u32>() as u64 + 1);
    let app =
        w.sim_post("apps", json!({ "id": app_id, "installations": { installation.to_string(): org } })).await;
    // The App's key is the platform's, in the operator's namespace.
    w.secret_in(&w.platform.name, "platform-app", &[("pem", app["private_key"].as_str().unwrap())]).await;
    let name = format!("conn-{id}");
    let connections: Api<GitHubConnection> = Api::all(w.env.client().await);
    let spec = |namespace: &str| {
        json!({ "apiUrl": w.github, "app": { "appId": app_id, "installationId": installation,
            "privateKeySecretRef": { "name": "platform-app", "key": "pem" } },
            "grants": [{ "namespaces": [namespace], "organizations": [org] }] })
    };
    let connection: GitHubConnection =
        serde_json::from_value(json!({ "metadata": { "name": name }, "spec": spec("another-team") }))
            .unwrap();
    connections.create(&PostParams::default(), &connection).await.unwrap();
    let _cleanup = Connection(&w.env, name.clone());

    // Granted to another namespace only: refused, and nothing reaches GitHub.
    let github = json!({ "connection": name });
    w.apply("wanted", json!({ "organization": org, "events": ["push"], "github": github })).await;
    let (reason, message) = w.ready_is("wanted", "False").await;
    assert_eq!(reason, "ConnectionNotGranted", "{message}");
    assert!(message.contains(&w.ns.name) && message.contains(&org), "{message}");
    assert!(w.hooks(&format!("orgs/{org}")).await.is_empty());

    // The platform grants this namespace: the hook registers, without an
    // edit of the WebhookConfig (the grant's change wakes it).
    let patch = json!({ "spec": spec(&format!("hw-test-*{}", &w.ns.name[8..])) });
    connections
        .patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .unwrap();
    w.ready_is("wanted", "True").await;
    assert_eq!(w.hooks(&format!("orgs/{org}")).await.len(), 1);

    // Another organization than the grant's: refused.
    w.apply("outside", json!({ "organization": other_org, "events": ["push"], "github": github })).await;
    let (reason, message) = w.ready_is("outside", "False").await;
    assert_eq!(reason, "ConnectionNotGranted", "{message}");
    assert!(w.hooks(&format!("orgs/{other_org}")).await.is_empty());

    // A team's own reference to the platform's key Secret resolves in the
    // team's namespace, never the operator's.
    w.apply(
        "borrower",
        json!({ "organization": org, "events": ["issues"], "github": { "apiUrl": w.github,
            "app": { "appId": app_id, "installationId": installation,
                "privateKeySecretRef": { "name": "platform-app", "key": "pem" } } } }),
    )
    .await;
    let (reason, message) = w.ready_is("borrower", "False").await;
    assert_eq!(reason, "InvalidConfig", "{message}");
    assert!(message.contains("not found"), "{message}");
    assert_eq!(w.hooks(&format!("orgs/{org}")).await.len(), 1, "only the granted hook");

    // A missing connection says so.
    w.apply("nameless", json!({ "organization": org, "github": { "connection": format!("none-{id}") } }))
        .await;
    assert_eq!(w.ready_is("nameless", "False").await.0, "ConnectionMissing");
}

/// A TCP listener that counts the connections made to it.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (url, count)
}

#[tokio::test]
async fn an_api_url_the_platform_did_not_list_gets_no_request_at_all() {
    // /meta is read every second: an unlisted URL must not be read either.
    let w = World::new(&["--github-meta-refresh-seconds", "1"]).await;
    let (unlisted, connections) = counting_listener().await;
    w.secret("github-token", &[("token", "ghp_whatever")]).await;
    for (name, api) in [("elsewhere", unlisted.as_str()), ("metadata", "http://169.254.169.254")] {
        let spec = json!({ "repository": "team/repo", "events": ["push"],
            "github": { "apiUrl": api, "tokenSecretRef": { "name": "github-token", "key": "token" } } });
        w.apply(name, spec).await;
        let (reason, message) = w.ready_is(name, "False").await;
        assert_eq!(reason, "ApiUrlNotAllowed", "{message}");
        assert!(message.contains("nothing was sent"), "{message}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 0, "the unlisted API was called");
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(w.env.client().await, &w.ns.name);
    let published = configmaps.get_opt(hookwarden::github::meta::DEFAULT_CONFIGMAP).await.unwrap();
    let urls = published.and_then(|c| c.data).map(|d| d[hookwarden::github::meta::API_URLS_KEY].clone());
    assert!(
        urls.as_ref().is_none_or(|u| !u.contains(&unlisted)),
        "the unlisted API's ranges were published: {urls:?}"
    );
}

#[tokio::test]
async fn a_secret_the_operator_did_not_make_is_never_changed_nor_deleted() {
    let w = World::new(&[]).await;
    let id = format!("{:08x}", rand::random::<u32>());
    let (repo, token) = (format!("team-{id}/service"), format!("ghp_{id}"));
    w.sim_post("tokens", json!({ "token": token })).await;
    w.sim_post("repos", json!({ "full_name": repo })).await;
    w.secret("github-token", &[("token", &token)]).await;
    // A user's Secret that happens to have the key Secret's name, and one
    // named by spec.secretName.
    w.secret("service-hmac", &[("database-password", "hunter2")]).await;
    w.secret("shared-keys", &[("api-key", "k")]).await;
    let github = json!({ "apiUrl": w.github, "tokenSecretRef": { "name": "github-token", "key": "token" } });
    w.apply("service", json!({ "repository": repo, "events": ["push"], "github": github })).await;
    w.apply(
        "named",
        json!({ "repository": repo, "events": ["issues"], "secretName": "shared-keys",
        "github": github }),
    )
    .await;
    for name in ["service", "named"] {
        let (reason, message) = w.ready_is(name, "False").await;
        assert_eq!(reason, "SecretConflict", "{message}");
    }
    let secrets: Api<Secret> = Api::namespaced(w.env.client().await, &w.ns.name);
    for (name, key, value) in
        [("service-hmac", "database-password", "hunter2"), ("shared-keys", "api-key", "k")]
    {
        let s = secrets.get(name).await.unwrap();
        let data = s.data.unwrap();
        assert_eq!(data.len(), 1, "{name} was written to: {:?}", data.keys());
        assert_eq!(data[key].0, value.as_bytes());
        assert!(s.metadata.owner_references.is_none(), "{name} was made owned by the WebhookConfig");
    }
    assert!(w.hooks(&format!("repos/{repo}")).await.is_empty(), "no hook without keys of its own");
    // Deleting the WebhookConfigs leaves the user's Secrets where they were.
    for name in ["service", "named"] {
        w.whcs().await.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("the WebhookConfigs gone", WAIT, || async {
        w.whcs().await.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in ["service-hmac", "shared-keys"] {
        assert!(secrets.get_opt(name).await.unwrap().is_some(), "{name} was deleted with the WebhookConfig");
    }
}

/// A ServiceAccount `name` in `ns` bound to `rules` there, and a token of it.
fn team_identity(env: &TestEnv, ns: &str, name: &str, rules: &str) -> String {
    let yaml = format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {name}, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {name}, namespace: {ns}}}
rules: {rules}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {name}, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}
subjects: [{{kind: ServiceAccount, name: {name}, namespace: {ns}}}]
"#
    );
    env.tool_ok("kubectl", &["apply", "-f", "-"], Some(&yaml));
    env.kubectl_ok(&["create", "token", name, "-n", ns, "--duration", "10m"]).trim().to_owned()
}

/// What a team's developers are given on their own AgentPolicies: every
/// capability of the admin API.
const TEAM_RULES: &str = r#"[{apiGroups: [hookwarden.io], resources: [agentpolicies], verbs: [get, list, watch, patch]},
  {apiGroups: [hookwarden.io], resources: [agentpolicies/payloads], verbs: [get]},
  {apiGroups: [hookwarden.io], resources: [agentpolicies/deadletters], verbs: [update]}]"#;

#[tokio::test]
async fn each_team_reads_and_acts_on_its_own_policies_only_through_the_admin_api() {
    let env = TestEnv::load();
    let (a, b) = (TestNamespace::create(&env).await, TestNamespace::create(&env).await);
    for ns in [&a, &b] {
        let policy =
            "apiVersion: hookwarden.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: default}\nspec: {}\n";
        env.tool_ok("kubectl", &["apply", "-n", &ns.name, "-f", "-"], Some(policy));
    }
    let token_a = team_identity(&env, &a.name, "dev", TEAM_RULES);
    let token_b = team_identity(&env, &b.name, "dev", TEAM_RULES);
    let nobody = team_identity(&env, &a.name, "nobody", "[]");
    // One receiver for every namespace, as the chart runs it.
    let (port, admin) = (free_port(), free_port());
    let (listen, admin_listen) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{admin}"));
    let args = ["receiver", "--listen", &listen, "--admin-listen", &admin_listen, "--consumer", "shared"];
    let vars = [
        ("POD_NAMESPACE", a.name.as_str()),
        ("REDIS_URL", env.var("REDIS_URL")),
        ("HOOKWARDEN_REDIS_PREFIX", &common::redis_prefix()),
        ("HOOKWARDEN_ADMIN_TOKEN", "the-platform-token"),
        ("HOOKWARDEN_ADMIN_KUBERNETES_AUTH", "true"),
    ];
    let _receiver = Process::start(&env, "shared-receiver", &args, &vars);
    let http = reqwest::Client::new();
    let base = format!("http://{admin_listen}/admin");
    let policies = |token: &str| {
        let (http, url, token) = (http.clone(), format!("{base}/policies"), token.to_owned());
        async move {
            let r = http.get(url).bearer_auth(token).send().await.ok()?;
            let list: Vec<Value> = r.json().await.ok()?;
            Some(list.iter().filter_map(|p| p["policy"].as_str().map(str::to_owned)).collect::<Vec<_>>())
        }
    };
    let (mine_a, mine_b) = (format!("{}/default", a.name), format!("{}/default", b.name));
    eventually("the platform's token sees both teams", WAIT, || async {
        let all = policies("the-platform-token").await?;
        (all.contains(&mine_a) && all.contains(&mine_b)).then_some(())
    })
    .await;
    let status = |method: reqwest::Method, path: String, token: String| {
        let http = http.clone();
        let url = format!("{base}/policies/{path}");
        async move { http.request(method, url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    use reqwest::Method;
    for (token, mine, theirs) in [(&token_a, &mine_a, &mine_b), (&token_b, &mine_b, &mine_a)] {
        let seen = policies(token).await.unwrap();
        assert_eq!(seen, vec![mine.clone()], "a team lists its own policies only");
        for (method, rest) in [
            (Method::GET, "/dead-letters"),
            (Method::GET, "/tap"),
            (Method::POST, "/disable"),
            (Method::POST, "/dead-letters/1-0/replay"),
            (Method::DELETE, "/dead-letters"),
        ] {
            let theirs_status = status(method.clone(), format!("{theirs}{rest}"), token.clone()).await;
            assert_eq!(theirs_status, 403, "{method} another team's {rest}");
        }
        assert_eq!(status(Method::GET, format!("{mine}/dead-letters"), token.clone()).await, 200);
        assert_eq!(status(Method::POST, format!("{mine}/disable"), token.clone()).await, 200);
        assert_eq!(status(Method::POST, format!("{mine}/dead-letters/1-0/replay"), token.clone()).await, 404);
        // The tap answers (a stream): its head is enough.
        let tap = http.get(format!("{base}/policies/{mine}/tap")).bearer_auth(token).send().await.unwrap();
        assert_eq!(tap.status(), 200);
        drop(tap);
        // The live stream's snapshot holds its own policies only.
        let mut stream = http.get(format!("{base}/stream")).bearer_auth(token).send().await.unwrap();
        let mut text = String::new();
        while !text.contains("\n\n") {
            let chunk = tokio::time::timeout(WAIT, stream.chunk()).await.unwrap().unwrap().unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(text.contains("event: snapshot") && text.contains(mine.as_str()), "{text}");
        assert!(!text.contains(theirs.as_str()), "another team's policy in the stream: {text}");
    }
    // The switch went where it was allowed to: each team's own policy only.
    let spec_enabled =
        |ns: &str| env.kubectl_ok(&["get", "ap", "default", "-n", ns, "-o", "jsonpath={.spec.enabled}"]);
    assert_eq!((spec_enabled(&a.name), spec_enabled(&b.name)), ("false".into(), "false".into()));
    // `hookwarden admin` with no token given uses the kubeconfig's user, as
    // kubectl does: team A's developer sees team A's policy only.
    let kubeconfig = std::env::temp_dir().join(format!("dev-{}.kubeconfig", a.name));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: dev\n\
             clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:1'}}}}]\n\
             users: [{{name: dev, user: {{token: {token_a}}}}}]\n\
             contexts: [{{name: dev, context: {{cluster: c, user: dev}}}}]\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookwarden"))
        .args(["admin", "-o", "json", "policies"])
        .env("KUBECONFIG", &kubeconfig)
        .env("HOOKWARDEN_ADMIN_URL", format!("http://{admin_listen}"))
        .env_remove("HOOKWARDEN_ADMIN_TOKEN")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said} {}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(&mine_a) && !said.contains(&mine_b), "{said}");
    // An identity with no rights sees nothing and may do nothing; a token
    // Kubernetes does not know is not let in at all.
    assert_eq!(policies(&nobody).await.unwrap(), Vec::<String>::new());
    assert_eq!(status(Method::POST, format!("{mine_a}/enable"), nobody.clone()).await, 403);
    assert_eq!(status(Method::GET, format!("{mine_a}/dead-letters"), "not-a-token".into()).await, 401);

    // The status page, in a real browser, signs in with team A's token: it
    // shows A's policy and not B's, and A's switch flips from it.
    let mut page = Browser::phone().await;
    page.open(&base).await;
    page.until("the sign-in form", "!document.querySelector('#sign-in').hidden").await;
    page.eval(&format!(
        "document.querySelector('#token').value = '{token_a}'; document.querySelector('#sign-in').requestSubmit()"
    ))
    .await;
    let row = |policy: &str| format!("#policies tr[data-policy='{policy}']");
    page.until("team A's policy", &format!("!!document.querySelector(\"{}\")", row(&mine_a))).await;
    page.until("the live badge", "document.querySelector('#live').textContent === 'live'").await;
    let shown = page
        .eval("[...document.querySelectorAll('#policies tr[data-policy]')].map(r => r.dataset.policy)")
        .await;
    assert_eq!(shown, json!([mine_a]), "the page shows team A's policies only");
    page.eval(&format!("document.querySelector(\"{} .flip\").click()", row(&mine_a))).await;
    page.until("the confirmation", "document.querySelector('#confirm').open").await;
    page.eval("document.querySelector('#confirm-yes').click()").await;
    eventually("A's policy enabled from the page", WAIT, || async {
        (spec_enabled(&a.name) == "true").then_some(())
    })
    .await;
    assert_eq!(spec_enabled(&b.name), "false", "B's switch stays");
}
