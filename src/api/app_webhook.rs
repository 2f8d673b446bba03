//! `AppWebhook`: a GitHub App's own webhook, which receives the events of
//! every installation of the App (GitHub's `/app/hook/config`). Cluster-scoped
//! and owned by the platform team, like the GitHubConnection it names; teams
//! ask for its events in their AgentPolicies (`spec.appWebhooks`) and get
//! those the connection's grants allow their namespace.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{DeliverySummary, RecoveryStatus, SecretRotation};

/// Where GitHub delivers the events of every installation of an App, and
/// the key it signs them with.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hookwarden.io",
    version = "v1alpha1",
    kind = "AppWebhook",
    plural = "appwebhooks",
    shortname = "awh",
    category = "hookwarden",
    status = "AppWebhookStatus",
    doc = "A GitHub App's own webhook: the events of every installation, routed to the AgentPolicies that ask for them and are granted them.",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Connection","type":"string","jsonPath":".spec.connection"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AppWebhookSpec {
    /// The GitHubConnection whose `app` this is; its grants say which
    /// namespaces get the events of which repositories.
    #[schemars(extend("pattern" = super::DNS_SUBDOMAIN, "maxLength" = 253))]
    pub connection: String,
    /// Where GitHub delivers; default `{public base URL}/app-hooks/{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = r"^https?://[^\s]+$", "maxLength" = 2048))]
    pub url: Option<String>,
    /// When the HMAC secret is replaced (as for a WebhookConfig).
    #[serde(default)]
    pub secret_rotation: SecretRotation,
}

/// Observed state of an AppWebhook, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppWebhookStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The URL GitHub delivers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The Secret with the keys, `namespace/name` (where receivers read them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret: Option<String>,
    /// The key version GitHub signs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_version: Option<String>,
    /// The version a successful delivery after the switch confirmed (an
    /// App's webhook cannot be pinged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_key_version: Option<String>,
    /// When GitHub was switched to `signingKeyVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,
    /// The last `hookwarden.io/rotate` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_request: Option<String>,
    /// GitHub's latest delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<DeliverySummary>,
    /// Recovery of failed deliveries, as for a hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryStatus>,
    /// Current state: `Ready`, `SecretInSync`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The namespace part of the hook reference an App's webhook deliveries
/// carry (`@app/{name}`): no Kubernetes namespace can be called so, so it
/// never stands for a WebhookConfig.
pub const APP_HOOK_NAMESPACE: &str = "@app";

/// The hook reference of AppWebhook `name`'s deliveries.
pub fn app_hook_ref(name: &str) -> crate::ObjectRef {
    crate::ObjectRef::new(APP_HOOK_NAMESPACE, name)
}
