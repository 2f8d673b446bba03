//! The GitHub REST endpoints, after authentication and rate limiting:
//! `/rate_limit`, and repository and organization hooks (list with `Link`
//! pagination, get, create, update, update config, delete, ping, test);
//! their deliveries are in [`crate::deliveries`].

use std::collections::HashMap;

use axum::http::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::{
    HOOKS_PER_EVENT, HOURLY_BUDGET, MASK, Sim,
    answer::{Answer, message, no_content, page_params, unprocessable},
    deliveries,
    state::{Grant, Hook, Inner, Owner, timestamp},
};

impl Sim {
    pub(crate) fn hook_json(&self, h: &Hook) -> Value {
        let base = format!("{}/{}", self.base, h.owner.hook_path(h.id));
        let mut config =
            json!({ "url": h.url, "content_type": h.content_type, "insecure_ssl": h.insecure_ssl });
        if h.secret.is_some() {
            config["secret"] = json!(MASK);
        }
        let mut v = json!({
            "type": match h.owner { Owner::Repo(_) => "Repository", Owner::Org(_) => "Organization", Owner::App(_) => "App" },
            "id": h.id,
            "name": "web",
            "active": h.active,
            "events": h.events,
            "config": config,
            "updated_at": h.updated_at,
            "created_at": h.created_at,
            "url": base,
            "ping_url": format!("{base}/pings"),
            "deliveries_url": format!("{base}/deliveries"),
        });
        if let Owner::Repo(_) = h.owner {
            v["test_url"] = json!(format!("{base}/test"));
            v["last_response"] = h.last_response.clone();
        }
        v
    }

    /// What a `ping` delivery of `hook` carries.
    pub(crate) fn ping_payload(&self, hook: &Hook) -> Value {
        json!({
            "zen": "Keep it logically awesome.",
            "hook_id": hook.id,
            "hook": self.hook_json(hook),
            "sender": { "login": "octocat", "id": 1, "type": "User" },
        })
    }
}

/// The GitHub REST endpoints, after authentication and rate limiting.
pub(crate) async fn api(
    sim: &Sim,
    grant: &Grant,
    method: &Method,
    seg: &[&str],
    query: &HashMap<String, String>,
    body: Option<&Value>,
) -> Answer {
    // /repos/{owner}/{repo}/hooks/... or /orgs/{org}/hooks/...
    let (owner, rest) = match seg {
        ["rate_limit"] => {
            // As on GitHub, asking costs nothing; the headers carry the numbers.
            let mut a: Answer =
                (StatusCode::OK, json!({ "resources": { "core": { "limit": HOURLY_BUDGET } } })).into();
            a.free = true;
            return a;
        }
        ["repos", o, r, "hooks", rest @ ..] => (Owner::Repo(format!("{o}/{r}")), rest),
        ["orgs", o, "hooks", rest @ ..] => (Owner::Org((*o).to_owned()), rest),
        _ => return message(StatusCode::NOT_FOUND, "Not Found").into(),
    };
    let exists = {
        let s = sim.inner.lock().unwrap();
        match &owner {
            Owner::Repo(r) => s.repos.contains_key(r),
            Owner::Org(o) => s.orgs.contains_key(o),
            Owner::App(_) => false,
        }
    };
    // NB: like GitHub, a resource the credentials cannot see does not exist.
    if !exists || !grant.sees(&owner) {
        return message(StatusCode::NOT_FOUND, "Not Found").into();
    }
    let hook_id: Option<u64> = rest.first().and_then(|id| id.parse().ok());
    if !rest.is_empty() {
        let found = hook_id
            .is_some_and(|id| sim.inner.lock().unwrap().hooks.get(&id).is_some_and(|h| h.owner == owner));
        if !found {
            return message(StatusCode::NOT_FOUND, "Not Found").into();
        }
    }
    match (method.clone(), rest) {
        (Method::GET, []) => list_hooks(sim, &owner, query),
        (Method::POST, []) => create_hook(sim, owner, body).await,
        (Method::GET, [_]) => {
            let s = sim.inner.lock().unwrap();
            (StatusCode::OK, sim.hook_json(&s.hooks[&hook_id.unwrap()])).into()
        }
        (Method::PATCH, [_]) => update_hook(sim, hook_id.unwrap(), body, false),
        (Method::GET, [_, "config"]) => {
            let s = sim.inner.lock().unwrap();
            (StatusCode::OK, sim.hook_json(&s.hooks[&hook_id.unwrap()])["config"].clone()).into()
        }
        (Method::PATCH, [_, "config"]) => update_hook(sim, hook_id.unwrap(), body, true),
        (Method::DELETE, [_]) => {
            sim.inner.lock().unwrap().hooks.remove(&hook_id.unwrap());
            no_content()
        }
        (Method::POST, [_, "pings"]) => {
            let hook = sim.inner.lock().unwrap().hooks[&hook_id.unwrap()].clone();
            let (sim, payload) = (sim.clone(), sim.ping_payload(&hook));
            tokio::spawn(async move { sim.deliver(hook.id, "ping", payload, None).await });
            no_content()
        }
        (Method::POST, [_, "tests"]) if matches!(owner, Owner::Repo(_)) => {
            let hook = sim.inner.lock().unwrap().hooks[&hook_id.unwrap()].clone();
            if hook.events.iter().any(|e| e == "push" || e == "*") {
                let payload = json!({ "ref": "refs/heads/main", "repository": { "full_name": match &owner { Owner::Repo(r) => r.clone(), _ => String::new() } } });
                let sim = sim.clone();
                tokio::spawn(async move { sim.deliver(hook.id, "push", payload, None).await });
            }
            no_content()
        }
        (Method::GET, [_, "deliveries"]) => deliveries::list(sim, &owner, hook_id.unwrap(), query),
        (Method::GET, [_, "deliveries", d]) => deliveries::get(sim, &owner, hook_id.unwrap(), d),
        (Method::POST, [_, "deliveries", d, "attempts"]) => deliveries::redeliver(sim, hook_id.unwrap(), d),
        _ => message(StatusCode::NOT_FOUND, "Not Found").into(),
    }
}

fn list_hooks(sim: &Sim, owner: &Owner, query: &HashMap<String, String>) -> Answer {
    let (per_page, page) = page_params(query);
    let s = sim.inner.lock().unwrap();
    let all: Vec<Value> = s.hooks.values().filter(|h| &h.owner == owner).map(|h| sim.hook_json(h)).collect();
    let last = all.len().div_ceil(per_page).max(1);
    let items: Vec<Value> = all.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    let mut answer: Answer = (StatusCode::OK, Value::Array(items)).into();
    let base = format!("{}/{}", sim.base, owner.hooks_path());
    let mut links = Vec::new();
    if page < last {
        links.push(format!("<{base}?per_page={per_page}&page={}>; rel=\"next\"", page + 1));
        links.push(format!("<{base}?per_page={per_page}&page={last}>; rel=\"last\""));
    }
    if page > 1 {
        links.push(format!("<{base}?per_page={per_page}&page={}>; rel=\"prev\"", page - 1));
        links.push(format!("<{base}?per_page={per_page}&page=1>; rel=\"first\""));
    }
    if !links.is_empty() {
        answer.headers.push((header::LINK, links.join(", ")));
    }
    answer
}

fn events_of(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
}

/// The 422s GitHub gives for a hook configuration: duplicates and the
/// per-event limit.
fn conflicts(s: &Inner, owner: &Owner, id: Option<u64>, url: &str, events: &[String]) -> Option<Answer> {
    let others: Vec<&Hook> = s.hooks.values().filter(|h| &h.owner == owner && Some(h.id) != id).collect();
    let overlap =
        |a: &[String], b: &[String]| a.iter().any(|e| e == "*" || b.iter().any(|f| f == e || f == "*"));
    if others.iter().any(|h| h.url == url && overlap(&h.events, events)) {
        return Some(unprocessable("Validation Failed: Hook already exists on this repository"));
    }
    for e in events {
        if others.iter().filter(|h| h.events.iter().any(|f| f == e || f == "*")).count() >= HOOKS_PER_EVENT {
            return Some(unprocessable(&format!(
                "Validation Failed: The \"{e}\" event cannot have more than {HOOKS_PER_EVENT} hooks"
            )));
        }
    }
    None
}

async fn create_hook(sim: &Sim, owner: Owner, body: Option<&Value>) -> Answer {
    let Some(body) = body else { return unprocessable("Invalid request: a body is required") };
    // NB: GitHub requires `name: "web"` for organization hooks (optional for repositories).
    if matches!(owner, Owner::Org(_)) && body["name"] != "web" {
        return unprocessable("Invalid request: \"name\" wasn't supplied; it must be \"web\"");
    }
    let config = &body["config"];
    let Some(url) = config["url"].as_str().filter(|u| u.starts_with("http")) else {
        return unprocessable("Validation Failed: config.url is missing or not a URL");
    };
    // NB: GitHub's defaults: events ["push"], active true, content_type form.
    let events = events_of(body.get("events")).unwrap_or_else(|| vec!["push".to_owned()]);
    let hook = {
        let mut s = sim.inner.lock().unwrap();
        if let Some(conflict) = conflicts(&s, &owner, None, url, &events) {
            return conflict;
        }
        s.next_id += 1;
        let now = timestamp();
        let hook = Hook {
            id: s.next_id,
            owner,
            active: body["active"].as_bool().unwrap_or(true),
            events,
            url: url.to_owned(),
            content_type: config["content_type"].as_str().unwrap_or("form").to_owned(),
            insecure_ssl: config["insecure_ssl"].as_str().unwrap_or("0").to_owned(),
            secret: config["secret"].as_str().filter(|s| !s.is_empty()).map(str::to_owned),
            created_at: now.clone(),
            updated_at: now,
            last_response: json!({ "code": null, "status": "unused", "message": null }),
        };
        s.hooks.insert(hook.id, hook.clone());
        hook
    };
    // GitHub pings a new hook.
    let (sim2, payload) = (sim.clone(), sim.ping_payload(&hook));
    let id = hook.id;
    tokio::spawn(async move { sim2.deliver(id, "ping", payload, None).await });
    (StatusCode::CREATED, sim.hook_json(&hook)).into()
}

pub(crate) fn update_hook(sim: &Sim, id: u64, body: Option<&Value>, config_only: bool) -> Answer {
    let Some(body) = body else { return unprocessable("Invalid request: a body is required") };
    let mut s = sim.inner.lock().unwrap();
    let mut hook = s.hooks[&id].clone();
    let config = if config_only { Some(body) } else { body.get("config") };
    if let Some(config) = config {
        if let Some(url) = config.get("url").and_then(Value::as_str) {
            hook.url = url.to_owned();
        }
        if let Some(ct) = config.get("content_type").and_then(Value::as_str) {
            hook.content_type = ct.to_owned();
        }
        if let Some(i) = config.get("insecure_ssl").and_then(Value::as_str) {
            hook.insecure_ssl = i.to_owned();
        }
        match config.get("secret").and_then(Value::as_str) {
            Some(secret) => hook.secret = Some(secret.to_owned()).filter(|s| !s.is_empty()),
            // NB: GitHub's surprise: a config sent through PATCH /hooks/{id}
            // without the secret removes it; PATCH /hooks/{id}/config keeps it.
            None if !config_only => hook.secret = None,
            None => {}
        }
    }
    if !config_only {
        if let Some(events) = events_of(body.get("events")) {
            hook.events = events;
        }
        for e in events_of(body.get("add_events")).unwrap_or_default() {
            if !hook.events.contains(&e) {
                hook.events.push(e);
            }
        }
        let remove = events_of(body.get("remove_events")).unwrap_or_default();
        hook.events.retain(|e| !remove.contains(e));
        if let Some(active) = body.get("active").and_then(Value::as_bool) {
            hook.active = active;
        }
    }
    if let Some(conflict) = conflicts(&s, &hook.owner, Some(id), &hook.url, &hook.events) {
        return conflict;
    }
    hook.updated_at = timestamp();
    s.hooks.insert(id, hook.clone());
    let json = if config_only { sim.hook_json(&hook)["config"].clone() } else { sim.hook_json(&hook) };
    (StatusCode::OK, json).into()
}
