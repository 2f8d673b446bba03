//! A GitHub App's own webhook: `GET/PATCH /app/hook/config`, `GET
//! /app/hook/deliveries[/{id}]` and `POST /app/hook/deliveries/{id}/attempts`,
//! authenticated by the App's JWT (never an installation token). The hook
//! is a [`crate::state::Hook`] owned by [`Owner::App`], so deliveries are
//! sent, kept and listed as for any hook; it receives the events of every
//! installation, each payload naming its `installation`.

use std::collections::HashMap;

use axum::http::{Method, StatusCode};
use serde_json::Value;

use crate::{
    Sim,
    answer::{Answer, message, unprocessable},
    deliveries, hooks,
    state::Owner,
};

/// `/app/hook/...` as the App of `jwt`; `None` for any other path.
pub(crate) fn api(
    sim: &Sim,
    jwt: Option<&str>,
    method: &Method,
    seg: &[&str],
    query: &HashMap<String, String>,
    body: Option<&Value>,
) -> Option<Answer> {
    let ["app", "hook", rest @ ..] = seg else { return None };
    let app = match sim.app_of(jwt) {
        Ok(app) => app,
        Err(answer) => return Some(answer),
    };
    let hook_id = sim.app_hook_id(app)?;
    let owner = Owner::App(app);
    Some(match (method.clone(), rest) {
        (Method::GET, ["config"]) => {
            let s = sim.inner.lock().unwrap();
            (StatusCode::OK, sim.hook_json(&s.hooks[&hook_id])["config"].clone()).into()
        }
        (Method::PATCH, ["config"]) => {
            // NB: GitHub refuses a URL that is not one; fields left out stay.
            let url = body.and_then(|b| b.get("url")).and_then(Value::as_str);
            if url.is_some_and(|u| !u.starts_with("http")) {
                return Some(unprocessable("Validation Failed: url is not a URL"));
            }
            hooks::update_hook(sim, hook_id, body, true)
        }
        (Method::GET, ["deliveries"]) => deliveries::list(sim, &owner, hook_id, query),
        (Method::GET, ["deliveries", d]) => deliveries::get(sim, &owner, hook_id, d),
        (Method::POST, ["deliveries", d, "attempts"]) => deliveries::redeliver(sim, hook_id, d),
        _ => message(StatusCode::NOT_FOUND, "Not Found").into(),
    })
}

impl Sim {
    /// The id of App `app`'s own webhook in the hooks.
    pub fn app_hook_id(&self, app: u64) -> Option<u64> {
        self.inner.lock().unwrap().apps.get(&app).map(|a| a.hook_id)
    }
}
