//! Deliveries: POSTed to the hook URL exactly as GitHub does (headers,
//! HMAC signatures, JSON or `payload=` form), with a 10-second timeout and no
//! retries, kept for 3 days; listed with cursor pagination, read one by one
//! with the request GitHub sent, and redelivered on request.

use std::{collections::HashMap, time::Instant};

use axum::http::{StatusCode, header};
use serde_json::{Value, json};

use crate::{
    DELIVERY_RETENTION, Sim,
    answer::{Answer, message, page_params},
    state::{Delivery, Owner, guid, timestamp},
};

impl Sim {
    /// Emits `event` with `payload` to hook `hook_id` as GitHub would, and
    /// returns the delivery once the receiver answered (or timed out).
    pub async fn deliver(
        &self,
        hook_id: u64,
        event: &str,
        payload: Value,
        redelivery_of: Option<&str>,
    ) -> Option<Delivery> {
        let (hook, target_id) = {
            let s = self.inner.lock().unwrap();
            let hook = s.hooks.get(&hook_id)?.clone();
            let target = match &hook.owner {
                Owner::Repo(r) => s.repos.get(r).copied(),
                Owner::Org(o) => s.orgs.get(o).copied(),
                Owner::App(id) => Some(*id),
            };
            (hook, target.unwrap_or(0))
        };
        // NB: an App whose webhook has no URL yet delivers nothing.
        if hook.url.is_empty() {
            return None;
        }
        let guid = redelivery_of.map_or_else(guid, str::to_owned);
        let json_body = serde_json::to_vec(&payload).expect("JSON");
        let (content_type, body) = if hook.content_type == "json" {
            ("application/json", json_body)
        } else {
            let form: String = url_form(&String::from_utf8_lossy(&json_body));
            ("application/x-www-form-urlencoded", form.into_bytes())
        };
        let mut request = self
            .http
            .post(&hook.url)
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", &guid)
            .header("X-GitHub-Hook-ID", hook.id.to_string())
            .header(
                "X-GitHub-Hook-Installation-Target-Type",
                match hook.owner {
                    Owner::Repo(_) => "repository",
                    Owner::Org(_) => "organization",
                    Owner::App(_) => "integration",
                },
            )
            .header("X-GitHub-Hook-Installation-Target-ID", target_id.to_string())
            .header("User-Agent", "GitHub-Hookshot/github-sim")
            .header("Content-Type", content_type);
        if let Some(secret) = &hook.secret {
            request = request
                .header("X-Hub-Signature-256", hookwarden::signature::sign(secret.as_bytes(), &body))
                .header("X-Hub-Signature", hookwarden::signature::sign_sha1(secret.as_bytes(), &body));
        }
        let started = Instant::now();
        let unreachable =
            self.inner.lock().unwrap().unreachable.iter().any(|u| hook.url.starts_with(u.as_str()));
        let result = if unreachable { None } else { Some(request.body(body).send().await) };
        let duration = started.elapsed().as_secs_f64();
        let (status_code, status) = match &result {
            None => (0, "failed to connect to host".to_owned()),
            Some(Ok(r)) if r.status().is_success() => (r.status().as_u16(), "OK".to_owned()),
            Some(Ok(r)) => (r.status().as_u16(), format!("Invalid HTTP Response: {}", r.status().as_u16())),
            Some(Err(e)) if e.is_timeout() => (0, "timed out".to_owned()),
            Some(Err(_)) => (0, "failed to connect to host".to_owned()),
        };
        if let Some(Err(error)) = &result {
            // GitHub's record says little; the log says what the socket did.
            eprintln!("delivery {guid} to {} failed after {duration:.3} s: {}", hook.url, chain(error));
        }
        let mut s = self.inner.lock().unwrap();
        s.next_id += 1;
        let delivery = Delivery {
            id: s.next_id,
            guid,
            delivered_at: timestamp(),
            redelivery: redelivery_of.is_some(),
            duration,
            status: status.clone(),
            status_code,
            event: event.to_owned(),
            action: payload.get("action").and_then(Value::as_str).map(str::to_owned),
            // An App's deliveries name the installation and repository
            // they are about, as GitHub's delivery list does.
            installation_id: match hook.owner {
                Owner::App(_) => payload["installation"]["id"].as_u64(),
                _ => None,
            },
            repository_id: match hook.owner {
                Owner::Repo(_) => Some(target_id),
                Owner::Org(_) => None,
                Owner::App(_) => {
                    payload["repository"]["full_name"].as_str().and_then(|r| s.repos.get(r).copied())
                }
            },
            throttled_at: None,
            hook_id,
            at: Instant::now(),
            payload,
        };
        if let Some(h) = s.hooks.get_mut(&hook_id) {
            h.last_response = json!({ "code": status_code, "status": if status_code / 100 == 2 { "active" } else { "failed" }, "message": status });
        }
        s.deliveries.retain(|d| d.at.elapsed() < DELIVERY_RETENTION);
        s.deliveries.push(delivery.clone());
        Some(delivery)
    }
}

/// An error and its causes, outermost first.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn url_form(payload: &str) -> String {
    let mut out = String::from("payload=");
    for b in payload.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub(crate) fn list(sim: &Sim, owner: &Owner, hook_id: u64, query: &HashMap<String, String>) -> Answer {
    let (per_page, _) = page_params(query);
    // The cursor is the id of the last delivery of the previous page.
    let cursor: Option<u64> = query.get("cursor").and_then(|c| c.parse().ok());
    let s = sim.inner.lock().unwrap();
    let mut newest_first: Vec<&Delivery> = s.deliveries.iter().filter(|d| d.hook_id == hook_id).collect();
    newest_first.reverse();
    let rest: Vec<&Delivery> = newest_first.into_iter().filter(|d| cursor.is_none_or(|c| d.id < c)).collect();
    let page: Vec<Value> =
        rest.iter().take(per_page).map(|d| serde_json::to_value(d).expect("JSON")).collect();
    let mut answer: Answer = (StatusCode::OK, Value::Array(page)).into();
    if rest.len() > per_page {
        let next = rest[per_page - 1].id;
        let base = format!("{}/{}/deliveries", sim.base, owner.hook_path(hook_id));
        answer
            .headers
            .push((header::LINK, format!("<{base}?per_page={per_page}&cursor={next}>; rel=\"next\"")));
    }
    answer
}

/// `GET .../hooks/{id}/deliveries/{delivery}`: one delivery with the request GitHub sent.
pub(crate) fn get(sim: &Sim, owner: &Owner, hook_id: u64, d: &str) -> Answer {
    let s = sim.inner.lock().unwrap();
    match s.deliveries.iter().find(|x| x.hook_id == hook_id && d.parse() == Ok(x.id)) {
        Some(x) => {
            let mut v = serde_json::to_value(x).expect("JSON");
            v["url"] = json!(format!("{}/{}/deliveries/{}", sim.base, owner.hook_path(x.hook_id), x.id));
            v["request"] = json!({
                "headers": {
                    "X-GitHub-Event": x.event,
                    "X-GitHub-Delivery": x.guid,
                    "X-GitHub-Hook-ID": x.hook_id.to_string(),
                    "User-Agent": "GitHub-Hookshot/github-sim",
                },
                "payload": x.payload,
            });
            v["response"] = json!({ "headers": {}, "payload": null });
            (StatusCode::OK, v).into()
        }
        None => message(StatusCode::NOT_FOUND, "Not Found").into(),
    }
}

/// `POST .../deliveries/{delivery}/attempts`: deliver it again, same GUID.
pub(crate) fn redeliver(sim: &Sim, hook_id: u64, d: &str) -> Answer {
    let original = {
        let s = sim.inner.lock().unwrap();
        s.deliveries.iter().find(|x| x.hook_id == hook_id && d.parse() == Ok(x.id)).cloned()
    };
    match original {
        Some(x) => {
            let sim = sim.clone();
            tokio::spawn(
                async move { sim.deliver(x.hook_id, &x.event, x.payload.clone(), Some(&x.guid)).await },
            );
            (StatusCode::ACCEPTED, json!({})).into()
        }
        None => message(StatusCode::NOT_FOUND, "Not Found").into(),
    }
}
