//! Condition types shared by the controllers, kept as constants so a typo is a
//! compile error rather than a condition nobody reads.

/// Everything the resource asks for is in place.
pub const READY: &str = "Ready";
/// The GitHub hook exists and matches the spec.
pub const HOOK_REGISTERED: &str = "HookRegistered";
/// GitHub signs with a key every receiver has loaded.
pub const SECRET_IN_SYNC: &str = "SecretInSync";
