//! Tells the operator what this replica can verify: a Lease of its own,
//! renewed every few seconds and at once when keys change, whose annotation
//! lists the key versions it has loaded (see [`crate::keys::replicas_missing`]).
//! Removed on graceful shutdown; a crashed replica's Lease goes stale, and
//! goes with its pod (the Lease names the pod as owner).

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::registry::Registry;
use crate::keys::{LOADED_KEYS_ANNOTATION, MANAGED_BY, RECEIVER_COMPONENT, RECEIVER_LEASE_SECONDS};

/// Field manager of what receivers write.
pub const FIELD_MANAGER: &str = "hookwarden-receiver";
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// The Lease name of replica `replica`: an RFC 1123 subdomain.
pub fn lease_name(replica: &str) -> String {
    let clean: String = replica
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
        .collect();
    let name = format!("hookwarden-receiver-{}", clean.trim_matches(|c| c == '-' || c == '.'));
    name.chars().take(253).collect::<String>().trim_end_matches(['-', '.']).to_owned()
}

/// Keeps this replica's Lease current until `shutdown`, then deletes it.
pub async fn run(
    client: Client,
    namespace: String,
    replica: String,
    pod: Option<crate::PodRef>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let name = lease_name(&replica);
    let mut changes = registry.watch_key_set();
    let owners: Vec<_> = pod.iter().map(crate::PodRef::owner_reference).collect();
    loop {
        let loaded = serde_json::to_string(&registry.loaded_key_versions()).expect("serialisable");
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "labels": { MANAGED_BY.0: MANAGED_BY.1, "app.kubernetes.io/component": RECEIVER_COMPONENT },
                "annotations": { LOADED_KEYS_ANNOTATION: loaded },
                "ownerReferences": owners,
            },
            "spec": {
                "holderIdentity": replica,
                "leaseDurationSeconds": RECEIVER_LEASE_SECONDS,
                "renewTime": MicroTime(Timestamp::now()),
            },
        });
        if let Err(error) =
            api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&lease)).await
        {
            tracing::warn!(lease = %name, %namespace, %error, "could not report loaded keys");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
    }
    if let Err(error) = api.delete(&name, &DeleteParams::default()).await {
        tracing::warn!(lease = %name, %error, "could not remove this replica's lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_object_names() {
        assert_eq!(
            lease_name("hookwarden-receiver-7d9f-abcde"),
            "hookwarden-receiver-hookwarden-receiver-7d9f-abcde"
        );
        assert_eq!(lease_name("Host_Name.local"), "hookwarden-receiver-host-name.local");
        assert_eq!(lease_name("--"), "hookwarden-receiver");
        assert!(lease_name(&"x".repeat(400)).len() <= 253);
    }
}
