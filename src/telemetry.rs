//! Logging and metrics, registered once per process.
//!
//! Metric names follow the existing PR Manager runbook, whose alerts and
//! dashboards use them: `github_webhooks_total` (received),
//! `github_webhook_processed_total`, `github_webhook_errors_total`,
//! `github_webhook_queue_length`, `github_webhook_processing_duration_seconds`,
//! `webhook_circuit_breaker_open`, `agents_enabled`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Installs the global tracing subscriber: JSON lines, filtered by `RUST_LOG`
/// (default `info`); a line written inside a delivery's span carries the span
/// (`span.trace_id`, `span.delivery_id`). With `traces`, the delivery spans
/// ([`crate::trace::TARGET`]) also become OpenTelemetry spans.
pub fn init_logging(traces: Option<&crate::trace::Tracing>) {
    use tracing_subscriber::{Layer, filter::filter_fn, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // NB: the delivery spans exist whatever RUST_LOG says: traces and the
        // trace id of a warning must not depend on the log level.
        .add_directive(format!("{}=info", crate::trace::TARGET).parse().expect("a valid directive"));
    let logs = tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(false);
    // NB: the layer's defaults add, per span, its code location, thread and
    // target as attributes, and, on every poll of an instrumented future,
    // clock reads (busy/idle time) and an OpenTelemetry context made current
    // (for other OpenTelemetry instrumentation: there is none): about a
    // twentieth of the receiver's CPU per delivery (bench/ingest), for
    // nothing a delivery's trace needs.
    let spans = traces.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer())
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(filter_fn(|m| m.target() == crate::trace::TARGET))
    });
    let _ = tracing_subscriber::registry().with(filter).with(logs).with(spans).try_init();
}

/// Registers `metric` in `registry` and hands it back.
fn registered<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

/// A labelled counter, registered in `registry`.
fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// A labelled gauge, registered in `registry`.
fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out).expect("encode metrics");
    String::from_utf8(out).expect("metrics are UTF-8")
}

/// The receiver's metrics.
pub struct ReceiverMetrics {
    registry: Registry,
    /// Deliveries received with a valid signature, by event.
    pub received: IntCounterVec,
    /// Deliveries rejected before queuing, by reason.
    pub rejected: IntCounterVec,
    /// Redeliveries recognised by GUID and not queued again.
    pub duplicates: IntCounterVec,
    /// Dispatches that ended, by agent and result (`success`, `retry`, `dead_letter`).
    pub processed: IntCounterVec,
    /// Failed dispatch attempts, by agent and reason.
    pub errors: IntCounterVec,
    /// Deliveries an agent's filters kept from it, by reason.
    pub filtered: IntCounterVec,
    /// Time a policy's filters took per delivery.
    pub filter_seconds: HistogramVec,
    /// Time from acceptance to the end of a dispatch, by agent.
    pub duration: HistogramVec,
    /// Deliveries queued by one call to Redis (`queue::batch`).
    pub enqueue_batch: prometheus::Histogram,
    /// Deliveries waiting or in flight, by policy.
    pub queue_length: IntGaugeVec,
    /// Deliveries waiting or in flight in an agent's lane.
    pub lane_length: IntGaugeVec,
    /// Dead letters, by policy.
    pub dead_letters: IntGaugeVec,
    /// 1 while an agent's circuit is open or half-open.
    pub breaker_open: IntGaugeVec,
    /// 1 while a policy's effective `enabled` is true.
    pub agents_enabled: IntGaugeVec,
}

impl ReceiverMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| counter_vec(&registry, name, help, labels);
        let gauge = |name: &str, help: &str, labels: &[&str]| gauge_vec(&registry, name, help, labels);
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "github_webhook_processing_duration_seconds",
                "Seconds from acceptance to the end of a dispatch",
            )
            .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
            &["policy", "agent"],
        )
        .expect("valid metric");
        let duration = registered(&registry, duration);
        let filter_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hookwarden_filter_seconds",
                "Seconds the filters of a policy took on one delivery (its payload parsed included)",
            )
            .buckets(vec![0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
            &["policy"],
        )
        .expect("valid metric");
        let filter_seconds = registered(&registry, filter_seconds);
        let enqueue_batch = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "hookwarden_enqueue_batch_deliveries",
                "Deliveries for one policy queued by one call to Redis (more under load)",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .expect("valid metric");
        let enqueue_batch = registered(&registry, enqueue_batch);
        Self {
            received: counter(
                "github_webhooks_total",
                "Deliveries received with a valid signature",
                &["event"],
            ),
            rejected: counter(
                "hookwarden_rejected_deliveries_total",
                "Deliveries rejected before queuing, by reason",
                &["reason"],
            ),
            duplicates: counter(
                "hookwarden_duplicate_deliveries_total",
                "Redeliveries recognised by GUID and not queued again",
                &["event"],
            ),
            processed: counter(
                "github_webhook_processed_total",
                "Dispatches that ended, by agent and result",
                &["policy", "agent", "result"],
            ),
            errors: counter(
                "github_webhook_errors_total",
                "Failed dispatch attempts",
                &["policy", "agent", "reason"],
            ),
            filtered: counter(
                "hookwarden_filtered_total",
                "Deliveries an agent's filters kept from it (reason no_match: false; error: failed on the delivery)",
                &["policy", "agent", "reason"],
            ),
            filter_seconds,
            duration,
            enqueue_batch,
            queue_length: gauge(
                "github_webhook_queue_length",
                "Deliveries waiting or in flight",
                &["policy"],
            ),
            lane_length: gauge(
                "hookwarden_agent_queue_length",
                "Deliveries waiting or in flight in an agent's lane",
                &["policy", "agent"],
            ),
            dead_letters: gauge(
                "hookwarden_dead_letters",
                "Dead letters waiting for replay or purge",
                &["policy"],
            ),
            breaker_open: gauge(
                "webhook_circuit_breaker_open",
                "1 while the agent's circuit is open",
                &["policy", "agent"],
            ),
            agents_enabled: gauge(
                "agents_enabled",
                "1 while dispatch is enabled for the policy",
                &["policy"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl Default for ReceiverMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The operator's metrics.
pub struct OperatorMetrics {
    registry: Registry,
    /// Reconciles, by controller and outcome.
    pub reconciles: IntCounterVec,
    /// Failed reconciles, by controller and reason.
    pub reconcile_errors: IntCounterVec,
    /// Reconcile duration, by controller.
    pub reconcile_duration: HistogramVec,
    /// Calls to GitHub's REST API, by endpoint and HTTP status (`error` when
    /// GitHub could not be reached).
    pub github_requests: IntCounterVec,
    /// GitHub's `x-ratelimit-remaining` from the latest answer, by account
    /// (the token Secret `namespace/name`, or `app/{id}/installation/{id}`).
    pub github_rate_limit_remaining: IntGaugeVec,
    /// Failed deliveries recovered, counted as each is made, by WebhookConfig
    /// namespace and way (`fetched`: read from GitHub's API and queued;
    /// `redelivered`: GitHub asked to send it again).
    pub redeliveries: IntCounterVec,
    /// Age of the oldest failed delivery not recovered yet (an upper bound
    /// while a read is under way), by WebhookConfig; 0 when none. GitHub
    /// drops deliveries after 3 days.
    pub recovery_pending_age: IntGaugeVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: prometheus::IntGauge,
}

impl OperatorMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("hookwarden_reconcile_duration_seconds", "Reconcile duration"),
            &["controller"],
        )
        .expect("valid metric");
        let leader =
            prometheus::IntGauge::new("hookwarden_operator_leader", "1 while this replica is the leader")
                .expect("valid metric");
        Self {
            reconciles: counter_vec(
                &registry,
                "hookwarden_reconciles_total",
                "Reconciles by controller and outcome",
                &["controller", "outcome"],
            ),
            reconcile_errors: counter_vec(
                &registry,
                "hookwarden_reconcile_errors_total",
                "Failed reconciles by controller and reason",
                &["controller", "reason"],
            ),
            reconcile_duration: registered(&registry, reconcile_duration),
            github_requests: counter_vec(
                &registry,
                "hookwarden_github_requests_total",
                "Calls to GitHub's REST API by endpoint and status",
                &["endpoint", "status"],
            ),
            github_rate_limit_remaining: gauge_vec(
                &registry,
                "hookwarden_github_rate_limit_remaining",
                "GitHub rate-limit budget left, by account",
                &["account"],
            ),
            redeliveries: counter_vec(
                &registry,
                "hookwarden_redeliveries_total",
                "Failed deliveries recovered, by namespace and way (fetched or redelivered)",
                &["namespace", "way"],
            ),
            recovery_pending_age: gauge_vec(
                &registry,
                "hookwarden_recovery_pending_age_seconds",
                "Age of the oldest failed delivery not recovered yet, by WebhookConfig",
                &["namespace", "name"],
            ),
            leader: registered(&registry, leader),
            registry,
        }
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}
