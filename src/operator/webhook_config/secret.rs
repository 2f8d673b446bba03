//! The Secrets a WebhookConfig reads (GitHub credentials) and the one it
//! owns (the hook's HMAC keys, laid out by [`crate::keys`]).

use k8s_openapi::{ByteString, api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};

use super::ConfigError;
use crate::{
    api::WebhookConfig,
    github::{self, Auth},
    keys::{HmacKey, key_secret, keys_from_secret},
    operator::{Context, Error},
};

fn secrets_api(whc: &WebhookConfig, ctx: &Context) -> Api<Secret> {
    Api::namespaced(ctx.client.clone(), &whc.namespace().unwrap_or_default())
}

/// A data entry of a Secret in the WebhookConfig's namespace, trimmed.
async fn secret_value(whc: &WebhookConfig, ctx: &Context, name: &str, key: &str) -> Result<Vec<u8>, Error> {
    let secret = secrets_api(whc, ctx).get_opt(name).await.map_err(Error::Kube)?.ok_or_else(|| {
        ConfigError::SecretMissing { namespace: whc.namespace().unwrap_or_default(), name: name.into() }
    })?;
    let value = secret
        .data
        .and_then(|mut d| d.remove(key))
        .map(|v| v.0.trim_ascii().to_vec())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ConfigError::SecretKeyMissing { name: name.into(), key: key.into() })?;
    Ok(value)
}

/// A GitHub client with the WebhookConfig's credentials.
pub(super) async fn github_client(whc: &WebhookConfig, ctx: &Context) -> Result<github::Client, Error> {
    let ns = whc.namespace().unwrap_or_default();
    let spec = &whc.spec.github;
    let (auth, account) = match (&spec.token_secret_ref, &spec.app) {
        (Some(r), _) => {
            let token = secret_value(whc, ctx, &r.name, &r.key).await?;
            let token = String::from_utf8(token)
                .map_err(|_| ConfigError::NotText { name: r.name.clone(), key: r.key.clone() })?;
            (Auth::Token(token), format!("{ns}/{}", r.name))
        }
        (None, Some(app)) => {
            let r = &app.private_key_secret_ref;
            let pem = secret_value(whc, ctx, &r.name, &r.key).await?;
            (
                Auth::app(app.app_id, app.installation_id, &pem)?,
                format!("app/{}/installation/{}", app.app_id, app.installation_id),
            )
        }
        // NB: the schema's CEL rule makes this unreachable for stored objects.
        (None, None) => return Err(ConfigError::NoCredentials.into()),
    };
    Ok(github::Client::new(ctx.github.clone(), &spec.api_url, auth, &account))
}

/// The keys of the key Secret, oldest first; the Secret is created (with a
/// first key, versioned `now`) when missing or keyless.
pub(super) async fn ensure_keys(
    whc: &WebhookConfig,
    ctx: &Context,
    now: Timestamp,
) -> Result<Vec<HmacKey>, Error> {
    let name = whc.secret_name();
    let secrets = secrets_api(whc, ctx);
    let existing = secrets.get_opt(&name).await.map_err(Error::Kube)?;
    let keys = existing.as_ref().map(keys_from_secret).unwrap_or_default();
    if !keys.is_empty() {
        return Ok(keys);
    }
    let key = HmacKey::generate(now.as_second() as u64);
    let mut secret = key_secret(&name, &whc.name_any(), &[&key]);
    secret.metadata.owner_references = whc.controller_owner_ref(&()).map(|o| vec![o]);
    match existing {
        None => secrets.create(&PostParams::default(), &secret).await.map_err(Error::Kube)?,
        Some(_) => secrets.replace(&name, &PostParams::default(), &secret).await.map_err(Error::Kube)?,
    };
    Ok(vec![key])
}

/// Adds `add` to the key Secret and removes the keys `remove`, in one patch.
pub(super) async fn edit_keys(
    whc: &WebhookConfig,
    ctx: &Context,
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
    secrets_api(whc, ctx)
        .patch(&whc.secret_name(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::Kube)?;
    Ok(())
}
