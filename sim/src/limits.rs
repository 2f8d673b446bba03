//! GitHub's rate limits: 5,000 calls an hour per token (`x-ratelimit-*`
//! headers on every answer; 304s and some endpoints are free), and a
//! secondary limit on mutations per minute when a test sets one.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode, header};

use crate::{
    HOURLY_BUDGET, Sim,
    answer::{Answer, message},
    state::now_secs,
};

/// The answer when `token` may not make this call now: its hourly budget
/// is spent, or (for a mutation) the secondary limit hit. Counts the mutation.
pub(crate) fn check(sim: &Sim, token: &str, method: &Method) -> Option<Answer> {
    let mut s = sim.inner.lock().unwrap();
    let exhausted = s.faults.exhaust_budget;
    let secondary = s.faults.secondary_mutations_per_minute;
    let budget = s.budgets.entry(token.to_owned()).or_default();
    let hour = now_secs() / 3600 * 3600;
    if budget.window_start != hour {
        budget.window_start = hour;
        budget.used = 0;
    }
    if exhausted || budget.used >= HOURLY_BUDGET {
        return Some(message(StatusCode::FORBIDDEN, "API rate limit exceeded for user.").into());
    }
    if method == Method::GET {
        return None;
    }
    budget.mutations.retain(|t| t.elapsed() < Duration::from_secs(60));
    if secondary.is_some_and(|l| budget.mutations.len() >= l) {
        let text =
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.";
        let mut a: Answer = message(StatusCode::FORBIDDEN, text).into();
        a.headers.push((header::RETRY_AFTER, "60".into()));
        a.free = true;
        return Some(a);
    }
    budget.mutations.push_back(Instant::now());
    None
}

/// Spends the budget `answer` costs `token` (a known one); returns the
/// `x-ratelimit-*` headers.
pub(crate) fn account(sim: &Sim, token: Option<&str>, answer: &Answer) -> [(&'static str, String); 5] {
    let mut s = sim.inner.lock().unwrap();
    let exhausted = s.faults.exhaust_budget;
    let costs =
        !answer.free && answer.status != StatusCode::UNAUTHORIZED && answer.status != StatusCode::FORBIDDEN;
    let used = match token.filter(|t| s.tokens.contains_key(*t)) {
        Some(t) => {
            let b = s.budgets.entry(t.to_owned()).or_default();
            b.used += u32::from(costs);
            b.used
        }
        None => 0,
    };
    let remaining = if exhausted { 0 } else { HOURLY_BUDGET.saturating_sub(used) };
    [
        ("x-ratelimit-limit", HOURLY_BUDGET.to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-used", used.to_string()),
        ("x-ratelimit-reset", (now_secs() / 3600 * 3600 + 3600).to_string()),
        ("x-ratelimit-resource", "core".to_owned()),
    ]
}
