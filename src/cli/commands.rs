//! Each subcommand's run: the I/O around the library (a runtime, a
//! Kubernetes client, stdout), the configuration assembled by [`super::config`].

use std::process::ExitCode;

use crate::{
    operator,
    receiver::{self, admin::access::kubeconfig_token},
};

use super::{
    admin_client, admin_view,
    args::{AdminAction, Cli, Command, OutputFormat},
    config, default_consumer, exit_code, fail, runtime, runtime_with,
};

pub(crate) fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Crds { reference: true } => {
            print!("{}", crate::api::crd_reference());
            ExitCode::SUCCESS
        }
        Command::Crds { reference: false } => match crate::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(error),
        },
        Command::Receiver(args) => {
            let traces =
                match crate::trace::Tracing::new("hookwarden-receiver", args.otlp_endpoint.as_deref()) {
                    Ok(traces) => traces,
                    Err(error) => return fail(error),
                };
            crate::telemetry::init_logging(Some(&traces));
            for warning in super::serve_args::deprecated(&args.replicas, None) {
                tracing::warn!("{warning}");
            }
            let workers = args.worker_threads;
            let config = config::receiver(args, default_consumer(), crate::PodRef::from_env());
            let code = runtime_with(Some(workers)).block_on(async {
                match kube::Client::try_default().await {
                    Ok(client) => exit_code(receiver::run(config, client).await),
                    Err(error) => fail(error),
                }
            });
            traces.shutdown();
            code
        }
        Command::Admin { url, token, output, action: AdminAction::Tail { policy, event } } => {
            let token = match token.map_or_else(kubeconfig_token, Ok) {
                Ok(token) => token,
                Err(error) => return fail(error),
            };
            let query: Vec<(&str, String)> = [("policy", policy), ("event", event)]
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect();
            runtime().block_on(async {
                let print = async |event: &super::sse::SseEvent| {
                    use std::io::Write;
                    let line = match output {
                        OutputFormat::Table => {
                            admin_view::tail_line(&event.event, &event.data, crate::now_ms())
                        }
                        OutputFormat::Json => {
                            admin_view::tail_record(&event.event, &event.data, admin_view::Output::Json)
                        }
                        OutputFormat::Yaml => {
                            admin_view::tail_record(&event.event, &event.data, admin_view::Output::Yaml)
                        }
                    };
                    write!(std::io::stdout(), "{line}").and_then(|()| std::io::stdout().flush()).is_ok()
                };
                let trouble = |text: &str| eprintln!("{text}");
                match super::sse::tail(&url, "/admin/stream", &token, &query, print, trouble).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => fail(error),
                }
            })
        }
        Command::Forward { url, token, policy, to, events, secret, since } => {
            let token = match token.map_or_else(kubeconfig_token, Ok) {
                Ok(token) => token,
                Err(error) => return fail(error),
            };
            let since_ms = match since
                .map(|t| crate::receiver::admin::replay::parse_time(&t, crate::now_ms()))
                .transpose()
            {
                Ok(since_ms) => since_ms,
                Err(error) => return fail(format!("--since: {error}")),
            };
            let forward =
                crate::cli::forward::Forward { admin: url, token, policy, to, events, secret, since_ms };
            runtime().block_on(async {
                let say = |line: &str| println!("{line}");
                match forward.run(say).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => fail(error),
                }
            })
        }
        Command::Admin { url, token, output, action } => {
            let token = match token.map_or_else(kubeconfig_token, Ok) {
                Ok(token) => token,
                Err(error) => return fail(error),
            };
            let call = match config::admin_call(action) {
                Ok(call) => call,
                Err(error) => return fail(error),
            };
            let output = match output {
                OutputFormat::Table => admin_view::Output::Table,
                OutputFormat::Json => admin_view::Output::Json,
                OutputFormat::Yaml => admin_view::Output::Yaml,
            };
            runtime().block_on(async {
                match admin_client::call(&url, &token, call.clone()).await {
                    Ok(answer) => {
                        // NB: not println!, which panics when a pipe (`| head`) closes early.
                        use std::io::Write;
                        let text = admin_view::render(&call, &answer, output, crate::now_ms());
                        let _ = write!(std::io::stdout(), "{text}");
                        ExitCode::SUCCESS
                    }
                    Err(error) => fail(error),
                }
            })
        }
        Command::Orphans { public_base_url, api_url, token, repositories, organizations, delete } => {
            use crate::github::{Auth, Client, Limits, Shared, Target};
            if repositories.is_empty() && organizations.is_empty() {
                return fail("name at least one --repository or --organization to look at");
            }
            let targets = repositories
                .into_iter()
                .map(Target::Repository)
                .chain(organizations.into_iter().map(Target::Organization))
                .collect();
            let metrics = crate::telemetry::OperatorMetrics::new();
            let shared = std::sync::Arc::new(Shared::new(
                std::time::Duration::from_secs(1),
                Limits::default(),
                metrics.github_requests.clone(),
                metrics.github_rate_limit_remaining.clone(),
            ));
            let github = Client::new(shared, &api_url, Auth::Token(token), "", "orphans");
            let look = crate::orphans::Look { github, targets, public_base_url };
            runtime().block_on(async {
                let client = match kube::Client::try_default().await {
                    Ok(client) => client,
                    Err(error) => return fail(error),
                };
                let found = match crate::orphans::find(&look, client).await {
                    Ok(found) => found,
                    Err(error) => return fail(error),
                };
                if found.is_empty() {
                    println!("no orphaned hooks");
                    return ExitCode::SUCCESS;
                }
                let rows = found
                    .iter()
                    .map(|o| vec![o.target.to_string(), o.id.to_string(), o.owner.to_string(), o.url.clone()])
                    .collect();
                print!("{}", admin_view::table("", &["TARGET", "HOOK", "WEBHOOKCONFIG (GONE)", "URL"], rows));
                if !delete {
                    println!("{} orphaned hook(s); --delete removes them", found.len());
                    return ExitCode::SUCCESS;
                }
                for o in &found {
                    match look.github.delete_hook(&o.target, o.id).await {
                        Ok(()) => println!("deleted hook {} on {}", o.id, o.target),
                        Err(error) => {
                            return fail(format!("deleting hook {} on {}: {error}", o.id, o.target));
                        }
                    }
                }
                ExitCode::SUCCESS
            })
        }
        Command::SampleAgent { listen, signing_keys } => {
            crate::telemetry::init_logging(None);
            let keys: Result<Vec<_>, _> =
                signing_keys.iter().map(|k| crate::standard_webhooks::SigningKey::parse(k)).collect();
            let sink = match keys {
                Ok(keys) => crate::sample_agent::Sink::verifying(keys),
                Err(error) => return fail(format!("--signing-key: {error}")),
            };
            runtime().block_on(async {
                let listener = match tokio::net::TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(error) => return fail(format!("cannot listen on {listen}: {error}")),
                };
                tracing::info!(%listen, "sample agent listening");
                exit_code(crate::sample_agent::serve(listener, sink).await)
            })
        }
        Command::Operator(args) => {
            crate::telemetry::init_logging(None);
            for warning in super::serve_args::deprecated(&args.replicas, Some(&args)) {
                tracing::warn!("{warning}");
            }
            let instance = args
                .instance
                .clone()
                .unwrap_or_else(|| format!("{}-{}", default_consumer(), std::process::id()));
            let config = match config::operator(args, instance, crate::PodRef::from_env()) {
                Ok(config) => config,
                Err(error) => return fail(error),
            };
            runtime().block_on(async {
                match kube::Client::try_default().await {
                    Ok(client) => exit_code(operator::run(config, client).await),
                    Err(error) => fail(error),
                }
            })
        }
    }
}
