//! What a reconcile can fail with: one variant per kind of cause, and for
//! Kubernetes the step it was taking ([`Step`]), each with its metric label
//! and (through `webhook_config::status::failure_reason`) its Ready reason.

use super::webhook_config;

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API, {step}: {source}")]
    Kube {
        step: Step,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    GitHub(#[from] crate::github::Error),
    /// Only an edit of the resource (or its Secrets) can fix it.
    #[error(transparent)]
    Config(#[from] webhook_config::ConfigError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A bug met by this object's data: its reconcile stopped, the process
    /// and every other object's reconciles did not.
    #[error("reconcile panicked (a bug; please report it): {0}")]
    Panicked(String),
    /// A WebhookConfig being deleted keeps its finalizer: a hook of its is
    /// still on GitHub (why, and what to do).
    #[error("{0}")]
    DeletionBlocked(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { step, .. } => step.metric_label(),
            Self::GitHub(e) => e.metric_label(),
            Self::Config(_) => "config",
            Self::Panicked(_) => "panic",
            Self::DeletionBlocked(_) => "deletion_blocked",
            Self::Finalizer(f) => match f.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
        }
    }
}

/// The step of a reconcile a Kubernetes API call was for: in the message,
/// the metric label (`kube_<step>`), and the Ready reason's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reading the object again before acting on it.
    ReadObject,
    /// Reading a Secret with GitHub credentials.
    ReadCredentials,
    /// Reading a GitHubConnection.
    ReadConnection,
    /// Reading, creating or changing the hook's key Secret.
    KeySecret,
    /// Listing the receivers' Leases (which keys they loaded).
    ReceiverLeases,
    /// Writing status.
    WriteStatus,
}

impl Step {
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::ReadObject => "kube_read_object",
            Self::ReadCredentials => "kube_read_credentials",
            Self::ReadConnection => "kube_read_connection",
            Self::KeySecret => "kube_key_secret",
            Self::ReceiverLeases => "kube_receiver_leases",
            Self::WriteStatus => "kube_write_status",
        }
    }

    /// `source` as an error of this step.
    pub fn error(self) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { step: self, source }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ReadObject => "reading the object",
            Self::ReadCredentials => "reading the credentials Secret",
            Self::ReadConnection => "reading the GitHubConnection",
            Self::KeySecret => "reading or writing the key Secret",
            Self::ReceiverLeases => "listing the receivers' Leases",
            Self::WriteStatus => "writing status",
        })
    }
}
