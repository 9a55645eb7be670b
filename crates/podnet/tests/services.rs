//! Services through the agent's nftables proxy, on labs. Run as root.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, stdout, Lab, IPERF_BEHIND_A_SERVICE, PODNET};
use serde_json::Value;

/// A Deployment `web` of `replicas` probe servers (HTTP 8080, UDP 5353) behind Service
/// `web`, plus a client pod pinned to `client_node`.
fn app(replicas: usize, service_extra: &str, client_node: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        command: [podnet, probe, serve, --http, "8080", --udp-echo, "5353"]
        ports: [{{name: http, containerPort: 8080}}, {{name: dns, containerPort: 5353, protocol: UDP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  {service_extra}
  ports:
  - {{name: http, port: 80, targetPort: http}}
  - {{name: dns, port: 53, targetPort: dns, protocol: UDP}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {client_node}
  containers: [{{name: c, command: [sleep, infinity]}}]
"#
    )
}

fn service(lab: &Lab, name: &str) -> Value {
    let out = lab.ok(&["get", "services", name, "-o", "json"]);
    serde_json::from_str(&out).expect("json")
}

fn pod_names(lab: &Lab, app: &str) -> BTreeSet<String> {
    lab.items("pods")
        .iter()
        .filter(|p| {
            p["metadata"]["labels"]["app"] == app && p["metadata"]["deletionTimestamp"].is_null()
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Which pods answered `count` requests from `from`.
fn answers(lab: &Lab, from: &str, args: &[&str]) -> (BTreeSet<String>, u64) {
    let mut cmd = vec!["podnet", "probe"];
    cmd.extend_from_slice(args);
    cmd.extend_from_slice(&["-o", "json", "--timeout", "1s"]);
    let out = lab.exec(from, &cmd);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let names = v["by_hostname"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    (names, v["failed"].as_u64().unwrap_or(u64::MAX))
}

#[test]
fn cluster_ip_tcp_and_udp_spread_over_every_endpoint_from_another_node() {
    let lab = Lab::up(2, &[]);
    lab.apply(&app(3, "", "node-2"));
    lab.wait_ready("deployment/web", "30s");
    lab.wait_ready("pod/client", "30s");
    let ip = lab.cluster_ip("web");
    let pods = pod_names(&lab, "web");
    let spread = eventually(Duration::from_secs(5), || {
        let (seen, failed) = answers(
            &lab,
            "client",
            &["get", &format!("http://{ip}/hostname"), "-c", "30"],
        );
        (seen == pods && failed == 0).then_some(())
    });
    assert!(
        spread.is_some(),
        "TCP: not every endpoint answered: {:?}",
        answers(
            &lab,
            "client",
            &["get", &format!("http://{ip}/hostname"), "-c", "30"]
        )
    );
    // UDP: a client socket sticks to one endpoint (its conntrack entry), so each try
    // uses a new socket.
    let mut udp = BTreeSet::new();
    for _ in 0..40 {
        let (seen, failed) = answers(&lab, "client", &["udp", &format!("{ip}:53"), "-c", "1"]);
        assert_eq!(failed, 0, "UDP to the ClusterIP");
        udp.extend(seen);
        if udp == pods {
            break;
        }
    }
    assert_eq!(udp, pods, "UDP spread");
}

#[test]
fn endpoints_follow_scaling_within_a_second() {
    let lab = Lab::up(2, &[]);
    lab.apply(&app(1, "", "node-1"));
    lab.wait_ready("deployment/web", "30s");
    lab.wait_ready("pod/client", "30s");
    let ip = lab.cluster_ip("web");
    for replicas in [4usize, 2] {
        lab.apply(&app(replicas, "", "node-1"));
        lab.wait_ready("deployment/web", "30s");
        // Once the slice has settled, the proxy follows within a second.
        let settled = eventually(Duration::from_secs(10), || {
            (lab.slice_ips("web").len() == replicas).then_some(())
        });
        assert!(settled.is_some());
        let t = Instant::now();
        let pods = pod_names(&lab, "web");
        let followed = eventually(Duration::from_secs(1), || {
            let (seen, failed) = answers(
                &lab,
                "client",
                &["get", &format!("http://{ip}/hostname"), "-c", "24"],
            );
            (seen == pods && failed == 0).then_some(())
        });
        assert!(
            followed.is_some(),
            "replicas {replicas}: answers did not follow within a second"
        );
        eprintln!("replicas {replicas}: followed in {:?}", t.elapsed());
    }
}

#[test]
fn no_endpoints_unserved_ports_and_unallocated_addresses_refuse_at_once() {
    let lab = Lab::up(1, &[]);
    lab.apply(&app(0, "", "node-1"));
    lab.wait_ready("pod/client", "30s");
    let ip = lab.cluster_ip("web");
    // web's ClusterIP without endpoints, a port it does not serve, and an address of the
    // service CIDR (10.96.0.0/16) that no Service has.
    for target in [
        format!("{ip}:80"),
        format!("{ip}:81"),
        "10.96.200.200:80".to_string(),
    ] {
        let started = Instant::now();
        let out = lab.exec(
            "client",
            &[
                "podnet",
                "probe",
                "tcp",
                &target,
                "--timeout",
                "3s",
                "-o",
                "json",
            ],
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        let err = v["attempts"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(err.contains("refused"), "{target}: {v}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{target}: refusing took {:?}",
            started.elapsed()
        );
    }
    let out = lab.exec(
        "client",
        &[
            "podnet",
            "probe",
            "udp",
            &format!("{ip}:53"),
            "--timeout",
            "3s",
            "-o",
            "json",
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["failed"], 1, "{v}");
}

#[test]
fn node_ports_from_outside_and_from_another_node_and_local_policy_keeps_the_client_address() {
    let lab = Lab::up(2, &[]);
    lab.apply(&app(2, "type: NodePort", "node-1"));
    lab.wait_ready("deployment/web", "30s");
    let svc = service(&lab, "web");
    let np = svc["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("node port");
    assert!((30000..=32767).contains(&np));
    let pods = pod_names(&lab, "web");
    for node_ip in ["172.18.0.11", "172.18.0.12"] {
        let url = format!("http://{node_ip}:{np}/hostname");
        let from_outside = eventually(Duration::from_secs(5), || {
            let (seen, failed) = answers(&lab, "external", &["get", &url, "-c", "20"]);
            (seen == pods && failed == 0).then_some(())
        });
        assert!(
            from_outside.is_some(),
            "NodePort {url} from the external host"
        );
        let (seen, failed) = answers(&lab, "node/node-2", &["get", &url, "-c", "20"]);
        assert_eq!(
            (seen, failed),
            (pods.clone(), 0),
            "NodePort {url} from node-2"
        );
    }
    // externalTrafficPolicy: Local: only this node's endpoints, and the client's own address.
    lab.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web-local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#,
    );
    let np = service(&lab, "web-local")["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("node port");
    let pods_json = lab.items("pods");
    for node in ["node-1", "node-2"] {
        let node_ip = if node == "node-1" {
            "172.18.0.11"
        } else {
            "172.18.0.12"
        };
        let local: BTreeSet<String> = pods_json
            .iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "web" && p["spec"]["nodeName"] == node)
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        let url = format!("http://{node_ip}:{np}/hostname");
        if local.is_empty() {
            let (_, failed) = answers(&lab, "external", &["get", &url, "-c", "3"]);
            assert_eq!(failed, 3, "a node without local endpoints serves nothing");
            continue;
        }
        let got = eventually(Duration::from_secs(5), || {
            let (seen, failed) = answers(&lab, "external", &["get", &url, "-c", "10"]);
            (seen == local && failed == 0).then_some(())
        });
        assert!(
            got.is_some(),
            "{node}: Local policy answers only from {local:?}"
        );
        let seen = stdout(&lab.exec(
            "external",
            &[
                "podnet",
                "probe",
                "get",
                &format!("http://{node_ip}:{np}/clientip"),
            ],
        ));
        assert!(
            seen.starts_with("198.51.100.1:"),
            "the pod saw {seen:?} instead of the external client"
        );
    }

    // A LoadBalancer Service (the lab has no cloud load balancer) gets node ports, and
    // with policy Local a health check node port: a load balancer asking each node sends
    // only to nodes with a local endpoint. Each node's proxy health is on port 10256.
    lab.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web-lb}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#,
    );
    let lb = service(&lab, "web-lb");
    let np = lb["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("node port");
    let hc = lb["spec"]["healthCheckNodePort"]
        .as_i64()
        .expect("health check node port");
    for (node, node_ip) in [("node-1", "172.18.0.11"), ("node-2", "172.18.0.12")] {
        let local = pods_json
            .iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "web" && p["spec"]["nodeName"] == node)
            .count();
        let check = eventually(Duration::from_secs(5), || {
            let out = lab.exec(
                "external",
                &[
                    "podnet",
                    "probe",
                    "get",
                    "--timeout",
                    "1s",
                    &format!("http://{node_ip}:{hc}/"),
                ],
            );
            let body = stdout(&out);
            let v: Value = serde_json::from_str(&body).ok()?;
            (v["localEndpoints"] == local).then_some((out.status.success(), v))
        });
        let (ok, v) = check.unwrap_or_else(|| panic!("{node}: health check node port {hc}"));
        assert_eq!(ok, local > 0, "{node}: 200 only with a local endpoint: {v}");
        assert_eq!(v["service"]["name"], "web-lb");
        if local > 0 {
            let got = eventually(Duration::from_secs(5), || {
                let (_, failed) = answers(
                    &lab,
                    "external",
                    &["get", &format!("http://{node_ip}:{np}/hostname"), "-c", "3"],
                );
                (failed == 0).then_some(())
            });
            assert!(
                got.is_some(),
                "{node}: the LoadBalancer's node port {np} answers"
            );
        }
        let healthz = stdout(&lab.exec(
            "external",
            &[
                "podnet",
                "probe",
                "get",
                &format!("http://{node_ip}:10256/healthz"),
            ],
        ));
        assert!(
            healthz.contains("\"healthy\":true"),
            "{node}: proxy health {healthz}"
        );
    }
}

#[test]
fn a_selectorless_service_with_a_hand_written_slice_works() {
    let lab = Lab::up(2, &[]);
    lab.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: backend}
spec:
  nodeName: node-2
  containers: [{name: s, command: [podnet, probe, serve, --http, "9090"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-1
  containers: [{name: c, command: [sleep, infinity]}]
"#,
    );
    lab.wait_ready("pod/backend", "30s");
    lab.wait_ready("pod/client", "30s");
    let backend = lab.pod_ip("backend");
    lab.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: manual}}
spec:
  ports: [{{name: web, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: manual-1
  labels: {{kubernetes.io/service-name: manual}}
addressType: IPv4
ports: [{{name: web, port: 9090, protocol: TCP}}]
endpoints: [{{addresses: ["{backend}"], conditions: {{ready: true}}}}]
"#
    ));
    let ip = lab.cluster_ip("manual");
    let got = eventually(Duration::from_secs(5), || {
        let s = stdout(&lab.exec(
            "client",
            &[
                "podnet",
                "probe",
                "get",
                "--timeout",
                "1s",
                &format!("http://{ip}/hostname"),
            ],
        ));
        (s == "backend").then_some(())
    });
    assert!(
        got.is_some(),
        "the selectorless Service did not reach its hand-written endpoint"
    );

    // Its only pod is terminating but still serving (a single-replica rollout): the
    // Service keeps answering through it. Once it stops serving, connections are refused.
    let slice = |conditions: &str| {
        format!(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: manual-1
  labels: {{kubernetes.io/service-name: manual}}
addressType: IPv4
ports: [{{name: web, port: 9090, protocol: TCP}}]
endpoints: [{{addresses: ["{backend}"], conditions: {conditions}}}]
"#
        )
    };
    let ask = || {
        lab.exec(
            "client",
            &[
                "podnet",
                "probe",
                "get",
                "--timeout",
                "1s",
                &format!("http://{ip}/hostname"),
            ],
        )
    };
    lab.apply(&slice("{ready: false, serving: true, terminating: true}"));
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        assert_eq!(
            stdout(&ask()),
            "backend",
            "a terminating endpoint that still serves keeps its Service answering"
        );
    }
    lab.apply(&slice("{ready: false, serving: false, terminating: true}"));
    let refused = eventually(Duration::from_secs(3), || {
        let out = ask();
        (!out.status.success()).then_some(())
    });
    assert!(
        refused.is_some(),
        "an endpoint that stopped serving gets no more connections"
    );
}

#[test]
fn restarting_agents_keeps_established_service_connections() {
    let lab = Lab::up(2, &[]);
    lab.apply(IPERF_BEHIND_A_SERVICE);
    lab.wait_ready("pod/srv", "30s");
    lab.wait_ready("pod/cli", "30s");
    let ip = lab.cluster_ip("iperf");
    assert!(
        eventually(Duration::from_secs(5), || (lab.slice_ips("iperf").len()
            == 1)
            .then_some(()))
        .is_some()
    );
    std::thread::sleep(Duration::from_millis(500));
    let transfer = lab.spawn_transfer("cli", &ip, "5", "100M");
    std::thread::sleep(Duration::from_millis(1500));
    let before: Vec<String> = ["node-1", "node-2"]
        .iter()
        .filter_map(|n| lab.agent_pid(n))
        .collect();
    assert_eq!(before.len(), 2);
    for pid in &before {
        Command::new("kill")
            .args(["-9", pid])
            .status()
            .expect("kill");
    }
    let out = transfer.wait_with_output().expect("iperf3");
    assert!(
        out.status.success(),
        "the Service connection broke while the agents restarted: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Vec<String> = ["node-1", "node-2"]
        .iter()
        .filter_map(|n| lab.agent_pid(n))
        .collect();
    assert!(
        after.iter().all(|p| !before.contains(p)) && after.len() == 2,
        "agents restarted"
    );
}

#[test]
fn a_udp_client_keeping_its_socket_follows_its_endpoint() {
    let lab = Lab::up(2, &[]);
    lab.apply(&app(0, "", "node-1"));
    lab.wait_ready("pod/client", "30s");
    let ip = lab.cluster_ip("web");
    // One socket for the whole run: first while the Service has no endpoint, then across
    // the deletion of the endpoint it talks to.
    let client = Command::new(PODNET)
        .args([
            "lab",
            "--name",
            &lab.name,
            "exec",
            "client",
            "--",
            "podnet",
            "probe",
            "udp",
            &format!("{ip}:53"),
        ])
        .args([
            "-c",
            "70",
            "--interval",
            "100ms",
            "--timeout",
            "300ms",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("udp client");
    std::thread::sleep(Duration::from_millis(1500));
    lab.apply(&app(1, "", "node-1"));
    lab.wait_ready("deployment/web", "30s");
    std::thread::sleep(Duration::from_millis(2000));
    let first = pod_names(&lab, "web");
    let first = first.iter().next().expect("a pod").clone();
    lab.ok(&["delete", &format!("pod/{first}")]);
    let out = client.wait_with_output().expect("udp client");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let by: Vec<String> = v["by_hostname"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    assert!(
        by.contains(&first),
        "the client never reached the first endpoint: {v}"
    );
    assert!(
        by.iter().any(|h| *h != first),
        "the client never reached the replacement endpoint: {v}"
    );
    let attempts = v["attempts"].as_array().cloned().unwrap_or_default();
    let tail_ok = attempts.iter().rev().take(5).all(|a| a["ok"] == true);
    assert!(tail_ok, "the client's last datagrams went unanswered: {v}");
}

#[test]
fn client_ip_affinity_sticks() {
    let lab = Lab::up(2, &[]);
    lab.apply(&app(3, "sessionAffinity: ClientIP", "node-1"));
    lab.wait_ready("deployment/web", "30s");
    lab.wait_ready("pod/client", "30s");
    let ip = lab.cluster_ip("web");
    assert!(
        eventually(Duration::from_secs(5), || (lab.slice_ips("web").len() == 3)
            .then_some(()))
        .is_some()
    );
    let stuck = eventually(Duration::from_secs(5), || {
        let (seen, failed) = answers(
            &lab,
            "client",
            &["get", &format!("http://{ip}/hostname"), "-c", "15"],
        );
        (seen.len() == 1 && failed == 0).then_some(seen)
    });
    assert!(
        stuck.is_some(),
        "15 requests from one client did not all reach one pod: {:?}",
        answers(
            &lab,
            "client",
            &["get", &format!("http://{ip}/hostname"), "-c", "15"]
        )
    );
    // Without affinity, the same client is spread.
    lab.apply(&app(3, "sessionAffinity: None", "node-1"));
    let spread = eventually(Duration::from_secs(5), || {
        let (seen, _) = answers(
            &lab,
            "client",
            &["get", &format!("http://{ip}/hostname"), "-c", "20"],
        );
        (seen.len() > 1).then_some(())
    });
    assert!(
        spread.is_some(),
        "turning affinity off did not spread the client again"
    );
}

/// hostPort, through the CNI portMappings capability: the pod answers on its node's
/// address from outside the cluster (seeing the client's own address) and from other
/// pods; once the pod is gone, so is the mapping.
#[test]
fn a_host_port_answers_on_its_node_from_outside_and_from_pods() {
    let lab = Lab::up(2, &[]);
    lab.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hp}
spec:
  nodeName: node-2
  containers:
  - name: s
    command: [podnet, probe, serve, --http, "8080"]
    ports: [{containerPort: 8080, hostPort: 18080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-1
  containers: [{name: c, command: [sleep, infinity]}]
"#,
    );
    lab.wait_ready("pod/hp", "30s");
    lab.wait_ready("pod/client", "30s");
    let url = |path: &str| format!("http://172.18.0.12:18080/{path}");
    let get = |from: &str, path: &str| {
        stdout(&lab.exec(
            from,
            &["podnet", "probe", "get", "--timeout", "1s", &url(path)],
        ))
    };
    let from_outside = eventually(Duration::from_secs(5), || {
        (get("external", "hostname") == "hp").then_some(())
    });
    assert!(
        from_outside.is_some(),
        "hostPort 18080 on node-2 from the external host"
    );
    assert!(
        get("external", "clientip").starts_with("198.51.100.1:"),
        "the pod sees the outside client's own address"
    );
    assert_eq!(
        get("client", "hostname"),
        "hp",
        "from a pod on another node"
    );
    assert_eq!(get("node/node-1", "hostname"), "hp", "from another node");
    lab.ok(&["delete", "pod/hp"]);
    let gone = eventually(Duration::from_secs(10), || {
        let out = lab.exec(
            "external",
            &[
                "podnet",
                "probe",
                "get",
                "--timeout",
                "1s",
                &url("hostname"),
            ],
        );
        (!out.status.success()).then_some(())
    });
    assert!(gone.is_some(), "the mapping goes with its pod");
}
