//! What one API call produced, before the common headers are added.

use std::collections::HashMap;

use axum::http::{StatusCode, header};
use serde_json::{Value, json};

/// What one API call produced, before the common headers are added.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Option<Value>,
    pub(crate) headers: Vec<(header::HeaderName, String)>,
    /// Spends no rate-limit budget (a 304).
    pub(crate) free: bool,
}

impl From<(StatusCode, Value)> for Answer {
    fn from((status, body): (StatusCode, Value)) -> Self {
        Self { status, body: Some(body), headers: vec![], free: false }
    }
}

pub(crate) fn no_content() -> Answer {
    Answer { status: StatusCode::NO_CONTENT, body: None, headers: vec![], free: false }
}

pub(crate) fn message(status: StatusCode, text: &str) -> (StatusCode, Value) {
    (
        status,
        json!({ "message": text, "documentation_url": "https://docs.github.com/rest", "status": status.as_u16().to_string() }),
    )
}

pub(crate) fn unprocessable(text: &str) -> Answer {
    message(StatusCode::UNPROCESSABLE_ENTITY, text).into()
}

/// `per_page` (1..=100, default 30) and `page` (from 1) of a list request.
pub(crate) fn page_params(query: &HashMap<String, String>) -> (usize, usize) {
    let per_page = query.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(30usize).clamp(1, 100);
    let page = query.get("page").and_then(|v| v.parse().ok()).unwrap_or(1usize).max(1);
    (per_page, page)
}
