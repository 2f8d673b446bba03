//! The `hookwarden` command line, which `main.rs` hands over to: the
//! subcommands and flags (`args`, `serve_args`), flags to configuration
//! as pure functions (`config`), and each subcommand's run
//! (`commands`); the admin API's client side: its calls ([`admin_client`]),
//! their tables ([`admin_view`]), the Server-Sent Events reader ([`sse`])
//! and `hookwarden forward` ([`forward`]). Nothing here decides anything the
//! library does not.

use std::process::ExitCode;

use clap::Parser;

pub mod admin_client;
pub mod admin_view;
mod args;
mod commands;
mod config;
pub mod forward;
mod serve_args;
pub mod sse;

/// Parses the command line and runs the subcommand; the process's exit code.
pub fn main() -> ExitCode {
    commands::run(args::Cli::parse())
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    runtime_with(None)
}

/// The runtime, its tasks run by `workers` threads (`None`: one per CPU
/// this process may use). Work on large inputs ([`crate::cpu`]) gets
/// threads of its own besides.
pub(crate) fn runtime_with(workers: Option<usize>) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    builder.enable_all().build().expect("tokio runtime")
}

/// This process's name: the pod's (POD_NAME, HOSTNAME), else a random one.
pub(crate) fn default_consumer() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("hookwarden-{:08x}", rand::random::<u32>()))
}

pub(crate) fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    result.map_or_else(fail, |()| ExitCode::SUCCESS)
}

pub(crate) fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}
