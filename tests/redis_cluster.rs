//! Redis Cluster: three masters on loopback (real `redis-server`s in cluster
//! mode, joined by `redis-cli --cluster create`). Every key of a policy is in
//! that policy's hash slot, so no script or command spans slots; and when a
//! policy's slot moves to another master while deliveries are queued and
//! dispatched, nothing is lost.

mod common;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{eventually, free_port, guid, redis_prefix};
use hookwarden::{
    ObjectRef,
    api::{Agent, CircuitBreaker, RetryPolicy},
    queue::{Delivery, Enqueued, Queue},
    receiver::{
        dispatch::{DispatchConfig, Dispatcher},
        registry::{PolicySettings, Registry},
    },
    sample_agent::{self, Sink},
    telemetry::ReceiverMetrics,
};
use tokio_util::sync::CancellationToken;

/// Three masters, no replicas, killed when dropped.
struct Cluster {
    dir: PathBuf,
    ports: Vec<u16>,
    children: Vec<Child>,
}

impl Cluster {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(redis_prefix());
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for _ in 0..3 {
            // NB: a node also listens on its port + 10000 (the cluster bus).
            let port = loop {
                let p = free_port();
                if std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
                    break p;
                }
            };
            let data = dir.join(port.to_string());
            std::fs::create_dir_all(&data).unwrap();
            let log = std::fs::File::create(data.join("redis.log")).unwrap();
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                .args(["--appendonly", "yes", "--appendfsync", "everysec", "--dir"])
                .arg(&data)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .expect("start redis-server (installed by e2e/up)");
            ports.push(port);
            children.push(child);
        }
        let cluster = Self { dir, ports, children };
        for &port in &cluster.ports {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server on {port} did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster
            .ports
            .iter()
            .all(|&p| cluster.cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out =
            Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args).output();
        String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
    }

    fn id(&self, port: u16) -> String {
        self.cli(port, &["CLUSTER", "MYID"]).trim().to_owned()
    }

    fn slot(&self, key: &str) -> u16 {
        self.cli(self.ports[0], &["CLUSTER", "KEYSLOT", key]).trim().parse().unwrap()
    }

    /// The master that serves `slot`, as `port`'s view of the cluster says.
    fn owner(&self, slot: u16) -> u16 {
        let nodes = self.cli(self.ports[0], &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serves = fields.iter().skip(8).any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            });
            if serves {
                let addr = fields[1].split('@').next().unwrap();
                return addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        }
        panic!("no master serves slot {slot}")
    }

    /// Moves `slot` from its master to `to` as `redis-cli --cluster reshard`
    /// does, a few keys at a time, so traffic meets every stage of it.
    fn move_slot(&self, slot: u16, to: u16) -> usize {
        let from = self.owner(slot);
        let (from_id, to_id) = (self.id(from), self.id(to));
        let slot_s = slot.to_string();
        assert!(self.cli(to, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]).contains("OK"));
        assert!(self.cli(from, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]).contains("OK"));
        let mut moved = 0;
        loop {
            let keys = self.cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot_s, "5"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1"];
            let to_s = to.to_string();
            args.extend([to_s.as_str(), "", "0", "5000", "KEYS"]);
            args.extend(&keys);
            let answer = self.cli(from, &args);
            assert!(answer.contains("OK") || answer.contains("NOKEY"), "MIGRATE: {answer}");
            moved += keys.len();
            std::thread::sleep(Duration::from_millis(50));
        }
        for &port in &self.ports {
            self.cli(port, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
        }
        moved
    }

    /// Every key under `prefix`, on every master.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let pattern = format!("{prefix}*");
        self.ports
            .iter()
            .flat_map(|&p| {
                self.cli(p, &["--scan", "--pattern", &pattern]).lines().map(str::to_owned).collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn delivery(guid: &str, n: usize) -> Delivery {
    Delivery {
        guid: guid.to_owned(),
        event: "push".into(),
        hook: ObjectRef::new("team", format!("hook-{}", n % 3)),
        repository: Some("octo-org/hello-world".into()),
        action: None,
        payload: Bytes::from(format!(r#"{{"n":{n}}}"#)),
        received_ms: hookwarden::now_ms(),
        agent: None,
        attempt: 0,
        trace: None,
    }
}

fn settings(agent_url: &str) -> PolicySettings {
    PolicySettings {
        enabled: true,
        concurrency: 8,
        queue_limit: 100_000,
        agents: vec![Agent {
            name: "agent".into(),
            url: agent_url.to_owned(),
            events: vec![],
            repositories: vec![],
            timeout_seconds: 5,
            signing_secret_ref: None,
            filter: None,
            headers_secret_ref: None,
            concurrency: None,
            rate_limit: None,
            enabled: true,
        }],
        circuit_breaker: CircuitBreaker { volume_threshold: 100_000, ..CircuitBreaker::default() },
        retry: RetryPolicy { max_attempts: 100, ..RetryPolicy::default() },
        ..PolicySettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policys_slot_moves_to_another_master_while_deliveries_flow_and_nothing_is_lost() {
    let cluster = Cluster::start();
    let prefix = redis_prefix();
    let queue = Queue::connect(&cluster.url(), &prefix).await.expect("connect to the cluster");
    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_url = format!("http://{}/agent", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, sample_agent::router(sink.clone())).into_future());

    // Three policies; the one that moves is on a master of its own choosing.
    let policies: Vec<ObjectRef> = (0..3).map(|i| ObjectRef::new("team", format!("policy-{i}"))).collect();
    let registry = Arc::new(Registry::new());
    for p in &policies {
        registry.set_policy(p.clone(), settings(&agent_url));
    }
    let dispatcher = Arc::new(Dispatcher::new(
        queue.clone(),
        registry.clone(),
        Arc::new(ReceiverMetrics::new()),
        DispatchConfig {
            redis_url: cluster.url(),
            redis_prefix: prefix.clone(),
            consumer: "a".into(),
            read_block: Duration::from_millis(100),
            reclaim_after: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            destinations: Default::default(),
        },
    ));
    let stop = CancellationToken::new();
    tokio::spawn(dispatcher.run(stop.clone()));

    let moving = &policies[0];
    let slot = cluster.slot(&format!("{{{moving}}}"));
    let from = cluster.owner(slot);
    let to = *cluster.ports.iter().find(|&&p| p != from).unwrap();

    // GitHub: every delivery until it is accepted (a refusal is redelivered).
    const N: usize = 1_500;
    let producer = {
        let (queue, policies) = (queue.clone(), policies.clone());
        tokio::spawn(async move {
            let mut guids = Vec::new();
            let mut refused = 0;
            for n in 0..N {
                let (guid, policy) = (guid(), &policies[n % policies.len()]);
                let d = delivery(&guid, n);
                loop {
                    match queue.enqueue(policy, &d, 100_000, None).await {
                        Ok(Enqueued::Queued(_) | Enqueued::Duplicate) => break,
                        Ok(Enqueued::Replay) => unreachable!("no MAC given"),
                        Err(_) => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                guids.push(guid);
                if n % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            (guids, refused)
        })
    };
    // Once traffic flows, the slot moves.
    eventually("deliveries to arrive", common::WAIT, || async {
        (sink.received("agent").len() > 500).then_some(())
    })
    .await;
    // NB: redis-cli is synchronous; the other worker thread keeps traffic flowing.
    let keys_moved = tokio::task::block_in_place(|| cluster.move_slot(slot, to));
    assert_eq!(cluster.owner(slot), to, "the slot is served by its new master");
    assert!(keys_moved > 100, "the policy's keys were in the slot that moved: {keys_moved}");
    assert!(!producer.is_finished(), "deliveries were still being queued when the move ended");

    let (guids, refused) = producer.await.unwrap();
    let want: HashSet<&String> = guids.iter().collect();
    eventually(&format!("all {N} deliveries at the agent"), Duration::from_secs(120), || async {
        let got: HashSet<String> = sink.received("agent").into_iter().map(|r| r.id).collect();
        want.iter().all(|g| got.contains(*g)).then_some(())
    })
    .await;
    for p in &policies {
        eventually(&format!("{p}'s queue to drain"), common::WAIT, || async {
            (queue.len(p).await.ok()? == 0).then_some(())
        })
        .await;
    }
    let received = sink.received("agent");
    let mut times: HashMap<String, usize> = HashMap::new();
    for r in &received {
        *times.entry(r.id.clone()).or_default() += 1;
    }
    let twice = times.values().filter(|n| **n > 1).count();
    println!(
        "{N} deliveries, {keys_moved} keys moved, {refused} enqueues refused during the move, {twice} delivered twice"
    );

    // Every key of a policy is in the policy's slot.
    for p in &policies {
        let want = cluster.slot(&format!("{{{p}}}"));
        let keys = cluster.keys(&format!("{prefix}:{{{p}}}"));
        assert!(keys.len() > 3, "{p} has keys: {keys:?}");
        for key in keys {
            assert_eq!(cluster.slot(&key), want, "{key} is in {p}'s slot");
        }
    }
    let stray: Vec<String> = cluster
        .keys(&prefix)
        .into_iter()
        .filter(|k| !policies.iter().any(|p| k.starts_with(&format!("{prefix}:{{{p}}}"))))
        .collect();
    // NB: one key is nobody's: since when the de-duplication layout is
    // written (queue::seen), read and written alone.
    assert_eq!(stray, [format!("{prefix}:seen:sets-since")], "keys outside a policy's slot");
    stop.cancel();
}
