//! Keeps the copies of the Secrets receivers read in the keys namespace
//! (what and why: [`crate::copies`]). One loop per kind: every key or
//! signing Secret of the watched namespaces is copied when it appears or
//! changes, its copy deleted when it goes; each (re-)list also deletes the
//! copies whose source disappeared meanwhile. Runs while leading.
//!
//! A rotation stays safe: the operator switches GitHub to a new key only
//! once every receiver reports it loaded, and receivers load it from the
//! copy, so a copy that lags only delays the switch.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::watcher,
};
use sha2::Digest;

use crate::{
    ObjectRef,
    copies::{self, Kind},
};

/// Copies Secrets of `kind` from `namespace` (or every namespace) into
/// `keys`, until the task is aborted. An API error re-lists after a pause,
/// which writes again whatever was missed.
pub async fn run(client: Client, namespace: Option<String>, keys: String, kind: Kind) {
    let sources = crate::scoped_api::<Secret>(&client, namespace.as_deref());
    let copies_api = Api::<Secret>::namespaced(client, &keys);
    // What each copy was last written with (a digest of its data): a
    // re-list or an unrelated change of the source writes nothing.
    let mut written: HashMap<ObjectRef, [u8; 32]> = HashMap::new();
    loop {
        let mut events =
            watcher(sources.clone(), watcher::Config::default().labels(&kind.source_selector())).boxed();
        let mut seen = HashSet::new();
        let failed = loop {
            let result = match events.next().await {
                None => break false,
                Some(Err(error)) => Err(error.to_string()),
                Some(Ok(watcher::Event::Init)) => {
                    seen.clear();
                    Ok(())
                }
                Some(Ok(watcher::Event::InitApply(source) | watcher::Event::Apply(source))) => {
                    // NB: the keys namespace may be watched too; copies carry
                    // neither source label, but a source there is not copied.
                    if source.namespace().as_deref() == Some(keys.as_str()) {
                        continue;
                    }
                    let at = ObjectRef::of(&source);
                    seen.insert(at.clone());
                    write(&copies_api, &mut written, at, &source, kind, &keys).await
                }
                Some(Ok(watcher::Event::InitDone)) => prune(&copies_api, &mut written, kind, &seen).await,
                Some(Ok(watcher::Event::Delete(source))) => {
                    let at = ObjectRef::of(&source);
                    seen.remove(&at);
                    written.remove(&at);
                    delete(&copies_api, &copies::copy_name(&at)).await
                }
            };
            if let Err(error) = result {
                tracing::warn!(?kind, %keys, %error, "copying Secrets failed; re-listing");
                break true;
            }
        };
        if failed {
            written.clear();
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

fn digest(secret: &Secret) -> [u8; 32] {
    let mut hash = sha2::Sha256::new();
    for (name, value) in secret.data.iter().flatten() {
        hash.update((name.len() as u64).to_be_bytes());
        hash.update(name.as_bytes());
        hash.update((value.0.len() as u64).to_be_bytes());
        hash.update(&value.0);
    }
    hash.finalize().into()
}

async fn write(
    api: &Api<Secret>,
    written: &mut HashMap<ObjectRef, [u8; 32]>,
    at: ObjectRef,
    source: &Secret,
    kind: Kind,
    keys: &str,
) -> Result<(), String> {
    let digest = digest(source);
    if written.get(&at) == Some(&digest) {
        return Ok(());
    }
    let copy = copies::copy_of(source, kind, keys);
    let name = copy.name_any();
    // NB: server-side apply of the whole data: an entry the source dropped
    // (a retired key) goes from the copy too.
    api.patch(&name, &PatchParams::apply(super::FIELD_MANAGER).force(), &Patch::Apply(&copy))
        .await
        .map_err(|e| format!("writing {keys}/{name}: {e}"))?;
    tracing::info!(source = %at, copy = %format!("{keys}/{name}"), "Secret copied");
    written.insert(at, digest);
    Ok(())
}

async fn delete(api: &Api<Secret>, name: &str) -> Result<(), String> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(copy = name, "copy deleted: its source is gone");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(format!("deleting copy {name}: {e}")),
    }
}

async fn prune(
    api: &Api<Secret>,
    written: &mut HashMap<ObjectRef, [u8; 32]>,
    kind: Kind,
    sources: &HashSet<ObjectRef>,
) -> Result<(), String> {
    written.retain(|at, _| sources.contains(at));
    let copies = api
        .list(&ListParams::default().labels(&kind.copy_selector()))
        .await
        .map_err(|e| format!("listing copies: {e}"))?;
    for name in copies::stale(&copies.items, sources) {
        delete(api, name).await?;
    }
    Ok(())
}
