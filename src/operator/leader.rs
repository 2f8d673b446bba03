//! Leader election with a `coordination.k8s.io` Lease, so that of several
//! operator replicas exactly one writes to GitHub and to Kubernetes.
//!
//! The protocol is client-go's: the holder renews `spec.renewTime` every
//! `lease_duration / 3`; another replica takes the Lease over only when it
//! has not seen the Lease change for `lease_duration` of its own clock (as
//! client-go's `observedTime`: the holder's `renewTime` is never compared
//! with the local wall clock, so a follower whose clock runs ahead cannot
//! take a live Lease). Every write is a replace carrying the
//! `resourceVersion` it read, so of two replicas racing for it one gets a 409
//! and stays a follower. A leader that cannot renew in time stops acting
//! (the process exits and its Deployment restarts it as a follower); one that
//! shuts down gracefully hands the Lease back at once.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{PostParams, Resource},
};

/// One replica's side of the election.
pub struct Election {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// Owner references a holder writes on the Lease (its pod).
    owners: Option<Vec<OwnerReference>>,
    /// The Lease record as last read, and when (this process's clock) it
    /// was first seen so.
    observed: Mutex<Option<Observed>>,
}

/// A Lease record as one replica saw it: who held it and its `renewTime`,
/// and when that was first seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    record: (Option<String>, Option<String>),
    since: Instant,
}

/// What `record`, read at `now`, makes of the last observation: the same
/// record keeps its first sighting; any change starts a new one.
pub fn observe(last: Option<&Observed>, record: (Option<String>, Option<String>), now: Instant) -> Observed {
    match last {
        Some(seen) if seen.record == record => seen.clone(),
        _ => Observed { record, since: now },
    }
}

/// Whether the holder of an observed record is gone: it did not renew for
/// `valid` of this replica's own time.
pub fn expired(observed: &Observed, now: Instant, valid: Duration) -> bool {
    now.duration_since(observed.since) > valid
}

/// What a replica does with a Lease it read.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    /// It holds the Lease: renew it.
    Renew,
    /// Nobody holds it, or its holder is gone: take it.
    Acquire,
    /// Another replica holds it and is alive: stand by.
    Follow(&'a str),
}

/// Whether `me` renews, takes or leaves a Lease held by `holder`, whose
/// record has `expired` as this replica observed it ([`expired`]).
pub fn decide<'a>(holder: Option<&'a str>, me: &str, expired: bool) -> Decision<'a> {
    match holder {
        Some(h) if h == me => Decision::Renew,
        Some(h) if !expired => Decision::Follow(h),
        _ => Decision::Acquire,
    }
}

impl Election {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            owners: None,
            observed: Mutex::new(None),
        }
    }

    /// Whoever holds the Lease names its pod as the Lease's owner: when the
    /// holder's pod goes (`helm uninstall` included, whatever its RBAC
    /// still allows at that moment), so does the Lease.
    pub fn owned_by(mut self, pod: Option<&crate::PodRef>) -> Self {
        self.owners = pod.map(|p| vec![p.owner_reference()]);
        self
    }

    fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// Returns once this replica is the leader.
    pub async fn acquire(&self) {
        let mut told = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Ok(())) => return,
                Ok(Err(holder)) => {
                    if told.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.name, %holder, "another replica leads; standing by");
                        told = Some(holder);
                    }
                }
                Err(error) => tracing::warn!(lease = %self.name, %error, "cannot read the leader Lease"),
            }
            tokio::time::sleep(self.renew_every()).await;
        }
    }

    /// Renews the Lease until it cannot be renewed within its duration;
    /// then returns (leadership is lost).
    pub async fn keep(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew_every()).await;
            match self.try_acquire_or_renew().await {
                Ok(Ok(())) => last_renewal = tokio::time::Instant::now(),
                Ok(Err(holder)) => {
                    tracing::error!(lease = %self.name, %holder, "the leader Lease was taken over");
                    return;
                }
                Err(error) => tracing::warn!(lease = %self.name, %error, "could not renew the leader Lease"),
            }
            // NB: stop a little before others may take over.
            if last_renewal.elapsed() + self.renew_every() / 2 >= self.duration {
                tracing::error!(lease = %self.name, "could not renew the leader Lease in time");
                return;
            }
        }
    }

    /// Hands the Lease back by deleting it (only the version this replica
    /// holds), so another replica need not wait it out and an uninstalled
    /// operator leaves no Lease behind.
    pub async fn release(&self) {
        let Ok(Some(lease)) = self.api.get_opt(&self.name).await else { return };
        if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(self.identity.as_str()) {
            return;
        }
        let params = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                resource_version: lease.metadata.resource_version.clone(),
                uid: None,
            }),
            ..Default::default()
        };
        if let Err(error) = self.api.delete(&self.name, &params).await {
            tracing::warn!(lease = %self.name, %error, "could not release the leader Lease");
        }
    }

    /// `Ok(Ok(()))` when this replica holds the Lease now, `Ok(Err(holder))`
    /// when another one does.
    async fn try_acquire_or_renew(&self) -> Result<Result<(), String>, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let seconds = self.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    owner_references: self.owners.clone(),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Ok(())),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Err("(just created by another)".into())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (holder.clone(), spec.renew_time.as_ref().map(|t| t.0.to_string()));
        let valid = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(seconds).max(0) as u64);
        let expired = {
            let mut observed = self.observed.lock().unwrap();
            let seen = observe(observed.as_ref(), record, Instant::now());
            let gone = expired(&seen, Instant::now(), valid);
            *observed = Some(seen);
            gone
        };
        match decide(holder.as_deref(), &self.identity, expired) {
            Decision::Follow(holder) => return Ok(Err(holder.to_owned())),
            Decision::Renew => {}
            Decision::Acquire => {
                spec.acquire_time = Some(now.clone());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.holder_identity = Some(self.identity.clone());
                lease.metadata.owner_references = self.owners.clone();
                tracing::info!(lease = %self.name, previous = ?holder, "taking the leader Lease");
            }
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        // NB: replace carries the resourceVersion read above: a race is a 409.
        debug_assert!(lease.meta().resource_version.is_some());
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Ok(())),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                Ok(Err(holder.unwrap_or_else(|| "(another)".into())))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_take_or_stand_by() {
        let cases = [
            ("ours: renewed, even when it looks expired", Some("me"), true, Decision::Renew),
            ("ours and fresh", Some("me"), false, Decision::Renew),
            ("another's, alive: stand by", Some("other"), false, Decision::Follow("other")),
            ("another's, gone: taken", Some("other"), true, Decision::Acquire),
            ("nobody's: taken", None, false, Decision::Acquire),
        ];
        for (what, holder, expired, want) in cases {
            assert_eq!(decide(holder, "me", expired), want, "{what}");
        }
    }

    #[test]
    fn a_follower_takes_over_only_after_seeing_no_change_for_the_duration_of_its_own_clock() {
        let t0 = Instant::now();
        let valid = Duration::from_secs(15);
        let s = |n: u64| t0 + Duration::from_secs(n);
        let record = |renew: &str| (Some("a".to_owned()), Some(renew.to_owned()));
        // First sight: the holder's renewTime may be far behind this clock
        // (skew); it is not expired until 15 s of seeing it unchanged.
        let seen = observe(None, record("2020-01-01T00:00:00Z"), s(0));
        assert!(!expired(&seen, s(15), valid));
        assert!(expired(&seen, s(16), valid));
        // The same record again keeps its first sighting...
        let again = observe(Some(&seen), record("2020-01-01T00:00:00Z"), s(10));
        assert_eq!(again.since, s(0));
        assert!(expired(&again, s(16), valid));
        // ...a renewal (or a new holder) starts a new one.
        let renewed = observe(Some(&seen), record("2020-01-01T00:00:05Z"), s(10));
        assert_eq!(renewed.since, s(10));
        assert!(!expired(&renewed, s(16), valid) && expired(&renewed, s(26), valid));
        let other = observe(Some(&renewed), (Some("b".into()), Some("2020-01-01T00:00:05Z".into())), s(12));
        assert_eq!(other.since, s(12));
    }
}
