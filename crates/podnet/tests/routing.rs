//! Pods on every node reach each other without NAT, with both backends; nodes reach pods;
//! traffic leaving the cluster is masqueraded; the agent follows nodes, repairs drift and
//! restarts without cutting traffic. Run as root.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, stdout, Lab, PODNET};

/// A pod on `node` serving HTTP on 8080 and UDP echo on 5353.
fn server_pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: s, command: [podnet, probe, serve, --http, \"8080\", --udp-echo, \"5353\"]}}]\n---\n"
    )
}

fn node_ip(lab: &Lab, node: &str) -> String {
    let out = lab.ok(&["get", "nodes", node, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .expect("node address")
        .to_string()
}

/// A server on the external host, until dropped.
struct External(Child);

impl External {
    fn start(lab: &Lab) -> External {
        let child = Command::new(PODNET)
            .args([
                "lab", "--name", &lab.name, "exec", "external", "--", "podnet", "probe", "serve",
                "--http", "8080",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the external server");
        External(child)
    }
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pods_on_three_nodes_reach_each_other(backend: &str) {
    let lab = Lab::up(3, &["--backend", backend]);
    let names = ["p1", "p2", "p3"];
    let yaml: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| server_pod(n, &format!("node-{}", i + 1)))
        .collect();
    lab.apply(&yaml);
    for n in names {
        lab.wait_ready(&format!("pod/{n}"), "30s");
    }
    let ips: Vec<String> = names.iter().map(|n| lab.pod_ip(n)).collect();
    for (i, from) in names.iter().enumerate() {
        // The address a pod has on eth0 is the one everybody sees.
        let eth0 = stdout(&lab.exec(from, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]));
        assert!(
            eth0.contains(&format!("inet {}/", ips[i])),
            "{from}: {eth0}"
        );
        for (j, to) in names.iter().enumerate() {
            if i == j {
                continue;
            }
            let seen = lab.get(from, &format!("http://{}:8080/clientip", ips[j]));
            assert!(
                seen.starts_with(&format!("{}:", ips[i])),
                "{backend}: {from} -> {to} was seen as {seen:?}"
            );
            let udp = stdout(&lab.exec(
                from,
                &[
                    "podnet",
                    "probe",
                    "udp",
                    &format!("{}:5353", ips[j]),
                    "-m",
                    "x",
                ],
            ));
            assert!(
                udp.starts_with(&format!("{to} {}:", ips[i])),
                "{backend}: UDP {from} -> {to}: {udp:?}"
            );
        }
    }
    let flows = |protocol| lab.flows("node-1", protocol);
    // Conntrack sees the pods' connections whole, as they were opened: an entry that
    // starts at the server means one direction skipped conntrack, and then every packet
    // of the other direction is INVALID to it.
    let tcp = flows(podnet_kernel::conntrack::PROTO_TCP);
    let (p1, p2) = (ips[0].as_str(), ips[1].as_str());
    let is = |t: &podnet_kernel::conntrack::Tuple, src: &str, dst: &str, port: (u16, u16)| {
        t.src.to_string() == src
            && t.dst.to_string() == dst
            && (port.0 == 0 || t.src_port == port.0)
            && (port.1 == 0 || t.dst_port == port.1)
    };
    assert!(
        tcp.iter().any(|f| is(&f.original, p1, p2, (0, 8080))),
        "{backend}: node-1 tracks p1 -> p2:8080 as opened: {tcp:?}"
    );
    let halves: Vec<_> = tcp
        .iter()
        .filter(|f| is(&f.original, p2, p1, (8080, 0)))
        .collect();
    assert!(
        halves.is_empty(),
        "{backend}: node-1 tracks p1 -> p2:8080 from its middle (its replies only): {halves:?}"
    );
    if backend == "vxlan" {
        // The tunnel's outer packets are not tracked (only the pods' flows inside are).
        let flows = flows(podnet_kernel::conntrack::PROTO_UDP);
        assert!(
            !flows.iter().any(|f| f.original.dst_port == 4789),
            "VXLAN packets went through conntrack: {flows:?}"
        );
        assert!(
            flows.iter().any(|f| f.original.dst_port == 5353),
            "the pods' UDP flows are tracked: {flows:?}"
        );
    }
    // A node reaches a pod on another node and the pod sees the node's address.
    let seen = lab.get("node/node-1", &format!("http://{}:8080/clientip", ips[2]));
    assert!(
        seen.starts_with(&format!("{}:", node_ip(&lab, "node-1"))),
        "{backend}: node-1 -> p3 seen as {seen:?}"
    );
    // Leaving the cluster, a pod is its node.
    let _external = External::start(&lab);
    let seen = eventually(Duration::from_secs(5), || {
        let s = lab.get("p2", "http://198.51.100.1:8080/clientip");
        (!s.is_empty() && !s.contains("error")).then_some(s)
    })
    .expect("the external host answers");
    assert!(
        seen.starts_with(&format!("{}:", node_ip(&lab, "node-2"))),
        "{backend}: p2 -> external seen as {seen:?}"
    );
}

#[test]
fn vxlan_pods_on_three_nodes_reach_each_other() {
    pods_on_three_nodes_reach_each_other("vxlan");
}

#[test]
fn host_gw_pods_on_three_nodes_reach_each_other() {
    pods_on_three_nodes_reach_each_other("host-gw");
}

fn routes_of(lab: &Lab, node: &str) -> String {
    stdout(&lab.exec(&format!("node/{node}"), &["ip", "-4", "route"]))
}

fn nodes_join_and_leave(backend: &str) {
    let lab = Lab::up(2, &["--backend", backend]);
    lab.apply(&server_pod("a", "node-1"));
    lab.wait_ready("pod/a", "30s");
    assert!(lab.ok(&["node", "add"]).contains("node/node-3 added"));
    lab.apply(&server_pod("c", "node-3"));
    lab.wait_ready("pod/c", "30s");
    let (a, c) = (lab.pod_ip("a"), lab.pod_ip("c"));
    let seen = eventually(Duration::from_secs(2), || {
        let s = lab.get("a", &format!("http://{c}:8080/clientip"));
        s.starts_with(&format!("{a}:")).then_some(s)
    });
    assert!(
        seen.is_some(),
        "{backend}: the new node's pod is not reachable"
    );
    let cidr = c
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.0/24"))
        .expect("cidr");
    assert!(routes_of(&lab, "node-1").contains(&cidr));
    lab.ok(&["delete", "pod/c"]);
    lab.ok(&["node", "remove", "node-3"]);
    let gone = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), || (!routes_of(&lab, "node-1")
            .contains(&cidr))
        .then_some(()))
        .is_some(),
        "{backend}: node-1 still routes to the removed node's {cidr}: {}",
        routes_of(&lab, "node-1")
    );
    eprintln!("{backend}: route gone {:?} after the node", gone.elapsed());
}

#[test]
fn vxlan_nodes_join_and_leave() {
    nodes_join_and_leave("vxlan");
}

#[test]
fn host_gw_nodes_join_and_leave() {
    nodes_join_and_leave("host-gw");
}

fn agent_restart_and_drift(backend: &str) {
    let lab = Lab::up(2, &["--backend", backend]);
    lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: srv}\nspec:\n  nodeName: node-2\n  containers: [{name: s, command: [iperf3, -s]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: cli}\nspec:\n  nodeName: node-1\n  containers: [{name: c, command: [sleep, infinity]}]\n",
    );
    lab.wait_ready("pod/srv", "30s");
    lab.wait_ready("pod/cli", "30s");
    let srv = lab.pod_ip("srv");
    // Let iperf3's server listen.
    std::thread::sleep(Duration::from_millis(500));
    let transfer = lab.spawn_transfer("cli", &srv, "5", "200M");
    std::thread::sleep(Duration::from_millis(1500));
    let before: Vec<String> = ["node-1", "node-2"]
        .iter()
        .filter_map(|n| lab.agent_pid(n))
        .collect();
    assert_eq!(before.len(), 2, "both agents run");
    // The restarted agent finds strict reverse-path checking on node-1's underlay and
    // makes it loose, or node-1 could not reach pods on node-2 over VXLAN (the replies
    // come back over the underlay).
    let strict = [
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.eth0.rp_filter=1",
    ];
    assert!(lab.exec("node/node-1", &strict).status.success());
    for pid in &before {
        Command::new("kill")
            .args(["-9", pid])
            .status()
            .expect("kill");
    }
    let restarted = eventually(Duration::from_secs(5), || {
        let now: Vec<String> = ["node-1", "node-2"]
            .iter()
            .filter_map(|n| lab.agent_pid(n))
            .collect();
        (now.len() == 2 && now.iter().all(|p| !before.contains(p))).then_some(())
    });
    assert!(
        restarted.is_some(),
        "{backend}: the agents were not restarted"
    );
    let out = transfer.wait_with_output().expect("iperf3");
    assert!(
        out.status.success(),
        "{backend}: the transfer broke while the agents restarted: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ping = ["ping", "-c", "1", "-W", "2", srv.as_str()];
    assert!(
        lab.exec("node/node-1", &ping).status.success(),
        "{backend}: node-1, with strict reverse-path checking on eth0, does not reach srv"
    );
    let log = std::fs::read_to_string(lab.dir().join("nodes/node-1/agent.log")).expect("agent log");
    assert!(
        log.lines()
            .any(|l| l.contains("strict reverse-path checking on") && l.contains("eth0")),
        "{backend}: the agent did not say it loosened reverse-path checking:\n{log}"
    );

    // A route deleted by hand comes back.
    let cidr = srv
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.0/24"))
        .expect("cidr");
    assert!(lab
        .exec("node/node-1", &["ip", "route", "del", &cidr])
        .status
        .success());
    // The agent looks every second; the deadline leaves room for a loaded CI machine.
    let repaired = eventually(Duration::from_secs(10), || {
        routes_of(&lab, "node-1").contains(&cidr).then_some(())
    });
    assert!(
        repaired.is_some(),
        "{backend}: the deleted route to {cidr} was not restored; node-1's agent log:\n{}",
        std::fs::read_to_string(lab.dir().join("nodes/node-1/agent.log")).unwrap_or_default()
    );
    let log = std::fs::read_to_string(lab.dir().join("nodes/node-1/agent.log")).expect("agent log");
    assert!(
        log.contains("repaired"),
        "{backend}: the agent did not log the repair"
    );

    // A chain deleted inside podnet's table (the masquerade hook) comes back.
    let chain = ["list", "chain", "inet", "podnet", "postrouting"];
    assert!(lab
        .exec(
            "node/node-1",
            &["nft", "delete", "chain", "inet", "podnet", "postrouting"]
        )
        .status
        .success());
    // (The repair may be done before a second command could look: the agent hears of
    // the change from the kernel.)
    // The deadline leaves room for a loaded CI machine.
    let restored = eventually(Duration::from_secs(10), || {
        lab.exec(
            "node/node-1",
            &["nft"].iter().chain(&chain).copied().collect::<Vec<_>>(),
        )
        .status
        .success()
        .then_some(())
    });
    assert!(
        restored.is_some(),
        "{backend}: the deleted postrouting chain was not restored; node-1's agent log:\n{}",
        std::fs::read_to_string(lab.dir().join("nodes/node-1/agent.log")).unwrap_or_default()
    );
    let log = std::fs::read_to_string(lab.dir().join("nodes/node-1/agent.log")).expect("agent log");
    assert!(
        log.contains("chains of podnet's nftables table are gone (postrouting)"),
        "{backend}: the agent did not say what it repaired"
    );
}

#[test]
fn vxlan_agent_restart_keeps_traffic_and_drift_is_repaired() {
    agent_restart_and_drift("vxlan");
}

#[test]
fn host_gw_agent_restart_keeps_traffic_and_drift_is_repaired() {
    agent_restart_and_drift("host-gw");
}

#[test]
fn vxlan_full_size_packets_cross_the_tunnel_and_one_byte_more_fails_cleanly() {
    let lab = Lab::up(2, &["--backend", "vxlan"]);
    lab.apply(&(server_pod("a", "node-1") + &server_pod("b", "node-2")));
    lab.wait_ready("pod/a", "30s");
    lab.wait_ready("pod/b", "30s");
    let b = lab.pod_ip("b");
    let link = stdout(&lab.exec("a", &["ip", "-o", "link", "show", "dev", "eth0"]));
    assert!(
        link.contains("mtu 1450"),
        "pod MTU is the underlay's 1500 minus 50: {link}"
    );
    // 1450 - 20 (IP) - 8 (ICMP) = 1422 bytes of payload.
    let ok = lab.exec(
        "a",
        &["ping", "-M", "do", "-s", "1422", "-c", "2", "-W", "2", &b],
    );
    assert!(
        ok.status.success(),
        "a full-size DF ping failed: {}",
        stdout(&ok)
    );
    let too_big = lab.exec(
        "a",
        &["ping", "-M", "do", "-s", "1423", "-c", "1", "-W", "2", &b],
    );
    assert!(!too_big.status.success());
    let text = format!(
        "{}{}",
        stdout(&too_big),
        String::from_utf8_lossy(&too_big.stderr)
    );
    assert!(
        text.contains("message too long") || text.contains("mtu = 1450"),
        "{text}"
    );
}

#[test]
fn routed_underlay_vxlan_works_and_host_gw_says_why_not() {
    let lab = Lab::up(2, &["--backend", "vxlan", "--underlay", "routed"]);
    lab.apply(&(server_pod("a", "node-1") + &server_pod("b", "node-2")));
    lab.wait_ready("pod/a", "30s");
    lab.wait_ready("pod/b", "30s");
    let (a, b) = (lab.pod_ip("a"), lab.pod_ip("b"));
    assert!(lab
        .get("a", &format!("http://{b}:8080/clientip"))
        .starts_with(&format!("{a}:")));
    drop(lab);

    let lab = Lab::up(2, &["--backend", "host-gw", "--underlay", "routed"]);
    let why = eventually(Duration::from_secs(5), || {
        let out = lab.ok(&["get", "nodes", "node-1", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v["metadata"]["annotations"]["podnet.io/routing"]
            .as_str()
            .map(str::to_string)
            .filter(|s| s != "ok")
    })
    .expect("node-1 reports its routing problem");
    assert!(why.contains("host-gw cannot reach node node-2"), "{why}");
    assert!(why.contains("use --backend vxlan"), "{why}");
    let wide = lab.ok(&["get", "nodes", "-o", "wide"]);
    assert!(wide.contains("host-gw cannot reach"), "{wide}");
    assert!(
        !routes_of(&lab, "node-1").contains("proto 112"),
        "no route that cannot work is installed"
    );
}
