//! The datapath: TCP throughput (iperf3, one stream) and request/response rate (a
//! TCP_RR-style exchange: one byte each way, one in flight) over eleven paths measured
//! in one run, each reported as a ratio to the first:
//!
//! 1. a bare veth pair between two namespaces this bench makes (the anchor: what this
//!    machine can do with no pod network at all);
//! 2. to 4. the issue's "hand-built minimal setup" of each path, built here with `ip`
//!    and no rules at all: two pods on one node's bridge; pods on two nodes routed over
//!    their underlay (host-gw); and the same through a VXLAN device per node (pod MTU
//!    1450). The nodes hang off a switch namespace, as the lab's do;
//! 5. and 6. the host-gw and VXLAN setups again, each node with a nat chain in
//!    prerouting and one masquerading rule in postrouting: what any node pays that
//!    translates Services and masquerades with conntrack (its lookup and the NAT hooks
//!    on every packet), the floor for podnet's design;
//! 7. to 9. the same three paths in real labs (`--backend host-gw` and `--backend
//!    vxlan`), with their agents running and podnet's routes and rules loaded;
//! 10. and 11. the cross-node paths again in labs with `--untracked-pod-traffic`, where
//!     pod-to-pod flows that no Service translates skip conntrack.
//!
//! The issue's targets are podnet within 5% of the hand-built setups. Its reference
//! ratios came with a bare pair taking 56 µs a round trip, far above the 7 to 8 µs of
//! one CPU, so a wakeup across CPUs was in them: this bench measures that way (client
//! on CPU 0, server on CPU 1), and also with both on CPU 0, where a round trip costs
//! only the CPU time of the path and every extra hook shows.
//!
//! This VM's speed drifts by 10-20% over seconds, more than the 5% the targets ask to
//! resolve, so every measurement is interleaved and every ratio paired:
//! - throughput: `ROUNDS` rounds, each running iperf3 on every path once (each round
//!   starting at the other end), ratios the median of each round's own ratio;
//! - round trips: the bench's own client holds one connection per path (a socket made
//!   in each client namespace) and times `RR_BLOCK` exchanges on each in turn, `RR_ROUNDS`
//!   times, so a path and the one it is compared with are measured milliseconds apart.
//!
//! Run as root: `cargo bench -p podnet --bench datapath`.
//!
//! Nothing runs in the machine's own network namespace: servers and clients run in the
//! bench's namespaces or in lab pods, and everything is removed on success and on panic
//! (if the bench is killed, the next run of podnet's lab tests or benches sweeps what it
//! left).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{stdout, Lab};
use podnet_kernel::{sysctl, NetNs};
use podnet_testkit::{in_netns, Fixture};
use serde_json::Value;

/// Measured seconds per iperf3 run.
const SECONDS: &str = "2";
/// Throughput rounds, each measuring every path once; medians are reported.
const ROUNDS: usize = 15;
/// Round trips timed on one path before moving to the next (5 to 10 ms).
const RR_BLOCK: u32 = 256;
/// Rounds of round trips, each timing one block on every path, per server placement.
const RR_ROUNDS: usize = 400;
/// Bare veth addresses: a TEST-NET-1 pair, never routed anywhere.
const VETH_CLIENT: &str = "192.0.2.1/24";
const VETH_SERVER: &str = "192.0.2.2";

/// The round-trip client runs on CPU 0, its servers on CPU 1 (the issue's placement)
/// or on CPU 0. Left to the scheduler, a client and its server land on one CPU or on two
/// from run to run, and on this VM a wakeup across CPUs costs more than the whole
/// bare-veth path, so unpinned runs flip between two results.
const CLIENT_CPU: usize = 0;
const OTHER_CPU: usize = 1;

/// The three paths a pod network provides, each measured hand-built and with podnet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    SameNode,
    HostGw,
    Vxlan,
}

impl Path {
    const ALL: [Path; 3] = [Path::SameNode, Path::HostGw, Path::Vxlan];

    fn label(self) -> &'static str {
        match self {
            Path::SameNode => "pod to pod, same node",
            Path::HostGw => "pod to pod, host-gw",
            Path::Vxlan => "pod to pod, vxlan",
        }
    }

    /// From the issue: what its hand-built setup reached (round trips, throughput) as a
    /// ratio to the bare pair, and the minimum round-trip ratio for podnet.
    fn target(self) -> Target {
        let (reference_rr, reference_throughput, rr_ratio) = match self {
            Path::SameNode => (0.94, 0.80, 0.90),
            Path::HostGw => (0.87, 0.68, 0.83),
            Path::Vxlan => (0.79, 0.55, 0.75),
        };
        Target {
            rr_ratio,
            reference_rr,
            reference_throughput,
        }
    }
}

#[derive(Clone, Copy)]
struct Target {
    rr_ratio: f64,
    reference_rr: f64,
    reference_throughput: f64,
}

/// What a path is: the anchor, a hand-built setup or podnet's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Anchor,
    HandBuilt(Path),
    /// The hand-built setup with what any NAT costs: [`NAT_FLOOR`] in each node.
    HandBuiltNat(Path),
    Podnet(Path),
    /// podnet with `--untracked-pod-traffic`.
    PodnetUntracked(Path),
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::Anchor => "bare veth (anchor)".into(),
            Kind::HandBuilt(p) => format!("hand-built: {}", p.label()),
            Kind::HandBuiltNat(p) => format!("hand-built + NAT: {}", p.label()),
            Kind::Podnet(p) => format!("podnet: {}", p.label()),
            Kind::PodnetUntracked(p) => format!("podnet, untracked: {}", p.label()),
        }
    }
}

/// Runs a command (argv) at a path's client end.
type Client<'a> = Box<dyn Fn(&[&str]) -> Output + 'a>;

/// One path: how to run a client command at its near end, its server's address, and
/// both ends' namespaces (where the round-trip sockets are made).
struct Datapath<'a> {
    kind: Kind,
    server_ip: String,
    client: Client<'a>,
    client_ns: NetNs,
    server_ns: NetNs,
}

#[derive(Default)]
struct Samples {
    gbps: Vec<f64>,
    /// Round trips per second, one per round, the server on the other CPU / on the
    /// client's CPU.
    other_cpu: Vec<f64>,
    same_cpu: Vec<f64>,
}

/// A server process the bench started; killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Namespaces the bench made, with their servers. Field order is drop order: servers go
/// before their namespaces.
struct Built {
    _servers: Vec<Server>,
    /// By path (the anchor's, or the hand-built ones): the client's namespace, the
    /// server's address and its namespace.
    clients: Vec<(Kind, NetNs, String, PathBuf)>,
    _namespaces: Vec<NetNs>,
    _fx: Fixture,
}

impl Built {
    fn path(&self, kind: Kind) -> Datapath<'_> {
        let (_, ns, server_ip, server_ns) = self
            .clients
            .iter()
            .find(|(k, _, _, _)| *k == kind)
            .expect("a path the bench built");
        Datapath {
            kind,
            server_ip: server_ip.clone(),
            client_ns: reopen(ns.path()),
            server_ns: reopen(server_ns),
            client: Box::new(move |cmd| {
                let mut c = Command::new(cmd[0]);
                c.args(&cmd[1..]);
                in_netns(&mut c, ns)
                    .output()
                    .unwrap_or_else(|e| panic!("run {cmd:?} at a client: {e}"))
            }),
        }
    }
}

fn reopen(path: &std::path::Path) -> NetNs {
    NetNs::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// The paths built by hand

/// What any node with a Service proxy and masquerading built on conntrack has: a nat
/// chain in prerouting (where Services are translated; empty here) and one masquerading
/// what leaves the pod network (a rule that needs conntrack: a nat chain alone does not
/// turn it on).
const NAT_FLOOR: &str = "add table ip nat
add chain ip nat prerouting { type nat hook prerouting priority -100; }
add chain ip nat postrouting { type nat hook postrouting priority 100; }
add rule ip nat postrouting ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 masquerade";

/// Path 1 and the hand-built paths.
///
/// ```text
///   anchor:   client ==veth== server
///   host-gw:  hg-1 [cni0]--eth0 ==\            /== eth0--[cni0] hg-2  (pods: hg-c, hg-s, hg-n)
///   vxlan:    vx-1 [cni0]--eth0 ===[switch br0]=== eth0--[cni0] vx-2  (pods: vx-c, vx-s)
///   + NAT:    hn-1, hn-2 and vn-1, vn-2: the same, each node with `NAT_FLOOR`
/// ```
/// Node addresses are TEST-NET-1 and pods use 10.244.0.0/16, all inside these
/// namespaces only.
fn build() -> Built {
    let mut fx = Fixture::new("bench");
    let mut b = Building::default();

    // The anchor: one veth pair, MTU 1500 like the lab's underlay.
    let client = fx.netns("a");
    let server = fx.netns("b");
    veth(&client, "veth-a", &server, "veth-b", 1500);
    address(&client, "veth-a", VETH_CLIENT);
    address(&server, "veth-b", &format!("{VETH_SERVER}/24"));
    b.path(Kind::Anchor, client, &server, VETH_SERVER);
    b.keep(server);

    // The underlay: one switch, as in the lab (`--underlay l2`).
    let sw = fx.netns("sw");
    run_in(&sw, &["ip", "link", "add", "br0", "type", "bridge"]);
    run_in(&sw, &["ip", "link", "set", "br0", "up"]);
    node_sysctls(&sw, false);

    for (prefix, first, path, nat) in [
        ("hg", 1, Path::HostGw, false),
        ("vx", 3, Path::Vxlan, false),
        ("hn", 5, Path::HostGw, true),
        ("vn", 7, Path::Vxlan, true),
    ] {
        let vxlan = path == Path::Vxlan;
        // Node n: underlay 192.0.2.1n, pods 10.244.n.0/24.
        let nodes = [first, first + 1].map(|n| {
            let ns = node(&mut fx, &sw, &format!("{prefix}-{}", n - first + 1), n);
            if nat {
                run_in(&ns, &["nft", NAT_FLOOR]);
            }
            ns
        });
        if vxlan {
            vxlan_peers(&nodes, [first, first + 1]);
        } else {
            for (me, peer) in [(0, 1), (1, 0)] {
                let (via, cidr) = (underlay_ip(first + peer), pod_cidr(first + peer));
                run_in(&nodes[me], &["ip", "route", "add", &cidr, "via", &via]);
            }
        }
        let mtu = if vxlan { 1450 } else { 1500 };
        let server_ip = pod_ip(first + 1, 2);
        let server = pod(&mut fx, &nodes[1], &format!("{prefix}-s"), &server_ip, mtu);
        let far = pod(
            &mut fx,
            &nodes[0],
            &format!("{prefix}-c"),
            &pod_ip(first, 2),
            mtu,
        );
        let kind = |p| {
            if nat {
                Kind::HandBuiltNat(p)
            } else {
                Kind::HandBuilt(p)
            }
        };
        if !vxlan && !nat {
            let near = pod(
                &mut fx,
                &nodes[1],
                &format!("{prefix}-n"),
                &pod_ip(first + 1, 3),
                mtu,
            );
            b.path(kind(Path::SameNode), near, &server, &server_ip);
        }
        b.path(kind(path), far, &server, &server_ip);
        b.keep(server);
        for n in nodes {
            b.keep(n);
        }
    }
    b.keep(sw);
    Built {
        _servers: b.servers,
        clients: b.clients,
        _namespaces: b.namespaces,
        _fx: fx,
    }
}

/// The parts of [`Built`] while they are made.
#[derive(Default)]
struct Building {
    servers: Vec<Server>,
    clients: Vec<(Kind, NetNs, String, PathBuf)>,
    namespaces: Vec<NetNs>,
}

impl Building {
    /// A path from `client` to iperf3's server, started here, in `server`.
    fn path(&mut self, kind: Kind, client: NetNs, server: &NetNs, server_ip: &str) {
        if !self.clients.iter().any(|c| c.3 == server.path()) {
            self.servers.push(spawn_in(server, &["iperf3", "-s"]));
        }
        let server_path = server.path().to_path_buf();
        self.clients
            .push((kind, client, server_ip.to_string(), server_path));
    }

    fn keep(&mut self, ns: NetNs) {
        self.namespaces.push(ns);
    }
}

fn underlay_ip(node: u8) -> String {
    format!("192.0.2.{}", 10 + node)
}

fn pod_cidr(node: u8) -> String {
    format!("10.244.{node}.0/24")
}

fn pod_ip(node: u8, host: u8) -> String {
    format!("10.244.{node}.{host}")
}

/// One VXLAN device per node (VNI 1, port 4789, no learning) and, per peer, a permanent
/// neighbour, an FDB entry and an on-link route, as podnet's agent programs them.
fn vxlan_peers(nodes: &[NetNs; 2], numbers: [u8; 2]) {
    let mac = |n: u8| format!("02:00:c0:00:02:{:02x}", 10 + n);
    let vtep = |n: u8| format!("10.244.{n}.0");
    for (ns, n) in nodes.iter().zip(numbers) {
        let argv = [
            "ip",
            "link",
            "add",
            "vxlan0",
            "address",
            &mac(n),
            "type",
            "vxlan",
        ];
        let options = ["id", "1", "dstport", "4789", "nolearning", "dev", "eth0"];
        run_in(ns, &[&argv[..], &options[..]].concat());
        run_in(
            ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/32", vtep(n)),
                "dev",
                "vxlan0",
            ],
        );
        run_in(ns, &["ip", "link", "set", "vxlan0", "up"]);
    }
    for (me, peer) in [(0, 1), (1, 0)] {
        let (ns, p) = (&nodes[me], numbers[peer]);
        let (mac, vtep, underlay) = (mac(p), vtep(p), underlay_ip(p));
        let neigh = [
            "ip",
            "neigh",
            "add",
            &vtep,
            "lladdr",
            &mac,
            "dev",
            "vxlan0",
            "nud",
            "permanent",
        ];
        run_in(ns, &neigh);
        run_in(
            ns,
            &[
                "bridge", "fdb", "append", &mac, "dev", "vxlan0", "dst", &underlay,
            ],
        );
        let route = [
            "ip",
            "route",
            "add",
            &pod_cidr(p),
            "via",
            &vtep,
            "dev",
            "vxlan0",
            "onlink",
        ];
        run_in(ns, &route);
    }
}

/// A veth pair from `a` (named `a_dev`) to `b` (`b_dev`), created from inside `a` with
/// the far end straight into `b`, so no device ever exists in the machine's namespace.
fn veth(a: &NetNs, a_dev: &str, b: &NetNs, b_dev: &str, mtu: u32) {
    let (peer, mtu) = (b.path().display().to_string(), mtu.to_string());
    run_in(
        a,
        &[
            "ip", "link", "add", a_dev, "mtu", &mtu, "type", "veth", "peer", "name", b_dev, "mtu",
            &mtu, "netns", &peer,
        ],
    );
}

/// Brings up `lo` and `dev` in `ns`, with `cidr` on `dev`.
fn address(ns: &NetNs, dev: &str, cidr: &str) {
    run_in(ns, &["ip", "link", "set", "lo", "up"]);
    run_in(ns, &["ip", "addr", "add", cidr, "dev", dev]);
    run_in(ns, &["ip", "link", "set", dev, "up"]);
}

/// Sets sysctls inside `ns`: bridges there only switch frames, with no IP hooks (as
/// podnet sets it in a node), and `forward` turns IPv4 forwarding on.
fn node_sysctls(ns: &NetNs, forward: bool) {
    let mut settings: Vec<(&str, &str)> = sysctl::BRIDGE_NF_CALL.map(|k| (k, "0")).to_vec();
    if forward {
        settings.push(("net.ipv4.ip_forward", "1"));
    }
    for (key, value) in settings {
        ns.run(|| sysctl::set(key, value))
            .and_then(|set| set)
            .unwrap_or_else(|e| panic!("set {key}={value} in {}: {e}", ns.path().display()));
    }
}

/// Node `n`: plugged into the switch as eth0 with its underlay address, forwarding, and
/// a `cni0` bridge holding the gateway address (.1) of its pods' /24.
fn node(fx: &mut Fixture, sw: &NetNs, name: &str, n: u8) -> NetNs {
    let ns = fx.netns(name);
    let port = format!("s-{name}");
    veth(sw, &port, &ns, "eth0", 1500);
    run_in(sw, &["ip", "link", "set", &port, "master", "br0", "up"]);
    address(&ns, "eth0", &format!("{}/24", underlay_ip(n)));
    node_sysctls(&ns, true);
    run_in(&ns, &["ip", "link", "add", "cni0", "type", "bridge"]);
    let gateway = format!("{}/24", pod_ip(n, 1));
    run_in(&ns, &["ip", "addr", "add", &gateway, "dev", "cni0"]);
    run_in(&ns, &["ip", "link", "set", "cni0", "up"]);
    ns
}

/// A pod on `node`'s bridge: eth0 with `ip`/24, the default route via the bridge.
fn pod(fx: &mut Fixture, node: &NetNs, name: &str, ip: &str, mtu: u32) -> NetNs {
    let ns = fx.netns(name);
    let host = format!("h-{name}");
    veth(node, &host, &ns, "eth0", mtu);
    run_in(node, &["ip", "link", "set", &host, "master", "cni0", "up"]);
    let gateway = ip.rsplit_once('.').map(|(net, _)| format!("{net}.1"));
    let gateway = gateway.expect("an IPv4 address");
    address(&ns, "eth0", &format!("{ip}/24"));
    run_in(&ns, &["ip", "route", "add", "default", "via", &gateway]);
    ns
}

// ---------------------------------------------------------------------------------------
// The paths in podnet's labs

/// A 2-node lab with a server pod on node-2 and a client pod on each node.
fn lab(backend: &str, untracked: bool) -> Lab {
    let mut args = vec!["--backend", backend];
    if untracked {
        args.push("--untracked-pod-traffic");
    }
    let lab = Lab::up(2, &args);
    lab.apply(&format!(
        "{}{}{}",
        server_pod("server", "node-2"),
        client_pod("near", "node-2"),
        client_pod("far", "node-1")
    ));
    for pod in ["server", "near", "far"] {
        lab.wait_ready(&format!("pod/{pod}"), "60s");
    }
    lab
}

fn lab_path(lab: &Lab, kind: Kind, path: Path) -> Datapath<'_> {
    let client = if path == Path::SameNode {
        "near"
    } else {
        "far"
    };
    Datapath {
        kind,
        server_ip: lab.pod_ip("server"),
        client: Box::new(move |cmd| lab.exec(client, cmd)),
        client_ns: pod_netns(lab, client),
        server_ns: pod_netns(lab, "server"),
    }
}

/// A lab pod's network namespace, named after the pod's UID.
fn pod_netns(lab: &Lab, pod: &str) -> NetNs {
    let uid = lab.pod(pod)["metadata"]["uid"]
        .as_str()
        .unwrap_or_else(|| panic!("pod {pod} has no UID"))
        .to_string();
    let layout = podnet_lab::layout::Layout::new(&lab.name)
        .unwrap_or_else(|e| panic!("lab {}: {e}", lab.name));
    let name = layout.pod_netns(&uid);
    NetNs::open_named(&name).unwrap_or_else(|e| panic!("pod {pod}'s namespace {name}: {e}"))
}

/// iperf3's server (the round trips' servers are the bench's own threads).
fn server_pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: iperf3, command: [iperf3, -s]}}]\n---\n"
    )
}

fn client_pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, command: [sleep, infinity]}}]\n---\n"
    )
}

// ---------------------------------------------------------------------------------------
// Measurements

/// iperf3, one stream: the receiver's bit rate in Gbit/s.
fn throughput(p: &Datapath<'_>, seconds: &str) -> Result<f64, String> {
    let out = (p.client)(&[
        "iperf3",
        "-c",
        &p.server_ip,
        "-t",
        seconds,
        "-J",
        "--connect-timeout",
        "2000",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("iperf3 printed no JSON ({e}): {}", output_text(&out)))?;
    if let Some(err) = v["error"].as_str() {
        return Err(format!("iperf3: {err}"));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .ok_or_else(|| format!("iperf3 reported no received rate: {}", output_text(&out)))
}

/// One TCP_RR connection on path `p`: the socket is made in the client's namespace and
/// served by a thread, pinned to `cpu`, that returns every byte it reads.
fn rr_connection(p: &Datapath<'_>, cpu: usize) -> io::Result<TcpStream> {
    let listener = p
        .server_ns
        .run(|| TcpListener::bind((p.server_ip.as_str(), 0)))??;
    let addr = listener.local_addr()?;
    let client = p
        .client_ns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))??;
    client.set_nodelay(true)?;
    let (mut conn, _) = listener.accept()?;
    conn.set_nodelay(true)?;
    std::thread::spawn(move || {
        pin_to(cpu);
        let mut byte = [0u8; 1];
        // Until the client closes its end.
        while conn.read_exact(&mut byte).is_ok() && conn.write_all(&byte).is_ok() {}
    });
    Ok(client)
}

/// `n` round trips of one byte on `conn`, timed.
fn exchange(conn: &mut TcpStream, n: u32) -> io::Result<Duration> {
    let started = Instant::now();
    let mut byte = [1u8; 1];
    for _ in 0..n {
        conn.write_all(&byte)?;
        conn.read_exact(&mut byte)?;
    }
    Ok(started.elapsed())
}

/// Round trips per second on every path, once per round, the servers on `server_cpu`.
/// Each round times one block on every path in turn, starting each round one path
/// further on and every other round backwards, so no path is always next to the same
/// neighbour or first.
fn round_trips(paths: &[Datapath<'_>], server_cpu: usize) -> Vec<Vec<f64>> {
    let mut conns: Vec<TcpStream> = paths
        .iter()
        .map(|p| {
            rr_connection(p, server_cpu)
                .unwrap_or_else(|e| panic!("{}: round-trip connection: {e}", p.kind.name()))
        })
        .collect();
    let names: Vec<String> = paths.iter().map(|p| p.kind.name()).collect();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_to(CLIENT_CPU);
                let fail = |i: usize, e: io::Error| -> Duration { panic!("{}: {e}", names[i]) };
                // Warm-up: caches, neighbour entries, the scheduler's idea of both threads.
                for (i, c) in conns.iter_mut().enumerate() {
                    exchange(c, 20 * RR_BLOCK).unwrap_or_else(|e| fail(i, e));
                }
                let mut rates = vec![Vec::with_capacity(RR_ROUNDS); conns.len()];
                let n = conns.len();
                for round in 0..RR_ROUNDS {
                    let mut order: Vec<usize> = (0..n).map(|k| (k + round) % n).collect();
                    if round % 2 == 1 {
                        order.reverse();
                    }
                    for i in order {
                        let t = exchange(&mut conns[i], RR_BLOCK).unwrap_or_else(|e| fail(i, e));
                        rates[i].push(f64::from(RR_BLOCK) / t.as_secs_f64());
                    }
                }
                rates
            })
            .join()
            .unwrap_or_else(|_| panic!("the round-trip client panicked"))
    })
}

/// Pins the calling thread to one CPU.
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set))
        .unwrap_or_else(|e| panic!("pin a thread to CPU {cpu}: {e}"));
}

/// Short iperf3 runs until the server answers (a pod is Ready once its process started,
/// maybe before it listens); this also warms neighbour tables, FDBs, routes and caches.
fn warm_up(p: &Datapath<'_>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let Err(e) = throughput(p, "1") else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "{}: iperf3's server never answered: {e}",
            p.kind.name()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Share of the machine's CPU time used (by anything) over `window`, from /proc/stat.
fn cpu_busy(window: Duration) -> Option<f64> {
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total = fields.iter().sum();
        let idle = fields.get(3)? + fields.get(4)?;
        Some((total, idle))
    }
    let (t0, i0) = sample()?;
    std::thread::sleep(window);
    let (t1, i1) = sample()?;
    let total = t1.checked_sub(t0).filter(|t| *t > 0)? as f64;
    Some(1.0 - (i1.saturating_sub(i0)) as f64 / total)
}

/// Waits (up to a minute) until the machine is nearly idle, so that a build or test
/// running next to the bench does not land in one path's measurement only. Returns the
/// load seen last, to be reported when the machine never calmed down.
fn wait_for_quiet() -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let busy = cpu_busy(Duration::from_millis(500))?;
        if busy < 0.10 {
            return None;
        }
        if Instant::now() > deadline {
            return Some(busy);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

fn run_in(ns: &NetNs, argv: &[&str]) {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    let out = in_netns(&mut cmd, ns)
        .output()
        .unwrap_or_else(|e| panic!("run {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} in {}: {}",
        ns.path().display(),
        output_text(&out)
    );
}

/// Starts a server in `ns`. It also dies with the bench (PR_SET_PDEATHSIG), in case the
/// bench is killed before it can drop the guard.
fn spawn_in(ns: &NetNs, argv: &[&str]) -> Server {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let child = in_netns(&mut cmd, ns)
        .spawn()
        .unwrap_or_else(|e| panic!("start {argv:?}: {e}"));
    Server(child)
}

fn output_text(out: &Output) -> String {
    format!(
        "{} {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The value below which a share `q` of `v` lies (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = (q * s.len() as f64).ceil() as usize;
    s.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN)
}

fn list(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    eprintln!(
        "setting up: bare veth, hand-built paths, host-gw and vxlan labs, tracked and untracked..."
    );
    let built = build();
    let host_gw_lab = lab("host-gw", false);
    let vxlan_lab = lab("vxlan", false);
    let host_gw_untracked = lab("host-gw", true);
    let vxlan_untracked = lab("vxlan", true);
    eprintln!(
        "labs {} (host-gw), {} (vxlan), {} (host-gw, untracked) and {} (vxlan, untracked) are up",
        host_gw_lab.name, vxlan_lab.name, host_gw_untracked.name, vxlan_untracked.name
    );
    // Each hand-built path is followed by podnet's, so the two are measured seconds apart.
    let mut paths = vec![built.path(Kind::Anchor)];
    for (path, lab, untracked) in [
        (Path::SameNode, &host_gw_lab, None),
        (Path::HostGw, &host_gw_lab, Some(&host_gw_untracked)),
        (Path::Vxlan, &vxlan_lab, Some(&vxlan_untracked)),
    ] {
        paths.push(built.path(Kind::HandBuilt(path)));
        if path != Path::SameNode {
            paths.push(built.path(Kind::HandBuiltNat(path)));
        }
        paths.push(lab_path(lab, Kind::Podnet(path), path));
        if let Some(lab) = untracked {
            paths.push(lab_path(lab, Kind::PodnetUntracked(path), path));
        }
    }
    for p in &paths {
        warm_up(p);
    }

    let mut samples: Vec<Samples> = paths.iter().map(|_| Samples::default()).collect();
    let mut busy_notes = Vec::new();
    for round in 0..ROUNDS {
        // Every other round runs backwards, so neither of a pair is always measured first.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..paths.len()).collect()
        } else {
            (0..paths.len()).rev().collect()
        };
        for i in order {
            let p = &paths[i];
            let name = p.kind.name();
            if let Some(busy) = wait_for_quiet() {
                busy_notes.push(format!(
                    "round {}, {name}: the machine was {:.0}% busy before measuring",
                    round + 1,
                    busy * 100.0
                ));
            }
            let gbps = throughput(p, SECONDS).unwrap_or_else(|e| panic!("{name}: {e}"));
            eprintln!("round {}: {name:<50} {gbps:6.2} Gbit/s", round + 1);
            samples[i].gbps.push(gbps);
        }
    }
    for (cpu, placement) in [
        (OTHER_CPU, "the other CPU"),
        (CLIENT_CPU, "the client's CPU"),
    ] {
        if let Some(busy) = wait_for_quiet() {
            busy_notes.push(format!(
                "round trips, servers on {placement}: the machine was {:.0}% busy before measuring",
                busy * 100.0
            ));
        }
        eprintln!("round trips, servers on {placement}: {RR_ROUNDS} rounds of {RR_BLOCK} on every path...");
        for (i, rates) in round_trips(&paths, cpu).into_iter().enumerate() {
            if cpu == OTHER_CPU {
                samples[i].other_cpu = rates;
            } else {
                samples[i].same_cpu = rates;
            }
        }
    }

    report(&paths, &samples, &busy_notes);
    for (lab, backend) in [(&host_gw_lab, "host-gw"), (&vxlan_lab, "vxlan")] {
        // The pod's MTU from inside the pod (sysfs would show the machine's own eth0).
        let link = stdout(&lab.exec("far", &["ip", "-o", "link", "show", "eth0"]));
        let mtu = link
            .split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .unwrap_or("?");
        println!("{backend} lab {}: pod MTU {mtu}", lab.name);
    }
}

/// The median, over rounds, of `a`'s sample divided by `b`'s of the same round: the two
/// were measured close together, so a slow stretch of the machine hits both.
fn paired(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&ratios)
}

/// Prints the tables (Markdown, ready for BENCHMARKS.md) and every sample.
fn report(paths: &[Datapath<'_>], samples: &[Samples], busy_notes: &[String]) {
    let of = |k: Kind| -> &Samples {
        let i = paths
            .iter()
            .position(|p| p.kind == k)
            .expect("every kind is measured");
        &samples[i]
    };
    let anchor = of(Kind::Anchor);
    println!(
        "\nthroughput: {ROUNDS} rounds of {SECONDS} s iperf3 runs; round trips: {RR_ROUNDS} \
         rounds of {RR_BLOCK} one-byte exchanges per path, with the server on the other CPU \
         (the issue's method) and on the client's CPU. Medians, and ratios as the median of \
         each round's own ratio\n"
    );
    println!("| path | throughput | ratio | round trips/s, other CPU (RTT) | ratio | same CPU (RTT) | ratio |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for p in paths {
        let x = of(p.kind);
        let (o, s) = (median(&x.other_cpu), median(&x.same_cpu));
        println!(
            "| {} | {:.1} Gbit/s | {:.2} | {o:.0} ({:.1} µs) | {:.2} | {s:.0} ({:.1} µs) | {:.2} |",
            p.kind.name(),
            median(&x.gbps),
            paired(&x.gbps, &anchor.gbps),
            1e6 / o,
            paired(&x.other_cpu, &anchor.other_cpu),
            1e6 / s,
            paired(&x.same_cpu, &anchor.same_cpu),
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    println!(
        "\nthe issue's targets (round trips, server on the other CPU): podnet's ratio to the \
         bare pair, and podnet within 5% of the hand-built path\n"
    );
    println!("| path | hand-built (issue's reference) | podnet | target | | podnet / hand-built | target | | same CPU: podnet / hand-built | throughput: hand-built (reference), podnet |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for path in Path::ALL {
        let t = path.target();
        let (hand, ours) = (of(Kind::HandBuilt(path)), of(Kind::Podnet(path)));
        let h = paired(&hand.other_cpu, &anchor.other_cpu);
        let o = paired(&ours.other_cpu, &anchor.other_cpu);
        let vs_hand = paired(&ours.other_cpu, &hand.other_cpu);
        println!(
            "| {} | {h:.2} ({:.2}) | {o:.2} | >= {:.2} | {} | {vs_hand:.2} | >= 0.95 | {} | {:.2} | {:.2} ({:.2}), {:.2} |",
            path.label(),
            t.reference_rr,
            t.rr_ratio,
            verdict(o >= t.rr_ratio),
            verdict(vs_hand >= 0.95),
            paired(&ours.same_cpu, &hand.same_cpu),
            paired(&hand.gbps, &anchor.gbps),
            t.reference_throughput,
            paired(&ours.gbps, &anchor.gbps),
        );
    }
    println!(
        "\nwhat NAT itself costs: the hand-built nodes with a nat prerouting chain and a \
         masquerading rule (conntrack and the NAT hooks), round trips\n"
    );
    println!("| path | hand-built + nat / hand-built, other CPU | same CPU | podnet / hand-built + nat, other CPU | same CPU |");
    println!("| --- | --- | --- | --- | --- |");
    for path in [Path::HostGw, Path::Vxlan] {
        let hand = of(Kind::HandBuilt(path));
        let nat = of(Kind::HandBuiltNat(path));
        let ours = of(Kind::Podnet(path));
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            path.label(),
            paired(&nat.other_cpu, &hand.other_cpu),
            paired(&nat.same_cpu, &hand.same_cpu),
            paired(&ours.other_cpu, &nat.other_cpu),
            paired(&ours.same_cpu, &nat.same_cpu),
        );
    }
    println!(
        "\nwith untracked pod traffic (`--untracked-pod-traffic`), round trips with the server \
         on the other CPU unless said\n"
    );
    println!("| path | podnet, untracked / bare | target | | / hand-built | target | | same CPU: / hand-built | / podnet (tracked) | same CPU | throughput / bare |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for path in [Path::HostGw, Path::Vxlan] {
        let t = path.target();
        let hand = of(Kind::HandBuilt(path));
        let tracked = of(Kind::Podnet(path));
        let ours = of(Kind::PodnetUntracked(path));
        let o = paired(&ours.other_cpu, &anchor.other_cpu);
        let vs_hand = paired(&ours.other_cpu, &hand.other_cpu);
        println!(
            "| {} | {o:.2} | >= {:.2} | {} | {vs_hand:.2} | >= 0.95 | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            path.label(),
            t.rr_ratio,
            verdict(o >= t.rr_ratio),
            verdict(vs_hand >= 0.95),
            paired(&ours.same_cpu, &hand.same_cpu),
            paired(&ours.other_cpu, &tracked.other_cpu),
            paired(&ours.same_cpu, &tracked.same_cpu),
            paired(&ours.gbps, &anchor.gbps),
        );
    }
    println!(
        "\nspread of podnet / hand-built over the rounds (10th, 25th, 75th, 90th percentile):"
    );
    for path in Path::ALL {
        let (hand, ours) = (of(Kind::HandBuilt(path)), of(Kind::Podnet(path)));
        for (placement, a, b) in [
            ("other CPU", &ours.other_cpu, &hand.other_cpu),
            ("same CPU", &ours.same_cpu, &hand.same_cpu),
        ] {
            let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
            let q = [0.10, 0.25, 0.75, 0.90].map(|f| quantile(&ratios, f));
            println!("  {:<24} {placement:<10} {}", path.label(), list(&q, 3));
        }
    }
    println!("\nthroughput, all runs (Gbit/s):");
    for (p, s) in paths.iter().zip(samples) {
        println!("  {:<50} {}", p.kind.name(), list(&s.gbps, 2));
    }
    for note in busy_notes {
        println!("note: {note}");
    }
}
