//! The local cluster's node as e2e/cluster sets it up: Ready at the pinned
//! release, and confined. Pod and Service traffic must never leave this
//! machine, so the rules that guarantee it are checked as installed (nft,
//! routes, CNI, NAT, DNS); no test ever sends traffic out to try them.

mod common;

use std::{net::UdpSocket, process::Command, time::Duration};

use common::TestEnv;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn one_node_is_ready_at_the_pinned_release_on_containerd() {
    let env = TestEnv::load();
    let nodes: serde_json::Value =
        serde_json::from_str(&env.kubectl_ok(&["get", "nodes", "-o", "json"])).unwrap();
    let nodes = nodes["items"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    let node = &nodes[0];
    assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.34.4");
    assert!(
        node["status"]["nodeInfo"]["containerRuntimeVersion"].as_str().unwrap().starts_with("containerd://")
    );
    let ready =
        node["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(ready["status"], "True", "{ready}");
    let address = &node["status"]["addresses"][0];
    assert_eq!(address["address"], env.var("NODE_IP"), "the node's address is on the pod bridge");
}

#[test]
fn forwarded_traffic_from_pods_and_services_may_only_go_to_pods() {
    let env = TestEnv::load();
    let (bridge, pods, services) = (env.var("NODE_BRIDGE"), env.var("POD_CIDR"), env.var("SERVICE_CIDR"));
    let table = run("nft", &["list", "table", "inet", "hookwarden"]);
    assert!(table.contains("type filter hook forward priority filter - 10; policy accept;"), "{table}");
    // Whatever else (kube-proxy, the CNI plugins) accepts later, a drop in
    // this earlier base chain is final.
    for rule in [
        format!(r#"iifname "{bridge}" oifname != "{bridge}" drop"#),
        format!("ip daddr != {pods} drop"),
        format!(r#"meta nfproto ipv6 iifname "{bridge}" drop"#),
    ] {
        assert!(table.contains(&rule), "missing `{rule}` in\n{table}");
    }
    let saddr = table.lines().find(|l| l.contains("ip daddr != ")).unwrap();
    assert!(saddr.contains(pods) && saddr.contains(services), "both ranges are confined: {saddr}");
}

#[test]
fn the_pod_bridge_has_no_uplink_and_nothing_is_masqueraded_out() {
    let env = TestEnv::load();
    let bridge = env.var("NODE_BRIDGE");
    // Every port of the bridge is a pod's veth.
    for port in run("ip", &["-o", "-d", "link", "show", "master", bridge]).lines() {
        assert!(port.contains(" veth "), "a port of {bridge} is not a pod's veth: {port}");
    }
    // Host traffic to a Service address without a rule stays on the bridge.
    let route = run("ip", &["route", "show", env.var("SERVICE_CIDR")]);
    assert!(route.contains(&format!("dev {bridge}")), "{route}");
    // CNI does not masquerade; kube-proxy's only MASQUERADE is for Service
    // traffic it marked (hairpin), which goes to a pod.
    let conflist =
        std::fs::read_to_string(format!("{}/cni/10-hookwarden.conflist", env.var("NODE_DIR"))).unwrap();
    let conf: serde_json::Value = serde_json::from_str(&conflist).unwrap();
    assert_eq!(conf["plugins"][0]["ipMasq"], false);
    let nat = run("iptables", &["-t", "nat", "-S"]);
    for rule in nat.lines().filter(|l| l.contains("MASQUERADE")) {
        assert!(
            rule.starts_with("-A KUBE-POSTROUTING "),
            "a masquerade rule outside kube-proxy's marked chain: {rule}"
        );
    }
    assert!(nat.contains("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"), "{nat}");
    assert!(!nat.contains(" CNI-"), "no CNI NAT chains: {nat}");
}

/// One DNS question of type A to `server`; (response code, IPv4 answers).
fn dns_query(server: &str, name: &str) -> (u8, Vec<std::net::Ipv4Addr>) {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.send_to(&q, (server, 53)).unwrap();
    let mut buf = [0u8; 1500];
    let n = socket.recv(&mut buf).expect("an answer from the cluster DNS");
    let r = &buf[..n];
    assert_eq!(&r[..2], &[0x12, 0x34]);
    let answers = u16::from_be_bytes([r[6], r[7]]);
    // Skip the header and the question, then read each answer's A record.
    let mut i = q.len(); // the answer repeats the header and the question
    let mut out = Vec::new();
    for _ in 0..answers {
        i += if r[i] & 0xc0 == 0xc0 { 2 } else { r[i..].iter().position(|b| *b == 0).unwrap() + 1 };
        let (kind, len) =
            (u16::from_be_bytes([r[i], r[i + 1]]), u16::from_be_bytes([r[i + 8], r[i + 9]]) as usize);
        i += 10;
        if kind == 1 && len == 4 {
            out.push(std::net::Ipv4Addr::new(r[i], r[i + 1], r[i + 2], r[i + 3]));
        }
        i += len;
    }
    (r[3] & 0x0f, out)
}

#[test]
fn cluster_dns_answers_cluster_local_and_refuses_everything_else() {
    let env = TestEnv::load();
    let ip = env.var("NODE_IP");
    let (code, answers) = dns_query(ip, "kubernetes.default.svc.cluster.local");
    assert_eq!(code, 0);
    let service_ip = env.kubectl_ok(&[
        "get",
        "service",
        "kubernetes",
        "-n",
        "default",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(answers, [service_ip.parse::<std::net::Ipv4Addr>().unwrap()]);
    // Not a cluster name: refused on the spot, never looked up elsewhere.
    let (code, answers) = dns_query(ip, "example.com");
    assert_eq!((code, answers.len()), (5, 0), "REFUSED, no answer");
    // And it could not forward if it were told to: the plugin is not built in.
    let plugins = run(&format!("{}/coredns", env.var("HOOKWARDEN_BIN")), &["-plugins"]);
    assert!(plugins.contains("kubernetes") && !plugins.contains("forward"), "{plugins}");
}
