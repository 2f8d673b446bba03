//! `WebhookConfig`: a GitHub webhook on a repository or an organization, or
//! one on each of a list of repositories.
//!
//! Over 400 lines: the resource's spec and status types, documented field by
//! field (the CRD, `kubectl explain` and docs/crd-reference.md are generated
//! from these comments), and their CEL rules.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{DNS_SUBDOMAIN, Duration, SecretKeyRef, events};

/// `owner/name`, as GitHub allows them (owner: letters, digits, single
/// hyphens, 39 characters at most; name: letters, digits, `.`, `-`, `_`).
pub const REPOSITORY_PATTERN: &str = r"^[A-Za-z0-9](-?[A-Za-z0-9]){0,38}/[A-Za-z0-9._-]{1,100}$";
/// A GitHub organization login.
pub const ORGANIZATION_PATTERN: &str = r"^[A-Za-z0-9](-?[A-Za-z0-9]){0,38}$";
/// Repositories one WebhookConfig may list.
pub const MAX_REPOSITORIES: usize = 100;
/// GitHub.com's REST API; GitHub Enterprise Server lives at `https://HOST/api/v3`.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// A GitHub webhook on one repository or organization, registered and kept in
/// shape by the hookwarden operator, with its HMAC secret held in a Kubernetes
/// Secret and rotated without rejecting a delivery.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hookwarden.io",
    version = "v1alpha1",
    kind = "WebhookConfig",
    plural = "webhookconfigs",
    shortname = "whc",
    category = "hookwarden",
    namespaced,
    status = "WebhookConfigStatus",
    doc = "A GitHub webhook on a repository or organization, managed by hookwarden.",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Repository","type":"string","jsonPath":".spec.repository"}"#,
    printcolumn = r#"{"name":"Organization","type":"string","jsonPath":".spec.organization"}"#,
    printcolumn = r#"{"name":"Hook ID","type":"integer","jsonPath":".status.hookId"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.repository), has(self.organization), has(self.repositories)].filter(x, x).size() == 1"
).message("exactly one of repository, organization or repositories must be set"))]
#[x_kube(validation = kube::core::Rule::new("has(self.repositories) == has(oldSelf.repositories)")
    .message("repositories cannot be added to or removed from a WebhookConfig made for one repository or organization (or the other way): create another WebhookConfig"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.repositories) || (self.github.apiUrl == oldSelf.github.apiUrl && has(self.github.connection) == has(oldSelf.github.connection) && (!has(self.github.connection) || self.github.connection == oldSelf.github.connection))"
).message("a WebhookConfig with repositories keeps its GitHub API URL and connection: create another WebhookConfig for another GitHub"))]
#[serde(rename_all = "camelCase")]
pub struct WebhookConfigSpec {
    /// Repository that owns the hook, as `owner/name`. Exactly one of
    /// `repository`, `organization` and `repositories` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = REPOSITORY_PATTERN, "maxLength" = 140))]
    pub repository: Option<String>,

    /// Organization that owns the hook (an organization webhook sees events of
    /// every repository in it). Exactly one of `repository`, `organization`
    /// and `repositories` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = ORGANIZATION_PATTERN, "maxLength" = 39))]
    pub organization: Option<String>,

    /// Many repositories (`owner/name`), a hook on each, all delivering to
    /// this WebhookConfig's URL, signed with its one key Secret and rotated
    /// together. Hooks are added and removed as the list changes (removed
    /// ones are deleted from GitHub), one mutation at a time. `status.repositories`
    /// shows each one. Set from creation on; the API URL and connection stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<String>", extend(
        "minItems" = 1,
        "maxItems" = MAX_REPOSITORIES,
        "x-kubernetes-list-type" = "set",
        "items" = {"type": "string", "pattern": REPOSITORY_PATTERN, "maxLength": 140}
    ))]
    pub repositories: Option<Vec<String>>,

    /// GitHub events the hook subscribes to, by their `X-GitHub-Event` name
    /// (`push`, `pull_request`, ...), or `["*"]` for every event. GitHub's own
    /// default is `["push"]`.
    #[serde(default = "default_events")]
    #[schemars(schema_with = "events::event_list", extend("minItems" = 1))]
    #[x_kube(validation = kube::core::Rule::new("!('*' in self) || size(self) == 1")
        .message("'*' already means every event; list it alone"))]
    pub events: Vec<String>,

    /// Public URL GitHub delivers to. Defaults to the receiver's configured
    /// public base URL followed by `/hooks/{namespace}/{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = r"^https?://[^\s/$.?#][^\s]*$", "maxLength" = 2048))]
    pub url: Option<String>,

    /// Payload encoding GitHub uses: `json` (application/json) or `form`
    /// (application/x-www-form-urlencoded with a `payload` field). hookwarden
    /// always sends it explicitly, because GitHub's own default is `form`.
    #[serde(default)]
    pub content_type: ContentType,

    /// Whether GitHub sends deliveries to the hook. `false` keeps the hook
    /// registered but silent.
    #[serde(default = "default_true")]
    pub active: bool,

    /// How the operator authenticates to GitHub, and which GitHub it talks to.
    pub github: GitHubSpec,

    /// Automatic rotation of the hook's HMAC secret: a new key is added to
    /// the Secret beside the old one, receivers load it, GitHub is switched to
    /// it and confirmed by a ping, and the old key is dropped after `overlap`.
    /// No delivery is rejected along the way.
    #[serde(default)]
    pub secret_rotation: SecretRotation,

    /// Name of the Secret holding the hook's HMAC keys. Defaults to
    /// `{name}-hmac`. The operator creates and owns it; do not share it between
    /// WebhookConfigs. A Secret of that name that the operator did not make
    /// for this WebhookConfig is never changed (Ready=False SecretConflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = DNS_SUBDOMAIN, "maxLength" = 253))]
    pub secret_name: Option<String>,

    /// Name of the AgentPolicy, in the same namespace, whose agents receive
    /// this hook's events.
    #[serde(default = "default_agent_policy")]
    #[schemars(extend("pattern" = DNS_SUBDOMAIN, "maxLength" = 253))]
    pub agent_policy: String,
}

/// Payload encoding of deliveries.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    #[default]
    Json,
    Form,
}

impl ContentType {
    /// The value GitHub's `config.content_type` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Form => "form",
        }
    }
}

/// Credentials and endpoint for the GitHub REST API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.tokenSecretRef), has(self.app), has(self.connection)].filter(x, x).size() == 1"
).message("exactly one of tokenSecretRef, app or connection must be set"))]
#[serde(rename_all = "camelCase")]
pub struct GitHubSpec {
    /// Secret key holding a personal access token: classic with the
    /// `admin:repo_hook` (or `admin:org_hook`) scope, or fine-grained with
    /// "Webhooks: read and write" permission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,

    /// Authenticate as a GitHub App installation instead of with a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<GitHubApp>,

    /// Name of a GitHubConnection (cluster-scoped, the platform team's)
    /// whose endpoint and credential to use, where one of its grants names
    /// this namespace and the hook's repository or organization; `apiUrl`
    /// is then the connection's, and this one is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = DNS_SUBDOMAIN, "maxLength" = 253))]
    pub connection: Option<String>,

    /// Base URL of the GitHub REST API. Set it for GitHub Enterprise Server
    /// (`https://HOST/api/v3`). Only URLs the platform allows (the
    /// operator's `--github-api-url`) are called.
    #[serde(default = "default_api_url")]
    #[schemars(extend("pattern" = r"^https?://[^\s]+$", "maxLength" = 2048))]
    pub api_url: String,
}

/// A GitHub App installation whose tokens manage the hook.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitHubApp {
    /// The App's numeric ID (App settings → About).
    #[schemars(range(min = 1))]
    pub app_id: i64,
    /// The installation's numeric ID on the repository's owner or organization.
    #[schemars(range(min = 1))]
    pub installation_id: i64,
    /// Secret key holding the App's PEM-encoded RSA private key.
    pub private_key_secret_ref: SecretKeyRef,
}

/// When the HMAC secret is replaced (see `WebhookConfigSpec::secret_rotation`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("duration(self.interval) >= duration('1m')")
    .message("interval must be at least 1m"))]
#[x_kube(validation = kube::core::Rule::new("duration(self.overlap) < duration(self.interval)")
    .message("overlap must be shorter than interval"))]
#[serde(rename_all = "camelCase")]
pub struct SecretRotation {
    /// Time between rotations, as a duration such as `720h` (30 days) or
    /// `1h30m` (units: ms, s, m, h). At least `1m`.
    #[serde(default = "default_rotation_interval")]
    pub interval: Duration,
    /// How long the previous key stays valid after GitHub has switched to the
    /// new one, as a duration such as `10m`. Shorter than `interval`.
    #[serde(default = "default_rotation_overlap")]
    pub overlap: Duration,
}

impl Default for SecretRotation {
    fn default() -> Self {
        Self { interval: default_rotation_interval(), overlap: default_rotation_overlap() }
    }
}

/// Observed state of a WebhookConfig, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookConfigStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// GitHub's ID of the registered hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_id: Option<i64>,

    /// The URL the hook delivers to, as registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Name of the Secret holding the HMAC keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// Version of the key GitHub signs deliveries with (data entry
    /// `key-<version>` of the Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_version: Option<String>,

    /// Version of the newest key whose switch a successful ping delivery
    /// confirmed. Older keys leave the Secret `overlap` after the switch, and
    /// only once it is confirmed. (A new hook's first key needs no confirming.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_key_version: Option<String>,

    /// When GitHub last switched to a new secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,

    /// The value of the `hookwarden.io/rotate` annotation last acted on:
    /// setting the annotation to any other value rotates the secret now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_request: Option<String>,

    /// The most recent delivery GitHub reports for the hook, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<DeliverySummary>,

    /// GitHub's REST rate-limit budget as last seen by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitStatus>,

    /// How far the recovery of failed deliveries has got: what it has read
    /// and settled, and what is still pending. Kept here so a restarted or
    /// newly elected operator goes on where the last one stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryStatus>,

    /// Where the hook `hookId` was registered: its repository or
    /// organization and the `github` settings (credentials by reference).
    /// When the spec names another place, a hook is registered there and
    /// this one goes to `previousHooks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<HookLocation>,

    /// Hooks registered for an earlier repository, organization, API URL
    /// or credentials, to be deleted now that the new one is registered (and
    /// why the last try failed). Deleting the WebhookConfig deletes them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("maxItems" = 16))]
    pub previous_hooks: Vec<PreviousHook>,

    /// One entry per hook of `spec.repositories` (and per removed repository
    /// whose hook is still being deleted). The fields above that describe one
    /// hook (`hookId`, `recovery`) are not used then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "maxItems" = 2 * MAX_REPOSITORIES,
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["repository"]
    ))]
    pub repositories: Vec<RepositoryHook>,

    /// Current state: `Ready`, `HookRegistered`, `SecretInSync`, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Where a hook lives on GitHub and what manages it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookLocation {
    /// The repository (`owner/name`) of a repository hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The organization of an organization hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// The API URL and credentials (by reference) it was registered with.
    pub github: GitHubSpec,
}

impl HookLocation {
    /// The same hook list on GitHub: the same repository or organization
    /// through the same API (credentials may differ).
    pub fn same_place(&self, other: &HookLocation) -> bool {
        (&self.repository, &self.organization, &self.github.api_url, &self.github.connection)
            == (&other.repository, &other.organization, &other.github.api_url, &other.github.connection)
    }
}

/// The hook of one repository of `spec.repositories`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryHook {
    /// `owner/name`.
    pub repository: String,
    /// GitHub's ID of its hook, once registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_id: Option<i64>,
    /// Where it stands.
    pub state: RepositoryHookState,
    /// What went wrong last, when something did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The key version this hook was last set to sign with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_version: Option<String>,
    /// The newest key version a successful ping of this hook confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_key_version: Option<String>,
    /// The most recent delivery GitHub reports for this hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<DeliverySummary>,
    /// Recovery of this hook's failed deliveries (see `status.recovery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryStatus>,
}

/// Where the hook of one of `spec.repositories` stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum RepositoryHookState {
    /// Listed, not registered yet (GitHub's mutations are paced).
    #[default]
    Registering,
    /// Registered as the spec asks.
    Registered,
    /// GitHub refused or failed; `message` says why. Tried again.
    Failed,
    /// No longer listed: its hook is being deleted.
    Deleting,
}

/// A hook of an earlier location, still to be deleted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousHook {
    /// GitHub's ID of the hook.
    pub id: i64,
    /// Where it is, and what manages it.
    pub location: HookLocation,
    /// Why the last deletion failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A summary of one delivery as GitHub recorded it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySummary {
    /// The `X-GitHub-Delivery` GUID.
    pub guid: String,
    /// The event name.
    pub event: String,
    /// HTTP status the receiver answered (0 when it could not be reached).
    pub status_code: i32,
    /// When GitHub delivered it.
    pub delivered_at: Time,
}

/// Where the recovery of failed deliveries stands. GitHub lists a hook's
/// deliveries newest first; the operator reads them down to
/// `settledThrough` and recovers each one that has no successful attempt.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryStatus {
    /// ID of a delivery such that every delivery up to it has been read and
    /// either succeeded or been recovered.
    #[serde(default)]
    pub settled_through: i64,
    /// When GitHub made delivery `settledThrough`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_through_time: Option<Time>,
    /// A read of the deliveries newer than `settledThrough` that is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<RecoveryScan>,
    /// Failed deliveries read and not recovered yet (a recovery failed; it is
    /// tried again with backoff).
    #[serde(default)]
    pub pending: i64,
    /// No failed delivery that is still to be recovered is older than this
    /// (set while deliveries are pending or not yet read). GitHub keeps
    /// deliveries for 3 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_pending_time: Option<Time>,
    /// Why the last pass stopped early, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A read under way: from the newest delivery at its start, down the pages.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryScan {
    /// ID of the newest delivery when the read started: `settledThrough` once it is done.
    pub from: i64,
    /// When GitHub made delivery `from`.
    pub from_time: Time,
    /// GitHub's cursor of the next (older) page to read.
    pub cursor: String,
}

/// GitHub's rate-limit headers from the operator's latest call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitStatus {
    /// `x-ratelimit-limit`: requests allowed per window.
    pub limit: i64,
    /// `x-ratelimit-remaining`: requests left in the window.
    pub remaining: i64,
    /// `x-ratelimit-reset`: when the window resets.
    pub reset_time: Time,
}

fn default_events() -> Vec<String> {
    vec!["push".to_owned()]
}
fn default_true() -> bool {
    true
}
pub(super) fn default_api_url() -> String {
    DEFAULT_API_URL.to_owned()
}
fn default_agent_policy() -> String {
    "default".to_owned()
}
fn default_rotation_interval() -> Duration {
    "720h".parse().expect("valid literal")
}
fn default_rotation_overlap() -> Duration {
    "10m".parse().expect("valid literal")
}

/// Annotation that asks for a rotation now: set it to a new value (for
/// example the current time) and the operator rotates once.
pub const ROTATE_ANNOTATION: &str = "hookwarden.io/rotate";

impl WebhookConfig {
    /// Name of the Secret holding the hook's keys: as recorded in status,
    /// else as asked in spec, else `{name}-hmac`.
    pub fn secret_name(&self) -> String {
        self.status
            .as_ref()
            .and_then(|s| s.secret_name.clone())
            .or_else(|| self.spec.secret_name.clone())
            .unwrap_or_else(|| format!("{}-hmac", kube::ResourceExt::name_any(self)))
    }

    /// Where the spec puts the hook.
    pub fn location(&self) -> HookLocation {
        HookLocation {
            repository: self.spec.repository.clone(),
            organization: self.spec.organization.clone(),
            github: self.spec.github.clone(),
        }
    }

    /// This WebhookConfig as it was when its hook was at `location`: what
    /// reaching that hook (credentials, target) is worked out from.
    pub fn at(&self, location: &HookLocation) -> WebhookConfig {
        let mut then = self.clone();
        then.spec.repository = location.repository.clone();
        then.spec.organization = location.organization.clone();
        then.spec.github = location.github.clone();
        then
    }
}
