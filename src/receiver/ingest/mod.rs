//! The public listener: a delivery from GitHub is admitted (connection and
//! body limits, the source allowlist and failure limit), authenticated (its
//! hook's keys), de-duplicated and queued durably before its 202.
//!
//! - [`http`]: the axum router: ingest, health, readiness, metrics.
//! - [`serve`]: connections: header, idle and body timeouts, limits.
//! - [`body_budget`]: bytes of unauthenticated bodies held at once.
//! - [`sources`]: GitHub's hook ranges and the per-source failure limit.
//! - [`rejections`]: what this replica refused, for the admin API.
//! - [`drain`]: stopping without dropping a delivery in flight.

pub mod body_budget;
pub mod drain;
pub mod http;
pub mod rejections;
pub mod serve;
pub mod sources;
