//! Flags to configuration: pure functions from the parsed command line (and
//! what the process environment gave: the pod, a default name) to the
//! library's configurations and admin calls, tested without a process.

use std::time::Duration;

use crate::{
    PodRef,
    operator::{self, OperatorConfig, webhook_config::RecoveryWay},
    queue::ActivityFilter,
    receiver::{
        self, ReceiverConfig,
        admin::{self, replay},
    },
};

use super::{
    admin_client,
    args::AdminAction,
    serve_args::{OperatorArgs, ReceiverArgs, Recovery, pick},
};

/// The receiver's configuration; `default_consumer` names it when
/// `--consumer` does not.
pub(crate) fn receiver(args: ReceiverArgs, default_consumer: String, pod: Option<PodRef>) -> ReceiverConfig {
    let consumer = args.consumer.unwrap_or(default_consumer);
    ReceiverConfig {
        listen: args.listen,
        redis_url: args.redis_url,
        redis_prefix: args.redis_prefix,
        redis_replicas: args.replicas.get(),
        namespace: args.scope.namespace,
        keys_namespace: args.scope.keys_namespace,
        body_limit: args.body_limit,
        consumer,
        shutdown_grace: args.shutdown_grace,
        shutdown_delay: args.shutdown_delay,
        limits: receiver::ingest::serve::Limits {
            header_timeout: args.header_timeout,
            idle_timeout: args.idle_timeout,
            body_timeout: args.body_timeout,
            max_connections: args.max_connections,
            max_in_flight: args.max_in_flight,
            unauthenticated_bytes: args.unauthenticated_body_bytes,
        },
        failures_per_minute: args.failures_per_minute,
        failure_burst: args.failure_burst,
        replay_window: args.replay_window,
        dedup_window: args.dedup.dedup_window,
        trusted_proxies: args.trusted_proxies,
        github_meta_configmap: args.github_meta_configmap,
        github_meta_allowlist: args.github_meta_allowlist,
        agent_deny: args.agent_deny_cidrs,
        reclaim_after: args.reclaim_after,
        admin_listen: args.admin_listen,
        admin_token: args.admin_token,
        admin_kubernetes_auth: args.admin_kubernetes_auth,
        lease_namespace: args.lease_namespace,
        pod,
    }
}

/// The operator's configuration, or why the flags do not make one.
pub(crate) fn operator(
    args: OperatorArgs,
    instance: String,
    pod: Option<PodRef>,
) -> Result<OperatorConfig, String> {
    let recovery = match (args.recovery, &args.redis_url) {
        (Recovery::Fetch, None) => {
            return Err("--recovery fetch needs --redis-url: it queues in Redis".into());
        }
        (Recovery::Auto | Recovery::Fetch, Some(_)) => RecoveryWay::Fetch,
        (Recovery::Auto | Recovery::Redeliver, _) => RecoveryWay::Redeliver,
    };
    let allowed_apis = match crate::github::endpoints::AllowedApis::new(&args.github_api_urls) {
        Ok(list) => list,
        Err(error) => return Err(format!("--github-api-url: {error}")),
    };
    let lease_duration =
        pick(args.lease_duration, args.lease_seconds, Duration::from_secs).unwrap_or(Duration::from_secs(15));
    if lease_duration < Duration::from_secs(3) {
        // NB: renewed every third of it; a shorter one would be lost to a GC pause.
        return Err("--lease-duration must be at least 3s".into());
    }
    let redelivery = pick(args.redelivery_interval, args.redelivery_seconds, Duration::from_secs)
        .unwrap_or(Duration::from_secs(30));
    let meta_refresh = pick(args.github_meta_refresh, args.github_meta_refresh_seconds, Duration::from_secs)
        .unwrap_or(Duration::from_secs(3600));
    // NB: cluster-scoped, so one operator per cluster should have them: by
    // default the one that watches every namespace.
    let app_webhooks = match args.app_webhooks.as_deref() {
        None if args.scope.namespace.is_none() => Some(String::new()),
        None | Some("none") => None,
        Some("all") => Some(String::new()),
        Some(selector) => Some(selector.to_owned()),
    };
    Ok(OperatorConfig {
        app_webhooks,
        allowed_apis,
        github_limits: crate::github::Limits {
            max_response_bytes: args.github_max_response_bytes,
            max_pages: args.github_max_pages,
            etag_cache_bytes: args.github_etag_cache_bytes,
        },
        namespace: args.scope.namespace,
        keys_namespace: args.scope.keys_namespace,
        redis_url: args.redis_url,
        redis_prefix: args.redis_prefix,
        redis_replicas: args.replicas.get(),
        dedup_window: args.dedup.dedup_window,
        listen: args.listen,
        instance,
        pod,
        public_base_url: args.public_base_url,
        resync: pick(args.resync, args.resync_seconds, Duration::from_secs)
            .unwrap_or(Duration::from_secs(300)),
        lease_namespace: args.lease_namespace.clone(),
        lease_duration,
        redelivery_interval: Some(redelivery).filter(|d| !d.is_zero()),
        recovery,
        mutation_interval: pick(
            args.github_mutation_interval,
            args.github_mutation_interval_ms,
            Duration::from_millis,
        )
        .unwrap_or(Duration::from_secs(1)),
        meta: Some(meta_refresh).filter(|d| !d.is_zero()).map(|refresh| operator::meta::MetaConfig {
            namespace: args.lease_namespace.clone(),
            configmap: args.github_meta_configmap,
            refresh,
        }),
    })
}

/// The admin API call an `admin` subcommand makes (not `tail`: a stream).
pub(crate) fn admin_call(action: AdminAction) -> Result<admin_client::Call, String> {
    Ok(match action {
        AdminAction::Policies => admin_client::Call::Policies,
        AdminAction::Tail { .. } => unreachable!("tail follows the stream, it is no single call"),
        AdminAction::Enable { policy } => admin_client::Call::SetEnabled { policy, enabled: true },
        AdminAction::Disable { policy } => admin_client::Call::SetEnabled { policy, enabled: false },
        AdminAction::DeadLetters { policy, limit } => admin_client::Call::DeadLetters { policy, limit },
        AdminAction::Replay { policy, id, window_policy, since, until, agent, event, filter, dry_run } => {
            match (window_policy, since, policy, id) {
                (Some(policy), Some(since), _, _) => {
                    let now = crate::now_ms();
                    let window = replay::ReplayWindow {
                        since_ms: replay::parse_time(&since, now)?,
                        until_ms: until.map(|u| replay::parse_time(&u, now)).transpose()?,
                        agent,
                        event,
                        filter,
                        dry_run,
                    };
                    admin_client::Call::ReplayWindow { policy, window }
                }
                (_, _, Some(policy), Some(id)) => admin_client::Call::Replay { policy, id },
                _ => return Err("name a dead letter (POLICY ID) or a window (--policy P --since T)".into()),
            }
        }
        AdminAction::Purge { policy } => admin_client::Call::Purge { policy },
        AdminAction::FilterTest { policy, agent, limit, filter } => admin_client::Call::FilterTest {
            policy,
            test: admin::FilterTest { filter, agent, limit: Some(limit) },
        },
        AdminAction::Deliveries { status, event, repository, hook, limit } => {
            admin_client::Call::Deliveries {
                filter: ActivityFilter { status, event, repository, hook },
                limit,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{
        ObjectRef,
        cli::args::{Cli, Command},
    };

    fn parse(args: &[&str]) -> Command {
        let argv = std::iter::once("hookwarden").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}")).command
    }

    fn operator_args(args: &[&str]) -> OperatorArgs {
        let Command::Operator(mut parsed) = parse(&[&["operator"], args].concat()) else { unreachable!() };
        // NB: whatever REDIS_URL the test's environment has.
        parsed.redis_url = args.iter().position(|a| *a == "--redis-url").map(|i| args[i + 1].to_owned());
        parsed
    }

    #[test]
    fn the_operators_recovery_follows_redis_and_refuses_fetch_without_it() {
        let rows: [(&[&str], Result<RecoveryWay, &str>); 4] = [
            (&[], Ok(RecoveryWay::Redeliver)),
            (&["--redis-url", "redis://r"], Ok(RecoveryWay::Fetch)),
            (&["--redis-url", "redis://r", "--recovery", "redeliver"], Ok(RecoveryWay::Redeliver)),
            (&["--recovery", "fetch"], Err("--recovery fetch needs --redis-url")),
        ];
        for (args, want) in rows {
            let got = operator(operator_args(args), "op-1".into(), None).map(|c| c.recovery);
            match want {
                Ok(way) => assert_eq!(got.as_ref().ok(), Some(&way), "{args:?}"),
                Err(text) => assert!(got.unwrap_err().contains(text), "{args:?}"),
            }
        }
        let bad = operator(operator_args(&["--github-api-url", "not a url"]), "op".into(), None);
        assert!(bad.unwrap_err().starts_with("--github-api-url"), "the flag is named");
    }

    #[test]
    fn app_webhooks_are_managed_by_the_operator_of_every_namespace_unless_told() {
        let rows: [(&[&str], Option<&str>); 6] = [
            (&[], Some("")),
            (&["--namespace", "team-a"], None),
            (&["--namespace", "team-a", "--app-webhooks", "all"], Some("")),
            (&["--app-webhooks", "none"], None),
            (&["--namespace", "team-a", "--app-webhooks", "tier=one"], Some("tier=one")),
            (&["--app-webhooks", "tier=one"], Some("tier=one")),
        ];
        for (args, want) in rows {
            let got = operator(operator_args(args), "op".into(), None).unwrap().app_webhooks;
            assert_eq!(got.as_deref(), want, "{args:?}");
        }
    }

    #[test]
    fn times_are_durations_and_the_old_names_with_units_still_work_and_say_so() {
        let op = |args: &[&str]| operator(operator_args(args), "op".into(), None);
        // (resync, mutation interval, redelivery interval, lease), in seconds and ms.
        let times = |resync: u64, mutation_ms: u64, redelivery: Option<u64>, lease: u64| {
            let s = Duration::from_secs;
            (s(resync), Duration::from_millis(mutation_ms), redelivery.map(s), s(lease))
        };
        let new = ["--resync", "90s", "--github-mutation-interval", "250ms", "--redelivery-interval", "0s"];
        let old =
            ["--resync-seconds", "2", "--github-mutation-interval-ms", "200", "--redelivery-seconds", "5"];
        let cases: [(&[&str], _); 5] = [
            (&[], times(300, 1000, Some(30), 15)),
            (&new, times(90, 250, None, 15)),
            (&old, times(2, 200, Some(5), 15)),
            (&["--lease-duration", "1m"], times(300, 1000, Some(30), 60)),
            (
                &["--resync", "1h30m", "--resync-seconds", "2", "--lease-seconds", "4"],
                times(5400, 1000, Some(30), 4),
            ),
        ];
        for (args, want) in cases {
            let c = op(args).unwrap();
            assert_eq!(
                (c.resync, c.mutation_interval, c.redelivery_interval, c.lease_duration),
                want,
                "{args:?}"
            );
        }
        let old = operator_args(&["--resync-seconds", "2", "--github-meta-refresh-seconds", "1"]);
        let said = crate::cli::serve_args::deprecated(&old.replicas, Some(&old)).join("\n");
        assert!(said.contains("--resync-seconds") && said.contains("use --resync"), "{said}");
        assert!(said.contains("--github-meta-refresh-seconds"), "{said}");
        let new = operator_args(&["--resync", "2s"]);
        assert!(crate::cli::serve_args::deprecated(&new.replicas, Some(&new)).is_empty());
        assert!(
            op(&["--lease-duration", "2s"]).unwrap_err().contains("at least 3s"),
            "a lease too short is refused"
        );
        assert!(op(&["--github-meta-refresh", "0s"]).unwrap().meta.is_none(), "0s turns it off");
        // The receiver's times: a duration, or a bare number of seconds as the old flags took.
        let Command::Receiver(args) = parse(&[
            "receiver",
            "--redis-url",
            "redis://r",
            "--shutdown-grace",
            "1m",
            "--body-timeout-seconds",
            "7",
            "--replay-window",
            "0s",
        ]) else {
            unreachable!()
        };
        let c = receiver(args, "r".into(), None);
        assert_eq!(
            (c.shutdown_grace, c.limits.body_timeout, c.replay_window),
            (Duration::from_secs(60), Duration::from_secs(7), Duration::ZERO)
        );
        for bad in [
            &["receiver", "--redis-url", "r", "--body-timeout", "0s"][..],
            &["receiver", "--redis-url", "r", "--idle-timeout", "soon"],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("hookwarden").chain(bad.iter().copied())).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_zero_where_one_is_the_least_is_refused_not_raised() {
        let cases: [&[&str]; 7] = [
            &["receiver", "--header-timeout", "0"],
            &["receiver", "--idle-timeout", "0s"],
            &["receiver", "--body-timeout-seconds", "0"],
            &["receiver", "--max-connections", "0"],
            &["receiver", "--max-in-flight", "0"],
            &["operator", "--github-max-pages", "0"],
            &["operator", "--resync", "0s"],
        ];
        for args in cases {
            let argv = std::iter::once("hookwarden").chain(args.iter().copied());
            let error =
                Cli::try_parse_from(argv).err().unwrap_or_else(|| panic!("{args:?} accepted")).to_string();
            let flag = args[1].trim_end_matches("-seconds");
            assert!(error.contains(flag) && error.contains('0'), "{args:?}: {error}");
        }
        parse(&[
            "receiver",
            "--redis-url",
            "redis://r",
            "--max-connections",
            "1",
            "--header-timeout-seconds",
            "1",
        ]);
    }

    #[test]
    fn the_receivers_configuration_takes_its_flags_and_names_itself() {
        let Command::Receiver(args) =
            parse(&["receiver", "--redis-url", "redis://r", "--reclaim-after-seconds", "7"])
        else {
            unreachable!()
        };
        let named = args.consumer.clone();
        let config = receiver(args, "pod-a".into(), None);
        assert_eq!(config.redis_url, "redis://r");
        assert_eq!(config.reclaim_after, Duration::from_secs(7));
        assert_eq!(config.consumer, named.unwrap_or_else(|| "pod-a".into()), "--consumer, else the default");
    }

    #[test]
    fn admin_subcommands_become_calls_and_replay_takes_a_dead_letter_or_a_window() {
        let call = |args: &[&str]| {
            let Command::Admin { action, .. } = parse(&[&["admin"], args].concat()) else { unreachable!() };
            admin_call(action)
        };
        let policy: ObjectRef = "team/default".parse().unwrap();
        match call(&["replay", "team/default", "1-0"]).unwrap() {
            admin_client::Call::Replay { policy: p, id } => {
                assert_eq!((p, id.as_str()), (policy.clone(), "1-0"))
            }
            other => panic!("{other:?}"),
        }
        let before = crate::now_ms();
        match call(&["replay", "--policy", "team/default", "--since", "1h", "--agent", "a", "--dry-run"])
            .unwrap()
        {
            admin_client::Call::ReplayWindow { policy: p, window } => {
                assert_eq!(p, policy);
                assert!(
                    window.since_ms <= before - 3_600_000 + 1_000 && window.since_ms + 3_600_000 >= before
                );
                assert_eq!(
                    (window.agent.as_deref(), window.dry_run, window.until_ms),
                    (Some("a"), true, None)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(call(&["replay", "--policy", "team/default", "--since", "yesterday"]).is_err());
        assert!(call(&["replay", "team/default"]).unwrap_err().contains("name a dead letter"));
        let refused =
            Cli::try_parse_from(["hookwarden", "admin", "disable", "no-slash"]).err().unwrap().to_string();
        assert!(
            refused.contains("expected NAMESPACE/NAME"),
            "clap refuses it with ObjectRef's message: {refused}"
        );
    }
}
