//! A GitHub App's own webhook (`AppWebhook`), end to end with the real
//! operator, receiver, apiserver, Redis and the GitHub simulator: the
//! platform's App delivers the events of two installations; each team's
//! AgentPolicy gets those of the repositories its namespace is granted (a
//! third team, which asks for everything and is granted nothing, gets
//! none); the key rotates while events flow with none rejected; and
//! deliveries GitHub failed while the receivers were unreachable are
//! recovered through the App's delivery endpoints.

mod common;

use std::{collections::HashSet, time::Duration};

use common::{Process, TestEnv, TestNamespace, WAIT, eventually, free_port, redis_prefix};
use hookwarden::{
    api::{AgentPolicy, AppWebhook, GitHubConnection},
    sample_agent::{self, Sink},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// Emits a push of `account/service` through installation `installation`
/// to App `app_id`'s webhook; returns GitHub's record of the delivery.
async fn emit(http: &reqwest::Client, github: &str, app_id: u64, account: &str, installation: u64) -> Value {
    let payload = json!({
        "ref": "refs/heads/main", "after": format!("{:040x}", rand::random::<u128>()),
        "installation": {"id": installation},
        "repository": {"full_name": format!("{account}/service"), "name": "service", "owner": {"login": account}},
    });
    let url = format!("{github}/_sim/apps/{app_id}/events");
    let r = http.post(url).json(&json!({"event": "push", "payload": payload})).send().await.unwrap();
    assert!(r.status().is_success(), "emit: {}", r.status());
    r.json().await.unwrap()
}

/// The simulator's view of the App webhook that delivers to `url` (with its secret).
async fn app_hook(http: &reqwest::Client, github: &str, url: &str) -> Value {
    let hooks: Vec<Value> =
        http.get(format!("{github}/_sim/hooks")).send().await.unwrap().json().await.unwrap();
    hooks.into_iter().find(|h| h["type"] == "App" && h["config"]["url"] == url).unwrap_or(Value::Null)
}

/// Deletes the test's cluster-scoped objects.
struct Cleanup(TestEnv, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.0.kubectl(&["delete", "appwebhook", &self.1, "--wait=false"]);
        self.0.kubectl(&["delete", "githubconnection", &self.1, "--wait=false"]);
    }
}

/// The GUIDs agent `agent` accepted.
fn got(sink: &Sink, agent: &str) -> HashSet<String> {
    sink.received(agent).into_iter().map(|r| r.id).collect()
}

#[tokio::test]
async fn an_apps_webhook_reaches_only_the_granted_teams_rotates_with_nothing_rejected_and_recovers_what_failed()
 {
    let env = TestEnv::load();
    let http = reqwest::Client::new();
    let github = env.var("GITHUB_API_URL").to_owned();
    let id = rand::random::<u32>();
    let (app_id, acme_installation, beta_installation) = (u64::from(id) + 1_000_000, 71, 72);
    let name = format!("app-{id:08x}");
    let (acme, beta) = (format!("acme-{id:08x}"), format!("beta-{id:08x}"));
    let sim = |path: &str, body: Value| {
        let (http, url) = (http.clone(), format!("{github}/_sim/{path}"));
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<Value>().await.unwrap_or(Value::Null)
        }
    };
    let key = sim(
        "apps",
        json!({"id": app_id, "installations": {acme_installation.to_string(): acme, beta_installation.to_string(): beta}}),
    )
    .await["private_key"]
        .as_str()
        .unwrap()
        .to_owned();
    for account in [&acme, &beta] {
        sim("repos", json!({"full_name": format!("{account}/service")})).await;
    }
    let _cleanup = Cleanup(TestEnv::load(), name.clone());
    let awh_of = || {
        let (client, name) = (env.client(), name.clone());
        async move { Api::<AppWebhook>::all(client.await).get(&name).await.unwrap() }
    };

    let (platform, team_a, team_b, team_c) = (
        TestNamespace::create(&env).await,
        TestNamespace::create(&env).await,
        TestNamespace::create(&env).await,
        TestNamespace::create(&env).await,
    );
    let client = env.client().await;
    let pp = PostParams::default();
    let mut pem = Secret::default();
    pem.metadata.name = Some("app-key".into());
    pem.string_data = Some([("key.pem".to_owned(), key)].into());
    Api::<Secret>::namespaced(client.clone(), &platform.name).create(&pp, &pem).await.unwrap();
    let connection: GitHubConnection = serde_json::from_value(json!({
        "apiVersion": "hookwarden.io/v1alpha1", "kind": "GitHubConnection", "metadata": {"name": name},
        "spec": {"apiUrl": github,
                 "app": {"appId": app_id, "installationId": acme_installation,
                         "privateKeySecretRef": {"name": "app-key", "key": "key.pem"}},
                 "grants": [{"namespaces": [team_a.name], "repositories": [format!("{}/*", acme)]},
                            {"namespaces": [team_b.name], "repositories": [format!("{}/*", beta)]}]}
    }))
    .unwrap();
    Api::<GitHubConnection>::all(client.clone()).create(&pp, &connection).await.unwrap();

    // One agent per team, and each team's policy asks for every repository.
    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, sample_agent::router(sink.clone())).into_future());
    for (ns, agent) in [(&team_a, "a"), (&team_b, "b"), (&team_c, "c")] {
        let policy: AgentPolicy = serde_json::from_value(json!({
            "apiVersion": "hookwarden.io/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "default"},
            "spec": {"agents": [{"name": agent, "url": format!("{sink_url}/{agent}")}],
                     "appWebhooks": [{"name": name, "repositories": ["*/*"]}]}
        }))
        .unwrap();
        Api::<AgentPolicy>::namespaced(client.clone(), &ns.name).create(&pp, &policy).await.unwrap();
    }

    // The receiver serves every namespace; the operators each one (team a's
    // also manages this test's AppWebhook, from the platform's namespace,
    // where the receivers report the keys they loaded).
    let prefix = redis_prefix();
    let port = free_port();
    let receiver_url = format!("http://127.0.0.1:{port}");
    let redis = env.var("REDIS_URL");
    let _receiver = Process::start(
        &env,
        "app-receiver",
        &["receiver", "--listen", &format!("127.0.0.1:{port}"), "--consumer", "app-receiver"],
        &[("REDIS_URL", redis), ("HOOKWARDEN_REDIS_PREFIX", &prefix), ("POD_NAMESPACE", &platform.name)],
    );
    let selector = format!("hookwarden.io/test={id}");
    let operator = |ns: &TestNamespace, lease: &TestNamespace, extra: &[&str]| {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["operator", "--listen", &listen, "--public-base-url", &receiver_url];
        args.extend_from_slice(&[
            "--resync",
            "2s",
            "--redelivery-interval",
            "1s",
            "--github-mutation-interval",
            "50ms",
        ]);
        args.extend_from_slice(extra);
        let vars = [
            ("HOOKWARDEN_NAMESPACE", ns.name.as_str()),
            ("POD_NAMESPACE", lease.name.as_str()),
            ("REDIS_URL", redis),
            ("HOOKWARDEN_REDIS_PREFIX", prefix.as_str()),
        ];
        Process::start(&env, &format!("app-operator-{}", ns.name), &args, &vars)
    };
    let _operators = [
        operator(&team_a, &platform, &["--app-webhooks", &selector]),
        operator(&team_b, &team_b, &[]),
        operator(&team_c, &team_c, &[]),
    ];
    let awh: AppWebhook = serde_json::from_value(json!({
        "apiVersion": "hookwarden.io/v1alpha1", "kind": "AppWebhook",
        "metadata": {"name": name, "labels": {"hookwarden.io/test": id.to_string()}},
        "spec": {"connection": name, "secretRotation": {"interval": "720h", "overlap": "1s"}}
    }))
    .unwrap();
    Api::<AppWebhook>::all(client.clone()).create(&pp, &awh).await.unwrap();

    // GitHub's App webhook points at the receivers, signed with a key.
    let want_url = format!("{receiver_url}/app-hooks/{}", name);
    let first_secret = eventually("the App's webhook configured", WAIT, || async {
        let hook = app_hook(&http, &github, &want_url).await;
        hook["config"]["secret"].as_str().map(str::to_owned)
    })
    .await;
    eventually("AppWebhook Ready with its key in sync", WAIT, || async {
        let status = awh_of().await.status?;
        let cond = |t: &str| status.conditions.iter().any(|c| c.type_ == t && c.status == "True");
        (cond("Ready") && status.key_secret.is_some()).then_some(())
    })
    .await;
    // Each team's grants, in its policy's status; team c is told why it gets none.
    let routes = |ns: String| {
        let client = client.clone();
        async move {
            let policy = Api::<AgentPolicy>::namespaced(client, &ns).get("default").await.ok()?;
            policy.status
        }
    };
    for (ns, granted) in [(&team_a, &acme), (&team_b, &beta)] {
        eventually("the team's grant in its policy's status", WAIT, || async {
            let status = routes(ns.name.clone()).await?;
            let route = status.app_webhooks.first()?;
            (route.granted == vec![format!("{granted}/*")]).then_some(())
        })
        .await;
    }
    let refused = eventually("team c told it is granted nothing", WAIT, || async {
        let status = routes(team_c.name.clone()).await?;
        let ready = status.conditions.into_iter().find(|c| c.type_ == "Ready" && c.status == "False")?;
        status.app_webhooks.is_empty().then_some(ready)
    })
    .await;
    assert_eq!(refused.reason, "AppWebhookNotGranted", "{}", refused.message);

    // Two installations' events: each to the team granted its repository.
    let (mut acme_sent, mut beta_sent) = (HashSet::new(), HashSet::new());
    for _ in 0..10 {
        for (account, installation, sent) in
            [(&acme, acme_installation, &mut acme_sent), (&beta, beta_installation, &mut beta_sent)]
        {
            let d = emit(&http, &github, app_id, account, installation).await;
            assert_eq!(d["status_code"], 202, "{d}");
            assert_eq!(d["installation_id"], installation, "{d}");
            sent.insert(d["guid"].as_str().unwrap().to_owned());
        }
    }
    eventually("each team's agent got its installation's events", WAIT, || async {
        (got(&sink, "a") == acme_sent && got(&sink, "b") == beta_sent).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(got(&sink, "a"), acme_sent, "team a got exactly acme's events");
    assert_eq!(got(&sink, "b"), beta_sent, "team b got exactly beta's events");
    assert!(got(&sink, "c").is_empty(), "team c, granted nothing, got {:?}", got(&sink, "c"));

    // A rotation while events flow at 5/s: none rejected.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flow = {
        let (http, github, acme, stop) = (http.clone(), github.clone(), acme.clone(), stop.clone());
        tokio::spawn(async move {
            let mut codes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let d = emit(&http, &github, app_id, &acme, acme_installation).await;
                codes.push((d["guid"].as_str().unwrap().to_owned(), d["status_code"].as_u64().unwrap()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            codes
        })
    };
    let old_version = awh_of().await.status.unwrap().signing_key_version.unwrap();
    let awhs = Api::<AppWebhook>::all(client.clone());
    let rotate = json!({"metadata": {"annotations": {"hookwarden.io/rotate": "now"}}});
    awhs.patch(&name, &PatchParams::default(), &Patch::Merge(&rotate)).await.unwrap();
    eventually("the rotation confirmed by a delivery", Duration::from_secs(60), || async {
        let status = awh_of().await.status?;
        let signing = status.signing_key_version?;
        (signing != old_version && status.confirmed_key_version.as_deref() == Some(signing.as_str()))
            .then_some(())
    })
    .await;
    let new_secret =
        app_hook(&http, &github, &want_url).await["config"]["secret"].as_str().map(str::to_owned);
    assert_ne!(new_secret, Some(first_secret), "GitHub signs with another secret");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let codes = flow.await.unwrap();
    let rejected: Vec<_> = codes.iter().filter(|(_, code)| *code != 202).collect();
    assert!(codes.len() >= 10, "{} deliveries during the rotation", codes.len());
    assert!(
        rejected.is_empty(),
        "{} of {} rejected during the rotation: {rejected:?}",
        rejected.len(),
        codes.len()
    );
    eventually("the old key leaves the Secret", WAIT, || async {
        let secrets = Api::<Secret>::namespaced(client.clone(), &platform.name);
        let secret = secrets.get(&format!("appwebhook-{}", name)).await.ok()?;
        (secret.data?.len() == 1).then_some(())
    })
    .await;

    // The receivers unreachable: GitHub's deliveries fail, and while it
    // still cannot reach them the operator fetches every one through the
    // App's delivery endpoints and queues it for team a.
    let before = got(&sink, "a");
    sim("unreachable", json!({"url": receiver_url})).await;
    let mut failed = HashSet::new();
    for _ in 0..10 {
        let d = emit(&http, &github, app_id, &acme, acme_installation).await;
        assert_eq!(d["status_code"], 0, "{d}");
        failed.insert(d["guid"].as_str().unwrap().to_owned());
    }
    eventually("every failed delivery recovered for team a", WAIT, || async {
        let now = got(&sink, "a");
        failed.iter().all(|g| now.contains(g)).then_some(())
    })
    .await;
    let r = http
        .delete(format!("{github}/_sim/unreachable"))
        .json(&json!({"url": receiver_url}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(before.is_disjoint(&failed));
    assert!(got(&sink, "b").is_disjoint(&failed) && got(&sink, "c").is_empty());

    // A stranger's delivery is refused: a wrong signature, an unknown App webhook.
    let stranger = |path: String| {
        let http = http.clone();
        async move {
            let body = json!({"repository": {"full_name": "acme/x"}}).to_string();
            http.post(path)
                .header("x-github-event", "push")
                .header("x-github-delivery", common::guid())
                .header("content-type", "application/json")
                .header("x-hub-signature-256", hookwarden::signature::sign(b"not the key", body.as_bytes()))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(stranger(want_url.clone()).await, 401);
    assert_eq!(stranger(format!("{receiver_url}/app-hooks/nobody-{id}")).await, 404);

    // Every request the operator sent matches GitHub's OpenAPI description.
    let requests: Vec<Value> =
        http.get(format!("{github}/_sim/requests")).send().await.unwrap().json().await.unwrap();
    let app_calls: HashSet<String> = requests
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/app/hook")))
        .map(|r| format!("{} {}", r["method"].as_str().unwrap(), r["path"].as_str().unwrap()))
        .collect();
    for call in ["GET /app/hook/config", "PATCH /app/hook/config", "GET /app/hook/deliveries"] {
        assert!(app_calls.contains(call), "no {call} among {app_calls:?}");
    }
    assert!(app_calls.iter().any(|c| c.starts_with("GET /app/hook/deliveries/")), "no delivery fetched");
    let violations: Vec<String> = http
        .get(format!("{github}/_sim/openapi-violations/app/hook"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    let _ = awhs.delete(&name, &DeleteParams::default()).await;
}
