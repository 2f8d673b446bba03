//! Faults tests inject (`POST /_sim/faults`): dropped connections, latency,
//! error answers, an exhausted budget, a secondary limit.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde::Deserialize;

use crate::{
    Sim,
    answer::{Answer, message},
};

/// Faults tests inject.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    /// Answer the next `count` API requests with `status`.
    pub status: Option<u16>,
    /// Limit `status` and `drop_connections` to requests whose path contains this.
    pub path_contains: Option<String>,
    /// Limit `status` and `drop_connections` to requests of this method (`DELETE`).
    pub method: Option<String>,
    /// Close the connection of the next N API requests without an answer.
    #[serde(default)]
    pub drop_connections: u32,
    #[serde(default)]
    pub count: u32,
    /// Delay every API answer by this much.
    #[serde(default)]
    pub latency_ms: u64,
    /// Mutations per minute per token before the secondary limit hits.
    pub secondary_mutations_per_minute: Option<usize>,
    /// Treat every token's hourly budget as spent.
    #[serde(default)]
    pub exhaust_budget: bool,
}

impl Faults {
    /// Is a request of `method` to `path` one the faults are limited to?
    pub(crate) fn scoped(&self, method: &Method, path: &str) -> bool {
        self.path_contains.as_ref().is_none_or(|p| path.contains(p.as_str()))
            && self.method.as_ref().is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
    }
}

/// Before anything else: a dropped connection (the handler unwinds, so
/// hyper closes it with no answer, as a network failure would) or latency.
pub(crate) async fn before(sim: &Sim, method: &Method, path: &str) {
    let (drop_it, latency) = {
        let mut s = sim.inner.lock().unwrap();
        let drop_it = s.faults.scoped(method, path) && s.faults.drop_connections > 0;
        s.faults.drop_connections -= u32::from(drop_it);
        (drop_it, s.faults.latency_ms)
    };
    if drop_it {
        // NB: resume_unwind skips the panic hook, so nothing is printed.
        std::panic::resume_unwind(Box::new("dropped connection (injected fault)"));
    }
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
}

/// An injected error answer for this authenticated request, if one is due.
pub(crate) fn injected(sim: &Sim, method: &Method, path: &str) -> Option<Answer> {
    let mut s = sim.inner.lock().unwrap();
    let scoped = s.faults.scoped(method, path);
    let status = s.faults.status.filter(|_| s.faults.count > 0 && scoped)?;
    s.faults.count -= 1;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some(message(status, "Injected fault").into())
}
