//! The Secrets a WebhookConfig reads (GitHub credentials) and the one it
//! owns (the hook's HMAC keys, laid out by [`crate::keys`]).

use k8s_openapi::{ByteString, api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};

use super::ConfigError;
use crate::{
    api::{GitHubApp, GitHubConnection, SecretKeyRef, Use, WebhookConfig},
    github::{self, Auth, Target},
    keys::{HmacKey, MANAGED_BY, WEBHOOK_CONFIG_LABEL, keys_from_secret, labelled_key_secret},
    operator::{Context, Error, Step},
};

fn secrets_api(whc: &WebhookConfig, ctx: &Context) -> Api<Secret> {
    Api::namespaced(ctx.client.clone(), &whc.namespace().unwrap_or_default())
}

/// A data entry of a Secret in `namespace`, trimmed.
async fn secret_value(ctx: &Context, namespace: &str, r: &SecretKeyRef) -> Result<Vec<u8>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret =
        secrets.get_opt(&r.name).await.map_err(Step::ReadCredentials.error())?.ok_or_else(|| {
            ConfigError::SecretMissing { namespace: namespace.into(), name: r.name.clone() }
        })?;
    let value = secret
        .data
        .and_then(|mut d| d.remove(&r.key))
        .map(|v| v.0.trim_ascii().to_vec())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ConfigError::SecretKeyMissing { name: r.name.clone(), key: r.key.clone() })?;
    Ok(value)
}

/// A GitHub client with the WebhookConfig's credentials: its own (from its
/// namespace, for an API URL the platform allows), or a GitHubConnection's
/// (from the operator's namespace, where a grant allows it). Otherwise no
/// Secret is read and no request sent.
pub(super) async fn github_client(whc: &WebhookConfig, ctx: &Context) -> Result<github::Client, Error> {
    let ns = whc.namespace().unwrap_or_default();
    let spec = &whc.spec.github;
    if let Some(name) = &spec.connection {
        let connections: Api<GitHubConnection> = Api::all(ctx.client.clone());
        let connection = connections
            .get_opt(name)
            .await
            .map_err(Step::ReadConnection.error())?
            .ok_or(ConfigError::ConnectionMissing(name.clone()))?;
        let granted = |target: &Target| match target {
            Target::Repository(r) => connection.spec.grants(&ns, Use::Repository(r)),
            Target::Organization(o) => connection.spec.grants(&ns, Use::Organization(o)),
            Target::App => false,
        };
        // NB: every listed repository, or none: one outside the grants
        // stops the WebhookConfig before a request is sent.
        if let Some(target) = super::targets(whc).into_iter().find(|t| !granted(t)) {
            return Err(ConfigError::ConnectionNotGranted {
                connection: name.clone(),
                namespace: ns,
                target: target.to_string(),
            }
            .into());
        }
        let c = &connection.spec;
        // NB: one account for every namespace the connection serves: its
        // token, budget and pacing are the platform's, shared by design.
        let auth =
            credentials(ctx, &ctx.lease_namespace, c.token_secret_ref.as_ref(), c.app.as_ref()).await?;
        return Ok(github::Client::new(
            ctx.github.clone(),
            &c.api_url,
            auth,
            "",
            &format!("connection/{name}"),
        ));
    }
    if !ctx.allowed_apis.allows(&spec.api_url) {
        return Err(ConfigError::ApiUrlNotAllowed(github::short(&spec.api_url)).into());
    }
    let auth = credentials(ctx, &ns, spec.token_secret_ref.as_ref(), spec.app.as_ref()).await?;
    let account = match (&spec.token_secret_ref, &spec.app) {
        (Some(r), _) => format!("{ns}/{}", r.name),
        (None, Some(app)) => format!("app/{}/installation/{}", app.app_id, app.installation_id),
        (None, None) => String::new(),
    };
    Ok(github::Client::new(ctx.github.clone(), &spec.api_url, auth, &ns, &account))
}

/// A token, or an App installation's key, read from `namespace`.
pub(crate) async fn credentials(
    ctx: &Context,
    namespace: &str,
    token: Option<&SecretKeyRef>,
    app: Option<&GitHubApp>,
) -> Result<Auth, Error> {
    match (token, app) {
        (Some(r), _) => {
            let token = String::from_utf8(secret_value(ctx, namespace, r).await?)
                .map_err(|_| ConfigError::NotText { name: r.name.clone(), key: r.key.clone() })?;
            Ok(Auth::Token(token))
        }
        (None, Some(app)) => {
            let pem = secret_value(ctx, namespace, &app.private_key_secret_ref).await?;
            Ok(Auth::app(app.app_id, app.installation_id, &pem)?)
        }
        // NB: the schemas' CEL rules make this unreachable for stored objects.
        (None, None) => Err(ConfigError::NoCredentials.into()),
    }
}

/// Is `secret` the key Secret of `whc`: labelled as hookwarden's, for this
/// WebhookConfig, and controlled by it (or by nothing yet, as a Secret
/// the chart or an earlier version made)? Only such a Secret is ever
/// changed: a Secret of the same name made by someone else is theirs.
pub fn owned_by(secret: &Secret, whc: &WebhookConfig) -> bool {
    labelled_for(secret, WEBHOOK_CONFIG_LABEL, whc)
}

/// Is `secret` labelled as hookwarden's, with `label` naming `owner`, and
/// controlled by `owner` (or by nothing yet)?
fn labelled_for<K: Resource>(secret: &Secret, label: &str, owner: &K) -> bool {
    let labels = secret.metadata.labels.as_ref();
    let value = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    let controller = secret.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    value(MANAGED_BY.0) == Some(MANAGED_BY.1)
        && value(label) == Some(owner.name_any().as_str())
        && controller.is_none_or(|o| owner.meta().uid.as_deref() == Some(o.uid.as_str()))
}

/// The keys of the key Secret, oldest first; the Secret is created (with a
/// first key, versioned `now`) when missing. One of that name that is not
/// the WebhookConfig's ([`owned_by`]) is left untouched: `SecretConflict`.
pub(super) async fn ensure_keys(
    whc: &WebhookConfig,
    ctx: &Context,
    now: Timestamp,
) -> Result<Vec<HmacKey>, Error> {
    let name = whc.secret_name();
    keys_or_first(&secrets_api(whc, ctx), &name, WEBHOOK_CONFIG_LABEL, whc, now)
        .await?
        .ok_or_else(|| ConfigError::SecretConflict(name).into())
}

/// The keys of key Secret `name` of `owner` (whose name label `label`
/// carries), oldest first; the Secret is made, labelled and controlled by
/// `owner`, with a first key versioned `now` when it is missing or keyless.
/// `None`: a Secret of that name is not `owner`'s, and is left untouched.
pub(crate) async fn keys_or_first<K: Resource<DynamicType = ()>>(
    secrets: &Api<Secret>,
    name: &str,
    label: &str,
    owner: &K,
    now: Timestamp,
) -> Result<Option<Vec<HmacKey>>, Error> {
    let existing = secrets.get_opt(name).await.map_err(Step::KeySecret.error())?;
    if let Some(existing) = &existing {
        if !labelled_for(existing, label, owner) {
            return Ok(None);
        }
        let keys = keys_from_secret(existing);
        if !keys.is_empty() {
            return Ok(Some(keys));
        }
    }
    let key = HmacKey::generate(now.as_second() as u64);
    let mut secret = labelled_key_secret(name, (label, &owner.name_any()), &[&key]);
    secret.metadata.owner_references = owner.controller_owner_ref(&()).map(|o| vec![o]);
    match existing {
        None => secrets.create(&PostParams::default(), &secret).await.map_err(Step::KeySecret.error())?,
        // Ours and keyless (every key removed by hand): a first key again,
        // under the version it was read at.
        Some(s) => {
            secret.metadata.resource_version = s.metadata.resource_version;
            secrets.replace(name, &PostParams::default(), &secret).await.map_err(Step::KeySecret.error())?
        }
    };
    Ok(Some(vec![key]))
}

/// Adds `add` to the key Secret and removes the keys `remove`, in one patch.
pub(super) async fn edit_keys(
    whc: &WebhookConfig,
    ctx: &Context,
    add: Option<&HmacKey>,
    remove: &[&HmacKey],
) -> Result<(), Error> {
    patch_keys(&secrets_api(whc, ctx), &whc.secret_name(), add, remove).await
}

/// Adds `add` to key Secret `name` and removes the keys `remove`, in one patch.
pub(crate) async fn patch_keys(
    secrets: &Api<Secret>,
    name: &str,
    add: Option<&HmacKey>,
    remove: &[&HmacKey],
) -> Result<(), Error> {
    let mut data = serde_json::Map::new();
    if let Some(key) = add {
        data.insert(key.entry_name(), serde_json::to_value(ByteString(key.secret().to_vec())).expect("JSON"));
    }
    for key in remove {
        data.insert(key.entry_name(), serde_json::Value::Null);
    }
    let patch = serde_json::json!({ "data": data });
    secrets
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Step::KeySecret.error())?;
    Ok(())
}
