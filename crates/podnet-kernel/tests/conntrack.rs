//! Conntrack over ctnetlink against the real kernel, in namespaces each test creates and
//! removes. Run as root. Nothing is configured in, or sent from, the machine's own
//! namespace: every command runs inside a test namespace (setns before exec) and every
//! socket is made on a thread inside one.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use podnet_kernel::conntrack::{Flow, Tuple, PROTO_TCP, PROTO_UDP};
use podnet_kernel::{Conntrack, NetNs};
use podnet_testkit::{in_netns, tcp_ask_source, tcp_echo_source, udp_echo_source, Fixture};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// A Service with one endpoint, SERVER:5353, DNAT'ed in the client's namespace.
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A Service with no endpoints: nothing translates its traffic.
const EMPTY_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);

/// Conntrack is active in the client's namespace (a rule needs it; recent kernels track
/// nothing in a namespace otherwise) and DNATs CLUSTER_IP:53 to SERVER:5353 like the
/// service proxy does.
const CLIENT_RULES: &str = "
table ip pntest_ct {
    chain out {
        type filter hook output priority 0;
        ct state new accept
    }
    chain services {
        type nat hook output priority -100;
        ip daddr 10.96.0.10 udp dport 53 dnat to 10.77.0.2:5353
    }
}
";

fn run_in(ns: &NetNs, args: &[&str]) {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let out = in_netns(&mut cmd, ns)
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Two namespaces joined by a veth pair: `client` (CLIENT, routes the Service range to
/// the server, conntrack and the DNAT rule) and `server` (SERVER, no rules).
struct Pair {
    client: NetNs,
    server: NetNs,
    // Dropped last: removes both namespaces.
    _fx: Fixture,
}

fn pair(label: &str) -> Pair {
    let mut fx = Fixture::new(label);
    let client = fx.netns("client");
    let server = fx.netns("server");
    let server_name = server
        .path()
        .file_name()
        .expect("namespace name")
        .to_string_lossy()
        .into_owned();
    run_in(
        &client,
        &[
            "ip",
            "link",
            "add",
            "ct0",
            "type",
            "veth",
            "peer",
            "name",
            "ct1",
            "netns",
            &server_name,
        ],
    );
    for (ns, dev, addr) in [(&client, "ct0", CLIENT), (&server, "ct1", SERVER)] {
        run_in(ns, &["ip", "link", "set", "lo", "up"]);
        run_in(
            ns,
            &["ip", "addr", "add", &format!("{addr}/24"), "dev", dev],
        );
        run_in(ns, &["ip", "link", "set", dev, "up"]);
    }
    run_in(
        &client,
        &[
            "ip",
            "route",
            "add",
            "10.96.0.0/16",
            "via",
            &SERVER.to_string(),
        ],
    );
    let rules = fx.dir().join("client.nft");
    std::fs::write(&rules, CLIENT_RULES).expect("write nft rules");
    run_in(&client, &["nft", "-f", &rules.to_string_lossy()]);
    Pair {
        client,
        server,
        _fx: fx,
    }
}

/// A UDP socket bound to CLIENT inside `ns`.
fn client_socket(ns: &NetNs) -> UdpSocket {
    let sock = ns
        .run(|| UdpSocket::bind(SocketAddr::from((CLIENT, 0))))
        .expect("enter client namespace")
        .expect("bind UDP client");
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    sock
}

/// Sends one datagram from a new socket in `ns` to `to`; waits for the answer if
/// `answered`. Returns the client's port.
fn udp_flow(ns: &NetNs, to: SocketAddr, answered: bool) -> u16 {
    let sock = client_socket(ns);
    let port = sock.local_addr().expect("local addr").port();
    let mut buf = [0u8; 64];
    // A few tries: the first datagram may wait on ARP resolution.
    for _ in 0..3 {
        sock.send_to(b"?", to).expect("send");
        if !answered {
            return port;
        }
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            assert_eq!(from, to, "answer from {from}, not from {to}");
            return port;
        }
    }
    panic!("no UDP answer from {to}");
}

fn tuple(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16) -> Tuple {
    Tuple {
        src,
        dst,
        src_port,
        dst_port,
    }
}

/// An untranslated flow from CLIENT:port to `dst`, answered (or expected) by `dst`.
fn plain(port: u16, dst: Ipv4Addr, dst_port: u16) -> Flow {
    Flow {
        protocol: PROTO_UDP,
        original: tuple(CLIENT, port, dst, dst_port),
        reply: tuple(dst, dst_port, CLIENT, port),
    }
}

fn udp_flows(ct: &mut Conntrack) -> HashSet<Flow> {
    let flows = ct.flows(PROTO_UDP).expect("list UDP flows");
    let set: HashSet<Flow> = flows.iter().cloned().collect();
    assert_eq!(set.len(), flows.len(), "a flow listed twice: {flows:#?}");
    set
}

#[test]
fn lists_udp_flows_and_deletes_exactly_the_selected_ones() {
    let p = pair("ct");
    let echo = udp_echo_source(&p.server, SocketAddr::from((SERVER, 7001)));
    let _endpoint = udp_echo_source(&p.server, SocketAddr::from((SERVER, 5353)));
    let direct: Vec<u16> = (0..3).map(|_| udp_flow(&p.client, echo, true)).collect();
    let via_service = udp_flow(&p.client, SocketAddr::from((CLUSTER_IP, 53)), true);
    let no_endpoints = udp_flow(&p.client, SocketAddr::from((EMPTY_CLUSTER_IP, 53)), false);
    let tcp = tcp_echo_source(&p.server, SocketAddr::from((SERVER, 0)));
    assert_eq!(
        tcp_ask_source(&p.client, tcp).expect("TCP client -> server"),
        CLIENT.to_string()
    );

    let mut ct = p
        .client
        .run(Conntrack::open)
        .expect("enter client namespace")
        .expect("open conntrack");

    // The DNAT'ed flow: its reply comes from the endpoint. The flow to the Service
    // without endpoints: its reply is expected from the ClusterIP itself.
    let dnat = Flow {
        protocol: PROTO_UDP,
        original: tuple(CLIENT, via_service, CLUSTER_IP, 53),
        reply: tuple(SERVER, 5353, CLIENT, via_service),
    };
    let unanswered = plain(no_endpoints, EMPTY_CLUSTER_IP, 53);
    let mut want: HashSet<Flow> = direct.iter().map(|&p| plain(p, SERVER, 7001)).collect();
    want.insert(dnat.clone());
    want.insert(unanswered.clone());
    assert_eq!(udp_flows(&mut ct), want);

    // The TCP connection is listed under TCP only.
    let tcp_flows = ct.flows(PROTO_TCP).expect("list TCP flows");
    assert_eq!(tcp_flows.len(), 1, "{tcp_flows:#?}");
    assert_eq!(tcp_flows[0].protocol, PROTO_TCP);
    assert_eq!(tcp_flows[0].original.dst, SERVER);
    assert_eq!(tcp_flows[0].original.dst_port, tcp.port());

    // Two of the three direct flows, chosen by client port.
    let chosen = [direct[0], direct[2]];
    let deleted = ct
        .delete_where(PROTO_UDP, |f| {
            f.original.dst_port == 7001 && chosen.contains(&f.original.src_port)
        })
        .expect("delete two direct flows");
    assert_eq!(deleted, 2);
    for port in chosen {
        want.remove(&plain(port, SERVER, 7001));
    }
    assert_eq!(udp_flows(&mut ct), want);

    // What the service proxy does when endpoint SERVER:5353 goes away...
    let deleted = ct
        .delete_where(PROTO_UDP, |f| {
            f.reply.src == SERVER && f.reply.src_port == 5353
        })
        .expect("delete flows to the endpoint");
    assert_eq!(deleted, 1);
    want.remove(&dnat);
    assert_eq!(udp_flows(&mut ct), want);
    // ...and when a Service that had no endpoints gets one.
    let deleted = ct
        .delete_where(PROTO_UDP, |f| f.reply.src == EMPTY_CLUSTER_IP)
        .expect("delete flows to the empty Service");
    assert_eq!(deleted, 1);
    want.remove(&unanswered);
    assert_eq!(udp_flows(&mut ct), want);

    // Deleting a flow that is gone is not an error; deleting a live one is.
    assert!(!ct.delete(&dnat).expect("delete a gone flow"));
    assert!(ct
        .delete(&plain(direct[1], SERVER, 7001))
        .expect("delete the last direct flow"));
    assert!(udp_flows(&mut ct).is_empty());
    assert_eq!(ct.delete_where(PROTO_UDP, |_| true).expect("nothing"), 0);
    // UDP deletes left the TCP connection alone.
    assert_eq!(ct.flows(PROTO_TCP).expect("list TCP flows"), tcp_flows);
}

#[test]
fn a_dump_spanning_many_datagrams_is_read_whole() {
    let p = pair("ctmany");
    // 1000 flows of ~170 bytes each: several datagrams of at most 32 KiB. Nothing
    // listens on the server; the flows exist as soon as each datagram leaves.
    const FLOWS: u16 = 1000;
    let sock = client_socket(&p.client);
    let port = sock.local_addr().expect("local addr").port();
    for dst_port in 20000..20000 + FLOWS {
        sock.send_to(b"?", SocketAddr::from((SERVER, dst_port)))
            .expect("send");
    }
    let mut ct = p
        .client
        .run(Conntrack::open)
        .expect("enter client namespace")
        .expect("open conntrack");
    let want: HashSet<Flow> = (20000..20000 + FLOWS)
        .map(|dst_port| plain(port, SERVER, dst_port))
        .collect();
    assert_eq!(udp_flows(&mut ct), want);
    // The same socket serves the next requests: nothing of the dump is left in it.
    let deleted = ct
        .delete_where(PROTO_UDP, |f| f.original.dst_port % 2 == 0)
        .expect("delete half");
    assert_eq!(deleted, usize::from(FLOWS / 2));
    assert_eq!(udp_flows(&mut ct).len(), usize::from(FLOWS / 2));
}

#[test]
fn an_empty_namespace_has_no_flows() {
    let mut fx = Fixture::new("ctempty");
    let ns = fx.netns("empty");
    let mut ct = ns
        .run(Conntrack::open)
        .expect("enter namespace")
        .expect("open conntrack");
    assert_eq!(ct.flows(PROTO_UDP).expect("list UDP flows"), Vec::new());
    assert_eq!(ct.flows(PROTO_TCP).expect("list TCP flows"), Vec::new());
    let flow = plain(40000, SERVER, 53);
    assert!(!ct.delete(&flow).expect("delete a flow that never was"));
    assert_eq!(ct.delete_where(PROTO_UDP, |_| true).expect("nothing"), 0);
}
