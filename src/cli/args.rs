//! Every subcommand and its flags, with the help text `--help` shows (the
//! operator's and the receiver's own flags are in [`super::serve_args`]).

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

use super::serve_args::{OperatorArgs, ReceiverArgs};
use crate::ObjectRef;

#[derive(Parser)]
#[command(name = "hookwarden", version, about = "GitHub webhooks, run the Kubernetes way")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Print the CustomResourceDefinitions as a multi-document YAML stream.
    ///
    /// `hookwarden crds > crds/hookwarden.yaml` regenerates the committed copy.
    Crds {
        /// Print the Markdown field reference (docs/crd-reference.md) instead.
        #[arg(long)]
        reference: bool,
    },
    /// Receive GitHub deliveries, queue them in Redis, dispatch them to agents.
    Receiver(ReceiverArgs),
    /// Run the controllers (AgentPolicy effective settings).
    Operator(OperatorArgs),
    /// Talk to a receiver's admin API.
    Admin {
        /// Base URL of the receiver's admin listener.
        #[arg(long, env = "HOOKWARDEN_ADMIN_URL", default_value = "http://127.0.0.1:8082")]
        url: String,
        /// Bearer token: the platform's admin token, or a Kubernetes identity's
        /// (default: the kubeconfig's current user's token).
        #[arg(long, env = "HOOKWARDEN_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A table for people, or the API's JSON or YAML for machines.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table, global = true)]
        output: OutputFormat,
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Send a policy's deliveries from a cluster to an agent on this machine:
    /// each is POSTed to --to with GitHub's headers, signed again with
    /// --secret, in order; held while the local agent is down, resumed
    /// without gaps or repeats after a lost connection.
    Forward {
        /// Base URL of a receiver's admin listener (e.g. after
        /// `kubectl port-forward deploy/hookwarden-receiver 8082`).
        #[arg(long, env = "HOOKWARDEN_ADMIN_URL", default_value = "http://127.0.0.1:8082")]
        url: String,
        /// Bearer token: the platform's admin token, or a Kubernetes identity's
        /// (default: the kubeconfig's current user's token).
        #[arg(long, env = "HOOKWARDEN_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The AgentPolicy whose deliveries to forward (NAMESPACE/NAME).
        #[arg(long)]
        policy: ObjectRef,
        /// The local agent's URL, e.g. http://localhost:3000/webhook.
        #[arg(long)]
        to: String,
        /// Only these events (comma-separated or repeated); all when absent.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// The local agent's webhook secret: each delivery is signed with it
        /// (X-Hub-Signature-256), as GitHub would.
        #[arg(long, env = "HOOKWARDEN_FORWARD_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Start with the deliveries the policy's history kept since then (an
        /// RFC 3339 time, or a duration ago: 90m, 1h30m), then go on live.
        /// Needs the policy's spec.history.
        #[arg(long)]
        since: Option<String>,
    },
    /// List hooks that hookwarden registered (their URL is under
    /// --public-base-url) and whose WebhookConfig no longer exists, on the
    /// given repositories and organizations; --delete removes them. Uses the
    /// kubeconfig to list WebhookConfigs in every namespace.
    Orphans {
        /// The public base URL the operator registers hooks under (its
        /// --public-base-url).
        #[arg(long, env = "HOOKWARDEN_PUBLIC_BASE_URL")]
        public_base_url: String,
        /// The GitHub API (GitHub Enterprise Server: https://HOST/api/v3).
        #[arg(long, env = "GITHUB_API_URL", default_value = crate::api::DEFAULT_API_URL)]
        api_url: String,
        /// A token that may read (and, with --delete, delete) the hooks.
        #[arg(long, env = "GITHUB_TOKEN", hide_env_values = true)]
        token: String,
        /// Repositories to look at, owner/name (repeat, or comma-separated).
        #[arg(long = "repository", value_delimiter = ',')]
        repositories: Vec<String>,
        /// Organizations whose organization hooks to look at.
        #[arg(long = "organization", value_delimiter = ',')]
        organizations: Vec<String>,
        /// Delete the orphans found.
        #[arg(long)]
        delete: bool,
    },
    /// A recording HTTP sink that stands in for a downstream agent.
    SampleAgent {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// Verify each call's Standard Webhooks signature against these keys
        /// (`whsec_...`, comma-separated or repeated); unsigned or wrongly
        /// signed calls get 401.
        #[arg(
            long = "signing-key",
            env = "HOOKWARDEN_AGENT_SIGNING_KEYS",
            value_delimiter = ',',
            hide_env_values = true
        )]
        signing_keys: Vec<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
pub(crate) enum AdminAction {
    /// Every policy: effective settings, queue sizes, circuits.
    Policies,
    /// Set an AgentPolicy's spec.enabled to true (NAMESPACE/NAME).
    Enable { policy: ObjectRef },
    /// Set an AgentPolicy's spec.enabled to false (NAMESPACE/NAME): the kill switch.
    Disable { policy: ObjectRef },
    /// List a policy's dead letters.
    DeadLetters {
        policy: ObjectRef,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put one dead letter back in the queue (NAMESPACE/NAME ID), or send a
    /// window of a policy's history again (--policy NAMESPACE/NAME --since T):
    /// to --agent A only (a new agent backfilled) or to every agent today's
    /// filters send each delivery to; the original GUID is the ce-id.
    Replay {
        /// NAMESPACE/NAME of the policy holding the dead letter.
        policy: Option<ObjectRef>,
        /// The dead letter's ID.
        id: Option<String>,
        /// The policy whose history to replay, NAMESPACE/NAME.
        #[arg(long = "policy", id = "window_policy", value_name = "NAMESPACE/NAME", conflicts_with_all = ["policy", "id"], requires = "since")]
        window_policy: Option<ObjectRef>,
        /// Deliveries received since: an RFC 3339 time, or a duration ago (90m, 1h30m).
        #[arg(long, requires = "window_policy")]
        since: Option<String>,
        /// ...and before: an RFC 3339 time, or a duration ago (default: now).
        #[arg(long, requires = "window_policy")]
        until: Option<String>,
        /// Only to this agent.
        #[arg(long, requires = "window_policy")]
        agent: Option<String>,
        /// Only deliveries of this event.
        #[arg(long, requires = "window_policy")]
        event: Option<String>,
        /// Only deliveries this CEL expression is true for.
        #[arg(long, requires = "window_policy")]
        filter: Option<String>,
        /// Count what would be sent; send nothing.
        #[arg(long, requires = "window_policy")]
        dry_run: bool,
    },
    /// Delete all of a policy's dead letters.
    Purge { policy: ObjectRef },
    /// Follow deliveries, policy switches and circuits live (until Ctrl-C);
    /// reconnects without missing or repeating a delivery.
    Tail {
        /// Only this policy (NAMESPACE/NAME).
        #[arg(long)]
        policy: Option<String>,
        /// Only this event (`push`, `pull_request`, ...).
        #[arg(long)]
        event: Option<String>,
    },
    /// Evaluate a CEL filter against a policy's recent deliveries (a sample
    /// of at most ten a second, the last 100) and show which would match.
    FilterTest {
        /// The policy, NAMESPACE/NAME.
        #[arg(long)]
        policy: ObjectRef,
        /// Test it as this agent's filter: after the policy's filter and
        /// the agent's events and repositories.
        #[arg(long)]
        agent: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The CEL expression, e.g. "body.pull_request.base.ref == 'main'".
        filter: String,
    },
    /// Recent deliveries and dispatches, newest first.
    Deliveries {
        /// queued, duplicate, rejected, delivered, retry, dead_letter or filtered.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        event: Option<String>,
        /// owner/name
        #[arg(long)]
        repository: Option<String>,
        /// NAMESPACE/NAME of a WebhookConfig
        #[arg(long)]
        hook: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}
