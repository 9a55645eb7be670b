//! What `lab test` deploys and which checks it runs, from the lab's nodes. Pure.
//!
//! On every node: `web-<node>` (a server container, `podnet probe serve` on HTTP 8080 and
//! UDP echo 5353, and a `sleep` sidecar) and `client-<node>` (`sleep`). For Services:
//! `web` (every web pod; TCP 80 and UDP 53), `self-<node>` (exactly that node's web pod,
//! TCP 80 and UDP 53: hairpin), `sticky` (ClientIP affinity), `empty` (no endpoint), `web-nodeport` and
//! `web-local` (NodePort, the second with `externalTrafficPolicy: Local`), and `follow`
//! over pods `follow-1` and `follow-2`, of which the test deletes one and adds `follow-3`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::eval::Expect;
use super::Group;

/// The namespace `lab test` owns: created at the start, deleted at the end.
pub const NAMESPACE: &str = "podnet-test";
pub const HTTP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;
/// The external host, and the port of the server `lab test` starts there.
pub const EXTERNAL_IP: Ipv4Addr = podnet_lab::layout::EXTERNAL_IP;
pub const EXTERNAL_PORT: u16 = 8090;
/// The Service `follow`'s pods: the first two at the start; the test deletes the first
/// and adds the third.
pub const FOLLOW: [&str; 3] = ["follow-1", "follow-2", "follow-3"];

/// How long one request may take: the lab answers in a millisecond or two.
const ONE: Duration = Duration::from_secs(1);
/// How long each of many requests may take.
const MANY: Duration = Duration::from_millis(500);
/// The most one check may take, whatever happens.
const MAX_CHECK: Duration = Duration::from_secs(10);

/// Requests for the load-spreading checks: with 3 endpoints chosen at random, one is
/// missed in 40 requests with a probability of 3·(2/3)^40 ≈ 3e-7.
pub const SPREAD_TCP: u32 = 40;
/// UDP tries, each from a new socket (a socket sticks to its endpoint): 3·(2/3)^30 ≈ 2e-5.
pub const SPREAD_UDP: u32 = 30;
pub const SPREAD_NODEPORT: u32 = 30;
/// Requests that must all reach one pod under ClientIP affinity (without it, with 3
/// endpoints, all land on one with a probability of 3·(1/3)^10 ≈ 5e-5).
pub const STICKY: u32 = 10;
pub const HAIRPIN: u32 = 5;

/// A node as the checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// Its InternalIP.
    pub ip: Ipv4Addr,
    /// Its address on its pod bridge (the first address of its pod CIDR), the source
    /// address of what it sends to its own pods.
    pub bridge_ip: Option<Ipv4Addr>,
}

pub fn web(node: &str) -> String {
    format!("web-{node}")
}

pub fn client(node: &str) -> String {
    format!("client-{node}")
}

fn self_service(node: &str) -> String {
    format!("self-{node}")
}

/// What the selected groups need deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Needs {
    web: bool,
    clients: bool,
    services: bool,
}

fn needs(groups: &[Group]) -> Needs {
    let has = |g| groups.contains(&g);
    Needs {
        web: has(Group::ContainerToContainer)
            || has(Group::PodToPod)
            || has(Group::NodeToPod)
            || has(Group::PodToService),
        clients: has(Group::PodToPod) || has(Group::PodToService) || has(Group::Egress),
        services: has(Group::PodToService),
    }
}

/// Whether the selected groups need the external host's server.
pub fn needs_external_server(groups: &[Group]) -> bool {
    groups.contains(&Group::Egress)
}

/// The objects to apply, and what "ready" means for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Multi-document YAML: the namespace first.
    pub yaml: String,
    /// Every pod, which must be Ready.
    pub pods: Vec<String>,
    /// How many ready endpoints each Service must have before the checks start.
    pub endpoints: BTreeMap<String, usize>,
}

/// The workload for `groups` on `nodes`.
pub fn workload(nodes: &[Node], groups: &[Group]) -> Workload {
    let n = needs(groups);
    let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n");
    let mut pods = Vec::new();
    let mut endpoints = BTreeMap::new();
    for node in nodes {
        if n.web {
            yaml += &web_pod(&node.name);
            pods.push(web(&node.name));
        }
        if n.clients {
            yaml += &client_pod(&node.name);
            pods.push(client(&node.name));
        }
    }
    if n.services && !nodes.is_empty() {
        let all = nodes.len();
        let both = "  - {name: http, port: 80, targetPort: 8080}\n  - {name: echo, port: 53, targetPort: 5353, protocol: UDP}\n";
        let http = "  - {name: http, port: 80, targetPort: 8080}\n";
        yaml += &service("web", "{app: web}", "", both);
        endpoints.insert("web".to_string(), all);
        yaml += &service("empty", "{app: nothing-at-all}", "", http);
        yaml += &service(
            "sticky",
            "{app: web}",
            "  sessionAffinity: ClientIP\n",
            http,
        );
        endpoints.insert("sticky".to_string(), all);
        yaml += &service("web-nodeport", "{app: web}", "  type: NodePort\n", http);
        endpoints.insert("web-nodeport".to_string(), all);
        yaml += &service(
            "web-local",
            "{app: web}",
            "  type: NodePort\n  externalTrafficPolicy: Local\n",
            http,
        );
        endpoints.insert("web-local".to_string(), all);
        for node in nodes {
            let name = self_service(&node.name);
            yaml += &service(
                &name,
                &format!("{{app: web, node: {}}}", node.name),
                "",
                both,
            );
            endpoints.insert(name, 1);
        }
        yaml += &service("follow", "{app: follow}", "", http);
        endpoints.insert("follow".to_string(), 2);
        for (i, pod) in FOLLOW[..2].iter().enumerate() {
            yaml += &follow_pod(pod, &nodes[i % all].name);
            pods.push(pod.to_string());
        }
    }
    Workload {
        yaml,
        pods,
        endpoints,
    }
}

/// The pod `follow` gains during the test, on the third node (or the last).
pub fn added_follow_pod(nodes: &[Node]) -> String {
    let node = nodes
        .get(2 % nodes.len().max(1))
        .map(|n| n.name.as_str())
        .unwrap_or("node-1");
    follow_pod(FOLLOW[2], node)
}

const SERVER: &str = "  - name: server\n    command: [podnet, probe, serve, --http, \"8080\", --udp-echo, \"5353\"]\n    ports: [{name: http, containerPort: 8080}, {name: echo, containerPort: 5353, protocol: UDP}]\n    readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}\n";

fn web_pod(node: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {NAMESPACE}, labels: {{app: web, node: {node}}}}}\nspec:\n  nodeName: {node}\n  containers:\n{SERVER}  - {{name: sidecar, command: [sleep, infinity]}}\n",
        web(node)
    )
}

fn client_pod(node: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {NAMESPACE}, labels: {{app: client}}}}\nspec:\n  nodeName: {node}\n  containers:\n  - {{name: client, command: [sleep, infinity]}}\n",
        client(node)
    )
}

fn follow_pod(name: &str, node: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{app: follow}}}}\nspec:\n  nodeName: {node}\n  containers:\n{SERVER}"
    )
}

fn service(name: &str, selector: &str, extra: &str, ports: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  selector: {selector}\n{extra}  ports:\n{ports}"
    )
}

/// A Service as deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Svc {
    pub ip: Ipv4Addr,
    /// The node port of its first port, for NodePort Services.
    pub node_port: Option<u16>,
}

/// The lab with the workload running: what the checks are planned from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    pub nodes: Vec<Node>,
    /// Every pod of the test namespace and its IP.
    pub pods: BTreeMap<String, Ipv4Addr>,
    pub services: BTreeMap<String, Svc>,
    /// The address each client pod sees for itself on eth0 (once checked).
    pub eth0: BTreeMap<String, Ipv4Addr>,
    /// The `podnet` binary, for commands run through a shell.
    pub exe: String,
}

impl World {
    fn pod(&self, name: &str) -> Option<Ipv4Addr> {
        self.pods.get(name).copied()
    }

    fn webs(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .map(|n| web(&n.name))
            .filter(|p| self.pods.contains_key(p))
            .collect()
    }
}

/// One check: a command run in a pod, on a node or on the external host, and what its
/// output must show.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub group: Group,
    pub name: &'static str,
    /// Who sends, as shown: a pod, a node, or `external`.
    pub from: String,
    /// What is reached, as shown.
    pub to: String,
    /// The `lab exec` target: a pod of [`NAMESPACE`], `node/NAME` or `external`.
    pub target: String,
    /// The command, after `--`.
    pub command: Vec<String>,
    /// The most the command may take; it is stopped then and the check fails.
    pub timeout: Duration,
    pub expect: Expect,
}

/// `podnet probe KIND TARGET -c COUNT --timeout PER -o json`.
fn probe(kind: &str, target: &str, count: u32, per: Duration) -> Vec<String> {
    [
        "podnet",
        "probe",
        kind,
        target,
        "-c",
        &count.to_string(),
        "--timeout",
        &humantime::format_duration(per).to_string(),
        "-o",
        "json",
    ]
    .map(str::to_string)
    .to_vec()
}

/// `count` single-datagram UDP probes, each from a new socket, one JSON report a line.
fn udp_new_sockets(exe: &str, target: &str, count: u32, per: Duration) -> Vec<String> {
    let script = format!(
        "for i in $(seq {count}); do {} probe udp {target} -c 1 --timeout {} -o json; done",
        shell_quote(exe),
        humantime::format_duration(per)
    );
    vec!["sh".into(), "-c".into(), script]
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The time `count` requests of at most `per` each may take, and a margin to start.
fn budget(count: u32, per: Duration) -> Duration {
    (per * count + Duration::from_secs(2)).min(MAX_CHECK)
}

fn same_or_cross(prefix: &'static str, same: bool) -> &'static str {
    match (prefix, same) {
        ("tcp", true) => "tcp-same-node",
        ("tcp", false) => "tcp-cross-node",
        ("udp", true) => "udp-same-node",
        _ => "udp-cross-node",
    }
}

/// The first checks: the address each client pod sees for itself, which the pod-to-pod
/// checks then compare with what servers see.
pub fn own_address_checks(world: &World, groups: &[Group]) -> Vec<Check> {
    if !groups.contains(&Group::PodToPod) {
        return Vec::new();
    }
    world
        .nodes
        .iter()
        .filter_map(|n| {
            let pod = client(&n.name);
            let ip = world.pod(&pod)?;
            Some(Check {
                group: Group::PodToPod,
                name: "own-ip",
                from: pod.clone(),
                to: "itself".into(),
                target: pod,
                command: ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]
                    .map(str::to_string)
                    .to_vec(),
                timeout: Duration::from_secs(5),
                expect: Expect::OwnAddress { api: ip },
            })
        })
        .collect()
}

/// Every check but the first ones and the endpoint-following scenario (see [`Follow`]).
pub fn checks(world: &World, groups: &[Group]) -> Vec<Check> {
    let mut out = Vec::new();
    for g in groups {
        match g {
            Group::ContainerToContainer => container_to_container(world, &mut out),
            Group::PodToPod => pod_to_pod(world, &mut out),
            Group::NodeToPod => node_to_pod(world, &mut out),
            Group::PodToService => pod_to_service(world, &mut out),
            Group::Egress => egress(world, &mut out),
        }
    }
    out
}

fn container_to_container(world: &World, out: &mut Vec<Check>) {
    for n in &world.nodes {
        let pod = web(&n.name);
        if world.pod(&pod).is_none() {
            continue;
        }
        let url = format!("http://127.0.0.1:{HTTP_PORT}/hostname");
        out.push(Check {
            group: Group::ContainerToContainer,
            name: "tcp",
            from: pod.clone(),
            to: format!("localhost:{HTTP_PORT}"),
            target: pod.clone(),
            command: probe("get", &url, 1, ONE),
            timeout: budget(1, ONE),
            expect: Expect::AnsweredBy {
                hostname: pod.clone(),
                itself: false,
            },
        });
        out.push(Check {
            group: Group::ContainerToContainer,
            name: "udp",
            from: pod.clone(),
            to: format!("localhost:{UDP_PORT}"),
            target: pod.clone(),
            command: probe("udp", &format!("127.0.0.1:{UDP_PORT}"), 1, ONE),
            timeout: budget(1, ONE),
            expect: Expect::Source {
                observer: "server",
                answered_by: Some(pod.clone()),
                expected: vec![(Ipv4Addr::LOCALHOST, "client has".into())],
            },
        });
    }
}

fn pod_to_pod(world: &World, out: &mut Vec<Check>) {
    for proto in ["tcp", "udp"] {
        for from in &world.nodes {
            let src = client(&from.name);
            let Some(api_ip) = world.pod(&src) else {
                continue;
            };
            // What the pod sees for itself; the API's address if that could not be read.
            let own = world.eth0.get(&src).copied().unwrap_or(api_ip);
            for to in &world.nodes {
                let dst = web(&to.name);
                let Some(ip) = world.pod(&dst) else { continue };
                let (command, answered_by) = if proto == "tcp" {
                    let url = format!("http://{ip}:{HTTP_PORT}/clientip");
                    (probe("get", &url, 1, ONE), None)
                } else {
                    let target = format!("{ip}:{UDP_PORT}");
                    (probe("udp", &target, 1, ONE), Some(dst.clone()))
                };
                out.push(Check {
                    group: Group::PodToPod,
                    name: same_or_cross(proto, from.name == to.name),
                    from: src.clone(),
                    to: dst,
                    target: src.clone(),
                    command,
                    timeout: budget(1, ONE),
                    expect: Expect::Source {
                        observer: "server",
                        answered_by,
                        expected: vec![(own, "client has".into())],
                    },
                });
            }
        }
    }
}

fn node_to_pod(world: &World, out: &mut Vec<Check>) {
    for from in &world.nodes {
        for to in &world.nodes {
            let dst = web(&to.name);
            let Some(ip) = world.pod(&dst) else { continue };
            let same = from.name == to.name;
            let mut expected = vec![(from.ip, format!("{} has", from.name))];
            // To its own pods a node speaks from its address on their bridge.
            if let (true, Some(b)) = (same, from.bridge_ip) {
                expected.push((b, format!("{}'s pod bridge has", from.name)));
            }
            let url = format!("http://{ip}:{HTTP_PORT}/clientip");
            out.push(Check {
                group: Group::NodeToPod,
                name: same_or_cross("tcp", same),
                from: from.name.clone(),
                to: dst,
                target: format!("node/{}", from.name),
                command: probe("get", &url, 1, ONE),
                timeout: budget(1, ONE),
                expect: Expect::Source {
                    observer: "pod",
                    answered_by: None,
                    expected,
                },
            });
        }
    }
}

fn pod_to_service(world: &World, out: &mut Vec<Check>) {
    let webs = world.webs();
    let svc = |name: &str| world.services.get(name).copied();
    let clients: Vec<String> = world
        .nodes
        .iter()
        .map(|n| client(&n.name))
        .filter(|c| world.pods.contains_key(c))
        .collect();
    let mut add = |name: &'static str,
                   from: &str,
                   to: String,
                   target: &str,
                   command: Vec<String>,
                   timeout: Duration,
                   expect: Expect| {
        out.push(Check {
            group: Group::PodToService,
            name,
            from: from.to_string(),
            to,
            target: target.to_string(),
            command,
            timeout,
            expect,
        });
    };
    if let Some(web_svc) = svc("web") {
        for c in &clients {
            let url = format!("http://{}/hostname", web_svc.ip);
            add(
                "clusterip-tcp",
                c,
                "svc/web".into(),
                c,
                probe("get", &url, SPREAD_TCP, MANY),
                budget(SPREAD_TCP, MANY),
                Expect::Spread {
                    endpoints: webs.clone(),
                },
            );
        }
        for c in &clients {
            let target = format!("{}:53", web_svc.ip);
            add(
                "clusterip-udp",
                c,
                "svc/web".into(),
                c,
                udp_new_sockets(&world.exe, &target, SPREAD_UDP, MANY),
                budget(SPREAD_UDP, MANY),
                Expect::Spread {
                    endpoints: webs.clone(),
                },
            );
        }
    }
    if let Some(s) = svc("sticky") {
        for c in &clients {
            let url = format!("http://{}/hostname", s.ip);
            add(
                "session-affinity",
                c,
                "svc/sticky".into(),
                c,
                probe("get", &url, STICKY, MANY),
                budget(STICKY, MANY),
                Expect::Sticky {
                    endpoints: webs.clone(),
                },
            );
        }
    }
    if let Some(s) = svc("empty") {
        for c in &clients {
            add(
                "no-endpoints",
                c,
                "svc/empty".into(),
                c,
                probe("tcp", &format!("{}:80", s.ip), 1, Duration::from_secs(2)),
                budget(1, Duration::from_secs(2)),
                Expect::Refused {
                    within: Duration::from_secs(1),
                },
            );
        }
    }
    for (check, tcp) in [("hairpin-tcp", true), ("hairpin-udp", false)] {
        for n in &world.nodes {
            let pod = web(&n.name);
            let name = self_service(&n.name);
            let (Some(s), true) = (svc(&name), world.pods.contains_key(&pod)) else {
                continue;
            };
            let command = if tcp {
                probe("get", &format!("http://{}/hostname", s.ip), HAIRPIN, MANY)
            } else {
                probe("udp", &format!("{}:53", s.ip), HAIRPIN, MANY)
            };
            add(
                check,
                &pod,
                format!("svc/{name}"),
                &pod,
                command,
                budget(HAIRPIN, MANY),
                Expect::AnsweredBy {
                    hostname: pod.clone(),
                    itself: true,
                },
            );
        }
    }
    if let Some(port) = svc("web-nodeport").and_then(|s| s.node_port) {
        for n in &world.nodes {
            let url = format!("http://{}:{port}/hostname", n.ip);
            add(
                "nodeport-from-external",
                "external",
                format!("{}:{port}", n.name),
                "external",
                probe("get", &url, SPREAD_NODEPORT, MANY),
                budget(SPREAD_NODEPORT, MANY),
                Expect::Spread {
                    endpoints: webs.clone(),
                },
            );
        }
        if world.nodes.len() > 1 {
            for (i, n) in world.nodes.iter().enumerate() {
                let from = &world.nodes[(i + 1) % world.nodes.len()];
                let url = format!("http://{}:{port}/hostname", n.ip);
                add(
                    "nodeport-from-node",
                    &from.name,
                    format!("{}:{port}", n.name),
                    &format!("node/{}", from.name),
                    probe("get", &url, SPREAD_NODEPORT, MANY),
                    budget(SPREAD_NODEPORT, MANY),
                    Expect::Spread {
                        endpoints: webs.clone(),
                    },
                );
            }
        }
    }
    if let Some(port) = svc("web-local").and_then(|s| s.node_port) {
        for n in &world.nodes {
            let url = format!("http://{}:{port}/clientip", n.ip);
            add(
                "local-keeps-client-ip",
                "external",
                format!("{}:{port}", n.name),
                "external",
                probe("get", &url, 3, ONE),
                budget(3, ONE),
                Expect::Source {
                    observer: "pod",
                    answered_by: None,
                    expected: vec![(EXTERNAL_IP, "external host has".into())],
                },
            );
        }
    }
}

fn egress(world: &World, out: &mut Vec<Check>) {
    for n in &world.nodes {
        let pod = client(&n.name);
        if !world.pods.contains_key(&pod) {
            continue;
        }
        let url = format!("http://{EXTERNAL_IP}:{EXTERNAL_PORT}/clientip");
        out.push(Check {
            group: Group::Egress,
            name: "tcp",
            from: pod.clone(),
            to: format!("external:{EXTERNAL_PORT}"),
            target: pod,
            command: probe("get", &url, 1, ONE),
            timeout: budget(1, ONE),
            expect: Expect::Source {
                observer: "external host",
                answered_by: None,
                expected: vec![(n.ip, format!("{} has", n.name))],
            },
        });
    }
}

/// The endpoints-follow-pods scenario: from every client, the answers of Service `follow`
/// must first come from exactly follow-1 and follow-2; then follow-1 is deleted and they
/// must come from follow-2 alone; then follow-3 is added and they must come from follow-2
/// and follow-3. Its rows are `endpoint-removed` and `endpoint-added`, one per client,
/// with the time each client took to see the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follow {
    /// The client pods.
    pub clients: Vec<String>,
    /// `podnet probe get` of the Service, once.
    pub command: Vec<String>,
    pub timeout: Duration,
    pub to: String,
}

/// Requests per poll of the `follow` Service: a miss of one of 2 endpoints only delays
/// the match by one poll.
const FOLLOW_REQUESTS: u32 = 16;

pub fn follow(world: &World, groups: &[Group]) -> Option<Follow> {
    if !groups.contains(&Group::PodToService) {
        return None;
    }
    let svc = world.services.get("follow")?;
    let clients: Vec<String> = world
        .nodes
        .iter()
        .map(|n| client(&n.name))
        .filter(|c| world.pods.contains_key(c))
        .collect();
    let url = format!("http://{}/hostname", svc.ip);
    Some(Follow {
        clients,
        command: probe("get", &url, FOLLOW_REQUESTS, MANY),
        timeout: budget(FOLLOW_REQUESTS, MANY),
        to: "svc/follow".into(),
    })
}

/// How many rows a run of `groups` has, for progress: the first checks, the others and
/// the scenario's two rows per client.
pub fn row_count(first: &[Check], rest: &[Check], follow: Option<&Follow>) -> u64 {
    (first.len() + rest.len() + follow.map_or(0, |f| 2 * f.clients.len())) as u64
}

/// Lines describing a workload, for progress: `9 pods, 10 Services`.
pub fn describe(w: &Workload) -> String {
    let services = w.yaml.matches("\nkind: Service\n").count();
    let mut s = format!("{} pods", w.pods.len());
    if services > 0 {
        let _ = write!(s, ", {services} Services");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_model::objects::parse_documents;

    fn nodes(n: usize) -> Vec<Node> {
        (1..=n)
            .map(|i| Node {
                name: format!("node-{i}"),
                ip: Ipv4Addr::new(172, 18, 0, 10 + i as u8),
                bridge_ip: Some(Ipv4Addr::new(10, 244, i as u8 - 1, 1)),
            })
            .collect()
    }

    fn world(n: usize) -> World {
        let nodes = nodes(n);
        let mut pods = BTreeMap::new();
        for (i, node) in nodes.iter().enumerate() {
            pods.insert(web(&node.name), Ipv4Addr::new(10, 244, i as u8, 2));
            pods.insert(client(&node.name), Ipv4Addr::new(10, 244, i as u8, 3));
        }
        let mut services = BTreeMap::new();
        for (i, s) in ["web", "empty", "sticky", "follow", "self-node-1"]
            .iter()
            .enumerate()
        {
            services.insert(
                s.to_string(),
                Svc {
                    ip: Ipv4Addr::new(10, 96, 0, 10 + i as u8),
                    node_port: None,
                },
            );
        }
        for (s, port) in [("web-nodeport", 30001), ("web-local", 30002)] {
            services.insert(
                s.into(),
                Svc {
                    ip: Ipv4Addr::new(10, 96, 1, 1),
                    node_port: Some(port),
                },
            );
        }
        World {
            nodes,
            pods,
            services,
            eth0: BTreeMap::new(),
            exe: "/opt/pod net/podnet".into(),
        }
    }

    #[test]
    fn the_workload_is_valid_and_complete() {
        let w = workload(&nodes(3), &Group::ALL);
        let objs = parse_documents(&w.yaml).expect("valid YAML the lab accepts");
        assert_eq!(objs[0].reference().to_string(), "Namespace podnet-test");
        assert_eq!(
            w.pods,
            [
                "web-node-1",
                "client-node-1",
                "web-node-2",
                "client-node-2",
                "web-node-3",
                "client-node-3",
                "follow-1",
                "follow-2"
            ]
        );
        assert_eq!(describe(&w), "8 pods, 9 Services");
        assert_eq!(w.endpoints["web"], 3);
        assert_eq!(w.endpoints["self-node-2"], 1);
        assert_eq!(w.endpoints["follow"], 2);
        assert!(!w.endpoints.contains_key("empty"));
        assert!(w.yaml.contains("sessionAffinity: ClientIP"));
        assert!(w.yaml.contains("externalTrafficPolicy: Local"));
        assert!(objs
            .iter()
            .all(|o| o.reference().kind == podnet_model::Kind::Namespace
                || o.meta().namespace.as_deref() == Some(NAMESPACE)));
        parse_documents(&added_follow_pod(&nodes(3))).expect("valid");
        assert!(added_follow_pod(&nodes(3)).contains("nodeName: node-3"));
        assert!(added_follow_pod(&nodes(1)).contains("nodeName: node-1"));
    }

    #[test]
    fn only_what_the_groups_need_is_deployed() {
        let w = workload(&nodes(2), &[Group::Egress]);
        assert_eq!(w.pods, ["client-node-1", "client-node-2"]);
        assert!(w.endpoints.is_empty());
        let w = workload(&nodes(2), &[Group::ContainerToContainer]);
        assert_eq!(w.pods, ["web-node-1", "web-node-2"]);
        assert!(needs_external_server(&[Group::Egress]));
        assert!(!needs_external_server(&[Group::PodToPod]));
    }

    fn names(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .map(|c| format!("{} {} {}>{}", c.group.name(), c.name, c.from, c.to))
            .collect()
    }

    #[test]
    fn every_node_pair_is_covered() {
        let mut w = world(3);
        w.eth0
            .insert("client-node-2".into(), Ipv4Addr::new(10, 244, 1, 99));
        let checks = checks(&w, &Group::ALL);
        let n = names(&checks);
        let count = |g: &str, c: &str| {
            n.iter()
                .filter(|s| s.starts_with(&format!("{g} {c} ")))
                .count()
        };
        assert_eq!(count("container-to-container", "tcp"), 3);
        assert_eq!(count("container-to-container", "udp"), 3);
        assert_eq!(count("pod-to-pod", "tcp-same-node"), 3);
        assert_eq!(count("pod-to-pod", "tcp-cross-node"), 6);
        assert_eq!(count("pod-to-pod", "udp-cross-node"), 6);
        assert_eq!(count("node-to-pod", "tcp-same-node"), 3);
        assert_eq!(count("node-to-pod", "tcp-cross-node"), 6);
        assert_eq!(count("pod-to-service", "clusterip-tcp"), 3);
        assert_eq!(count("pod-to-service", "clusterip-udp"), 3);
        assert_eq!(count("pod-to-service", "session-affinity"), 3);
        assert_eq!(count("pod-to-service", "no-endpoints"), 3);
        // Only self-node-1 exists in this world.
        assert_eq!(count("pod-to-service", "hairpin-tcp"), 1);
        assert_eq!(count("pod-to-service", "hairpin-udp"), 1);
        assert_eq!(count("pod-to-service", "nodeport-from-external"), 3);
        assert_eq!(count("pod-to-service", "nodeport-from-node"), 3);
        assert_eq!(count("pod-to-service", "local-keeps-client-ip"), 3);
        assert_eq!(count("egress", "tcp"), 3);
        assert!(n.contains(&"pod-to-pod tcp-cross-node client-node-1>web-node-3".to_string()));
        assert!(n.contains(&"node-to-pod tcp-same-node node-2>web-node-2".to_string()));
        assert!(n.contains(&"pod-to-service nodeport-from-node node-2>node-1:30001".to_string()));

        // The pod-to-pod expectation is the address the client sees for itself.
        let c = checks
            .iter()
            .find(|c| c.name == "udp-cross-node" && c.from == "client-node-2")
            .expect("a check");
        assert_eq!(c.target, "client-node-2");
        assert_eq!(
            c.expect,
            Expect::Source {
                observer: "server",
                answered_by: Some("web-node-1".into()),
                expected: vec![(Ipv4Addr::new(10, 244, 1, 99), "client has".into())],
            }
        );
        assert_eq!(
            c.command.join(" "),
            "podnet probe udp 10.244.0.2:5353 -c 1 --timeout 1s -o json"
        );
        // A node reaching its own pod may be seen with its bridge address.
        let c = checks
            .iter()
            .find(|c| {
                c.group == Group::NodeToPod && c.name == "tcp-same-node" && c.from == "node-1"
            })
            .expect("a check");
        assert_eq!(c.target, "node/node-1");
        let Expect::Source { expected, .. } = &c.expect else {
            panic!("{c:?}")
        };
        assert_eq!(expected.len(), 2);
        // Many UDP sockets: one shell loop, the binary quoted.
        let c = checks
            .iter()
            .find(|c| c.name == "clusterip-udp")
            .expect("a check");
        assert_eq!(
            c.command,
            [
                "sh",
                "-c",
                "for i in $(seq 30); do '/opt/pod net/podnet' probe udp 10.96.0.10:53 -c 1 --timeout 500ms -o json; done"
            ]
        );
        assert!(checks.iter().all(|c| c.timeout <= MAX_CHECK));
    }

    #[test]
    fn groups_filter_and_one_node_has_no_pairs() {
        let w = world(1);
        let checks = checks(&w, &[Group::PodToPod, Group::PodToService]);
        assert!(checks
            .iter()
            .all(|c| matches!(c.group, Group::PodToPod | Group::PodToService)));
        assert!(!checks.iter().any(|c| c.name.ends_with("cross-node")));
        assert!(!checks.iter().any(|c| c.name == "nodeport-from-node"));
        assert_eq!(own_address_checks(&w, &[Group::PodToPod]).len(), 1);
        assert!(own_address_checks(&w, &[Group::Egress]).is_empty());
        let f = follow(&w, &[Group::PodToService]).expect("follow");
        assert_eq!(f.clients, ["client-node-1"]);
        assert!(follow(&w, &[Group::PodToPod]).is_none());
        assert_eq!(row_count(&[], &checks, Some(&f)), checks.len() as u64 + 2);
    }
}
