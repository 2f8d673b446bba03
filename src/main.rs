//! The `hookwarden` binary: parses the command line and calls into the library.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use hookwarden::{
    operator::{self, OperatorConfig},
    receiver::{self, ReceiverConfig, http::DEFAULT_BODY_LIMIT},
};

#[derive(Parser)]
#[command(
    name = "hookwarden",
    version,
    about = "GitHub webhooks, run the Kubernetes way"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as a multi-document YAML stream.
    ///
    /// `hookwarden crds > crds/hookwarden.yaml` regenerates the committed copy.
    Crds,
    /// Receive GitHub deliveries, queue them in Redis, dispatch them to agents.
    Receiver(ReceiverArgs),
    /// Run the controllers (AgentPolicy effective settings).
    Operator(OperatorArgs),
    /// A recording HTTP sink that stands in for a downstream agent.
    SampleAgent {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
    },
}

#[derive(clap::Args)]
struct OperatorArgs {
    /// Address to serve /healthz, /readyz and /metrics on.
    #[arg(long, env = "HOOKWARDEN_LISTEN", default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    /// Redis of the receivers; enables the dead-letter safety rule.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of every Redis key; receivers and operator must agree on it.
    #[arg(long, env = "HOOKWARDEN_REDIS_PREFIX", default_value = "hookwarden")]
    redis_prefix: String,
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "HOOKWARDEN_NAMESPACE")]
    namespace: Option<String>,
}

#[derive(clap::Args)]
struct ReceiverArgs {
    /// Address to serve /hooks, /healthz, /readyz and /metrics on.
    #[arg(long, env = "HOOKWARDEN_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Redis holding the queues, e.g. redis://redis:6379.
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// Prefix of every Redis key; receivers and operator must agree on it.
    #[arg(long, env = "HOOKWARDEN_REDIS_PREFIX", default_value = "hookwarden")]
    redis_prefix: String,
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "HOOKWARDEN_NAMESPACE")]
    namespace: Option<String>,
    /// Largest delivery accepted, in bytes (GitHub sends at most 25 MiB).
    #[arg(long, env = "HOOKWARDEN_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// This replica's name in the Redis consumer group (default: the pod name,
    /// else the host name).
    #[arg(long)]
    consumer: Option<String>,
    /// Seconds in-flight dispatches may take to finish on SIGTERM.
    #[arg(long, env = "HOOKWARDEN_SHUTDOWN_GRACE", default_value_t = 25)]
    shutdown_grace_seconds: u64,
    /// Seconds beyond the slowest agent's timeout after which a crashed
    /// replica's unacknowledged deliveries are taken over.
    #[arg(long, env = "HOOKWARDEN_RECLAIM_AFTER", default_value_t = 15)]
    reclaim_after_seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => match hookwarden::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(error),
        },
        Command::Receiver(args) => {
            hookwarden::telemetry::init_logging();
            let consumer = args.consumer.unwrap_or_else(default_consumer);
            let config = ReceiverConfig {
                listen: args.listen,
                redis_url: args.redis_url,
                redis_prefix: args.redis_prefix,
                namespace: args.namespace,
                body_limit: args.body_limit,
                consumer,
                shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
                reclaim_after: Duration::from_secs(args.reclaim_after_seconds),
            };
            runtime().block_on(async {
                let client = match kube::Client::try_default().await {
                    Ok(client) => client,
                    Err(error) => return fail(error),
                };
                match receiver::run(config, client).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => fail(error),
                }
            })
        }
        Command::SampleAgent { listen } => {
            hookwarden::telemetry::init_logging();
            runtime().block_on(async {
                let listener = match tokio::net::TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(error) => return fail(format!("cannot listen on {listen}: {error}")),
                };
                tracing::info!(%listen, "sample agent listening");
                match hookwarden::sample_agent::serve(listener, Default::default()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => fail(error),
                }
            })
        }
        Command::Operator(args) => {
            hookwarden::telemetry::init_logging();
            let config = OperatorConfig {
                namespace: args.namespace,
                redis_url: args.redis_url,
                redis_prefix: args.redis_prefix,
                listen: args.listen,
                instance: default_consumer(),
            };
            runtime().block_on(async {
                let client = match kube::Client::try_default().await {
                    Ok(client) => client,
                    Err(error) => return fail(error),
                };
                match operator::run(config, client).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => fail(error),
                }
            })
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// This process's name: the pod's (POD_NAME, HOSTNAME), else a random one.
fn default_consumer() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("hookwarden-{:08x}", rand::random::<u32>()))
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}
