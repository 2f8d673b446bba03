//! The status page, `GET /admin/ui` on the admin listener: policies (the
//! kill switch, concurrency, queue counts, each agent's circuit), hooks and
//! recent deliveries, updated live from `/admin/stream`; the switch and
//! dead-letter replays from the page, each after a confirmation.
//!
//! The page and its script and style are compiled in and served from here
//! (nothing from a CDN); they hold no data. Everything shown comes from the
//! admin API with the token the user signs in with, kept in the browser
//! tab's session storage only.

use axum::{
    Router,
    http::header,
    response::{IntoResponse, Redirect, Response},
    routing::get,
};

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// Only this origin's own script, style and API.
const POLICY: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The page's routes; no token needed to load them (the page asks for it).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/ui") }))
        .route("/admin/ui", get(|| async { asset(PAGE, "text/html; charset=utf-8") }))
        .route("/admin/ui/app.js", get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }))
        .route("/admin/ui/app.css", get(|| async { asset(STYLE, "text/css; charset=utf-8") }))
}
