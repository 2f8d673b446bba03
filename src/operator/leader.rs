//! Leader election with a `coordination.k8s.io` Lease, so that of several
//! operator replicas exactly one writes to GitHub and to Kubernetes.
//!
//! The protocol is client-go's: the holder renews `spec.renewTime` every
//! `lease_duration / 3`; another replica takes the Lease over only when it was
//! not renewed for `lease_duration`. Every write is a replace carrying the
//! `resourceVersion` it read, so of two replicas racing for it one gets a 409
//! and stays a follower. A leader that cannot renew in time stops acting
//! (the process exits and its Deployment restarts it as a follower); one that
//! shuts down gracefully hands the Lease back at once.

use std::time::Duration;

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
}

impl Election {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self { api, name: name.to_owned(), identity: identity.to_owned(), duration, owners: None }
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
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            let valid = i64::from(spec.lease_duration_seconds.unwrap_or(seconds));
            now.0.as_second() - t.0.as_second() > valid
        });
        if !ours && holder.is_some() && !expired {
            return Ok(Err(holder.unwrap_or_default()));
        }
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
            tracing::info!(lease = %self.name, previous = ?holder, "taking the leader Lease");
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        if !ours {
            lease.metadata.owner_references = self.owners.clone();
        }
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
