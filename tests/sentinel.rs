//! Redis that survives a node: a master, a replica and three Sentinels
//! (real `redis-server` processes on loopback). The queue follows the master
//! across a failover, and with the replica acknowledgement on (`WAIT 1`) no
//! delivery it acknowledged is lost when the master is SIGKILLed under load.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{free_port, redis_prefix};
use hookwarden::{
    ObjectRef,
    queue::{Delivery, Queue},
};

const MASTER: &str = "hookwarden";

/// A redis-server (or Sentinel) of this test's own, killed when dropped.
struct Server {
    port: u16,
    child: Child,
}

impl Server {
    fn start(dir: &Path, name: &str, args: &[String]) -> Self {
        let port = args.iter().position(|a| a == "--port").map(|i| args[i + 1].parse().unwrap()).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new("redis-server")
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start redis-server (installed by e2e/up)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{name} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }

    fn data(dir: &Path, name: &str, port: u16, extra: &[&str]) -> Self {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let mut args: Vec<String> = ["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--appendonly", "yes", "--appendfsync", "always", "--dir"].map(String::from));
        args.push(data.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start(dir, name, &args)
    }

    fn sentinel(dir: &Path, name: &str, master_port: u16) -> Self {
        let port = free_port();
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {port}\ndir {}\nsentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 5000\n",
                dir.display()
            ),
        )
        .unwrap();
        let args = vec![conf.display().to_string(), "--sentinel".into(), "--port".into(), port.to_string()];
        Self::start(dir, name, &args)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn query<T: redis::FromRedisValue>(port: u16, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    // NB: a whole stream is read at the end: give it time.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    cmd.query_async(&mut conn).await
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_under_load_loses_no_acknowledged_delivery() {
    let dir = std::env::temp_dir().join(redis_prefix());
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup(dir.clone());
    // Two replicas: after the failover one is left to acknowledge writes.
    let (master_port, replica_ports) = (free_port(), [free_port(), free_port()]);
    let mut master = Server::data(&dir, "master", master_port, &[]);
    let replicas: Vec<Server> = replica_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            Server::data(
                &dir,
                &format!("replica-{i}"),
                *port,
                &["--replicaof", "127.0.0.1", &master_port.to_string()],
            )
        })
        .collect();
    let sentinels: Vec<Server> =
        (0..3).map(|i| Server::sentinel(&dir, &format!("sentinel-{i}"), master_port)).collect();
    wait_until("the replicas to sync and every Sentinel to know them", || async {
        let mut up = 0;
        for port in replica_ports {
            let info: String = query(port, redis::cmd("INFO").arg("replication")).await.unwrap_or_default();
            up += usize::from(info.contains("master_link_status:up"));
        }
        let mut known = 0;
        for s in &sentinels {
            let replicas: Vec<redis::Value> =
                query(s.port, redis::cmd("SENTINEL").arg("replicas").arg(MASTER)).await.unwrap_or_default();
            known += usize::from(replicas.len() == 2);
        }
        up == 2 && known == 3
    })
    .await;

    let url = format!(
        "redis+sentinel://{}/{MASTER}",
        sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect::<Vec<_>>().join(",")
    );
    let prefix = redis_prefix();
    let queue = Queue::connect(&url, &prefix).await.unwrap().acknowledged_by(1, Duration::from_secs(1));
    let (policy, hook) = (ObjectRef::new("team", "default"), ObjectRef::new("team", "repo-hook"));

    // Four producers, each delivery tried until the queue takes it (as
    // GitHub's redelivery or the operator's recovery would), until AFTER more
    // were taken after the master's death: however long the failover takes
    // on a loaded machine, there is load on both sides of it.
    const AFTER: usize = 200;
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let errors = Arc::new(Mutex::new(0usize));
    let stop_at = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let deadline = Instant::now() + Duration::from_secs(60);
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (queue, policy, hook) = (queue.clone(), policy.clone(), hook.clone());
            let (accepted, errors, stop_at) = (accepted.clone(), errors.clone(), stop_at.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while accepted.lock().unwrap().len() < stop_at.load(std::sync::atomic::Ordering::SeqCst) {
                    let guid = format!("{p}-{n}");
                    let body = Bytes::from(format!(r#"{{"n":{n}}}"#));
                    let d = Delivery::parse(&guid, "push", &hook, body).unwrap();
                    loop {
                        assert!(Instant::now() < deadline, "the queue never came back");
                        match queue.enqueue(&policy, &d, 1_000_000, None).await {
                            Ok(_) => break,
                            Err(_) => {
                                *errors.lock().unwrap() += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    accepted.lock().unwrap().push(guid);
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = accepted.lock().unwrap().len();
    stop_at.store(before + AFTER, std::sync::atomic::Ordering::SeqCst);
    master.kill();
    for p in producers {
        p.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let after = accepted.len() - before;

    // A replica was promoted; everything acknowledged is on it.
    let mut promoted = None;
    for port in replica_ports {
        let role: Vec<redis::Value> = query(port, &mut redis::cmd("ROLE")).await.unwrap();
        if role.first() == Some(&redis::Value::BulkString(b"master".to_vec())) {
            promoted = Some(port);
        }
    }
    let replica_port = promoted.expect("a replica was promoted");
    let key = format!("{prefix}:{{{policy}}}:events");
    let entries: Vec<(String, Vec<(String, redis::Value)>)> =
        query(replica_port, redis::cmd("XRANGE").arg(&key).arg("-").arg("+")).await.unwrap();
    let queued: std::collections::HashSet<String> = entries
        .into_iter()
        .filter_map(|(_, fields)| fields.into_iter().find(|(k, _)| k == "guid"))
        .filter_map(|(_, v)| redis::from_redis_value::<String>(v).ok())
        .collect();
    let lost: Vec<&String> = accepted.iter().filter(|g| !queued.contains(*g)).collect();
    println!(
        "SENTINEL accepted={} before_failover={before} after_failover={after} errors_during_failover={} lost={}",
        accepted.len(),
        *errors.lock().unwrap(),
        lost.len()
    );
    assert!(before > 100 && after >= AFTER, "load before and after the failover ({before}, {after})");
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    drop(replicas);
}

/// Removes the test's data directory.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
