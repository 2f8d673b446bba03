//! `github-sim`: the GitHub REST simulator as a process, for e2e and local use.

use clap::Parser;

#[derive(Parser)]
#[command(about = "A stateful GitHub REST simulator for hookwarden's tests")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8070")]
    listen: std::net::SocketAddr,
    /// Tokens the simulator accepts (repeatable); more via POST /_sim/tokens.
    #[arg(long = "token")]
    tokens: Vec<String>,
    /// Repositories that exist, as owner/name (repeatable).
    #[arg(long = "repo")]
    repos: Vec<String>,
    /// Organizations that exist (repeatable).
    #[arg(long = "org")]
    orgs: Vec<String>,
    /// GitHub's OpenAPI description (`@octokit/openapi`'s
    /// generated/api.github.com.json), to check all traffic against.
    #[arg(long)]
    openapi: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let mut sim = github_sim::Sim::new(&format!("http://{}", listener.local_addr()?));
    if let Some(path) = &args.openapi {
        sim = sim.with_spec(github_sim::openapi::Spec::load(path).map_err(std::io::Error::other)?);
    }
    args.tokens.iter().for_each(|t| sim.add_token(t));
    args.repos.iter().for_each(|r| sim.add_repo(r));
    args.orgs.iter().for_each(|o| sim.add_org(o));
    eprintln!("github-sim listening on {}", listener.local_addr()?);
    axum::serve(listener, sim.router()).with_graceful_shutdown(hookwarden::shutdown_signal()).await
}
