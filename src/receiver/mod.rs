//! `hookwarden receiver`: takes deliveries from GitHub, verifies and queues
//! them durably, and dispatches them to agents.
//!
//! - [`http`]: the axum router (ingest, health, metrics).
//! - [`queue`]: Redis Streams: enqueue with de-duplication, settle, retries,
//!   dead letters.
//! - [`registry`]: hooks, keys and policy settings, kept current by watches.

pub mod backoff;
pub mod breaker;
pub mod dispatch;
pub mod http;
pub mod queue;
pub mod registry;
