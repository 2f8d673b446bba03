//! `/_sim/...`: set up the world (tokens, repositories, organizations,
//! Apps, hook ranges), emit events, inject faults, look inside.

use axum::{
    Json,
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{Sim, faults::Faults};

/// `/_sim/...`: set up the world, emit events, inject faults, look inside.
pub(crate) async fn control(sim: &Sim, method: &Method, seg: &[&str], body: &[u8]) -> Response {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (method.clone(), seg) {
        (Method::POST, ["tokens"]) => {
            sim.add_token(body["token"].as_str().unwrap_or_default());
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, ["repos"]) => {
            sim.add_repo(body["full_name"].as_str().unwrap_or_default());
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, ["apps"]) => {
            // {"id": 1, "installations": {"7": "octo-org"}} → {"private_key": PEM}
            let id = body["id"].as_u64().unwrap_or_default();
            let installations = body["installations"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_owned())))
                .collect();
            Json(json!({ "private_key": sim.add_app(id, installations) })).into_response()
        }
        (Method::POST, ["orgs"]) => {
            sim.add_org(body["login"].as_str().unwrap_or_default());
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, ["faults"]) => match serde_json::from_value::<Faults>(body) {
            Ok(f) => {
                sim.inner.lock().unwrap().faults = f;
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        },
        (Method::GET, ["hooks"]) => {
            // Unlike the API, shows secrets: tests compare what GitHub signs with.
            let s = sim.inner.lock().unwrap();
            let hooks: Vec<Value> = s
                .hooks
                .values()
                .map(|h| {
                    let mut v = sim.hook_json(h);
                    v["config"]["secret"] = json!(h.secret);
                    v
                })
                .collect();
            Json(hooks).into_response()
        }
        // An event of an installation of App `id` to its own webhook: the
        // payload should name the `installation` and `repository`.
        (Method::POST, ["apps", id, "events"]) => {
            let Some(hook) = id.parse().ok().and_then(|id| sim.app_hook_id(id)) else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let event = body["event"].as_str().unwrap_or("push").to_owned();
            match sim.deliver(hook, &event, body["payload"].clone(), None).await {
                Some(d) => Json(serde_json::to_value(&d).expect("JSON")).into_response(),
                None => StatusCode::CONFLICT.into_response(),
            }
        }
        (Method::POST, ["hooks", id, "events"]) => {
            let Ok(id) = id.parse() else { return StatusCode::NOT_FOUND.into_response() };
            let event = body["event"].as_str().unwrap_or("push").to_owned();
            match sim.deliver(id, &event, body["payload"].clone(), None).await {
                Some(d) => Json(serde_json::to_value(&d).expect("JSON")).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }
        (Method::DELETE, ["hooks", id]) => {
            let removed = id.parse().ok().and_then(|id: u64| sim.inner.lock().unwrap().hooks.remove(&id));
            if removed.is_some() { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND }.into_response()
        }
        // {"url": prefix}: deliveries to hook URLs starting with it fail
        // (connection refused) until the DELETE with the same body.
        (method @ (Method::POST | Method::DELETE), ["unreachable"]) => {
            let Some(url) = body["url"].as_str().filter(|u| !u.is_empty()) else {
                return (StatusCode::BAD_REQUEST, "body must be {\"url\": \"<prefix>\"}").into_response();
            };
            let mut s = sim.inner.lock().unwrap();
            s.unreachable.retain(|u| u != url);
            if method == Method::POST {
                s.unreachable.push(url.to_owned());
            }
            StatusCode::NO_CONTENT.into_response()
        }
        // Back to github.com's hook ranges.
        (Method::DELETE, ["meta"]) => {
            sim.inner.lock().unwrap().meta_hooks = None;
            StatusCode::NO_CONTENT.into_response()
        }
        // {"hooks": [cidr...]}: what `GET /meta` lists as hook source ranges.
        (Method::POST, ["meta"]) => {
            let Some(hooks) = body["hooks"].as_array() else {
                return (StatusCode::BAD_REQUEST, "body must be {\"hooks\": [\"<cidr>\"...]}")
                    .into_response();
            };
            let hooks = hooks.iter().filter_map(|h| h.as_str().map(str::to_owned)).collect();
            sim.inner.lock().unwrap().meta_hooks = Some(hooks);
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, ["requests"]) => Json(sim.requests()).into_response(),
        // What clients sent so far (and what the simulator answered) that
        // GitHub's OpenAPI description contradicts, for request paths that
        // contain the rest of this path (e.g. `/_sim/openapi-violations/orgs/acme`).
        (Method::GET, ["openapi-violations", needle @ ..]) => match &sim.spec {
            Some(spec) => {
                let needle = needle.join("/");
                let requests = sim.requests();
                let problems: Vec<String> = requests
                    .iter()
                    .filter(|r| r.path.contains(&needle))
                    .flat_map(|r| spec.check(r))
                    .collect();
                Json(problems).into_response()
            }
            None => (StatusCode::CONFLICT, "started without --openapi").into_response(),
        },
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
