//! The `hookwarden` binary: parses the command line and calls into the library.

use clap::{Parser, Subcommand};

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
    /// `hookwarden crds > crds/hookwarden.io.yaml` regenerates the committed copy.
    Crds,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => match hookwarden::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                std::process::ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
