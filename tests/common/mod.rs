//! Shared helpers for the integration tests: they talk to the real local
//! system that `e2e/up` starts, and only to it.
//!
//! Over 400 lines: every helper the suites share, so that none is written twice.
#![allow(dead_code)] // each test binary uses a different subset

pub mod browser;
pub mod system;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{DeleteParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

/// Connection details of the local system, read from the env file that
/// `e2e/up` writes. The tests never fall back to an ambient KUBECONFIG, so
/// they cannot touch a real cluster by accident.
pub struct TestEnv {
    vars: HashMap<String, String>,
}

impl TestEnv {
    pub fn load() -> Self {
        let path = std::env::var_os("HOOKWARDEN_ENV").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache/hookwarden/state/env")
        });
        let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "the local system is not up ({} is missing): run `e2e/up`, or run the whole suite with `e2e/test`",
                path.display()
            )
        });
        let vars = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self { vars }
    }

    pub fn var(&self, name: &str) -> &str {
        self.vars.get(name).unwrap_or_else(|| panic!("{name} missing from the e2e env file"))
    }

    pub fn kubeconfig(&self) -> &Path {
        Path::new(self.var("KUBECONFIG"))
    }

    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig()).expect("read e2e kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("load e2e kubeconfig");
        Client::try_from(config).expect("build client")
    }

    /// Runs the pinned kubectl against the local cluster.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(Path::new(self.var("HOOKWARDEN_BIN")).join("kubectl"))
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .current_dir(repo_dir())
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl and returns its stdout, failing the test on a non-zero exit.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.tool_ok("kubectl", args, None)
    }

    /// Runs one of the pinned tools (`kubectl`, `helm`) against the local
    /// cluster, with `stdin` when given; returns its stdout, failing the test
    /// on a non-zero exit.
    pub fn tool_ok(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut child = Command::new(Path::new(self.var("HOOKWARDEN_BIN")).join(tool))
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .current_dir(repo_dir())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        let input = stdin.unwrap_or_default().to_owned();
        let mut pipe = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "{tool} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }
}

pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Server-side applies WebhookConfig `name` with `spec` in `namespace`, as
/// `kubectl apply --server-side` would (field manager `test`).
pub async fn apply_webhook_config(client: Client, namespace: &str, name: &str, spec: serde_json::Value) {
    use kube::api::{DynamicObject, Patch, PatchParams};
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "hookwarden.io/v1alpha1", "kind": "WebhookConfig", "metadata": { "name": name }, "spec": spec
    }))
    .unwrap();
    let ar = kube::api::ApiResource::erase::<hookwarden::api::WebhookConfig>(&());
    let api = Api::<DynamicObject>::namespaced_with(client, namespace, &ar);
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&obj)).await.unwrap();
}

/// A namespace of its own for one test, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
}

impl TestNamespace {
    pub async fn create(env: &TestEnv) -> Self {
        let name = format!("hw-test-{:08x}", rand::random::<u32>());
        let api: Api<Namespace> = Api::all(env.client().await);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "hookwarden.io/test": "true" } }
        }))
        .unwrap();
        api.create(&PostParams::default(), &ns).await.expect("create test namespace");
        Self {
            name,
            kubeconfig: env.kubeconfig().to_owned(),
            kubectl: Path::new(env.var("HOOKWARDEN_BIN")).join("kubectl"),
        }
    }
}

impl TestNamespace {
    fn kubectl(&self, args: &[&str]) -> Option<std::process::Output> {
        Command::new(&self.kubectl).args(args).env("KUBECONFIG", &self.kubeconfig).output().ok()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // NB: Drop cannot await; kubectl is synchronous and does not need the
        // test's runtime. Namespace deletion itself finishes in the background.
        self.kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
        // The test's operator is gone with the test: nobody would remove the
        // WebhookConfigs' finalizer, and the namespace would stay Terminating.
        let Some(listed) = self.kubectl(&["get", "webhookconfigs", "-n", &self.name, "-o", "name"]) else {
            return;
        };
        for whc in String::from_utf8_lossy(&listed.stdout).lines() {
            let finalizers = r#"{"metadata":{"finalizers":null}}"#;
            self.kubectl(&["patch", whc, "-n", &self.name, "--type=merge", "-p", finalizers]);
        }
    }
}

/// Polls `check` until it returns `Some`, or fails the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes an object and ignores "already gone".
pub async fn delete_ignoring_absent<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => panic!("delete {name}: {e}"),
    }
}

/// JSON merge patch (RFC 7386): `null` removes a key.
pub fn merge(base: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                if v.is_null() {
                    base.remove(k);
                } else {
                    merge(base.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

/// `e2e/npm/node_modules`, where GitHub's descriptions and examples live.
pub fn npm_fixtures() -> PathBuf {
    let dir = repo_dir().join("e2e/npm/node_modules/@octokit");
    assert!(dir.is_dir(), "npm fixtures missing: run `e2e/up` (or `e2e/test`), which installs them");
    dir
}

/// Every example payload GitHub publishes: `(event, payload)`.
pub fn webhook_examples() -> Vec<(String, serde_json::Value)> {
    let path = npm_fixtures().join("webhooks-examples/api.github.com/index.json");
    let index: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(path).expect("read webhooks-examples")).expect("parse index");
    index
        .into_iter()
        .flat_map(|event| {
            let name = event["name"].as_str().expect("event name").to_owned();
            let examples = event["examples"].as_array().cloned().unwrap_or_default();
            examples.into_iter().map(move |e| (name.clone(), e))
        })
        .collect()
}

/// `payload` as a new occurrence of the same event: two real events are never
/// byte-identical (at least their timestamps differ), and an identical body
/// under a new GUID is refused as a replay. Sets `updated_at` of the event's
/// subject (`pull_request`, `issue`, ...) or of the repository.
pub fn occurrence(payload: &serde_json::Value) -> serde_json::Value {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + rand::random::<u32>() as u64;
    let stamp = format!("2026-01-01T00:00:00.{n:012}Z");
    let mut p = payload.clone();
    let subject = ["pull_request", "issue", "repository"].into_iter().find(|k| p[*k].is_object());
    match subject {
        Some(k) => p[k]["updated_at"] = stamp.into(),
        None => p["updated_at"] = stamp.into(),
    }
    p
}

/// How long a test waits for something the system does on its own (a
/// watch to see a change, a worker to dispatch, the operator to reconcile).
pub const WAIT: Duration = Duration::from_secs(30);

/// A new delivery GUID (32 hex digits).
pub fn guid() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The `/metrics` text at `url`; empty when it cannot be read.
pub async fn scrape(http: &reqwest::Client, url: &str) -> String {
    match http.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the first series of `text` that starts with `series`
/// (a name with its labels, e.g. `x_total{reason="y"}`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(series))?.rsplit(' ').next()?.parse().ok()
}

/// A random 40-hex-digit commit SHA: what makes each push GitHub sends distinct.
pub fn commit_sha() -> String {
    format!("{:032x}{:08x}", rand::random::<u128>(), rand::random::<u32>())
}

/// A random key prefix, so tests sharing one Redis never see each other.
pub fn redis_prefix() -> String {
    format!("hwtest-{:08x}", rand::random::<u32>())
}

/// A redis-server of one test's own (append-only file on), for tests that
/// stop or restart it without disturbing the others.
pub struct PrivateRedis {
    pub url: String,
    port: u16,
    dir: PathBuf,
    child: std::sync::Mutex<std::process::Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(redis_prefix());
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let child = Self::spawn(port, &dir);
        let redis =
            Self { url: format!("redis://127.0.0.1:{port}"), port, dir, child: std::sync::Mutex::new(child) };
        redis.wait_ready();
        redis
    }

    fn spawn(port: u16, dir: &Path) -> std::process::Child {
        Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
                // Every acknowledged write is on disk: what survives a SIGKILL.
                "--appendfsync",
                "always",
                "--dir",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (installed by e2e/up)")
    }

    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server abruptly.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts it again on the same port and data after [`Self::kill`].
    pub fn start_again(&self) {
        let mut child = self.child.lock().unwrap();
        *child = Self::spawn(self.port, &self.dir);
        drop(child);
        self.wait_ready();
    }

    /// Stops it as an orchestrator would (SIGTERM: the append-only file is
    /// flushed) and starts it again on the same port and data.
    pub fn restart(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = child.wait();
        *child = Self::spawn(self.port, &self.dir);
        drop(child);
        self.wait_ready();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `hookwarden` process started by a test, killed when dropped.
pub struct Process {
    pub name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Process {
    /// Starts `hookwarden ARGS` with the e2e cluster's KUBECONFIG, logging to a temp file.
    pub fn start(env: &TestEnv, name: &str, args: &[&str], vars: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!("{name}-{}.log", redis_prefix()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hookwarden"))
            .args(args)
            .env("KUBECONFIG", env.kubeconfig())
            .env("RUST_LOG", "info")
            // Not behind a Service: nothing to drain before closing the listener.
            .env("HOOKWARDEN_SHUTDOWN_DELAY", "0")
            // The simulator is the GitHub API an operator may call.
            .env("HOOKWARDEN_GITHUB_API_URLS", env.var("GITHUB_API_URL"))
            .envs(vars.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start hookwarden");
        Self { name: name.to_owned(), child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns how long it took.
    pub fn terminate(&mut self) -> Duration {
        let start = std::time::Instant::now();
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        start.elapsed()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// GETs `url` and parses its JSON body, failing the test on any error.
pub async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> T {
    let response = http.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response.json().await.unwrap_or_else(|e| panic!("GET {url}: not the JSON expected: {e}"))
}

/// A free loopback port for a process to listen on, never one this process
/// handed out before (a port picked for a process that has not bound it yet,
/// or that was killed and will start again on it, goes to no one else), and
/// below the kernel's ephemeral range, so no outgoing connection takes it
/// in the meantime.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    loop {
        let port = rand::random_range(10_000..ephemeral_low.max(10_001));
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() && GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// The simulator emitting `push`es to one hook at a steady rate, in the
/// background, as GitHub would while something else happens. Each send runs
/// on its own task, so a slow answer does not slow the rate.
pub struct PushFlow {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(String, u64)>>,
}

impl PushFlow {
    /// Starts emitting `rate` pushes a second of repository `repo` to hook
    /// `hook_id` on the simulator at `github`, until stopped or `limit` are sent.
    pub fn start(github: &str, repo: &str, hook_id: i64, rate: f64, limit: Option<usize>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, http) = (stop.clone(), reqwest::Client::new());
        let url = format!("{github}/_sim/hooks/{hook_id}/events");
        let repo = repo.to_owned();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut sends = Vec::new();
            for seq in 0..limit.unwrap_or(usize::MAX) {
                tick.tick().await;
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                // Each push its own commit, as on GitHub: distinct bodies (an
                // identical body under a new GUID is refused as a replay).
                let body = serde_json::json!({ "event": "push", "payload": { "ref": "refs/heads/main", "after": commit_sha(), "seq": seq, "repository": { "full_name": repo } } });
                let (http, url) = (http.clone(), url.clone());
                sends.push(tokio::spawn(async move {
                    let d: serde_json::Value =
                        http.post(&url).json(&body).send().await.unwrap().json().await.unwrap();
                    (d["guid"].as_str().unwrap().to_owned(), d["status_code"].as_u64().unwrap())
                }));
            }
            let mut out = Vec::with_capacity(sends.len());
            for s in sends {
                out.push(s.await.unwrap());
            }
            out
        });
        Self { stop, task }
    }

    /// Stops; each delivery's GUID and the HTTP status the receiver gave it
    /// (as the simulator recorded it, what GitHub would show), in order.
    pub async fn stop(self) -> Vec<(String, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap()
    }

    /// Waits until all `limit` deliveries are sent; as `stop`.
    pub async fn finish(self) -> Vec<(String, u64)> {
        self.task.await.unwrap()
    }
}

/// When the sample agent at `agent_url` accepted each GUID for `agent`
/// (Unix ms), every time it did.
pub async fn accepted(http: &reqwest::Client, agent_url: &str, agent: &str) -> HashMap<String, Vec<u64>> {
    let got: Vec<serde_json::Value> = get_json(http, &format!("{agent_url}/_received/{agent}")).await;
    let mut by_guid: HashMap<String, Vec<u64>> = HashMap::new();
    for r in got {
        by_guid.entry(r["id"].as_str().unwrap().to_owned()).or_default().push(r["atMs"].as_u64().unwrap());
    }
    by_guid
}

/// Forces a rotation of WebhookConfig `name`'s key (`hookwarden.io/rotate`)
/// and waits until it is complete: a new signing key, confirmed on GitHub,
/// and only that one left in Secret `{name}-hmac`. Returns how long it took.
pub async fn rotate_now(env: &TestEnv, ns: &str, name: &str, timeout: Duration) -> Duration {
    let secret = format!("{name}-hmac");
    let keys = || env.kubectl_ok(&["get", "secret", &secret, "-n", ns, "-o", "jsonpath={.data}"]);
    let old_keys = keys();
    let stamp = format!("hookwarden.io/rotate={}", rand::random::<u32>());
    env.kubectl_ok(&["annotate", "whc", name, "-n", ns, &stamp, "--overwrite"]);
    let started = std::time::Instant::now();
    loop {
        let status = env.kubectl_ok(&[
            "get",
            "whc",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.status.confirmedKeyVersion} {.status.signingKeyVersion}",
        ]);
        let now = keys();
        let (confirmed, signing) = status.split_once(' ').unwrap_or_default();
        if now != old_keys && !signing.is_empty() && confirmed == signing && now.matches("key-").count() == 1
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "the rotation did not complete: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub mod tempfile_dir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!("hw-chromium-{}", super::guid()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
