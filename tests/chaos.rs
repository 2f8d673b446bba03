//! Nothing is lost when receivers, Redis or the operator fail. The real
//! processes (two receivers, the operator, Redis with `appendfsync always`,
//! the sample agent failing half its calls) and the GitHub simulator, which
//! sends signed deliveries at a steady rate while the processes are
//! SIGKILLed on a schedule and GitHub cannot reach the receivers for a while.
//!
//! The short form runs in the suite; `bench/chaos` runs the long one
//! (`CHAOS_DELIVERIES`, `CHAOS_RATE`) and prints the same report.
//!
//! Over 400 lines: one suite per area, each test a scenario a user runs, with the world it needs.

mod common;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use common::{
    PrivateRedis, Process, PushFlow, TestEnv, TestNamespace, eventually, free_port, get_json, redis_prefix,
};
use hookwarden::{ObjectRef, api::WebhookConfig, queue::Queue};
use kube::Api;
use serde_json::{Value, json};

/// The agent the policy dispatches to.
const AGENT: &str = "chaos";

/// One test's own world: a namespace, Redis, the agent, the receivers and
/// operators (each may be down), and a hook on the simulator.
struct World {
    env: TestEnv,
    ns: TestNamespace,
    redis: PrivateRedis,
    prefix: String,
    github: String,
    http: reqwest::Client,
    repo: String,
    agent_url: String,
    _agent: Process,
    /// (webhook port, process when up)
    receivers: Vec<(u16, Option<Process>)>,
    operators: Vec<Option<Process>>,
    hook_id: i64,
}

impl World {
    /// Everything up, `receivers` receivers, `operators` operator replicas;
    /// the hook delivers to the first receiver.
    async fn new(receivers: usize, operators: usize, agent_mode: &str) -> Self {
        let env = TestEnv::load();
        let ns = TestNamespace::create(&env).await;
        let redis = PrivateRedis::start();
        let github = env.var("GITHUB_API_URL").to_owned();
        let http = reqwest::Client::new();
        let id = format!("{:08x}", rand::random::<u32>());
        let (repo, token) = (format!("chaos-{id}/service"), format!("ghp_chaos{id}"));
        for (path, body) in [("tokens", json!({ "token": token })), ("repos", json!({ "full_name": repo }))] {
            let r = http.post(format!("{github}/_sim/{path}")).json(&body).send().await.unwrap();
            assert!(r.status().is_success());
        }
        let agent_port = free_port();
        let agent = Process::start(
            &env,
            "agent",
            &["sample-agent", "--listen", &format!("127.0.0.1:{agent_port}")],
            &[],
        );
        let agent_url = format!("http://127.0.0.1:{agent_port}");
        eventually("the agent", Duration::from_secs(10), || async {
            let r = http.put(format!("{agent_url}/_mode/{AGENT}")).body(agent_mode.to_owned()).send().await;
            r.ok().filter(|r| r.status().is_success())
        })
        .await;
        env.tool_ok(
            "kubectl",
            &[
                "create",
                "secret",
                "generic",
                "github-token",
                "-n",
                &ns.name,
                &format!("--from-literal=token={token}"),
            ],
            None,
        );
        // Retries come fast and often, so half the calls failing still gets
        // everything through; the breaker opens only when nearly all fail.
        let policy = format!(
            r#"
apiVersion: hookwarden.io/v1alpha1
kind: AgentPolicy
metadata: {{name: default}}
spec:
  concurrency: 16
  agents: [{{name: {AGENT}, url: "{agent_url}/{AGENT}", events: [push], timeoutSeconds: 2}}]
  retry: {{strategy: fixed, maxAttempts: 20, initialDelay: 100ms, maxDelay: 500ms}}
  circuitBreaker: {{errorThresholdPercent: 95, volumeThreshold: 50, resetTimeoutSeconds: 1}}
"#
        );
        env.tool_ok("kubectl", &["apply", "-n", &ns.name, "-f", "-"], Some(&policy));
        let mut world = Self {
            env,
            ns,
            redis,
            prefix: redis_prefix(),
            github,
            http,
            repo,
            agent_url,
            _agent: agent,
            receivers: (0..receivers).map(|_| (free_port(), None)).collect(),
            operators: (0..operators).map(|_| None).collect(),
            hook_id: 0,
        };
        for i in 0..receivers {
            world.start_receiver(i);
            let url = format!("{}/healthz", world.receiver_url(i));
            eventually("a receiver to listen", Duration::from_secs(20), || async {
                world.http.get(&url).send().await.ok().filter(|r| r.status().is_success())
            })
            .await;
        }
        for i in 0..operators {
            world.start_operator(i);
        }
        let whc = format!(
            r#"
apiVersion: hookwarden.io/v1alpha1
kind: WebhookConfig
metadata: {{name: soak}}
spec:
  repository: {}
  events: [push]
  github: {{apiUrl: "{}", tokenSecretRef: {{name: github-token, key: token}}}}
"#,
            world.repo, world.github
        );
        world.env.tool_ok("kubectl", &["apply", "-n", &world.ns.name, "-f", "-"], Some(&whc));
        let api: Api<WebhookConfig> = Api::namespaced(world.env.client().await, &world.ns.name);
        world.hook_id = eventually("the hook to be registered", Duration::from_secs(60), || async {
            api.get("soak").await.ok()?.status?.hook_id
        })
        .await;
        world
    }

    fn receiver_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.receivers[i].0)
    }

    /// Starts receiver `i` (it listens once Redis answers).
    fn start_receiver(&mut self, i: usize) {
        let (port, name) = (self.receivers[i].0, format!("receiver-{i}"));
        let (listen, admin) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{}", free_port()));
        let args = [
            "receiver",
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
            "--consumer",
            &name,
            "--redis-url",
            &self.redis.url,
            "--redis-prefix",
            &self.prefix,
            "--reclaim-after-seconds",
            "2",
        ];
        let vars =
            [("HOOKWARDEN_NAMESPACE", self.ns.name.as_str()), ("POD_NAMESPACE", self.ns.name.as_str())];
        self.receivers[i].1 = Some(Process::start(&self.env, &name, &args, &vars));
    }

    fn start_operator(&mut self, i: usize) {
        let (listen, base) = (format!("127.0.0.1:{}", free_port()), self.receiver_url(0));
        let instance = format!("operator-{i}");
        let args = [
            "operator",
            "--listen",
            &listen,
            "--public-base-url",
            &base,
            "--resync-seconds",
            "2",
            "--redelivery-seconds",
            "3",
            "--lease-seconds",
            "4",
            "--instance",
            &instance,
            "--redis-url",
            &self.redis.url,
            "--redis-prefix",
            &self.prefix,
            "--github-mutation-interval-ms",
            "100",
        ];
        let mut vars =
            vec![("HOOKWARDEN_NAMESPACE", self.ns.name.clone()), ("POD_NAMESPACE", self.ns.name.clone())];
        // bench/chaos measures the other way too.
        if let Ok(way) = std::env::var("CHAOS_RECOVERY") {
            vars.push(("HOOKWARDEN_RECOVERY", way));
        }
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.operators[i] = Some(Process::start(&self.env, &instance, &args, &vars));
    }

    async fn leader(&self) -> Option<String> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.env.client().await, &self.ns.name);
        leases.get_opt("hookwarden-operator").await.ok()??.spec?.holder_identity
    }

    /// Tells the simulator the first receiver cannot be reached (or can again).
    async fn unreachable(&self, on: bool) {
        let req = if on {
            self.http.post(format!("{}/_sim/unreachable", self.github))
        } else {
            self.http.delete(format!("{}/_sim/unreachable", self.github))
        };
        let r = req.json(&json!({ "url": self.receiver_url(0) })).send().await.unwrap();
        assert!(r.status().is_success());
    }

    /// The simulator emits `n` pushes at `rate` per second.
    fn emit(&self, n: usize, rate: f64) -> PushFlow {
        PushFlow::start(&self.github, &self.repo, self.hook_id, rate, Some(n))
    }

    async fn accepted(&self) -> HashMap<String, Vec<u64>> {
        common::accepted(&self.http, &self.agent_url, AGENT).await
    }

    async fn dead_lettered(&self) -> HashSet<String> {
        let queue = Queue::connect(&self.redis.url, &self.prefix).await.unwrap();
        let policy = ObjectRef::new(self.ns.name.clone(), "default");
        queue.dead_letters(&policy, 1_000_000).await.unwrap().into_iter().map(|d| d.delivery.guid).collect()
    }

    /// How many of this hook's deliveries the operator recovered, by way,
    /// from what the simulator served.
    async fn recovered(&self) -> (usize, usize) {
        let requests: Vec<Value> = get_json(&self.http, &format!("{}/_sim/requests", self.github)).await;
        let prefix = format!("/repos/{}/hooks/{}/deliveries/", self.repo, self.hook_id);
        let of_hook = |method: &str, attempts: bool| {
            requests
                .iter()
                .filter(|r| r["method"] == method && r["status"].as_u64().is_some_and(|s| s < 300))
                .filter_map(|r| r["path"].as_str()?.strip_prefix(&prefix))
                .filter(|rest| rest.ends_with("/attempts") == attempts)
                .count()
        };
        (of_hook("GET", false), of_hook("POST", true))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// What the soak saw.
#[derive(Debug)]
struct Report {
    emitted: usize,
    failed_at_github: usize,
    fetched: usize,
    redelivered: usize,
    delivered: usize,
    dead_lettered: usize,
    lost: usize,
    duplicates: usize,
    unexplained_duplicates: Vec<String>,
    drain: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CHAOS emitted={} failed_at_github={} fetched={} redelivered={} delivered={} dead_lettered={} lost={} duplicates={} unexplained_duplicates={} drain_s={:.1}",
            self.emitted,
            self.failed_at_github,
            self.fetched,
            self.redelivered,
            self.delivered,
            self.dead_lettered,
            self.lost,
            self.duplicates,
            self.unexplained_duplicates.len(),
            self.drain.as_secs_f64()
        )
    }
}

/// Something the chaos schedule does.
#[derive(Clone, Copy, Debug)]
enum Act {
    KillReceiver(usize),
    StartReceiver(usize),
    KillRedis,
    StartRedis,
    KillOperator,
    StartOperator,
    Unreachable(bool),
}

/// Over `span`: the first receiver killed every 8 s (back after 1–3 s), the
/// second every 11 s (back after 2 s), Redis and the operator once each,
/// and GitHub unable to reach the receivers for a while.
fn schedule(span: Duration) -> Vec<(Duration, Act)> {
    let s = |secs: f64| Duration::from_secs_f64(secs);
    let t = span.as_secs_f64();
    let mut plan = Vec::new();
    let (mut at, mut k) = (3.0, 0);
    while at < t {
        plan.push((s(at), Act::KillReceiver(0)));
        plan.push((s(at + 1.0 + (k % 3) as f64), Act::StartReceiver(0)));
        (at, k) = (at + 8.0, k + 1);
    }
    let mut at = 5.5;
    while at < t {
        plan.push((s(at), Act::KillReceiver(1)));
        plan.push((s(at + 2.0), Act::StartReceiver(1)));
        at += 11.0;
    }
    plan.push((s(t * 0.45), Act::KillRedis));
    plan.push((s(t * 0.45 + 2.0), Act::StartRedis));
    plan.push((s(t * 0.65), Act::KillOperator));
    plan.push((s(t * 0.65 + 2.0), Act::StartOperator));
    let outage = (t * 0.1).max(3.0);
    plan.push((s(t * 0.25), Act::Unreachable(true)));
    plan.push((s(t * 0.25 + outage), Act::Unreachable(false)));
    plan.sort_by_key(|(at, _)| *at);
    plan
}

/// Sends `n` deliveries at `rate` through the schedule's chaos and waits
/// until each was delivered or dead-lettered (or the wait runs out).
async fn soak(n: usize, rate: f64) -> Report {
    let mut w = World::new(2, 1, "flaky:50").await;
    let span = Duration::from_secs_f64(n as f64 / rate);
    let emitter = w.emit(n, rate);
    let start = tokio::time::Instant::now();
    // Outage windows (Unix ms) of a receiver or of Redis: a SIGKILL between
    // the agent's answer and the settle makes a duplicate.
    let mut outages: Vec<(u64, u64)> = Vec::new();
    let mut down_since: HashMap<&str, u64> = HashMap::new();
    for (at, act) in schedule(span) {
        tokio::time::sleep_until(start + at).await;
        match act {
            Act::KillReceiver(i) => {
                drop(w.receivers[i].1.take()); // SIGKILL
                down_since.insert(["r0", "r1"][i], now_ms());
            }
            Act::StartReceiver(i) => {
                w.start_receiver(i);
                outages.push((down_since[["r0", "r1"][i]], now_ms()));
            }
            Act::KillRedis => {
                w.redis.kill();
                down_since.insert("redis", now_ms());
            }
            Act::StartRedis => {
                w.redis.start_again();
                outages.push((down_since["redis"], now_ms()));
            }
            Act::KillOperator => {
                drop(w.operators[0].take()); // SIGKILL
            }
            Act::StartOperator => w.start_operator(0),
            Act::Unreachable(on) => w.unreachable(on).await,
        }
    }
    let sent = emitter.finish().await;
    let emitted_at = Instant::now();
    let guids: HashSet<String> = sent.iter().map(|(g, _)| g.clone()).collect();
    assert_eq!(guids.len(), n, "every emitted delivery has its own GUID");
    let wait = Duration::from_secs(120 + n as u64 / 20);
    let deadline = Instant::now() + wait;
    let (accepted, dead) = loop {
        let (accepted, dead) = (w.accepted().await, w.dead_lettered().await);
        let done = guids.iter().all(|g| accepted.contains_key(g) || dead.contains(g));
        if done || Instant::now() > deadline {
            break (accepted, dead);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let drain = emitted_at.elapsed();
    let (fetched, redelivered) = w.recovered().await;
    let duplicates: Vec<(&String, &Vec<u64>)> = accepted.iter().filter(|(_, at)| at.len() > 1).collect();
    // Explained: the first answer came within a second before a receiver or
    // Redis went down, or while Redis was down (the settle could not land).
    let explained = |first: u64| outages.iter().any(|&(down, up)| first + 1000 >= down && first <= up + 1000);
    let unexplained_duplicates =
        duplicates.iter().filter(|(_, at)| !explained(at[0])).map(|(g, _)| (*g).clone()).collect();
    Report {
        emitted: n,
        failed_at_github: sent.iter().filter(|(_, code)| !(200..300).contains(code)).count(),
        fetched,
        redelivered,
        delivered: guids.iter().filter(|g| accepted.contains_key(*g)).count(),
        dead_lettered: guids.iter().filter(|g| dead.contains(*g)).count(),
        lost: guids.iter().filter(|g| !accepted.contains_key(*g) && !dead.contains(*g)).count(),
        duplicates: duplicates.len(),
        unexplained_duplicates,
        drain,
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_soak_through_kills_of_every_kind_loses_nothing() {
    let report = soak(env_or("CHAOS_DELIVERIES", 600), env_or("CHAOS_RATE", 40.0)).await;
    println!("{report}");
    assert!(report.failed_at_github > 0, "the chaos made GitHub fail some deliveries: {report}");
    assert_eq!(report.lost, 0, "{report}");
    assert!(report.unexplained_duplicates.is_empty(), "{report}: {:?}", report.unexplained_duplicates);
}

/// Waits until the agent has accepted at least `min` deliveries.
async fn progress(w: &World, min: usize) {
    eventually(&format!("{min} recovered"), Duration::from_secs(90), || async {
        (w.accepted().await.len() >= min).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_survives_an_operator_restart_and_a_leader_change() {
    const BACKLOG: usize = 1500;
    let mut w = World::new(1, 2, "ok").await;
    // GitHub cannot reach the receivers at all: only reading the deliveries
    // from GitHub's API brings them back.
    w.unreachable(true).await;
    let sent = w.emit(BACKLOG, 300.0).finish().await;
    assert!(sent.iter().all(|(_, code)| *code == 0), "every delivery failed at GitHub");
    progress(&w, BACKLOG / 5).await;
    let leader = w.leader().await.expect("a leader");
    let i = leader.strip_prefix("operator-").unwrap().parse::<usize>().unwrap();
    // A leader change: the leader dies mid-backlog, the other takes over.
    drop(w.operators[i].take()); // SIGKILL
    let other = format!("operator-{}", 1 - i);
    eventually("the other replica to lead", Duration::from_secs(30), || async {
        (w.leader().await? == other).then_some(())
    })
    .await;
    let accepted = w.accepted().await.len();
    assert!(accepted < BACKLOG, "the backlog was still being recovered at the hand-over ({accepted})");
    // A restart: the new leader dies too, and a fresh process goes on.
    progress(&w, accepted + BACKLOG / 5).await;
    drop(w.operators[1 - i].take()); // SIGKILL
    w.start_operator(i);
    let accepted = eventually("the whole backlog", Duration::from_secs(120), || async {
        let a = w.accepted().await;
        (a.len() >= BACKLOG).then_some(a)
    })
    .await;
    for (guid, _) in &sent {
        assert_eq!(accepted.get(guid).map(Vec::len), Some(1), "{guid} arrived once");
    }
    let api: Api<WebhookConfig> = Api::namespaced(w.env.client().await, &w.ns.name);
    let recovery = eventually("nothing pending in status", Duration::from_secs(30), || async {
        let r = api.get("soak").await.ok()?.status?.recovery?;
        (r.scan.is_none() && r.pending == 0).then_some(r)
    })
    .await;
    assert!(recovery.oldest_pending_time.is_none(), "{recovery:?}");
    let (fetched, redelivered) = w.recovered().await;
    assert!(fetched >= BACKLOG && redelivered == 0, "fetched {fetched}, redelivered {redelivered}");
    w.unreachable(false).await;
}
