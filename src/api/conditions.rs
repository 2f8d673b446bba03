//! Condition types and reasons shared by the controllers, kept as constants
//! so a typo is a compile error rather than a condition nobody reads.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Everything the resource asks for is in place.
pub const READY: &str = "Ready";
/// The GitHub hook exists and matches the spec.
pub const HOOK_REGISTERED: &str = "HookRegistered";
/// The hooks of earlier locations (`status.previousHooks`) are deleted.
pub const PREVIOUS_HOOKS_DELETED: &str = "PreviousHooksDeleted";
/// GitHub signs with a key every receiver has loaded.
pub const SECRET_IN_SYNC: &str = "SecretInSync";
/// Receivers dispatch the policy's events (its effective `enabled`).
pub const DISPATCHING: &str = "Dispatching";

/// Sets condition `type_` in `conditions`. `lastTransitionTime` moves only
/// when the status flips, so it tells when the state last changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status;
            c.reason = reason.to_owned();
            c.message = message;
            c.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message,
            observed_generation,
            last_transition_time: now.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut c = Vec::new();
        set(&mut c, READY, true, "Applied", "ok", Some(1), &at(100));
        set(&mut c, READY, true, "Applied", "still ok", Some(2), &at(200));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, at(100));
        assert_eq!((c[0].message.as_str(), c[0].observed_generation), ("still ok", Some(2)));
        set(&mut c, READY, false, "Failed", "broken", Some(2), &at(300));
        assert_eq!((c[0].status.as_str(), c[0].last_transition_time.clone()), ("False", at(300)));
    }
}
