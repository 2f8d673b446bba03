//! Publishes GitHub's hook source ranges (`GET /meta`, see
//! [`crate::github::meta`]) for the receivers' optional allowlist: every
//! `refresh`, for each GitHub API URL the WebhookConfigs use that the
//! platform allows (`--github-api-url`: a team's own server must not widen
//! every team's allowlist) and each GitHubConnection's, a conditional
//! GET (an unchanged answer is a free 304), then the union into the
//! ConfigMap when it changed. A failed read keeps the last known ranges of
//! that URL; a URL no longer used is dropped.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};

use super::FIELD_MANAGER;
use crate::{
    api::{GitHubConnection, WebhookConfig},
    github::{endpoints::AllowedApis, meta},
};

/// Where and how often.
#[derive(Clone, Debug)]
pub struct MetaConfig {
    /// Namespace and name of the ConfigMap (the release namespace).
    pub namespace: String,
    pub configmap: String,
    pub refresh: Duration,
}

/// Runs until dropped (the operator aborts it when it stops leading).
pub async fn run(client: Client, watch_namespace: Option<String>, allowed: AllowedApis, config: MetaConfig) {
    let hooks = crate::scoped_api::<WebhookConfig>(&client, watch_namespace.as_deref());
    let connections: Api<GitHubConnection> = Api::all(client.clone());
    let configmaps: Api<ConfigMap> = Api::namespaced(client, &config.namespace);
    let http = crate::github::http_client();
    let mut etags: HashMap<String, String> = HashMap::new();
    let mut known: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
    let mut published = None;
    loop {
        match hooks.list(&ListParams::default()).await {
            Ok(list) => {
                // NB: only allowed URLs: a tenant's own server must not
                // widen every team's allowlist.
                let mut urls = meta::api_urls(&list.items);
                urls.retain(|url| allowed.allows(url));
                // The platform's own connections count as allowed.
                match connections.list(&ListParams::default()).await {
                    Ok(list) => urls
                        .extend(list.items.iter().map(|c| c.spec.api_url.trim_end_matches('/').to_owned())),
                    Err(error) => {
                        tracing::warn!(%error, "cannot list GitHubConnections for GitHub's hook ranges")
                    }
                }
                known.retain(|url, _| urls.contains(url));
                etags.retain(|url, _| urls.contains(url));
                for url in urls {
                    match meta::fetch(&http, &url, etags.get(&url).map(String::as_str)).await {
                        Ok(Some(fetched)) => {
                            tracing::info!(api_url = %url, ranges = fetched.hooks.len(), "GitHub's hook ranges read");
                            known.insert(url.clone(), fetched.hooks);
                            match fetched.etag {
                                Some(etag) => etags.insert(url, etag),
                                None => etags.remove(&url),
                            };
                        }
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(api_url = %url, %error, "cannot read GitHub's hook ranges; keeping the last known")
                        }
                    }
                }
                let data = meta::render(&known);
                if published.as_ref() != Some(&data) {
                    let patch = serde_json::json!({
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": config.configmap}, "data": data,
                    });
                    let params = PatchParams::apply(FIELD_MANAGER).force();
                    match configmaps.patch(&config.configmap, &params, &Patch::Apply(&patch)).await {
                        Ok(_) => {
                            tracing::info!(configmap = %config.configmap, "hook ranges published");
                            published = Some(data);
                        }
                        Err(error) => {
                            tracing::warn!(configmap = %config.configmap, %error, "cannot publish hook ranges")
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list WebhookConfigs for GitHub's hook ranges"),
        }
        tokio::time::sleep(config.refresh).await;
    }
}
