//! `podnet lab test` on a fresh 3-node lab: its rows cover every group, the network's
//! checks pass with the evidence they claim, and it leaves nothing behind. Run as root.

mod common;

use std::collections::BTreeSet;

use common::Lab;
use serde_json::Value;

const GROUPS: [&str; 5] = [
    "container-to-container",
    "pod-to-pod",
    "node-to-pod",
    "pod-to-service",
    "egress",
];

/// The rows of `lab test -o json ARGS...`, and whether it exited 0.
fn run(lab: &Lab, args: &[&str]) -> (Vec<Value>, Value, bool) {
    let mut argv = vec!["test", "-o", "json"];
    argv.extend_from_slice(args);
    let out = lab.podnet(&argv);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lab test -o json printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let rows = v["checks"].as_array().cloned().expect("a checks array");
    (rows, v["summary"].clone(), out.status.success())
}

fn row<'a>(rows: &'a [Value], group: &str, check: &str, from: &str, to: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["group"] == group && r["check"] == check && r["from"] == from && r["to"] == to)
        .unwrap_or_else(|| panic!("no row {group} {check} {from} → {to}"))
}

/// The row must pass; returns its evidence.
fn passed(r: &Value) -> &str {
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["millis"].is_u64(), "{r}");
    r["evidence"].as_str().expect("evidence")
}

#[test]
fn lab_test_checks_every_group_on_three_nodes_and_cleans_up() {
    let lab = Lab::up(3, &[]);
    let (rows, summary, success) = run(&lab, &[]);

    let groups: BTreeSet<&str> = rows.iter().filter_map(|r| r["group"].as_str()).collect();
    assert_eq!(groups, GROUPS.into_iter().collect());
    for r in &rows {
        for key in ["group", "check", "from", "to", "evidence"] {
            assert!(r[key].is_string(), "{key} in {r}");
        }
        assert!(r["ok"].is_boolean() && r["millis"].is_u64(), "{r}");
    }

    for n in 1..=3 {
        let (web, client, node) = (
            format!("web-node-{n}"),
            format!("client-node-{n}"),
            format!("node-{n}"),
        );
        let node_ip = format!("172.18.0.{}", 10 + n);

        // Two containers of one pod over localhost.
        let e = passed(row(&rows, GROUPS[0], "tcp", &web, "localhost:8080"));
        assert_eq!(e, format!("answered by {web}"));
        let e = passed(row(&rows, GROUPS[0], "udp", &web, "localhost:5353"));
        assert_eq!(e, "server saw 127.0.0.1, client has 127.0.0.1");

        // The address a pod has on eth0 is its address in the API ...
        let e = passed(row(&rows, GROUPS[1], "own-ip", &client, "itself"));
        let own = e
            .strip_prefix("eth0 has ")
            .and_then(|rest| rest.split_once(", the API says "))
            .map(|(a, b)| {
                assert_eq!(a, b, "{e}");
                a.to_string()
            })
            .unwrap_or_else(|| panic!("{e}"));
        assert!(own.starts_with("10.244."), "{own}");

        for m in 1..=3 {
            let to = format!("web-node-{m}");
            let kind = if n == m { "same-node" } else { "cross-node" };
            // ... and what every server sees, same node or not, TCP and UDP: no NAT.
            for proto in ["tcp", "udp"] {
                let e = passed(row(
                    &rows,
                    GROUPS[1],
                    &format!("{proto}-{kind}"),
                    &client,
                    &to,
                ));
                assert_eq!(e, format!("server saw {own}, client has {own}"));
            }
            // A node reaches pods on every node, seen as itself.
            let e = passed(row(&rows, GROUPS[2], &format!("tcp-{kind}"), &node, &to));
            if n == m {
                let bridge = format!("10.244.{}.1", n - 1);
                assert!(
                    e == format!("pod saw {node_ip}, {node} has {node_ip}")
                        || e == format!("pod saw {bridge}, {node}'s pod bridge has {bridge}"),
                    "{e}"
                );
            } else {
                assert_eq!(e, format!("pod saw {node_ip}, {node} has {node_ip}"));
            }
        }

        // Leaving the cluster, a pod is its node.
        let e = passed(row(&rows, GROUPS[4], "tcp", &client, "external:8090"));
        assert_eq!(
            e,
            format!("external host saw {node_ip}, {node} has {node_ip}")
        );

        // Services, from every node's pod.
        for (check, to) in [
            ("clusterip-tcp", "svc/web"),
            ("clusterip-udp", "svc/web"),
            ("session-affinity", "svc/sticky"),
            ("no-endpoints", "svc/empty"),
            ("endpoint-removed", "svc/follow"),
            ("endpoint-added", "svc/follow"),
        ] {
            passed(row(&rows, GROUPS[3], check, &client, to));
        }
        let e = passed(row(&rows, GROUPS[3], "clusterip-tcp", &client, "svc/web"));
        assert!(e.starts_with("40/40 answered, by "), "{e}");
        for w in ["web-node-1", "web-node-2", "web-node-3"] {
            assert!(e.contains(w), "every endpoint answers: {e}");
        }
        for check in ["hairpin-tcp", "hairpin-udp"] {
            let e = passed(row(
                &rows,
                GROUPS[3],
                check,
                &web,
                &format!("svc/self-{node}"),
            ));
            assert_eq!(e, format!("5/5 answered, all by {web} itself"));
        }
        let e = passed(row(&rows, GROUPS[3], "no-endpoints", &client, "svc/empty"));
        assert!(e.starts_with("connection refused after "), "{e}");
        let port = rows
            .iter()
            .filter(|r| r["check"] == "nodeport-from-external" && r["from"] == "external")
            .filter_map(|r| r["to"].as_str()?.strip_prefix(&format!("{node}:")))
            .next()
            .unwrap_or_else(|| panic!("a nodeport-from-external row to {node}"))
            .to_string();
        passed(row(
            &rows,
            GROUPS[3],
            "nodeport-from-external",
            "external",
            &format!("{node}:{port}"),
        ));
        let local = rows
            .iter()
            .find(|r| {
                r["check"] == "local-keeps-client-ip"
                    && r["to"]
                        .as_str()
                        .is_some_and(|t| t.starts_with(&format!("{node}:")))
            })
            .expect("a local-keeps-client-ip row");
        assert_eq!(
            passed(local),
            "pod saw 198.51.100.1, external host has 198.51.100.1"
        );
    }
    assert_eq!(
        rows.iter()
            .filter(|r| r["check"] == "nodeport-from-node")
            .count(),
        3
    );

    // Every check passes on this tree, and the exit status and summary say so.
    let failed: Vec<&Value> = rows.iter().filter(|r| r["ok"] != true).collect();
    assert!(failed.is_empty(), "failed rows: {failed:#?}");
    assert!(success, "lab test exited non-zero");
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["total"].as_u64(), Some(rows.len() as u64));

    // Its namespace and pods are gone.
    assert!(
        !lab.items("namespaces")
            .iter()
            .any(|n| n["metadata"]["name"] == "podnet-test"),
        "namespace podnet-test is left"
    );
    assert!(
        !lab.items("pods")
            .iter()
            .any(|p| p["metadata"]["namespace"] == "podnet-test"),
        "pods of podnet-test are left"
    );

    // One group only: only its rows, and what it needs deployed.
    let (rows, _, success) = run(&lab, &["--only", "egress"]);
    assert!(success);
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["group"] == "egress"));
}

/// Where br_netfilter sends bridged frames through the IP hooks (kubeadm and Docker
/// hosts, or --bridge-netfilter), podnet's rules still carry pods and Services.
#[test]
fn lab_test_passes_with_br_netfilter_on_for_bridged_traffic() {
    if !std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        eprintln!(
            "br_netfilter is not loaded on this machine: the other state is tested elsewhere"
        );
        return;
    }
    let lab = Lab::up(2, &["--bridge-netfilter"]);
    let on = lab.exec(
        "node/node-1",
        &["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"],
    );
    assert_eq!(
        common::stdout(&on),
        "1",
        "node-1 keeps br_netfilter's hooks on"
    );
    let (rows, summary, success) = run(&lab, &["--only", "pod-to-pod,pod-to-service"]);
    let failed: Vec<&Value> = rows.iter().filter(|r| r["ok"] != true).collect();
    assert!(success && failed.is_empty(), "{summary}\n{failed:#?}");
    assert!(rows.len() > 10, "{summary}");
}
