//! `AgentPolicy`: where events go, how hard, and the kill switch.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{Duration, events};

/// Which downstream agents receive the events of the WebhookConfigs that name
/// this policy, and how dispatch behaves. Receivers obey the policy's
/// **status** (written by the operator from this spec), never the spec itself.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hookwarden.io",
    version = "v1alpha1",
    kind = "AgentPolicy",
    plural = "agentpolicies",
    shortname = "ap",
    category = "hookwarden",
    namespaced,
    status = "AgentPolicyStatus",
    doc = "Where a WebhookConfig's events are dispatched, and the kill switch that stops them.",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Enabled","type":"boolean","jsonPath":".status.enabled"}"#,
    printcolumn = r#"{"name":"Concurrency","type":"integer","jsonPath":".status.concurrency"}"#,
    printcolumn = r#"{"name":"Queue Limit","type":"integer","jsonPath":".status.queueLimit","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentPolicySpec {
    /// The kill switch. `false`: receivers keep accepting and queuing
    /// deliveries but dispatch nothing; set it back to `true` and they drain
    /// the queue. Takes effect within a second.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Calls in flight at once to each agent, per receiver replica (each
    /// agent has a lane of its own; an agent's `concurrency` bounds it across
    /// replicas too). Changes apply live.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: i32,

    /// Deliveries allowed to wait, queued or for a retry, before receivers
    /// answer GitHub with 503 and `Retry-After` instead of accepting more;
    /// the same bound holds for dead letters (replay or purge them to accept
    /// again). Nothing is dropped: the operator's recovery brings refused
    /// deliveries back once there is room.
    #[serde(default = "default_queue_limit")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub queue_limit: i64,

    /// A CEL filter every delivery passes before any agent's own (see an
    /// agent's `filter`): `event != 'check_run'`. Unset: all pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 4096))]
    pub filter: Option<String>,

    /// Downstream agents. Each event goes to every agent whose filters match.
    #[serde(default)]
    #[schemars(extend("maxItems" = 64, "x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub agents: Vec<Agent>,

    /// Per-agent circuit breaker: stop calling an agent that keeps failing,
    /// then probe it once before closing again.
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,

    /// Retries of a failed dispatch before it goes to the dead-letter stream.
    #[serde(default)]
    pub retry: RetryPolicy,

    /// Rules by which the operator trips the kill switch on its own.
    #[serde(default)]
    pub safety: Safety,

    /// How long every delivery is kept for `hookwarden admin replay --since`
    /// (a window replayed to one agent or all, a new agent backfilled), as a
    /// duration such as `24h`; at most `168h`. Unset: none is kept. It costs
    /// Redis memory: a delivery's compressed payload for as long (a 21 KB
    /// pull_request: about 5 KB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("duration(self) <= duration('168h')")
        .message("history is kept at most 168h"))]
    pub history: Option<Duration>,
    /// Events of GitHub Apps' own webhooks this policy asks for: each names
    /// an `AppWebhook` and the repositories (`owner/name` or globs such as
    /// `acme/*`) whose events it wants. It gets only those its namespace is
    /// granted by the AppWebhook's GitHubConnection (`status.appWebhooks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("maxItems" = 16))]
    pub app_webhooks: Vec<AppWebhookAsk>,
}

/// Events of one App's own webhook that a policy asks for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppWebhookAsk {
    /// Name of the AppWebhook.
    #[schemars(extend("pattern" = super::DNS_SUBDOMAIN, "maxLength" = 253))]
    pub name: String,
    /// Repositories as `owner/name` or globs (`acme/*`), compared without
    /// regard to case.
    #[schemars(extend("minItems" = 1, "maxItems" = 256, "items" = {"type": "string", "pattern": r"^[-._/*A-Za-z0-9]+$", "maxLength": 140}))]
    pub repositories: Vec<String>,
}

/// What a policy gets of one App's own webhook (written by the operator):
/// a delivery about repository R is queued for the policy when R matches
/// one of `repositories` (asked) and one of `granted` (what the
/// connection's grants allow the policy's namespace).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppWebhookRoute {
    /// Name of the AppWebhook.
    pub name: String,
    /// The repositories the policy asks for (`spec.appWebhooks`).
    pub repositories: Vec<String>,
    /// The repository globs the AppWebhook's connection grants the policy's namespace.
    pub granted: Vec<String>,
}

impl AppWebhookRoute {
    /// Is a delivery about `repository` this policy's?
    pub fn routes(&self, repository: &str) -> bool {
        let any = |globs: &[String]| globs.iter().any(|g| super::repository_glob(g, repository));
        any(&self.repositories) && any(&self.granted)
    }

    /// Do `routes` (a policy's status) take a delivery of AppWebhook `name`
    /// about `repository`? One about no repository goes to nobody.
    pub fn any_takes(routes: &[Self], name: &str, repository: Option<&str>) -> bool {
        repository.is_some_and(|repository| routes.iter().any(|r| r.name == name && r.routes(repository)))
    }
}

/// Automatic safety rules. A tripped rule shows in `status.reason`, the
/// `Dispatching` condition and an Event; it clears when its cause is gone
/// (dead letters replayed or purged) or its limit is raised in spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Safety {
    /// Stop dispatching while more than this many dead letters wait for the
    /// policy: agents that keep failing should be looked at, not hammered.
    /// Unset: no limit. Needs the operator to reach Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_dead_letters: Option<i64>,
}

/// One downstream HTTP endpoint that receives events as CloudEvents.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// Unique name of the agent within the policy (an RFC 1123 label); used
    /// in metrics, logs and the admin API.
    #[schemars(extend("pattern" = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength" = 63))]
    pub name: String,

    /// This agent's own switch. `false`: its deliveries wait in its lane
    /// while the policy's other agents go on; set it back to `true` and it
    /// catches up. The policy's `enabled` stops every agent.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// URL the CloudEvent is POSTed to.
    #[schemars(extend("pattern" = r"^https?://[^\s/$.?#][^\s]*$", "maxLength" = 2048))]
    pub url: String,

    /// Events the agent wants, by `X-GitHub-Event` name; empty or `*` means
    /// every event.
    #[serde(default)]
    #[schemars(schema_with = "events::event_list")]
    pub events: Vec<String>,

    /// Repositories the agent wants, as `owner/name` or `owner/*`; empty
    /// means every repository.
    #[serde(default)]
    #[schemars(extend(
        "maxItems" = 256,
        "x-kubernetes-list-type" = "set",
        "items" = {"type": "string", "maxLength": 140,
                   "pattern": r"^[A-Za-z0-9](-?[A-Za-z0-9]){0,38}/([A-Za-z0-9._-]{1,100}|\*)$"}
    ))]
    pub repositories: Vec<String>,

    /// A CEL expression, true for the deliveries the agent wants, over
    /// `event`, `action`, `delivery` (the GUID), `hook` (`namespace/name`),
    /// `repository` (`owner/name` or null) and `body` (the payload):
    /// `body.pull_request.base.ref == 'main' && !body.pull_request.draft`.
    /// Applied after `events` and `repositories`. A filter that fails on a
    /// delivery (a missing field) counts as no match; both are counted and
    /// logged as `filtered`. One that does not compile makes the policy
    /// `Ready=False` with where and why, and receivers keep the last one
    /// that did (none yet: the agent gets nothing until it compiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 4096))]
    pub filter: Option<String>,

    /// Seconds to wait for the agent's answer before counting the attempt as
    /// failed.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: i32,

    /// Sign every call with Standard Webhooks headers (`webhook-id` = the
    /// delivery GUID, `webhook-timestamp`, `webhook-signature`). Every value
    /// of this Secret that is a `whsec_<base64>` key signs, so an agent
    /// accepts the call with either key while one is rotated. The Secret
    /// must carry the label `hookwarden.io/agent-signing: "true"` (receivers
    /// watch only such Secrets). Until its keys are loaded, calls to the
    /// agent fail and are retried: nothing is ever sent unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_ref: Option<super::SecretRef>,

    /// Credentials for the agent: every entry of this Secret (in the
    /// policy's namespace) is sent as a request header, the entry's name as
    /// the header's (`Authorization: Bearer …`, `X-Api-Key: …`). Changes
    /// apply live; values are never logged. The Secret must carry the label
    /// `hookwarden.io/agent-headers: "true"` (receivers watch only such
    /// Secrets). Entries that are not valid headers, or that name a header
    /// hookwarden sets itself (`content-type`, `ce-*`, `webhook-*`,
    /// `traceparent`, hop-by-hop headers), are skipped with a warning that
    /// names the entry. Until the Secret is loaded, calls to the agent fail
    /// and are retried: nothing is sent without its credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<super::SecretRef>,

    /// Calls to this agent in flight at once across every receiver replica
    /// (held in Redis; a replica that dies frees its calls after the agent's
    /// timeout). Unset: only the policy's per-replica `concurrency` bounds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub concurrency: Option<i32>,

    /// Calls to this agent per second or minute across every receiver
    /// replica, with a burst: after a quiet spell `burst` calls go at once,
    /// then one every `1/requestsPerUnit` of the unit (GCRA, held in Redis).
    /// Unset: no rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// A rate of calls, held across replicas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Calls allowed per `unit`.
    #[schemars(range(min = 1, max = 100_000))]
    pub requests_per_unit: i32,
    /// `Second` or `Minute`.
    #[serde(default)]
    pub unit: RateUnit,
    /// Calls that may go at once after the agent was idle (at least 1).
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 100_000))]
    pub burst: i32,
}

fn default_burst() -> i32 {
    1
}

/// The unit of a [`RateLimit`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum RateUnit {
    #[default]
    Second,
    Minute,
}

impl RateLimit {
    /// Microseconds between two calls at the steady rate.
    pub fn interval_us(&self) -> u64 {
        let unit_us: u64 = match self.unit {
            RateUnit::Second => 1_000_000,
            RateUnit::Minute => 60_000_000,
        };
        unit_us / self.requests_per_unit.max(1) as u64
    }
}

/// Circuit-breaker settings, applied to each agent separately.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Percentage of failed calls within the window that opens the circuit.
    #[serde(default = "default_error_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub error_threshold_percent: i32,
    /// Calls needed within the window before the percentage is judged.
    #[serde(default = "default_volume_threshold")]
    #[schemars(range(min = 1, max = 10_000))]
    pub volume_threshold: i32,
    /// Length of the rolling window, in seconds.
    #[serde(default = "default_window_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub window_seconds: i32,
    /// Seconds an open circuit waits before letting one probe call through
    /// (half-open).
    #[serde(default = "default_reset_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub reset_timeout_seconds: i32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            error_threshold_percent: default_error_threshold(),
            volume_threshold: default_volume_threshold(),
            window_seconds: default_window_seconds(),
            reset_timeout_seconds: default_reset_timeout_seconds(),
        }
    }
}

/// How the delay between attempts grows.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetryStrategy {
    #[default]
    Exponential,
    Linear,
    Fixed,
    Fibonacci,
}

/// Retry settings for a failed dispatch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("duration(self.initialDelay) <= duration(self.maxDelay)")
    .message("initialDelay must not exceed maxDelay"))]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Growth of the delay: `exponential` (doubles), `linear` (adds
    /// `initialDelay`), `fixed`, or `fibonacci`. Jitter is always added.
    #[serde(default)]
    pub strategy: RetryStrategy,
    /// Attempts in all, the first included, before the event is dead-lettered.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: i32,
    /// Delay before the first retry, as a duration such as `1s` or `500ms`.
    #[serde(default = "default_initial_delay")]
    pub initial_delay: Duration,
    /// Upper bound on any delay, as a duration such as `5m`.
    #[serde(default = "default_max_delay")]
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            strategy: RetryStrategy::default(),
            max_attempts: default_max_attempts(),
            initial_delay: default_initial_delay(),
            max_delay: default_max_delay(),
        }
    }
}

/// The effective settings receivers obey, written by the operator from the
/// spec (validated and clamped) or by a safety rule that tripped the switch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Whether receivers dispatch. May be `false` while the spec says `true`
    /// when a safety rule tripped the switch; `reason` says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Dispatches in flight per receiver replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i32>,
    /// Deliveries allowed to wait (queued or for a retry), and dead letters
    /// kept, before receivers answer 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_limit: Option<i64>,
    /// The policy's filter receivers apply: the spec's once it compiled,
    /// else the last one that did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 4096))]
    pub filter: Option<String>,
    /// Each agent's filter receivers apply, by agent name: the spec's once
    /// it compiled, else the last one that did (`false` when none has).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 4096}))]
    pub agent_filters: std::collections::BTreeMap<String, String>,
    /// Why the effective values are what they are, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The App webhooks' events this policy gets: each of
    /// `spec.appWebhooks` the grants allow (see `AppWebhookRoute`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_webhooks: Vec<AppWebhookRoute>,
    /// Current state: `Ready`, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

fn default_true() -> bool {
    true
}
fn default_concurrency() -> i32 {
    4
}
fn default_queue_limit() -> i64 {
    DEFAULT_QUEUE_LIMIT as i64
}

/// Queue limit used while a hook's AgentPolicy is unknown or has no status.
pub const DEFAULT_QUEUE_LIMIT: u64 = 10_000;

impl AgentPolicy {
    /// The queue limit receivers and the operator obey: the status's (the
    /// operator is its one writer), else [`DEFAULT_QUEUE_LIMIT`].
    pub fn effective_queue_limit(&self) -> u64 {
        self.status.as_ref().and_then(|s| s.queue_limit).map_or(DEFAULT_QUEUE_LIMIT, |l| l.max(1) as u64)
    }
}
fn default_timeout_seconds() -> i32 {
    10
}
fn default_error_threshold() -> i32 {
    50
}
fn default_volume_threshold() -> i32 {
    10
}
fn default_window_seconds() -> i32 {
    60
}
fn default_reset_timeout_seconds() -> i32 {
    30
}
fn default_max_attempts() -> i32 {
    5
}
fn default_initial_delay() -> Duration {
    "1s".parse().expect("valid literal")
}
fn default_max_delay() -> Duration {
    "5m".parse().expect("valid literal")
}
