//! The admin API's client: one call the `hookwarden admin` CLI makes, sent
//! with the caller's bearer token, and why it failed in a line that says
//! what to do. The server side is [`crate::receiver::admin`].

use serde_json::Value;

use crate::{
    ObjectRef,
    queue::ActivityFilter,
    receiver::admin::{FilterTest, replay::ReplayWindow},
};

/// One admin API call, as the `hookwarden admin` CLI makes it.
#[derive(Clone, Debug)]
pub enum Call {
    Policies,
    SetEnabled { policy: ObjectRef, enabled: bool },
    DeadLetters { policy: ObjectRef, limit: usize },
    Replay { policy: ObjectRef, id: String },
    Purge { policy: ObjectRef },
    Deliveries { filter: ActivityFilter, limit: usize },
    FilterTest { policy: ObjectRef, test: FilterTest },
    ReplayWindow { policy: ObjectRef, window: ReplayWindow },
}

/// Makes `call` against the admin API at `base`; returns the JSON answer, or
/// why not.
pub async fn call(base: &str, token: &str, call: Call) -> Result<Value, CallError> {
    let base = base.trim_end_matches('/');
    let policy_url =
        |p: &ObjectRef, rest: &str| format!("{base}/admin/policies/{}/{}{rest}", p.namespace, p.name);
    let http = reqwest::Client::new();
    let request = match &call {
        Call::Policies => http.get(format!("{base}/admin/policies")),
        Call::SetEnabled { policy, enabled } => {
            http.post(policy_url(policy, if *enabled { "/enable" } else { "/disable" }))
        }
        Call::DeadLetters { policy, limit } => {
            http.get(policy_url(policy, "/dead-letters")).query(&[("limit", limit)])
        }
        Call::Replay { policy, id } => http.post(policy_url(policy, &format!("/dead-letters/{id}/replay"))),
        Call::Purge { policy } => http.delete(policy_url(policy, "/dead-letters")),
        Call::FilterTest { policy, test } => http.post(policy_url(policy, "/filter-test")).json(test),
        Call::ReplayWindow { policy, window } => http.post(policy_url(policy, "/replay")).json(window),
        Call::Deliveries { filter, limit } => {
            let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            for (k, v) in [
                ("status", &filter.status),
                ("event", &filter.event),
                ("repository", &filter.repository),
                ("hook", &filter.hook),
            ] {
                if let Some(v) = v {
                    q.push((k, v.clone()));
                }
            }
            http.get(format!("{base}/admin/deliveries")).query(&q)
        }
    };
    let unreachable =
        |e: reqwest::Error| CallError::Unreachable { base: base.to_owned(), cause: e.to_string() };
    let response = request.bearer_auth(token).send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(unreachable)?;
    let body: Value = serde_json::from_slice(&bytes).map_err(|e| CallError::Unreadable(e.to_string()))?;
    match status {
        200..=299 => Ok(body),
        _ => {
            let message = body["error"].as_str().unwrap_or("no message").to_owned();
            Err(CallError::Api { status, message })
        }
    }
}

/// Why an admin call failed, in a line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach the admin API at {base} ({cause}): is the URL right, and the port forwarded?")]
    Unreachable { base: String, cause: String },
    #[error("the admin API's answer is not JSON ({0}): is the URL the admin port?")]
    Unreadable(String),
    #[error("HTTP {status}: {message}")]
    Api { status: u16, message: String },
}
