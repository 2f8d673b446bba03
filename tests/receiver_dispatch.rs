//! Dispatch against a real Redis and real HTTP agents (the sample agent):
//! routing, the kill switch, live concurrency, circuit breaking, retries,
//! dead letters and replay, reclaiming a crashed consumer's work, and a Redis
//! restart.
//!
//! Over 400 lines: one suite per area, each test a scenario a user runs, with the world it needs.

mod common;

use std::{collections::HashSet, sync::Arc, time::Duration};

use bytes::Bytes;
use common::{TestEnv, WAIT, eventually, guid, redis_prefix};
use hookwarden::{
    ObjectRef,
    api::{Agent, CircuitBreaker, RateLimit, RateUnit, RetryPolicy, RetryStrategy},
    queue::{Delivery, Queue},
    receiver::{
        dispatch::{DispatchConfig, Dispatcher, Failure, destinations::Destinations},
        registry::{PolicySettings, Registry},
    },
    sample_agent::{self, Mode, Sink},
    telemetry::ReceiverMetrics,
};
use tokio_util::sync::CancellationToken;

struct World {
    redis_url: String,
    prefix: String,
    queue: Queue,
    registry: Arc<Registry>,
    metrics: Arc<ReceiverMetrics>,
    sink: Sink,
    sink_url: String,
    policy: ObjectRef,
    settings: PolicySettings,
}

impl World {
    async fn new(redis_url: &str) -> Self {
        let prefix = redis_prefix();
        let queue = Queue::connect(redis_url, &prefix).await.unwrap();
        let sink = Sink::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(axum::serve(listener, sample_agent::router(sink.clone())).into_future());
        let settings = PolicySettings {
            enabled: true,
            concurrency: 4,
            queue_limit: 10_000,
            retry: RetryPolicy {
                strategy: RetryStrategy::Fixed,
                max_attempts: 5,
                initial_delay: "100ms".parse().unwrap(),
                max_delay: "1s".parse().unwrap(),
            },
            ..PolicySettings::default()
        };
        Self {
            redis_url: redis_url.to_owned(),
            prefix,
            queue,
            registry: Arc::new(Registry::new()),
            metrics: Arc::new(ReceiverMetrics::new()),
            sink,
            sink_url,
            policy: ObjectRef::new("team", "default"),
            settings,
        }
    }

    fn agent(&self, name: &str, events: &[&str]) -> Agent {
        Agent {
            name: name.into(),
            url: format!("{}/{name}", self.sink_url),
            events: events.iter().map(|e| e.to_string()).collect(),
            repositories: vec![],
            timeout_seconds: 2,
            signing_secret_ref: None,
            filter: None,
            headers_secret_ref: None,
            concurrency: None,
            rate_limit: None,
            enabled: true,
        }
    }

    /// Publishes `self.settings` as the policy's effective settings.
    fn apply(&self) {
        self.registry.set_policy(self.policy.clone(), self.settings.clone());
    }

    /// Starts a receiver's workers under consumer name `consumer`.
    fn start(&self, consumer: &str) -> CancellationToken {
        self.start_with(consumer, Destinations::default())
    }

    /// Starts workers that refuse `destinations`.
    fn start_with(&self, consumer: &str, destinations: Destinations) -> CancellationToken {
        self.dispatcher(consumer, destinations).1
    }

    /// Starts workers, and returns their dispatcher too.
    fn dispatcher(&self, consumer: &str, destinations: Destinations) -> (Arc<Dispatcher>, CancellationToken) {
        let dispatcher = Arc::new(Dispatcher::new(
            self.queue.clone(),
            self.registry.clone(),
            self.metrics.clone(),
            DispatchConfig {
                redis_url: self.redis_url.clone(),
                redis_prefix: self.prefix.clone(),
                consumer: consumer.into(),
                read_block: Duration::from_millis(100),
                reclaim_after: Duration::from_secs(1),
                shutdown_grace: Duration::from_secs(5),
                destinations: Arc::new(destinations),
            },
        ));
        let stop = CancellationToken::new();
        tokio::spawn(dispatcher.clone().run(stop.clone()));
        (dispatcher, stop)
    }

    async fn enqueue(&self, event: &str, n: usize) -> Vec<String> {
        let mut guids = Vec::new();
        for _ in 0..n {
            let guid = guid();
            let d = Delivery {
                guid: guid.clone(),
                event: event.into(),
                hook: ObjectRef::new("team", "repo-hook"),
                repository: Some("octo-org/hello-world".into()),
                action: Some("opened".into()),
                payload: Bytes::from(format!(r#"{{"n":"{guid}"}}"#)),
                received_ms: 1,
                agent: None,
                attempt: 0,
                trace: None,
            };
            self.queue.enqueue(&self.policy, &d, 10_000, None).await.unwrap();
            guids.push(guid);
        }
        guids
    }

    fn ids(&self, agent: &str) -> Vec<String> {
        self.sink.received(agent).into_iter().map(|r| r.id).collect()
    }

    async fn until_drained(&self) {
        eventually("the queue to drain", WAIT, || async {
            (self.queue.len(&self.policy).await.unwrap() == 0).then_some(())
        })
        .await;
    }

    async fn until_received(&self, agent: &str, want: &[String]) {
        let want: HashSet<&String> = want.iter().collect();
        eventually(&format!("{agent} to receive {} events", want.len()), WAIT, || async {
            let got = self.ids(agent);
            want.iter().all(|id| got.contains(id)).then_some(())
        })
        .await;
    }
}

/// A breaker that opens after three calls, half of them failed, and probes
/// again after `reset_timeout_seconds`.
fn quick_breaker(reset_timeout_seconds: i32) -> CircuitBreaker {
    CircuitBreaker {
        error_threshold_percent: 50,
        volume_threshold: 3,
        window_seconds: 30,
        reset_timeout_seconds,
    }
}

async fn world() -> World {
    World::new(TestEnv::load().var("REDIS_URL")).await
}

#[tokio::test]
async fn events_reach_every_matching_agent_as_cloudevents() {
    let mut w = world().await;
    w.settings.agents =
        vec![w.agent("reviewer", &["pull_request"]), w.agent("triage", &["issues"]), w.agent("audit", &[])];
    w.apply();
    let _stop = w.start("a");
    let prs = w.enqueue("pull_request", 3).await;
    let issues = w.enqueue("issues", 2).await;
    let all: Vec<String> = prs.iter().chain(&issues).cloned().collect();
    w.until_received("audit", &all).await;
    w.until_received("reviewer", &prs).await;
    w.until_received("triage", &issues).await;
    assert_eq!(w.ids("reviewer").len(), 3, "reviewer wants pull requests only");
    assert_eq!(w.ids("triage").len(), 2, "triage wants issues only");
    let event = &w.sink.received("reviewer")[0];
    assert_eq!(event.kind, "com.github.pull_request.opened");
    assert_eq!(event.subject.as_deref(), Some("octo-org/hello-world"));
    w.until_drained().await;
}

#[tokio::test]
async fn kill_switch_holds_events_and_reenabling_drains_each_exactly_once() {
    let mut w = world().await;
    w.settings.agents = vec![w.agent("a", &[])];
    w.settings.enabled = false;
    w.apply();
    let _stop = w.start("a");
    let guids = w.enqueue("push", 20).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(w.ids("a").is_empty(), "nothing is dispatched while disabled");
    assert_eq!(w.queue.len(&w.policy).await.unwrap(), 20, "everything waits in the queue");

    w.settings.enabled = true;
    w.apply();
    w.until_received("a", &guids).await;
    let got = w.ids("a");
    assert_eq!(got.len(), 20, "each event once: {got:?}");
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 20);

    // Off again mid-stream: events queued afterwards wait again.
    w.settings.enabled = false;
    w.apply();
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.enqueue("push", 5).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.ids("a").len(), 20);
}

#[tokio::test]
async fn concurrency_changes_apply_without_a_restart() {
    let mut w = world().await;
    w.settings.agents = vec![w.agent("slow", &[])];
    w.settings.concurrency = 1;
    w.sink.set_mode("slow", Mode::Slow(300));
    w.apply();
    let _stop = w.start("a");
    let guids = w.enqueue("push", 24).await;
    eventually("a few dispatches at concurrency 1", WAIT, || async {
        (w.ids("slow").len() >= 3).then_some(())
    })
    .await;
    assert_eq!(w.sink.max_in_flight("slow"), 1);

    w.settings.concurrency = 4;
    w.apply();
    eventually("4 dispatches in flight", WAIT, || async {
        (w.sink.max_in_flight("slow") == 4).then_some(())
    })
    .await;
    w.until_received("slow", &guids).await;
    assert_eq!(w.sink.max_in_flight("slow"), 4, "never more than the new concurrency");
}

#[tokio::test]
async fn a_failing_agent_opens_its_circuit_while_a_healthy_one_keeps_receiving() {
    let mut w = world().await;
    w.settings.agents = vec![w.agent("broken", &[]), w.agent("healthy", &[])];
    w.settings.circuit_breaker = quick_breaker(2);
    w.settings.retry.max_attempts = 20;
    w.sink.set_mode("broken", Mode::Fail);
    w.apply();
    let _stop = w.start("a");
    let guids = w.enqueue("push", 10).await;
    w.until_received("healthy", &guids).await;

    let open = || w.metrics.breaker_open.with_label_values(&["team/default", "broken"]).get();
    eventually("broken's circuit to open", WAIT, || async { (open() == 1).then_some(()) }).await;
    let healthy_open = w.metrics.breaker_open.with_label_values(&["team/default", "healthy"]).get();
    assert_eq!(healthy_open, 0, "healthy's circuit stays closed");
    let calls_while_failing =
        w.metrics.errors.with_label_values(&["team/default", "broken", "http_status"]).get();
    assert!(
        calls_while_failing < 10,
        "an open circuit fails fast instead of calling: {calls_while_failing} calls"
    );

    // The agent recovers: after the reset timeout one probe goes through,
    // succeeds, closes the circuit, and the retries deliver everything.
    w.sink.set_mode("broken", Mode::Ok);
    w.until_received("broken", &guids).await;
    assert_eq!(open(), 0, "closed again after a successful probe");
    assert_eq!(w.ids("healthy").len(), 10, "the healthy agent got each event exactly once");
}

#[tokio::test]
async fn a_busy_agents_retry_after_pauses_its_calls_without_opening_its_circuit() {
    let mut w = world().await;
    w.settings.agents = vec![w.agent("busy", &[]), w.agent("calm", &[])];
    w.settings.circuit_breaker = quick_breaker(1);
    w.settings.retry.max_attempts = 20;
    w.sink.set_mode("busy", Mode::Busy(3));
    w.apply();
    let _stop = w.start("a");
    let guids = w.enqueue("push", 20).await;
    w.until_received("calm", &guids).await;
    eventually("busy to have been called", WAIT, || async {
        (!w.sink.calls("busy").is_empty()).then_some(())
    })
    .await;
    let first = w.sink.calls("busy")[0].1;
    w.sink.set_mode("busy", Mode::Ok);
    w.until_received("busy", &guids).await;

    let calls = w.sink.calls("busy");
    let during: Vec<_> = calls.iter().filter(|(_, at)| *at < first + 2_900).collect();
    // Only the calls already in flight when the first answer came (one per slot).
    let slots = w.settings.concurrency;
    assert!(during.len() <= slots, "paused for its Retry-After, not called 20 times: {during:?}");
    let open = w.metrics.breaker_open.with_label_values(&["team/default", "busy"]).get();
    assert_eq!(open, 0, "busy is not broken: its circuit stays closed");
    let throttled = w.metrics.errors.with_label_values(&["team/default", "busy", "throttled"]).get();
    assert!(throttled >= 1, "{throttled}");
    assert_eq!(w.metrics.errors.with_label_values(&["team/default", "busy", "http_status"]).get(), 0);
    assert_eq!(w.ids("calm").len(), 20, "its neighbour is unaffected, each once");
}

#[tokio::test]
async fn retries_come_when_due_with_up_to_a_fifth_of_random_jitter() {
    let mut w = world().await;
    w.settings.agents = vec![w.agent("down", &[])];
    // A circuit that never opens: only the backoff decides.
    w.settings.circuit_breaker.volume_threshold = 10_000;
    w.settings.retry = RetryPolicy {
        strategy: RetryStrategy::Fixed,
        max_attempts: 4,
        initial_delay: "1s".parse().unwrap(),
        max_delay: "10s".parse().unwrap(),
    };
    w.sink.set_mode("down", Mode::Fail);
    w.apply();
    let _stop = w.start("a");
    let guids = w.enqueue("push", 4).await;
    eventually("every attempt", WAIT, || async {
        (w.queue.dead_len(&w.policy).await.unwrap() == 4).then_some(())
    })
    .await;
    let calls = w.sink.calls("down");
    let mut gaps = Vec::new();
    for guid in &guids {
        let times: Vec<u64> = calls.iter().filter(|(id, _)| id == guid).map(|(_, at)| *at).collect();
        assert_eq!(times.len(), 4, "{guid}: maxAttempts calls");
        gaps.extend(times.windows(2).map(|t| t[1] - t[0]));
    }
    // 1 s and up to 20 % jitter; 100 ms for the call and the settling.
    assert!(gaps.iter().all(|g| (1_000..=1_300).contains(g)), "every retry when due: {gaps:?} ms");
    let spread = gaps.iter().max().unwrap() - gaps.iter().min().unwrap();
    assert!(spread > 20, "the jitter is drawn for each retry: {gaps:?} ms");
}

#[tokio::test]
async fn after_a_good_probe_the_deliveries_that_waited_for_the_circuit_drain_at_once() {
    let mut w = world().await;
    w.settings.agents = vec![w.agent("back", &[])];
    w.settings.circuit_breaker = quick_breaker(3);
    w.settings.retry.max_attempts = 50;
    w.sink.set_mode("back", Mode::Fail);
    w.apply();
    let _stop = w.start("a");
    let guids = w.enqueue("push", 8).await;
    let open = || w.metrics.breaker_open.with_label_values(&["team/default", "back"]).get();
    eventually("the circuit to open", WAIT, || async { (open() == 1).then_some(()) }).await;
    w.sink.set_mode("back", Mode::Ok);
    w.until_received("back", &guids).await;
    let times: Vec<u64> = w.sink.received("back").iter().map(|r| r.at_ms).collect();
    let span = times.iter().max().unwrap() - times.iter().min().unwrap();
    assert!(span < 1_000, "the probe first, then the rest at once, not a reset period later: {span} ms");
}

#[tokio::test]
async fn retries_end_in_a_dead_letter_that_can_be_replayed() {
    let mut w = world().await;
    w.settings.agents = vec![w.agent("flaky", &[])];
    w.settings.retry.max_attempts = 3;
    w.sink.set_mode("flaky", Mode::Fail);
    w.apply();
    let _stop = w.start("a");
    let guids = w.enqueue("push", 1).await;
    let dead = eventually("a dead letter", WAIT, || async {
        let dead = w.queue.dead_letters(&w.policy, 10).await.unwrap();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delivery.guid, guids[0]);
    assert_eq!(dead[0].delivery.agent.as_deref(), Some("flaky"));
    assert_eq!(dead[0].delivery.attempt, 3, "dead-lettered after maxAttempts");
    assert_eq!(dead[0].error, "agent answered HTTP 500");
    let failed_calls = w.metrics.errors.with_label_values(&["team/default", "flaky", "http_status"]).get();
    assert_eq!(failed_calls, 3, "three attempts in all");
    assert_eq!(w.queue.len(&w.policy).await.unwrap(), 0);
    assert_eq!(w.queue.retry_len(&w.policy).await.unwrap(), 0);

    w.sink.set_mode("flaky", Mode::Ok);
    assert!(w.queue.replay(&w.policy, &dead[0].id).await.unwrap());
    assert!(!w.queue.replay(&w.policy, &dead[0].id).await.unwrap(), "a replayed letter is gone");
    w.until_received("flaky", &guids).await;
    assert_eq!(w.queue.dead_len(&w.policy).await.unwrap(), 0);

    // Purge empties the dead-letter stream.
    w.sink.set_mode("flaky", Mode::Fail);
    w.enqueue("push", 2).await;
    eventually("two dead letters", WAIT, || async {
        (w.queue.dead_len(&w.policy).await.unwrap() == 2).then_some(())
    })
    .await;
    assert_eq!(w.queue.purge_dead(&w.policy).await.unwrap(), 2);
    assert_eq!(w.queue.dead_len(&w.policy).await.unwrap(), 0);
}

#[tokio::test]
async fn a_crashed_consumers_entries_are_reclaimed_by_another() {
    let mut w = world().await;
    w.settings.agents = vec![w.agent("a", &[])];
    w.apply();
    let guids = w.enqueue("push", 5).await;
    // A consumer reads the entries and dies before settling them: they sit in
    // its pending list, exactly what a SIGKILL leaves behind.
    w.queue.ensure_group(&w.policy, None).await.unwrap();
    let taken = w.queue.read(&w.policy, None, "crashed", 10, 100).await.unwrap();
    assert_eq!(taken.len(), 5);

    let _stop = w.start("survivor");
    w.until_received("a", &guids).await;
    assert_eq!(w.ids("a").len(), 5);
    w.until_drained().await;
}

#[tokio::test]
async fn a_redis_restart_loses_nothing() {
    let redis = common::PrivateRedis::start();
    let mut w = World::new(&redis.url).await;
    w.settings.agents = vec![w.agent("a", &[])];
    w.settings.enabled = false;
    w.apply();
    let guids = w.enqueue("push", 50).await;
    let stop = w.start("a");
    redis.restart();
    w.settings.enabled = true;
    w.apply();
    w.until_received("a", &guids).await;
    assert_eq!(w.ids("a").len(), 50);
    stop.cancel();
}

#[tokio::test]
async fn an_unreadable_entry_is_dropped_without_blocking_the_rest() {
    let mut w = world().await;
    w.settings.agents = vec![w.agent("a", &[])];
    w.apply();
    let before = w.enqueue("push", 2).await;
    // Something other than a receiver wrote to the stream.
    let mut raw =
        redis::Client::open(w.redis_url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:{{team/default}}:events", w.prefix);
    let _: String =
        redis::cmd("XADD").arg(&key).arg("*").arg("junk").arg("1").query_async(&mut raw).await.unwrap();
    let after = w.enqueue("push", 2).await;
    let _stop = w.start("a");
    w.until_received("a", &[before, after].concat()).await;
    eventually("the stream to be empty", WAIT, || async {
        (w.queue.len(&w.policy).await.unwrap() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn departed_consumers_with_nothing_pending_are_pruned() {
    let w = world().await;
    w.queue.ensure_group(&w.policy, None).await.unwrap();
    let mut raw =
        redis::Client::open(w.redis_url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:{{team/default}}:events", w.prefix);
    let created: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&key)
        .arg("receivers")
        .arg("departed")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(created, 1);
    w.enqueue("push", 1).await;
    assert_eq!(w.queue.read(&w.policy, None, "crashed-with-work", 10, 10).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        w.queue.prune_consumers(&w.policy, None, "me", 10).await.unwrap(),
        1,
        "only the idle one without work"
    );
    assert_eq!(w.queue.prune_consumers(&w.policy, None, "me", 10).await.unwrap(), 0);
}

#[tokio::test]
async fn every_series_of_a_policy_and_its_agents_exists_at_zero_before_anything_happens() {
    let mut w = world().await;
    w.settings.agents = vec![w.agent("reviewer", &[]), w.agent("triage", &[])];
    w.apply();
    let _stop = w.start("a");
    let policy = w.policy.to_string();
    let zero = |text: &str, name: &str, labels: &[(&str, &str)]| {
        text.lines().any(|l| {
            l.starts_with(name)
                && l.ends_with(" 0")
                && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
    };
    eventually("the worker to create its series", WAIT, || async {
        zero(&w.metrics.render(), "webhook_circuit_breaker_open", &[("policy", &policy), ("agent", "triage")])
            .then_some(())
    })
    .await;
    let text = w.metrics.render();
    for agent in ["reviewer", "triage"] {
        for result in hookwarden::receiver::dispatch::RESULTS {
            let labels = [("policy", policy.as_str()), ("agent", agent), ("result", result)];
            assert!(zero(&text, "github_webhook_processed_total", &labels), "{agent} {result}:\n{text}");
        }
        for reason in Failure::REASONS {
            let labels = [("policy", policy.as_str()), ("agent", agent), ("reason", reason)];
            assert!(zero(&text, "github_webhook_errors_total", &labels), "{agent} {reason}:\n{text}");
        }
        let count = [("policy", policy.as_str()), ("agent", agent)];
        assert!(zero(&text, "github_webhook_processing_duration_seconds_count", &count), "{agent}");
    }
    assert!(zero(&text, "hookwarden_dead_letters", &[("policy", &policy)]), "{text}");
    // An agent added later gets its series too.
    w.settings.agents.push(w.agent("audit", &[]));
    w.apply();
    eventually("the new agent's series", WAIT, || async {
        let text = w.metrics.render();
        zero(&text, "github_webhook_errors_total", &[("agent", "audit"), ("reason", "timeout")]).then_some(())
    })
    .await;
}

/// Dead letters of the policy once there are `n`, by agent.
async fn dead_by_agent(w: &World, n: usize) -> std::collections::HashMap<String, String> {
    eventually(&format!("{n} dead letters"), WAIT, || async {
        let dead = w.queue.dead_letters(&w.policy, 100).await.unwrap();
        (dead.len() >= n)
            .then(|| dead.into_iter().map(|d| (d.delivery.agent.unwrap_or_default(), d.error)).collect())
    })
    .await
}

#[tokio::test]
async fn agent_calls_never_follow_a_redirect_nor_reach_denied_or_own_addresses() {
    use axum::{Router, http::StatusCode, response::IntoResponse, routing::post};
    let mut w = world().await;
    // An agent that sends every call on to the cloud metadata address, and
    // counts what reaches "metadata" (here: the sink, standing in for it).
    let metadata = format!("{}/metadata", w.sink_url);
    let redirecting = Router::new().route(
        "/{*path}",
        post(move || {
            let to = metadata.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [("location", to)]).into_response() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirector = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, redirecting).into_future());
    // The receiver's "own" admin port: an agent URL naming it is refused.
    let own = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own_addr = own.local_addr().unwrap();
    let agent = |name: &str, url: String| Agent { url, ..w.agent(name, &[]) };
    w.settings.agents = vec![
        agent("redirected", format!("http://{redirector}/events")),
        agent("metadata", "http://169.254.169.254/latest/meta-data/".into()),
        agent("mapped", "http://[::ffff:169.254.169.254]/".into()),
        agent("admin", format!("http://127.0.0.1:{}/admin/policies", own_addr.port())),
    ];
    w.settings.retry.max_attempts = 1;
    w.apply();
    let destinations = Destinations::new(vec![], vec![own_addr]);
    let _stop = w.start_with("a", destinations);
    w.enqueue("push", 1).await;
    let dead = dead_by_agent(&w, 4).await;
    assert!(dead["redirected"].contains("HTTP 307, a redirect (redirects are not followed)"), "{dead:?}");
    assert!(w.ids("metadata").is_empty(), "the redirect was followed");
    for agent in ["metadata", "mapped"] {
        assert_eq!(dead[agent], "destination denied: the address is in the receiver's deny list", "{agent}");
    }
    assert_eq!(dead["admin"], "destination denied: the receiver's own listener");
    drop(own);
}

#[tokio::test]
async fn an_entry_naming_another_teams_hook_is_dead_lettered_not_delivered() {
    let mut w = world().await;
    w.settings.agents = vec![w.agent("a", &[])];
    w.apply();
    let _stop = w.start("a");
    // As a forged XADD into this policy's stream would be: an entry naming a
    // hook of another namespace.
    let forged = push(ObjectRef::new("team-b", "their-hook"));
    w.queue.enqueue(&w.policy, &forged, 10_000, None).await.unwrap();
    let ours = w.enqueue("push", 1).await;
    w.until_received("a", &ours).await;
    let dead = dead_by_agent(&w, 1).await;
    assert_eq!(
        dead["a"],
        "entry names hook team-b/their-hook, which does not deliver to this policy: not delivered"
    );
    assert!(!w.ids("a").contains(&forged.guid), "the forged entry was delivered");
}

/// A push of `hook`, with a new GUID.
fn push(hook: ObjectRef) -> Delivery {
    Delivery {
        guid: guid(),
        event: "push".into(),
        hook,
        repository: Some("octo-org/hello-world".into()),
        action: None,
        payload: Bytes::from_static(b"{}"),
        received_ms: 1,
        agent: None,
        attempt: 0,
        trace: None,
    }
}

/// Queues one push for the policy with queue limit `limit`; the queue's answer.
async fn enqueue_one(w: &World, limit: u64) -> Result<(), hookwarden::queue::QueueError> {
    let d = push(ObjectRef::new("team", "repo-hook"));
    w.queue.enqueue(&w.policy, &d, limit, None).await.map(|_| ())
}

#[tokio::test]
async fn retries_and_dead_letters_are_bounded_by_the_queue_limit_and_refusals_say_which() {
    use hookwarden::queue::QueueError;
    let mut w = world().await;
    w.settings.agents = vec![w.agent("down", &[])];
    w.sink.set_mode("down", Mode::Fail);
    // A retry an hour away: every delivery waits in the retry set.
    w.settings.retry.initial_delay = "1h".parse().unwrap();
    w.settings.retry.max_delay = "1h".parse().unwrap();
    w.apply();
    let _stop = w.start("a");
    for _ in 0..5 {
        enqueue_one(&w, 5).await.unwrap();
    }
    eventually("five retries scheduled", WAIT, || async {
        (w.queue.len(&w.policy).await.unwrap() == 0 && w.queue.retry_len(&w.policy).await.unwrap() == 5)
            .then_some(())
    })
    .await;
    // The stream is empty, but five deliveries are still to be made.
    assert!(matches!(enqueue_one(&w, 5).await, Err(QueueError::Full { limit: 5 })));
    assert!(enqueue_one(&w, 6).await.is_ok(), "a larger limit admits more");

    // Dead letters: one attempt each, five of them fill a limit of five.
    let mut d = world().await;
    d.settings.agents = vec![d.agent("down", &[])];
    d.sink.set_mode("down", Mode::Fail);
    d.settings.retry.max_attempts = 1;
    d.apply();
    let _stop = d.start("a");
    for _ in 0..5 {
        enqueue_one(&d, 5).await.unwrap();
    }
    eventually("five dead letters", WAIT, || async {
        (d.queue.dead_len(&d.policy).await.unwrap() == 5).then_some(())
    })
    .await;
    let refused = enqueue_one(&d, 5).await.unwrap_err();
    assert!(matches!(refused, QueueError::DeadLettersFull { limit: 5 }), "{refused}");
    assert_eq!(refused.to_string(), "the policy holds 5 dead letters, its queue limit: replay or purge them");
    d.queue.purge_dead(&d.policy).await.unwrap();
    assert!(enqueue_one(&d, 5).await.is_ok(), "purged: accepted again");
}

#[tokio::test]
async fn the_breakers_of_agents_and_policies_that_went_are_forgotten() {
    let mut w = World::new(TestEnv::load().var("REDIS_URL")).await;
    w.settings.agents = vec![w.agent("a", &["push"]), w.agent("b", &["push"])];
    w.apply();
    let (dispatcher, stop) = w.dispatcher("r1", Destinations::default());
    w.enqueue("push", 1).await;
    let agents = |d: &Dispatcher| {
        let mut names: Vec<String> = d.breaker_states().into_iter().map(|(_, agent, _)| agent).collect();
        names.sort();
        names
    };
    eventually("both agents' breakers", WAIT, || async { (agents(&dispatcher) == ["a", "b"]).then_some(()) })
        .await;
    w.settings.agents.retain(|a| a.name == "a");
    w.apply();
    eventually("b's breaker forgotten", WAIT, || async { (agents(&dispatcher) == ["a"]).then_some(()) })
        .await;
    w.registry.remove_policy(&w.policy);
    eventually("the policy's forgotten", WAIT, || async { agents(&dispatcher).is_empty().then_some(()) })
        .await;
    stop.cancel();
}

/// The first series of `text` whose line holds every one of `parts`.
fn series(text: &str, parts: &[&str]) -> Option<f64> {
    let line = text.lines().find(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))?;
    line.rsplit(' ').next()?.parse().ok()
}

#[tokio::test]
async fn filters_give_each_agent_exactly_the_deliveries_it_wants_and_say_what_they_kept_away() {
    use hookwarden::{filter::compile, queue::ActivityFilter};
    let mut w = world().await;
    w.settings.agents = vec![w.agent("main-only", &[]), w.agent("everything", &[]), w.agent("typo", &[])];
    let filters = &mut w.settings.filters.agents;
    filters.insert("main-only".into(), compile("body.base == 'main' && !body.draft && action == 'opened'"));
    // Compiles, and fails on every payload: counted as no match, never sent.
    filters.insert("typo".into(), compile("body.bsae == 'main'"));
    w.apply();
    let _stop = w.start("a");

    const N: usize = 600;
    let hook = ObjectRef::new("team", "repo-hook");
    let (mut all, mut wanted) = (Vec::new(), HashSet::new());
    for i in 0..N {
        let guid = guid();
        let (base, draft) = (if i % 2 == 0 { "main" } else { "dev" }, i % 3 == 0);
        let payload =
            serde_json::json!({"action": "opened", "base": base, "draft": draft, "n": i}).to_string();
        let d = Delivery::parse(&guid, "pull_request", &hook, Bytes::from(payload)).unwrap();
        w.queue.enqueue(&w.policy, &d, 10_000, None).await.unwrap();
        if base == "main" && !draft {
            wanted.insert(guid.clone());
        }
        all.push(guid);
    }
    w.until_received("everything", &all).await;
    let wanted_list: Vec<String> = wanted.iter().cloned().collect();
    w.until_received("main-only", &wanted_list).await;
    w.until_drained().await;
    let got: HashSet<String> = w.ids("main-only").into_iter().collect();
    assert_eq!(got, wanted, "exactly the wanted ones, each once");
    assert_eq!(w.ids("main-only").len(), wanted.len(), "no repeats");
    assert!(w.ids("typo").is_empty(), "a filter that fails sends nothing");

    let text = w.metrics.render();
    let filtered = |agent: &str, reason: &str| {
        series(
            &text,
            &["hookwarden_filtered_total{", &format!("agent=\"{agent}\""), &format!("reason=\"{reason}\"")],
        )
    };
    assert_eq!(filtered("main-only", "no_match"), Some((N - wanted.len()) as f64));
    assert_eq!(filtered("typo", "error"), Some(N as f64));
    assert_eq!(filtered("everything", "no_match"), Some(0.0), "the series exists at zero");

    let only = ActivityFilter { status: Some("filtered".into()), ..ActivityFilter::default() };
    let log = w.queue.activity(std::slice::from_ref(&w.policy), &only, 5 * N).await.unwrap();
    assert_eq!(log.len(), N - wanted.len() + N, "one line per agent kept from a delivery");
    let typo = log.iter().find(|a| a.agent.as_deref() == Some("typo")).unwrap();
    assert!(typo.detail.as_deref().unwrap().contains("agent filter failed: No such key: bsae"), "{typo:?}");

    // Samples for `admin filter-test`: whole deliveries, newest first.
    let recent = w.queue.recent(&w.policy, 100).await.unwrap();
    assert!(!recent.is_empty() && recent.len() <= 100, "{}", recent.len());
    assert!(recent.iter().all(|d| all.contains(&d.guid) && d.action.as_deref() == Some("opened")));
    assert!(recent.windows(2).all(|p| p[0].received_ms >= p[1].received_ms));
}

#[tokio::test]
async fn a_delivery_no_agent_takes_is_logged_as_filtered_not_dropped_silently() {
    use hookwarden::queue::ActivityFilter;
    let mut w = world().await;
    w.settings.agents = vec![w.agent("issues-only", &["issues"])];
    w.apply();
    let _stop = w.start("a");
    let pushes = w.enqueue("push", 3).await;
    w.until_drained().await;
    let only = ActivityFilter { status: Some("filtered".into()), ..ActivityFilter::default() };
    let log = w.queue.activity(std::slice::from_ref(&w.policy), &only, 10).await.unwrap();
    let guids: HashSet<&str> = log.iter().map(|a| a.guid.as_str()).collect();
    assert_eq!(guids, pushes.iter().map(String::as_str).collect());
    assert!(
        log.iter().all(|a| a.agent.is_none()
            && a.detail.as_deref() == Some("no agent's events and repositories take it"))
    );
}

#[tokio::test]
async fn an_agents_concurrency_holds_across_three_receivers() {
    let mut w = world().await;
    let mut limited = w.agent("limited", &[]);
    limited.concurrency = Some(2);
    w.settings.agents = vec![limited, w.agent("free", &[])];
    w.settings.concurrency = 4;
    w.sink.set_mode("limited", Mode::Slow(150));
    w.sink.set_mode("free", Mode::Slow(150));
    w.apply();
    let _stops = ["a", "b", "c"].map(|consumer| w.start(consumer));
    let guids = w.enqueue("push", 30).await;
    w.until_received("limited", &guids).await;
    w.until_received("free", &guids).await;
    assert_eq!(w.sink.max_in_flight("limited"), 2, "two at once across the three receivers, and used");
    assert!(
        w.sink.max_in_flight("free") > 4,
        "an agent without a limit: the policy's concurrency per receiver"
    );
    assert_eq!(w.ids("limited").len(), 30, "each once: a held call is not a call");
    let failed = w.metrics.errors.with_label_values(&["team/default", "limited", "http_status"]).get();
    assert_eq!(failed, 0);
    w.until_drained().await;
}

/// The start of every call `agent` got, sorted.
fn call_times(w: &World, agent: &str) -> Vec<u64> {
    let mut at: Vec<u64> = w.sink.calls(agent).into_iter().map(|(_, at)| at).collect();
    at.sort_unstable();
    at
}

#[tokio::test]
async fn a_rate_limit_holds_across_receivers_and_a_burst_after_idle_goes_at_once() {
    let mut w = world().await;
    let mut paced = w.agent("paced", &[]);
    paced.rate_limit = Some(RateLimit { requests_per_unit: 10, unit: RateUnit::Second, burst: 5 });
    w.settings.agents = vec![paced, w.agent("free", &[])];
    w.settings.concurrency = 8;
    w.apply();
    let _stops = ["a", "b", "c"].map(|consumer| w.start(consumer));
    let guids = w.enqueue("push", 45).await;
    w.until_received("free", &guids).await;
    w.until_received("paced", &guids).await;
    let at = call_times(&w, "paced");
    assert_eq!(at.len(), 45, "each once");
    // Idle before: the burst of five goes at once...
    // (Timed where the sink sees them: a call's way there adds the machine's
    // delays, so the bounds leave room for them; without the burst the fifth
    // would come 400 ms after the first.)
    assert!(at[4] - at[0] < 300, "the burst: {:?}", &at[..6]);
    // ...then ten a second: the forty after it take four seconds, within 10 %.
    let rest = (at[44] - at[4]) as f64 / 1000.0;
    eprintln!("40 calls after the burst at 10/s took {rest} s");
    // NB: never under 4 s (the limit); over it only by the machine's delays
    // (4.0-4.1 s on a quiet one), bounded loosely: tests share the cores.
    assert!((3.9..=4.8).contains(&rest), "40 calls at 10/s took {rest} s");
    // Never faster in any window: at most the burst plus the rate over its length.
    for i in 0..at.len() {
        for j in i..at.len() {
            let allowed = 5.0 + 10.0 * (at[j] - at[i]) as f64 / 1000.0;
            assert!((j - i + 1) as f64 <= allowed + 1.0, "{} calls in {} ms", j - i + 1, at[j] - at[i]);
        }
    }
    // Idle again for long enough to earn the whole burst, and no more.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let again = w.enqueue("push", 8).await;
    w.until_received("paced", &again).await;
    let at = call_times(&w, "paced")[45..].to_vec();
    assert!(at[4] - at[0] < 300, "the burst after idle: {at:?}");
    assert!(at[7] - at[0] >= 250, "and no more: the last three paced (300 ms): {at:?}");
    let held = w.metrics.errors.with_label_values(&["team/default", "paced", "limited"]).get();
    assert_eq!(w.metrics.errors.with_label_values(&["team/default", "paced", "http_status"]).get(), 0);
    eprintln!("held past the in-place wait and retried when allowed: {held}");
}

#[tokio::test]
async fn an_agents_retry_after_pauses_it_on_every_receiver_and_only_it() {
    let mut w = world().await;
    let mut busy = w.agent("busy", &[]);
    busy.concurrency = Some(50); // a limit: its pause is shared through Redis
    w.settings.agents = vec![busy, w.agent("calm", &[])];
    w.settings.circuit_breaker = quick_breaker(1);
    w.settings.retry.max_attempts = 20;
    w.settings.concurrency = 2;
    w.sink.set_mode("busy", Mode::Busy(3));
    w.apply();
    let _a = w.start("a");
    let mut guids = w.enqueue("push", 2).await;
    eventually("busy to have been called", WAIT, || async {
        (!w.sink.calls("busy").is_empty()).then_some(())
    })
    .await;
    let first = w.sink.calls("busy")[0].1;
    // Once the first answer is back (and the pause in Redis)...
    let throttled = || w.metrics.errors.with_label_values(&["team/default", "busy", "throttled"]).get();
    eventually("the 503 to come back", WAIT, || async { (throttled() >= 1).then_some(()) }).await;
    w.sink.set_mode("busy", Mode::Ok);
    // ...a second receiver, which never got a 503 itself, holds its calls
    // too: the deliveries that arrive now are shared by both.
    // NB: they arrive after the pause, or every call could have started
    // before the first answer came back.
    let _b = w.start("b");
    guids.extend(w.enqueue("push", 18).await);
    w.until_received("calm", &guids).await;
    w.until_received("busy", &guids).await;
    let calls = w.sink.calls("busy");
    let during: Vec<_> = calls.iter().filter(|(_, at)| *at > first && *at < first + 2_900).collect();
    // Only a call already on its way with the first (one per slot of "a").
    assert!(during.len() < 2, "paused on both receivers for its Retry-After: {during:?}");
    assert_eq!(w.ids("busy").len(), 20, "each once");
    assert_eq!(w.metrics.breaker_open.with_label_values(&["team/default", "busy"]).get(), 0);
    assert!(w.metrics.errors.with_label_values(&["team/default", "busy", "limited"]).get() >= 1);
    let calm_last = w.sink.received("calm").iter().map(|r| r.at_ms).max().unwrap();
    assert!(calm_last < first + 2_900, "its neighbour got everything during the pause");
}

#[tokio::test]
async fn an_agent_without_its_credentials_gets_nothing_and_with_them_gets_each_call_authorized() {
    let mut w = world().await;
    let mut agent = w.agent("secured", &[]);
    agent.headers_secret_ref = Some(hookwarden::api::SecretRef { name: "creds".into() });
    w.settings.agents = vec![agent];
    w.apply();
    let _stop = w.start("a");
    let guids = w.enqueue("push", 3).await;
    eventually("calls held for their credentials", WAIT, || async {
        (w.metrics.errors.with_label_values(&["team/default", "secured", "no_credentials"]).get() >= 3)
            .then_some(())
    })
    .await;
    assert!(w.sink.calls("secured").is_empty());
    let data = std::collections::BTreeMap::from([(
        "Authorization".to_owned(),
        k8s_openapi::ByteString(b"Bearer t0ken".to_vec()),
    )]);
    let (headers, _) = hookwarden::receiver::dispatch::credentials::headers_from(&data);
    w.registry.set_agent_headers(ObjectRef::new("team", "creds"), headers);
    w.until_received("secured", &guids).await;
    let received = w.sink.received("secured");
    assert!(received.iter().all(|r| r.authorization.as_deref() == Some("Bearer t0ken")), "{received:?}");
}

/// How long `agent` took to receive `guids`, from the first call to the last.
async fn time_to_receive(w: &World, agent: &str, guids: &[String]) -> Duration {
    w.until_received(agent, guids).await;
    let at: Vec<u64> =
        w.sink.received(agent).iter().filter(|r| guids.contains(&r.id)).map(|r| r.at_ms).collect();
    Duration::from_millis(at.iter().max().unwrap() - at.iter().min().unwrap())
}

#[tokio::test]
async fn a_slow_agent_never_slows_its_neighbour() {
    // Alone: the fast agent's pace.
    let mut alone = world().await;
    alone.settings.agents = vec![alone.agent("fast", &[])];
    alone.settings.concurrency = 2;
    alone.sink.set_mode("fast", Mode::Slow(10));
    alone.apply();
    let _stop = alone.start("a");
    let guids = alone.enqueue("push", 100).await;
    let by_itself = time_to_receive(&alone, "fast", &guids).await;

    // Beside an agent that takes 9 s a call (and succeeds): the same pace.
    let mut w = world().await;
    let mut slow = w.agent("slow", &[]);
    slow.timeout_seconds = 10;
    w.settings.agents = vec![slow, w.agent("fast", &[])];
    w.settings.concurrency = 2;
    w.sink.set_mode("fast", Mode::Slow(10));
    w.sink.set_mode("slow", Mode::Slow(9_000));
    w.apply();
    let _stop = w.start("a");
    let guids = w.enqueue("push", 100).await;
    let beside = time_to_receive(&w, "fast", &guids).await;
    let ratio = by_itself.as_secs_f64() / beside.as_secs_f64();
    eprintln!(
        "fast agent: 100 deliveries in {by_itself:?} alone, {beside:?} beside a 9 s agent: {ratio:.2}x"
    );
    // NB: measured at 0.95x on a quiet machine; before lanes it was ~0.002x
    // (each pair of deliveries waited 9 s). Bounded loosely: tests share the cores.
    assert!(ratio >= 0.5, "alone {by_itself:?}, beside the slow agent {beside:?}");
    assert!(w.sink.max_in_flight("slow") <= 2, "the slow agent has its own concurrency");
    assert_eq!(w.ids("fast").len(), 100, "each once");
}

#[tokio::test]
async fn an_agent_switched_off_waits_in_its_lane_while_the_others_go_on() {
    let mut w = world().await;
    let mut paused = w.agent("paused", &[]);
    paused.enabled = false;
    w.settings.agents = vec![paused, w.agent("running", &[])];
    w.apply();
    let _stop = w.start("a");
    let guids = w.enqueue("push", 20).await;
    w.until_received("running", &guids).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.sink.calls("paused").is_empty(), "switched off: nothing sent");
    assert_eq!(w.queue.lane_len(&w.policy, "paused").await.unwrap(), 20, "its deliveries wait in its lane");
    assert_eq!(w.queue.len(&w.policy).await.unwrap(), 20, "and count as queued");
    let lengths = w.queue.lengths(std::slice::from_ref(&w.policy)).await.unwrap().remove(0);
    assert_eq!((lengths.queued, lengths.lanes), (20, vec![("paused".into(), 20), ("running".into(), 0)]));

    w.settings.agents[0].enabled = true;
    w.apply();
    w.until_received("paused", &guids).await;
    w.until_drained().await;
    assert_eq!(w.ids("paused").len(), 20, "each once");
    assert_eq!(w.ids("running").len(), 20, "each once");
}

#[tokio::test]
async fn an_agent_that_leaves_the_policy_leaves_its_lane_in_dead_letters_and_no_lane_behind() {
    let mut w = world().await;
    let mut leaving = w.agent("leaving", &[]);
    leaving.enabled = false;
    w.settings.agents = vec![leaving, w.agent("staying", &[])];
    w.apply();
    let _stop = w.start("a");
    let guids = w.enqueue("push", 10).await;
    w.until_received("staying", &guids).await;
    eventually("the lane to fill", WAIT, || async {
        (w.queue.lane_len(&w.policy, "leaving").await.unwrap() == 10).then_some(())
    })
    .await;

    w.settings.agents.remove(0);
    w.apply();
    let dead = eventually("the lane's deliveries in dead letters", WAIT, || async {
        let dead = w.queue.dead_letters(&w.policy, 100).await.unwrap();
        (dead.len() == 10).then_some(dead)
    })
    .await;
    for d in &dead {
        assert_eq!(
            (d.delivery.agent.as_deref(), d.error.as_str()),
            (Some("leaving"), "agent no longer in the policy")
        );
    }
    let ids: HashSet<&String> = dead.iter().map(|d| &d.delivery.guid).collect();
    assert_eq!(ids, guids.iter().collect(), "each delivery once");
    eventually("the lane retired", WAIT, || async {
        w.queue.lanes(&w.policy).await.unwrap().iter().all(|a| a != "leaving").then_some(())
    })
    .await;
    w.until_drained().await;
    assert!(w.sink.calls("leaving").is_empty());
}

#[tokio::test]
async fn a_filter_admits_exactly_the_example_payloads_it_should() {
    use hookwarden::filter::compile;
    let mut w = world().await;
    w.settings.agents = vec![w.agent("reviewer", &["pull_request"]), w.agent("audit", &[])];
    w.settings.filters.agents.insert(
        "reviewer".into(),
        compile(
            "action in ['opened', 'synchronize'] && body.pull_request.base.ref == 'master' \
             && !body.pull_request.draft && body.sender.type == 'User'",
        ),
    );
    w.apply();
    let _stop = w.start("a");
    let hook = ObjectRef::new("team", "repo-hook");
    let (mut all, mut wanted) = (Vec::new(), HashSet::new());
    for (event, example) in common::webhook_examples() {
        let p = common::occurrence(&example);
        let pr = &p["pull_request"];
        // The same condition, read off the JSON by hand.
        let guid = guid();
        if event == "pull_request"
            && (p["action"] == "opened" || p["action"] == "synchronize")
            && pr["base"]["ref"] == "master"
            && pr["draft"] == false
            && p["sender"]["type"] == "User"
        {
            wanted.insert(guid.clone());
        }
        let d = Delivery::parse(&guid, &event, &hook, Bytes::from(p.to_string())).unwrap();
        w.queue.enqueue(&w.policy, &d, 100_000, None).await.unwrap();
        all.push(guid);
    }
    assert!(!wanted.is_empty() && wanted.len() < all.len(), "the corpus has both kinds: {}", wanted.len());
    w.until_received("audit", &all).await;
    w.until_drained().await;
    let got: Vec<String> = w.ids("reviewer");
    assert_eq!(got.iter().collect::<HashSet<_>>(), wanted.iter().collect(), "exactly the wanted examples");
    assert_eq!(got.len(), wanted.len(), "each once");
    let text = w.metrics.render();
    let no_match =
        series(&text, &["hookwarden_filtered_total{", "agent=\"reviewer\"", "reason=\"no_match\""]);
    let error = series(&text, &["hookwarden_filtered_total{", "agent=\"reviewer\"", "reason=\"error\""]);
    let pull_requests = common::webhook_examples().iter().filter(|(e, _)| e == "pull_request").count();
    assert_eq!(
        no_match.unwrap_or(0.0) + error.unwrap_or(0.0),
        (pull_requests - wanted.len()) as f64,
        "every pull_request example the filter refused is counted"
    );
}

#[tokio::test]
async fn a_window_of_history_is_replayed_to_one_agent_and_nothing_to_the_others() {
    use hookwarden::receiver::admin::replay::{ReplayWindow, replay};
    let mut w = world().await;
    w.settings.agents = vec![w.agent("one", &[]), w.agent("other", &[])];
    w.settings.history_ms = 3_600_000;
    w.apply();
    let _stop = w.start("a");
    let batch = |n: usize| {
        let w = &w;
        async move {
            let mut guids = Vec::new();
            for i in 0..n {
                let guid = guid();
                let body = Bytes::from(format!(r#"{{"action":"opened","n":{i}}}"#));
                let d = Delivery {
                    received_ms: hookwarden::now_ms(),
                    ..Delivery::parse(&guid, "push", &ObjectRef::new("team", "repo-hook"), body).unwrap()
                };
                w.queue.enqueue(&w.policy, &d, 10_000, None).await.unwrap();
                guids.push(guid);
            }
            w.until_received("one", &guids).await;
            w.until_received("other", &guids).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            guids
        }
    };
    let _before = batch(30).await;
    let since_ms = hookwarden::now_ms();
    let window = batch(40).await;
    let until_ms = hookwarden::now_ms();
    let _after = batch(30).await;
    w.until_drained().await;

    let settings = w.registry.policy(&w.policy).unwrap();
    let asked =
        ReplayWindow { since_ms, until_ms: Some(until_ms), agent: Some("one".into()), ..Default::default() };
    let dry = replay(&w.queue, &w.policy, &settings, &ReplayWindow { dry_run: true, ..asked.clone() })
        .await
        .unwrap();
    assert_eq!((dry.deliveries, dry.sends, dry.queued), (40, 40, 0), "{dry:?}");
    assert!(dry.kept_since_ms.is_some_and(|k| k < since_ms), "{dry:?}");
    let report = replay(&w.queue, &w.policy, &settings, &asked).await.unwrap();
    assert_eq!((report.deliveries, report.sends, report.queued), (40, 40, 40), "{report:?}");

    eventually("the window sent again to one", WAIT, || async { (w.ids("one").len() == 140).then_some(()) })
        .await;
    w.until_drained().await;
    let ids = w.ids("one");
    for guid in &window {
        assert_eq!(
            ids.iter().filter(|id| *id == guid).count(),
            2,
            "each of the window once more, same ce-id"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.ids("other").len(), 100, "nothing to the other agent");
    assert_eq!(w.ids("one").len(), 140, "nothing outside the window");

    // Without an agent: to every agent it goes to; beyond the queue limit: refused whole.
    w.settings.queue_limit = 10;
    w.apply();
    let settings = w.registry.policy(&w.policy).unwrap();
    let all = ReplayWindow { agent: None, ..asked.clone() };
    let refused = replay(&w.queue, &w.policy, &settings, &all).await.unwrap_err();
    assert!(refused.to_string().contains("queue limit"), "{refused}");
}

#[tokio::test]
async fn idle_workers_wait_in_blocking_reads_instead_of_polling_redis() {
    // A Redis of its own: its command counter sees this test only.
    let redis = common::PrivateRedis::start();
    let mut w = World::new(&redis.url).await;
    w.settings.agents = vec![w.agent("a", &[]), w.agent("b", &[]), w.agent("c", &[])];
    w.apply();
    let _stop = w.start("r");
    let guids = w.enqueue("push", 3).await;
    w.until_received("c", &guids).await;
    let processed = || async {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(
                &mut redis::Client::open(redis.url.as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
        let line = info.lines().find(|l| l.starts_with("total_commands_processed:")).unwrap();
        line.split(':').nth(1).unwrap().trim().parse::<u64>().unwrap()
    };
    let before = processed().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_second = (processed().await - before) as f64 / 2.0;
    // The router and three lanes, each a 250 ms blocking read, and housekeeping.
    // (26 a second measured; lanes that believed a promotion was due read
    // with a 1 ms block, which Redis' 100 ms timer made 44.)
    assert!(per_second < 36.0, "{per_second} Redis commands a second while idle");
}
