//! Untracked pod traffic (`lab up --untracked-pod-traffic`, the agent's
//! `untrackedPodTraffic`): pod-to-pod flows that no Service translates skip conntrack on
//! every node, while Service flows, a node's own flows and the flows of a Service deleted
//! under them stay tracked and keep working. Run as root.

mod common;

use std::time::Duration;

use common::{eventually, stdout, Lab, IPERF_BEHIND_A_SERVICE};
use podnet_kernel::conntrack::{Flow, PROTO_TCP, PROTO_UDP};

/// Next to the iperf3 Service: `peer` (node-2) serves HTTP and UDP echo, `near` (node-1)
/// HTTP behind Service `near`.
const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: peer}
spec:
  nodeName: node-2
  containers: [{name: s, command: [podnet, probe, serve, --http, "8080", --udp-echo, "5353"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: near, labels: {app: near}}
spec:
  nodeName: node-1
  containers: [{name: s, command: [podnet, probe, serve, --http, "8080"]}]
---
# Port 8080 is an endpoint's: packets to peer:8080 are looked up endpoint by endpoint.
apiVersion: v1
kind: Service
metadata: {name: near}
spec: {selector: {app: near}, ports: [{port: 80, targetPort: 8080}]}
---
"#;

/// Whether a flow is between `a` and `b:port`, in either direction.
fn between(f: &Flow, a: &str, b: &str, port: u16) -> bool {
    let t = &f.original;
    let (src, dst) = (t.src.to_string(), t.dst.to_string());
    (src == a && dst == b && t.dst_port == port) || (src == b && dst == a && t.src_port == port)
}

#[test]
fn untracked_pod_traffic_skips_conntrack_and_keeps_translated_flows_whole() {
    let lab = Lab::up(2, &["--untracked-pod-traffic"]);
    lab.apply(&format!("{PODS}{IPERF_BEHIND_A_SERVICE}"));
    for pod in ["peer", "near", "srv", "cli"] {
        lab.wait_ready(&format!("pod/{pod}"), "30s");
    }
    let (cli, peer, near) = (lab.pod_ip("cli"), lab.pod_ip("peer"), lab.pod_ip("near"));

    assert!(
        eventually(Duration::from_secs(5), || (lab.slice_ips("near").len()
            == 1)
            .then_some(()))
        .is_some(),
        "Service near has its endpoint"
    );
    for node in ["node-1", "node-2"] {
        let ports = || {
            let out = lab.exec(
                &format!("node/{node}"),
                &["nft", "list", "set", "inet", "podnet", "nat-ports"],
            );
            stdout(&out).contains("8080").then_some(())
        };
        assert!(
            eventually(Duration::from_secs(5), ports).is_some(),
            "{node}: nat-ports has 8080"
        );
    }
    // Pod to pod across nodes, TCP and UDP: no NAT, and no conntrack entry on either node.
    let seen = lab.get("cli", &format!("http://{peer}:8080/clientip"));
    assert!(
        seen.starts_with(&format!("{cli}:")),
        "cli -> peer seen as {seen:?}"
    );
    let udp = stdout(&lab.exec(
        "cli",
        &["podnet", "probe", "udp", &format!("{peer}:5353"), "-m", "x"],
    ));
    assert!(
        udp.starts_with(&format!("peer {cli}:")),
        "UDP cli -> peer: {udp:?}"
    );
    for node in ["node-1", "node-2"] {
        for (protocol, port) in [(PROTO_TCP, 8080), (PROTO_UDP, 5353)] {
            let tracked: Vec<Flow> = lab
                .flows(node, protocol)
                .into_iter()
                .filter(|f| between(f, &cli, &peer, port))
                .collect();
            assert!(
                tracked.is_empty(),
                "{node} tracked cli <-> peer:{port}: {tracked:?}"
            );
        }
    }

    // A node reaches its own pods through a host firewall that accepts only what
    // conntrack knows: the pod's replies to the node's bridge address stay tracked.
    let firewall =
        "table inet pntest_fw { chain input { type filter hook input priority 0; policy drop; \
        iif lo accept; ct state established,related accept; udp dport 4789 accept; }; }";
    let out = lab.exec("node/node-1", &["nft", firewall]);
    assert!(
        out.status.success(),
        "firewall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = lab.get("node/node-1", &format!("http://{near}:8080/clientip"));
    assert!(
        !seen.is_empty() && !seen.contains("error"),
        "node-1 -> near through a ct-state firewall: {seen:?}"
    );
    let out = lab.exec(
        "node/node-1",
        &["nft", "delete", "table", "inet", "pntest_fw"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A Service connection outlives its Service: its replies keep their reverse NAT.
    let ip = lab.cluster_ip("iperf");
    assert!(
        eventually(Duration::from_secs(5), || (lab.slice_ips("iperf").len()
            == 1)
            .then_some(()))
        .is_some(),
        "the Service has its endpoint"
    );
    std::thread::sleep(Duration::from_millis(500));
    let transfer = lab.spawn_transfer("cli", &ip, "6", "50M");
    std::thread::sleep(Duration::from_millis(1500));
    lab.ok(&["delete", "service/iperf"]);
    let out = transfer.wait_with_output().expect("iperf3");
    assert!(
        out.status.success(),
        "the connection broke when its Service was deleted: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It was translated, and tracked whole, on the client's node.
    let srv = lab.pod_ip("srv");
    let translated = lab
        .flows("node-1", PROTO_TCP)
        .into_iter()
        .any(|f| f.original.dst.to_string() == ip && f.reply.src.to_string() == srv);
    assert!(
        translated,
        "node-1 tracks cli -> {ip}:5201 translated to {srv}"
    );
}
