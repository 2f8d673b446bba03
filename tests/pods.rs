//! hookwarden as installed: `helm install` of the chart with the image built
//! here (e2e/images), on the local cluster's real node. The chart's own pods
//! do the whole job: the operator registers the hook on the simulator (which
//! listens on the node's address, where pods reach the host), the simulator
//! delivers to the receivers through their Service by its cluster DNS name,
//! the receivers queue in the chart's Redis and dispatch to the sample agent
//! on the host. Then what only real pods show: the kill switch, a rotation and
//! a rolling `helm upgrade` while events flow, the leader's pod deleted, a
//! receiver's pod killed mid-dispatch, Redis' pod deleted, `helm uninstall`.
//!
//! The figures (time to Ready, pod start, hand-over) are printed with
//! `--nocapture`.
//!
//! Over 400 lines: one suite per area, each test a scenario a user runs, with the world it needs.

mod common;

use std::{
    collections::HashSet,
    process::{Child, Command},
    time::{Duration, Instant},
};

use common::{
    Process, PushFlow, TestEnv, TestNamespace, accepted, eventually, free_port, repo_dir, rotate_now, scrape,
};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

const RELEASE: &str = "hw";
const FULLNAME: &str = "hw-hookwarden";
const AGENT: &str = "pods";
const WAIT: Duration = Duration::from_secs(120);

/// The simulator, in a mount namespace of its own whose resolv.conf names the
/// cluster DNS: it reaches the receivers by their Service's name, as GitHub
/// reaches them by a public name.
struct Simulator {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Simulator {
    fn start(node_ip: &str, token: &str, repo: &str) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("pods-sim-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, format!("nameserver {node_ip}\n")).unwrap();
        let log_path = dir.join("sim.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
            .arg(&resolv)
            .arg(repo_dir().join("target/debug/github-sim"))
            .args(["--listen", &format!("{node_ip}:{port}"), "--token", token, "--repo", repo])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start github-sim in its own mount namespace");
        Self { child, url: format!("http://{node_ip}:{port}"), log: log_path }
    }

    /// What the simulator logged of the deliveries that got no HTTP answer.
    fn failures(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter(|line| line.starts_with("delivery ")).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Installed {
    env: TestEnv,
    ns: TestNamespace,
    http: reqwest::Client,
    sim: Simulator,
    repo: String,
    agent_url: String,
    _agent: Process,
}

impl Installed {
    fn kubectl(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-n", &self.ns.name]);
        self.env.kubectl_ok(&all)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).unwrap()
    }

    fn helm(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-n", &self.ns.name]);
        self.env.tool_ok("helm", &all, None)
    }

    /// Pods of one component: (name, IP, ready).
    fn pods(&self, component: &str) -> Vec<(String, String, bool)> {
        let selector = format!("app.kubernetes.io/component={component}");
        let list = self.json(&["get", "pods", "-l", &selector]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                let ready = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (
                    p["metadata"]["name"].as_str().unwrap().to_owned(),
                    p["status"]["podIP"].as_str().unwrap_or_default().to_owned(),
                    ready,
                )
            })
            .collect()
    }

    /// Every Deployment and the StatefulSet have all their replicas ready and updated.
    fn all_ready(&self) -> bool {
        let list = self.json(&["get", "deployments,statefulsets"]);
        let items = list["items"].as_array().unwrap();
        items.len() == 3
            && items.iter().all(|d| {
                let want = d["spec"]["replicas"].as_u64().unwrap();
                let s = &d["status"];
                s["readyReplicas"].as_u64() == Some(want)
                    && s["updatedReplicas"].as_u64() == Some(want)
                    && s["replicas"].as_u64() == Some(want)
                    && s["observedGeneration"] == d["metadata"]["generation"]
            })
    }

    async fn until_all_ready(&self, what: &str) {
        eventually(what, WAIT, || async { self.all_ready().then_some(()) }).await;
    }

    fn set_enabled(&self, enabled: bool) {
        let patch = json!({ "spec": { "enabled": enabled } }).to_string();
        self.kubectl(&["patch", "agentpolicy", "default", "--type", "merge", "-p", &patch]);
    }

    /// The `agents_enabled` gauge of every receiver pod, read from the pod itself.
    async fn enabled_gauges(&self) -> Vec<Option<String>> {
        let line = format!("agents_enabled{{policy=\"{}/default\"}}", self.ns.name);
        let mut out = Vec::new();
        for (_, ip, _) in self.pods("receiver") {
            let text = scrape(&self.http, &format!("http://{ip}:8080/metrics")).await;
            out.push(text.lines().find(|l| l.starts_with(&line)).map(|l| l[line.len()..].trim().to_owned()));
        }
        out
    }

    /// Waits until the agent has accepted every GUID in `guids`; fails on a duplicate.
    async fn until_delivered(&self, guids: &[String], timeout: Duration) {
        let want: HashSet<&String> = guids.iter().collect();
        let got = eventually("every delivery at the agent", timeout, || async {
            let got = accepted(&self.http, &self.agent_url, AGENT).await;
            want.iter().all(|g| got.contains_key(*g)).then_some(got)
        })
        .await;
        let twice: Vec<_> = want.iter().filter(|g| got[**g].len() > 1).collect();
        assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    }

    /// The operator replica holding the leader Lease, if one does (a leader
    /// that stops gracefully gives the Lease up).
    fn lease_holder(&self) -> Option<String> {
        let out = self.env.kubectl(&[
            "get",
            "lease",
            "hookwarden-operator",
            "-n",
            &self.ns.name,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        let holder = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !holder.is_empty()).then_some(holder)
    }

    async fn until_led(&self) -> String {
        eventually("an operator leading", Duration::from_secs(30), || async { self.lease_holder() }).await
    }

    /// Seconds from each pod's creation to its Ready condition (pods that are Ready now).
    fn start_seconds(&self) -> Vec<(String, i64)> {
        let list = self.json(&["get", "pods"]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| {
                let ready = p["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready" && c["status"] == "True")?;
                let took =
                    seconds(&ready["lastTransitionTime"]) - seconds(&p["metadata"]["creationTimestamp"]);
                Some((p["metadata"]["name"].as_str()?.to_owned(), took))
            })
            .collect()
    }
}

/// Seconds since the epoch of a time as the apiserver writes it.
fn seconds(t: &Value) -> i64 {
    t.as_str().and_then(|t| t.parse::<Timestamp>().ok()).map(|t| t.as_second()).unwrap_or_default()
}

fn split_image(image: &str) -> (&str, &str) {
    image.rsplit_once(':').expect("an image reference with a tag")
}

#[tokio::test]
async fn the_charts_own_pods_do_the_whole_job_through_upgrades_and_failures() {
    let env = TestEnv::load();
    let ns = TestNamespace::create(&env).await;
    let node_ip = env.var("NODE_IP").to_owned();
    let id = format!("{:08x}", rand::random::<u32>());
    let (repo, token) = (format!("pods-{id}/service"), format!("ghp_pods{id}"));
    let sim = Simulator::start(&node_ip, &token, &repo);
    let agent_port = free_port();
    let agent =
        Process::start(&env, "agent", &["sample-agent", "--listen", &format!("{node_ip}:{agent_port}")], &[]);
    let http = reqwest::Client::new();
    let agent_url = format!("http://{node_ip}:{agent_port}");
    eventually("the simulator and the agent", Duration::from_secs(20), || async {
        let sim_up = http.get(format!("{}/_sim/hooks", sim.url)).send().await.is_ok();
        let agent_up = http.get(format!("{agent_url}/_received/{AGENT}")).send().await.is_ok();
        (sim_up && agent_up).then_some(())
    })
    .await;
    let t = Installed { env, ns, http, sim, repo, agent_url, _agent: agent };
    let ns = t.ns.name.clone();

    // 1. helm install with the image built here: every pod Ready through its probes.
    let (repository, tag) = split_image(t.env.var("HOOKWARDEN_IMAGE"));
    let (redis_repository, redis_tag) = split_image(t.env.var("HOOKWARDEN_REDIS_IMAGE"));
    let sets = format!(
        "image.repository={repository},image.tag={tag},redis.image.repository={redis_repository},\
         redis.image.tag={redis_tag},watchNamespace={ns},operator.resyncSeconds=10,\
         publicBaseUrl=http://{FULLNAME}-receiver.{ns}.svc.cluster.local,\
         operator.githubApiUrls={{{}}}",
        t.sim.url
    );
    let agents =
        json!([{ "name": "reviewer", "url": format!("{}/{AGENT}", t.agent_url), "events": ["push"] }]);
    let installing = Instant::now();
    t.helm(&[
        "install",
        RELEASE,
        "charts/hookwarden",
        "--set",
        &sets,
        "--set-json",
        &format!("defaultAgentPolicy.agents={agents}"),
    ]);
    t.until_all_ready("every pod of the release Ready").await;
    let to_ready = installing.elapsed();
    let starts = t.start_seconds();
    println!("helm install → all Ready: {:.1} s; pod creation → Ready: {starts:?}", to_ready.as_secs_f64());
    assert_eq!(t.pods("operator").len(), 2);
    assert_eq!(t.pods("receiver").len(), 2);
    t.until_led().await;

    // 1b. Redis is the release's: a pod of another namespace, with redis-cli
    // and the Service's name, is refused (no password).
    let stranger = TestNamespace::create(&t.env).await;
    let out = t.env.kubectl(&[
        "run",
        "stranger",
        "-n",
        &stranger.name,
        "--rm",
        "-i",
        "--restart=Never",
        "--quiet",
        &format!("--image={}", t.env.var("HOOKWARDEN_REDIS_IMAGE")),
        "--image-pull-policy=Never",
        "--command",
        "--",
        "redis-cli",
        "-h",
        &format!("{FULLNAME}-redis.{ns}.svc.cluster.local"),
        "XADD",
        "hookwarden:p:{x}:events",
        "*",
        "guid",
        "forged",
    ]);
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("NOAUTH"), "another namespace's pod reached Redis: {said}");

    // 2. A WebhookConfig becomes a hook on the simulator, made by the operator's pod.
    t.env.tool_ok(
        "kubectl",
        &["apply", "-n", &ns, "-f", "-"],
        Some(&format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: github-token}}
stringData: {{token: {token}}}
---
apiVersion: hookwarden.io/v1alpha1
kind: WebhookConfig
metadata: {{name: service}}
spec:
  repository: {repo}
  events: [push]
  secretRotation: {{interval: 720h, overlap: 2s}}
  github:
    apiUrl: "{sim}"
    tokenSecretRef: {{name: github-token, key: token}}
"#,
            repo = t.repo,
            sim = t.sim.url,
        )),
    );
    let hook_id: i64 = eventually("the hook registered by the operator pod", WAIT, || async {
        t.kubectl(&["get", "whc", "service", "-o", "jsonpath={.status.hookId}"]).parse().ok()
    })
    .await;
    eventually("the WebhookConfig Ready", WAIT, || async {
        let ready = t.kubectl(&[
            "get",
            "whc",
            "service",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ]);
        (ready == "True").then_some(())
    })
    .await;

    // 3. The simulator delivers through the Service; the agent gets the CloudEvent.
    let first = PushFlow::start(&t.sim.url, &t.repo, hook_id, 10.0, Some(5)).finish().await;
    assert!(first.iter().all(|(_, code)| *code == 202), "through the Service: {first:?}");
    let guids: Vec<String> = first.iter().map(|(g, _)| g.clone()).collect();
    t.until_delivered(&guids, Duration::from_secs(30)).await;

    // 4. The kill switch reaches every receiver pod within a second.
    let flipped = Instant::now();
    t.set_enabled(false);
    eventually("both receivers disabled", Duration::from_secs(5), || async {
        let g = t.enabled_gauges().await;
        (g.len() == 2 && g.iter().all(|v| v.as_deref() == Some("0"))).then_some(())
    })
    .await;
    let kill_switch = flipped.elapsed();
    println!("kill switch on every receiver pod: {} ms", kill_switch.as_millis());
    assert!(kill_switch < Duration::from_secs(1), "the kill switch took {kill_switch:?}");
    t.set_enabled(true);

    // 5. A rotation while events flow: nothing rejected.
    let flow = PushFlow::start(&t.sim.url, &t.repo, hook_id, 20.0, None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rotation = rotate_now(&t.env, &ns, "service", WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = flow.stop().await;
    let rejected: Vec<_> = sent.iter().filter(|(_, c)| *c != 202).collect();
    println!(
        "rotation: {:.1} s, {} deliveries, {} rejected",
        rotation.as_secs_f64(),
        sent.len(),
        rejected.len()
    );
    assert!(rejected.is_empty(), "rejected during the rotation: {rejected:?}\n{}", t.sim.failures());
    t.until_delivered(&sent.iter().map(|(g, _)| g.clone()).collect::<Vec<_>>(), WAIT).await;

    // 6. helm upgrade rolls every receiver and operator pod while 25 events/s
    //    flow: none lost, none rejected.
    let before: HashSet<String> =
        t.pods("receiver").into_iter().chain(t.pods("operator")).map(|(name, ..)| name).collect();
    let new_tag = format!("{tag}-upgrade");
    let out = Command::new("ctr")
        .args(["--address", t.env.var("CONTAINERD_ADDRESS"), "-n", "k8s.io", "images", "tag", "--force"])
        .args([t.env.var("HOOKWARDEN_IMAGE"), &format!("{repository}:{new_tag}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "ctr images tag: {}", String::from_utf8_lossy(&out.stderr));
    let flow = PushFlow::start(&t.sim.url, &t.repo, hook_id, 25.0, None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let upgrading = Instant::now();
    t.helm(&[
        "upgrade",
        RELEASE,
        "charts/hookwarden",
        "--reuse-values",
        "--set",
        &format!("image.tag={new_tag}"),
    ]);
    t.until_all_ready("the upgraded release Ready").await;
    let upgrade = upgrading.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = flow.stop().await;
    let after: HashSet<String> =
        t.pods("receiver").into_iter().chain(t.pods("operator")).map(|(name, ..)| name).collect();
    assert!(before.is_disjoint(&after), "every pod was replaced: {before:?} → {after:?}");
    let rejected: Vec<_> = sent.iter().filter(|(_, c)| *c != 202).collect();
    let rate = sent.len() as f64 / (upgrade.as_secs_f64() + 3.0);
    println!(
        "helm upgrade: {:.1} s, {} deliveries ({rate:.1}/s), {} rejected",
        upgrade.as_secs_f64(),
        sent.len(),
        rejected.len()
    );
    assert!(rate >= 20.0, "at least 20 events a second during the upgrade: {rate:.1}");
    assert!(rejected.is_empty(), "rejected during the rolling upgrade: {rejected:?}\n{}", t.sim.failures());
    let guids: Vec<String> = sent.iter().map(|(g, _)| g.clone()).collect();
    t.until_delivered(&guids, WAIT).await;
    println!("helm upgrade: 0 of {} lost", guids.len());

    // 7. Deleting the leader's pod hands the lease over within its duration.
    let leader = t.until_led().await;
    let deleting = Instant::now();
    t.kubectl(&["delete", "pod", &leader, "--wait=false"]);
    let new_leader = eventually("a new leader", Duration::from_secs(30), || async {
        t.lease_holder().filter(|holder| *holder != leader)
    })
    .await;
    let handover = deleting.elapsed();
    println!("leader {leader} deleted → {new_leader} leads after {:.1} s", handover.as_secs_f64());
    assert!(handover < Duration::from_secs(15), "hand-over took {handover:?}");

    // 8. A receiver's pod killed mid-dispatch: its entries are reclaimed and delivered.
    t.kubectl_put_mode("slow:3000", &t.http).await;
    let sent = PushFlow::start(&t.sim.url, &t.repo, hook_id, 20.0, Some(20)).finish().await;
    assert!(sent.iter().all(|(_, c)| *c == 202), "{sent:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (victim, ..) = t.pods("receiver").into_iter().next().unwrap();
    t.kubectl(&["delete", "pod", &victim, "--grace-period=0", "--force"]);
    t.kubectl_put_mode("ok", &t.http).await;
    let guids: Vec<String> = sent.iter().map(|(g, _)| g.clone()).collect();
    t.until_delivered(&guids, WAIT).await;
    t.until_all_ready("the receivers back").await;

    // 9. Redis' pod deleted while deliveries wait (kill switch on): it comes
    //    back with its data from the PVC and every accepted delivery arrives.
    t.set_enabled(false);
    eventually("both receivers disabled", Duration::from_secs(5), || async {
        let g = t.enabled_gauges().await;
        (g.len() == 2 && g.iter().all(|v| v.as_deref() == Some("0"))).then_some(())
    })
    .await;
    let held = PushFlow::start(&t.sim.url, &t.repo, hook_id, 20.0, Some(30)).finish().await;
    assert!(held.iter().all(|(_, c)| *c == 202), "{held:?}");
    t.kubectl(&["delete", "pod", &format!("{FULLNAME}-redis-0")]);
    t.until_all_ready("Redis back from its PVC").await;
    t.set_enabled(true);
    let guids: Vec<String> = held.iter().map(|(g, _)| g.clone()).collect();
    t.until_delivered(&guids, WAIT).await;

    // 10. helm uninstall (WebhookConfigs first, as the README says) leaves only
    //     the documented leftovers: the CRDs and Redis' PVC.
    t.kubectl(&["delete", "whc", "--all", "--wait=true", "--timeout=60s"]);
    t.helm(&["uninstall", RELEASE, "--wait", "--timeout", "120s"]);
    eventually("every pod gone", WAIT, || async {
        t.kubectl(&["get", "pods", "-o", "name"]).is_empty().then_some(())
    })
    .await;
    let left = t.kubectl(&[
        "get",
        "all,configmaps,secrets,serviceaccounts,roles,rolebindings,leases,pvc,poddisruptionbudgets,agentpolicies,webhookconfigs",
        "-o",
        "name",
    ]);
    // Not the release's: what every namespace has, and the test's own token.
    let theirs = ["configmap/kube-root-ca.crt", "serviceaccount/default", "secret/github-token"];
    let left: Vec<&str> = left.lines().filter(|l| !theirs.contains(l)).collect();
    assert_eq!(left, [format!("persistentvolumeclaim/data-{FULLNAME}-redis-0")], "left behind");
    let hooks: Vec<Value> =
        t.http.get(format!("{}/_sim/hooks", t.sim.url)).send().await.unwrap().json().await.unwrap();
    assert!(hooks.is_empty(), "the hook was deleted on GitHub: {hooks:?}");
}

impl Installed {
    async fn kubectl_put_mode(&self, mode: &str, http: &reqwest::Client) {
        let r =
            http.put(format!("{}/_mode/{AGENT}", self.agent_url)).body(mode.to_owned()).send().await.unwrap();
        assert!(r.status().is_success(), "agent mode {mode}: {}", r.status());
    }
}
