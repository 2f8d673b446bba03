//! The Helm chart and the plain manifests rendered from it: in sync with the
//! CRDs and with each other, lint-clean, restricted, and strict about values.

mod common;

use std::process::Command;

use common::{TestEnv, repo_dir};

/// `helm template` of the chart with `args`, offline as GitOps tools run it
/// (no cluster, no `--kube-version`: helm's own default must satisfy the
/// chart's `kubeVersion`); (success, stdout, stderr).
fn template(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(std::path::Path::new(env.var("HOOKWARDEN_BIN")).join("helm"))
        .args(["template", "hw", "charts/hookwarden"])
        .args(args)
        .current_dir(repo_dir())
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn documents(yaml: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn the_rendered_manifests_are_up_to_date() {
    let out = Command::new(repo_dir().join("e2e/manifests")).arg("--stdout").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let committed = std::fs::read_to_string(repo_dir().join("manifests/hookwarden.yaml")).unwrap();
    assert!(
        String::from_utf8(out.stdout).unwrap() == committed,
        "manifests/hookwarden.yaml is out of date with charts/hookwarden: run e2e/manifests"
    );
}

#[test]
fn the_chart_carries_the_crds_unchanged() {
    let crds = std::fs::read_to_string(repo_dir().join("crds/hookwarden.yaml")).unwrap();
    let chart = std::fs::read_to_string(repo_dir().join("charts/hookwarden/crds/hookwarden.yaml")).unwrap();
    assert!(
        crds == chart,
        "charts/hookwarden/crds differs from crds/: cp crds/hookwarden.yaml charts/hookwarden/crds/"
    );
}

const EVERYTHING_ON: &[&str] = &[
    "--set",
    "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true",
    "--set",
    "networkPolicy.enabled=true,receiver.autoscaling.enabled=true",
    "--set",
    "receiver.ingress.enabled=true,receiver.ingress.host=hooks.example.com",
];

#[test]
fn helm_lint_is_clean_with_defaults_and_with_everything_on() {
    let env = TestEnv::load();
    env.tool_ok("helm", &["lint", "--strict", "charts/hookwarden"], None);
    let mut args = vec!["lint", "--strict", "charts/hookwarden"];
    args.extend_from_slice(EVERYTHING_ON);
    args.extend_from_slice(&["--set", "watchNamespace=team-a"]);
    env.tool_ok("helm", &args, None);
}

#[test]
fn wrong_values_fail_at_install_with_a_clear_message() {
    let env = TestEnv::load();
    for (set, says) in [
        ("redis.appendfsync=sometimes", "/redis/appendfsync"),
        ("receiver.ingress.enabled=true", "/receiver/ingress/host"),
        ("publicBaseUrl=hooks.example.com", "/publicBaseUrl"),
        ("operator.replicas=0", "/operator/replicas"),
        ("opertor.replicas=2", "opertor"),
        ("watchNamespace=Team_A", "/watchNamespace"),
        ("redis.url=localhost:6379", "/redis/url"),
        ("redis.sentinel.addresses={sentinel}", "/redis/sentinel/addresses"),
        ("redis.recovery=fetch", "recovery"),
        ("operator.recovery=sometimes", "/operator/recovery"),
    ] {
        let (ok, _, stderr) = template(&env, &["--set", set]);
        assert!(!ok, "{set} was accepted");
        assert!(stderr.contains(says), "{set}: {stderr}");
    }
}

#[test]
fn redis_sentinel_replaces_the_charts_redis_and_both_components_follow_it() {
    let env = TestEnv::load();
    let (ok, yaml, stderr) = template(
        &env,
        &[
            "--set",
            "redis.sentinel.masterName=mymaster",
            "--set",
            "redis.sentinel.addresses={s1:26379,s2:26379}",
        ],
    );
    assert!(ok, "{stderr}");
    let docs = documents(&yaml);
    assert!(!docs.iter().any(|d| d["kind"] == "StatefulSet"), "no Redis of the chart's own");
    let deployments: Vec<_> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 2);
    for d in deployments {
        let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
        let url = env.as_array().unwrap().iter().find(|e| e["name"] == "REDIS_URL").unwrap();
        assert_eq!(url["value"], "redis+sentinel://s1:26379,s2:26379/mymaster", "{}", d["metadata"]["name"]);
    }
}

#[test]
fn a_redis_cluster_replaces_the_charts_redis() {
    let env = TestEnv::load();
    let (ok, yaml, stderr) = template(&env, &["--set", "redis.cluster.nodes={r1:6379,r2:6379,r3:6379}"]);
    assert!(ok, "{stderr}");
    let docs = documents(&yaml);
    assert!(!docs.iter().any(|d| d["kind"] == "StatefulSet"), "no Redis of the chart's own");
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
        let url = env.as_array().unwrap().iter().find(|e| e["name"] == "REDIS_URL").unwrap();
        assert_eq!(url["value"], "redis+cluster://r1:6379,r2:6379,r3:6379", "{}", d["metadata"]["name"]);
    }
    let (ok, _, stderr) = template(&env, &["--set", "redis.cluster.nodes={r1}"]);
    assert!(!ok && stderr.contains("/redis/cluster/nodes"), "a node without a port is refused: {stderr}");
}

#[test]
fn numbers_reach_the_programs_as_integers_whatever_their_size() {
    // Helm reads every YAML number as a float: `quote` alone renders the
    // default body limit 26214400 as "2.62144e+07", which the receiver
    // refuses at start (seen only once the chart's pods ran).
    let env = TestEnv::load();
    let (ok, yaml, err) = template(&env, &["--set", "redis.ackReplicas=1,operator.resyncSeconds=86400"]);
    assert!(ok, "{err}");
    let mut checked = 0;
    for doc in documents(&yaml) {
        for container in
            doc.pointer("/spec/template/spec/containers").and_then(|c| c.as_array()).into_iter().flatten()
        {
            for var in container["env"].as_array().into_iter().flatten() {
                // Anything a float could have been printed as (not "0.0.0.0:8081").
                let numeric = |v: &&str| {
                    v.starts_with(|c: char| c.is_ascii_digit())
                        && v.chars().all(|c| c.is_ascii_digit() || ".e+-".contains(c))
                };
                if let Some(value) = var["value"].as_str().filter(numeric) {
                    assert!(value.parse::<u64>().is_ok(), "{} = {value:?} is not an integer", var["name"]);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 8, "only {checked} numeric settings rendered");
}

#[test]
fn every_pod_runs_restricted_with_resources_and_probes() {
    let env = TestEnv::load();
    let (ok, yaml, stderr) = template(&env, EVERYTHING_ON);
    assert!(ok, "{stderr}");
    let docs = documents(&yaml);
    let workloads: Vec<_> =
        docs.iter().filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet").collect();
    assert_eq!(workloads.len(), 3, "operator, receiver, redis");
    for w in workloads {
        let name = w["metadata"]["name"].as_str().unwrap();
        let pod = &w["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}");
            assert!(
                c["resources"]["requests"].is_object() && c["resources"]["limits"]["memory"].is_string(),
                "{name}"
            );
            assert!(c["livenessProbe"].is_object() && c["readinessProbe"].is_object(), "{name}");
        }
    }
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in [
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
        "Ingress",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    // The dashboard is valid JSON with the panels the runbook talks about.
    let dashboard =
        docs.iter().find(|d| d["kind"] == "ConfigMap" && d["data"]["hookwarden.json"].is_string()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(dashboard["data"]["hookwarden.json"].as_str().unwrap()).unwrap();
    let exprs = json.to_string();
    for metric in [
        "github_webhook_queue_length",
        "github_webhook_errors_total",
        "webhook_circuit_breaker_open",
        "agents_enabled",
        "hookwarden_github_rate_limit_remaining",
        "github_webhook_processing_duration_seconds_bucket",
    ] {
        assert!(exprs.contains(metric), "dashboard lacks {metric}");
    }
    // The alerts name metrics the receivers and the operator export.
    let rules = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    let alerts: Vec<&str> = rules["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert_eq!(alerts.len(), 9, "{alerts:?}");
    let recovery = rules["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["expr"].as_str().unwrap().contains("hookwarden_recovery_pending_age_seconds"));
    assert_eq!(recovery.count(), 2, "a warning and a critical alert before GitHub drops deliveries");
}

#[test]
fn the_plain_manifests_are_accepted_by_a_real_apiserver() {
    let env = TestEnv::load();
    let _ = env.kubectl(&["create", "namespace", "hookwarden"]);
    // NB: the file creates its keys namespace first, but a dry run creates nothing.
    let _ = env.kubectl(&["create", "namespace", "hookwarden-keys"]);
    env.kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--dry-run=server",
        "-f",
        "manifests/hookwarden.yaml",
        "-f",
        "manifests/samples/",
    ]);
}

/// Leaf paths of values.yaml, stopping at free-form maps.
fn value_paths(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    const FREE_FORM: &[&str] =
        &["resources", "labels", "annotations", "podAnnotations", "nodeSelector", "affinity", "urlSecretRef"];
    match v.as_object() {
        Some(map) if !FREE_FORM.iter().any(|f| path.ends_with(f)) => {
            for (k, v) in map {
                let here = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                value_paths(v, &here, out);
            }
        }
        _ => out.push(path.to_owned()),
    }
}

#[test]
fn the_readme_documents_every_value() {
    let values: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_dir().join("charts/hookwarden/values.yaml")).unwrap(),
    )
    .unwrap();
    let readme = std::fs::read_to_string(repo_dir().join("README.md")).unwrap();
    let table = &readme[readme.find("### Helm values").expect("a Helm values section")..];
    let mut paths = Vec::new();
    value_paths(&values, "", &mut paths);
    assert!(paths.len() > 40, "{paths:?}");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| {
            // A row names the value in full, or its parent followed by `.leaf`.
            let (parent, leaf) = p.rsplit_once('.').unwrap_or(("", p));
            let named = table.contains(&format!("`{p}`")) || table.contains(&format!("`{p}."));
            let as_sibling = table.contains(&format!("`{parent}.")) && table.contains(&format!("`.{leaf}`"));
            !(named || as_sibling)
        })
        .collect();
    assert!(missing.is_empty(), "values missing from the README's Helm values table: {missing:?}");
}

/// One end of a connection, as a NetworkPolicy sees it.
struct Peer<'a> {
    namespace: &'a str,
    /// Labels when it is a pod (a podSelector can match it), else none.
    labels: &'a [(&'a str, &'a str)],
    ip: std::net::IpAddr,
    /// Its named ports, for rules that name them.
    ports: &'a [(&'a str, u16)],
}

fn selects(selector: &serde_json::Value, labels: &[(&str, &str)]) -> bool {
    selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && v == lv))
}

/// Whether `policies` (of `namespace`) let `from` open `port`/`protocol` on
/// `to`: the NetworkPolicy rules of both ends, as a plugin that enforces
/// them applies them (ipBlock with except, podSelector within the policy's
/// namespace, numeric and named ports; no namespaceSelector is rendered).
fn allowed(policies: &[serde_json::Value], from: &Peer, to: &Peer, port: u16, protocol: &str) -> bool {
    let direction = |pod: &Peer, other: &Peer, types: &str, rules: &str, peers: &str, named: &Peer| {
        let applying: Vec<_> = policies
            .iter()
            .filter(|p| {
                p["metadata"]["namespace"] == pod.namespace
                    && !pod.labels.is_empty()
                    && selects(&p["spec"]["podSelector"], pod.labels)
                    && p["spec"]["policyTypes"].as_array().unwrap().iter().any(|t| t == types)
            })
            .collect();
        applying.is_empty()
            || applying.iter().any(|p| {
                p["spec"][rules].as_array().into_iter().flatten().any(|rule| {
                    let peer_ok = match rule[peers].as_array() {
                        None => true,
                        Some(list) => list.iter().any(|peer| {
                            if let Some(block) = peer.get("ipBlock") {
                                let cidr = |v: &serde_json::Value| {
                                    v.as_str().unwrap().parse::<ipnet::IpNet>().unwrap()
                                };
                                cidr(&block["cidr"]).contains(&other.ip)
                                    && !block["except"]
                                        .as_array()
                                        .into_iter()
                                        .flatten()
                                        .any(|e| cidr(e).contains(&other.ip))
                            } else {
                                other.namespace == pod.namespace
                                    && !other.labels.is_empty()
                                    && selects(&peer["podSelector"], other.labels)
                            }
                        }),
                    };
                    let port_ok = match rule["ports"].as_array() {
                        None => true,
                        Some(list) => list.iter().any(|p| {
                            let proto = p["protocol"].as_str().unwrap_or("TCP");
                            let number = match &p["port"] {
                                serde_json::Value::String(name) => {
                                    named.ports.iter().find(|(n, _)| n == name).map(|(_, n)| *n)
                                }
                                n => n.as_u64().map(|n| n as u16),
                            };
                            proto == protocol && number == Some(port)
                        }),
                    };
                    peer_ok && port_ok
                })
            })
    };
    direction(from, to, "Egress", "egress", "to", to) && direction(to, from, "Ingress", "ingress", "from", to)
}

#[test]
fn network_policies_let_each_component_reach_only_what_it_needs() {
    let env = TestEnv::load();
    let policies = |extra: &[&str]| {
        let mut args = vec!["-n", "hw"];
        args.extend_from_slice(extra);
        let (ok, out, err) = template(&env, &args);
        assert!(ok, "{err}");
        documents(&out).into_iter().filter(|d| d["kind"] == "NetworkPolicy").collect::<Vec<_>>()
    };
    let ip = |s: &str| s.parse().unwrap();
    let pod = |labels, ip_: &str, ports| Peer { namespace: "hw", labels, ip: ip(ip_), ports };
    let component = |c| {
        [
            ("app.kubernetes.io/name", "hookwarden"),
            ("app.kubernetes.io/instance", "hw"),
            ("app.kubernetes.io/component", c),
        ]
    };
    let (receiver, operator, redis_labels) =
        (component("receiver"), component("operator"), component("redis"));
    let receiver = pod(&receiver, "10.0.1.1", &[("http", 8080), ("admin", 8082)]);
    let operator = pod(&operator, "10.0.1.2", &[("metrics", 8081)]);
    let redis = pod(&redis_labels, "10.0.1.3", &[("redis", 6379)]);
    let outside = |ip_: &str| Peer { namespace: "", labels: &[], ip: ip(ip_), ports: &[] };
    let (dns, apiserver, agent, github, metadata) = (
        outside("10.96.0.10"),
        outside("10.0.0.5"),
        outside("10.20.30.40"),
        outside("140.82.112.3"),
        outside("169.254.169.254"),
    );
    let stranger_labels = [("app", "curious")];
    let stranger = Peer { namespace: "team-b", labels: &stranger_labels, ip: ip("10.0.2.9"), ports: &[] };
    let neighbour = pod(&stranger_labels, "10.0.1.9", &[]);

    let p = policies(&[]);
    for (what, from, to, port, proto, expected) in [
        ("receiver → DNS", &receiver, &dns, 53, "UDP", true),
        ("receiver → apiserver", &receiver, &apiserver, 6443, "TCP", true),
        ("receiver → Redis", &receiver, &redis, 6379, "TCP", true),
        ("receiver → an agent", &receiver, &agent, 8080, "TCP", true),
        ("receiver → cloud metadata", &receiver, &metadata, 80, "TCP", false),
        ("operator → GitHub", &operator, &github, 443, "TCP", true),
        ("operator → apiserver", &operator, &apiserver, 443, "TCP", true),
        ("operator → Redis", &operator, &redis, 6379, "TCP", true),
        ("operator → GitHub on another port", &operator, &github, 80, "TCP", false),
        ("operator → an agent", &operator, &agent, 8080, "TCP", false),
        ("operator → cloud metadata", &operator, &metadata, 443, "TCP", false),
        ("Redis → anywhere", &redis, &github, 443, "TCP", false),
        ("another namespace's pod → Redis", &stranger, &redis, 6379, "TCP", false),
        ("a pod of the namespace → Redis", &neighbour, &redis, 6379, "TCP", false),
        ("the internet → the receiver's webhook port", &github, &receiver, 8080, "TCP", true),
        ("another namespace's pod → the receiver's admin port", &stranger, &receiver, 8082, "TCP", false),
        ("a pod of the namespace → the receiver's admin port", &neighbour, &receiver, 8082, "TCP", true),
    ] {
        assert_eq!(allowed(&p, from, to, port, proto), expected, "{what}");
    }

    // Agents narrowed to a range: nothing else is reachable from receivers.
    let p = policies(&["--set-json", r#"networkPolicy.egress.agents=[{"ipBlock":{"cidr":"10.20.0.0/16"}}]"#]);
    assert!(allowed(&p, &receiver, &agent, 8080, "TCP"));
    assert!(!allowed(&p, &receiver, &outside("10.99.0.1"), 8080, "TCP"));
    assert!(!allowed(&p, &receiver, &github, 8443, "TCP"));
    // NB: 443 and 6443 stay open anywhere for the API server, unless its
    // addresses are given: then they are the only ones on those ports., when given, are the only ones on its ports.
    let p = policies(&["--set-json", r#"networkPolicy.egress.apiServer.cidrs=["10.0.0.5/32"]"#]);
    assert!(allowed(&p, &operator, &apiserver, 6443, "TCP"));
    assert!(!allowed(&p, &operator, &outside("10.0.0.6"), 6443, "TCP"));
    assert!(allowed(&p, &operator, &github, 443, "TCP"), "GitHub's port stays open");
    // External Redis: its ports, anywhere but link-local.
    let p = policies(&["--set", "redis.url=redis://redis.example:6379"]);
    assert!(allowed(&p, &operator, &outside("10.5.5.5"), 6379, "TCP"));
    assert!(!allowed(&p, &operator, &outside("169.254.1.1"), 6379, "TCP"));
    // Egress off: ingress rules only.
    let p = policies(&["--set", "networkPolicy.egress.enabled=false"]);
    assert!(allowed(&p, &operator, &metadata, 80, "TCP"));
    assert!(!allowed(&p, &stranger, &redis, 6379, "TCP"));
}
