//! Set and map elements over nf_tables netlink against the real kernel, in namespaces
//! each test creates and removes. Run as root. Nothing is configured in, or read from,
//! the machine's own namespace: every `nft` runs inside a test namespace (setns before
//! exec) and every socket is made while the thread is inside one.

use std::net::Ipv4Addr;
use std::process::Command;

use nix::errno::Errno;
use podnet_kernel::nftables::{encode, Change, Datum, Element, ElementData, Notice, Op};
use podnet_kernel::{NetNs, NfTables, NftError};
use podnet_testkit::{in_netns, Fixture};

use Datum::{Ipv4, Port, Proto, U32};

const TCP: u8 = 6;
const UDP: u8 = 17;

/// podnet's real layout.
const TABLE: &str = "
table inet podnet {
  set nodes { type ipv4_addr; }
  set service-ports { type ipv4_addr . inet_proto . inet_service; }
  set nodeport-no-endpoints { type inet_proto . inet_service; }
  map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }
  map ep-2 { typeof ip daddr . meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport; }
  chain lb-2 { meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @ep-2; }
}
";

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// A namespace holding the podnet table, and a socket opened in it.
struct Setup {
    nft: NfTables,
    ns: NetNs,
    // Dropped last: removes the namespace.
    _fx: Fixture,
}

fn setup(label: &str) -> Setup {
    let mut fx = Fixture::new(label);
    let ns = fx.netns("n");
    let script = fx.dir().join("table.nft");
    std::fs::write(&script, TABLE).expect("write the table script");
    run_nft(&ns, &["-f", script.to_str().expect("utf-8 path")]);
    let nft = ns
        .run(NfTables::open)
        .expect("enter the test namespace")
        .expect("open an nf_tables socket");
    Setup { nft, ns, _fx: fx }
}

fn run_nft(ns: &NetNs, args: &[&str]) -> String {
    let out = in_netns(Command::new("nft").args(args), ns)
        .output()
        .unwrap_or_else(|e| panic!("run nft {args:?}: {e}"));
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The elements of set or map `name` as `nft list` prints them, one string each.
fn elements(s: &Setup, kind: &str, name: &str) -> Vec<String> {
    let text = run_nft(&s.ns, &["list", kind, "inet", "podnet", name]);
    let Some(start) = text.find("elements = {") else {
        return Vec::new();
    };
    let rest = &text[start + "elements = {".len()..];
    let end = rest.find('}').expect("end of the element list");
    let mut all: Vec<String> = rest[..end]
        .split(',')
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .collect();
    all.sort();
    all
}

fn element(key: &[Datum], data: ElementData) -> Element {
    Element {
        key: encode(key),
        data,
    }
}

fn change(op: Op, set: &str, elements: Vec<Element>) -> Change {
    Change {
        op,
        set: set.to_string(),
        elements,
    }
}

fn endpoint(ip: [u8; 4], port: u16) -> ElementData {
    ElementData::Value(encode(&[Ipv4(ip.into()), Port(port)]))
}

fn ep_key(port: u16, slot: u32) -> Vec<Datum> {
    vec![Ipv4(CLUSTER_IP), Proto(TCP), Port(port), U32(slot)]
}

#[test]
fn encode_lays_out_fields_like_nft() {
    assert_eq!(encode(&[Ipv4(CLUSTER_IP)]), [10, 96, 0, 10]);
    assert_eq!(encode(&[Proto(UDP)]), [17]);
    assert_eq!(encode(&[Port(8080)]), [0x1f, 0x90]);
    assert_eq!(encode(&[U32(1)]), 1u32.to_ne_bytes());
    assert_eq!(
        encode(&[Ipv4(CLUSTER_IP), Proto(TCP), Port(80)]),
        [10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0]
    );
    let mut want = vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 81, 0, 0];
    want.extend_from_slice(&1u32.to_ne_bytes());
    assert_eq!(encode(&ep_key(81, 1)), want);
}

#[test]
fn adds_elements_to_every_kind_of_set_and_map() {
    let mut s = setup("nftnl-add");
    let changes = vec![
        change(
            Op::Add,
            "nodes",
            vec![element(
                &[Ipv4(Ipv4Addr::new(10, 0, 0, 1))],
                ElementData::None,
            )],
        ),
        change(
            Op::Add,
            "service-ports",
            vec![element(
                &[Ipv4(CLUSTER_IP), Proto(TCP), Port(80)],
                ElementData::None,
            )],
        ),
        change(
            Op::Add,
            "nodeport-no-endpoints",
            vec![element(&[Proto(UDP), Port(30053)], ElementData::None)],
        ),
        change(
            Op::Add,
            "service-ips",
            vec![
                element(
                    &[Ipv4(CLUSTER_IP), Proto(TCP), Port(80)],
                    ElementData::Goto("lb-2".into()),
                ),
                element(
                    &[Ipv4(Ipv4Addr::new(10, 96, 0, 11)), Proto(UDP), Port(53)],
                    ElementData::Jump("lb-2".into()),
                ),
            ],
        ),
        change(
            Op::Add,
            "ep-2",
            vec![
                element(&ep_key(80, 0), endpoint([10, 244, 1, 5], 8080)),
                element(&ep_key(80, 1), endpoint([10, 244, 2, 6], 8080)),
            ],
        ),
    ];
    s.nft.commit("podnet", &changes).expect("commit");

    assert_eq!(elements(&s, "set", "nodes"), ["10.0.0.1"]);
    assert_eq!(
        elements(&s, "set", "service-ports"),
        ["10.96.0.10 . tcp . 80"]
    );
    assert_eq!(
        elements(&s, "set", "nodeport-no-endpoints"),
        ["udp . 30053"]
    );
    assert_eq!(
        elements(&s, "map", "service-ips"),
        [
            "10.96.0.10 . tcp . 80 : goto lb-2",
            "10.96.0.11 . udp . 53 : jump lb-2"
        ]
    );
    assert_eq!(
        elements(&s, "map", "ep-2"),
        [
            "10.96.0.10 . tcp . 80 . 0 : 10.244.1.5 . 8080",
            "10.96.0.10 . tcp . 80 . 1 : 10.244.2.6 . 8080"
        ]
    );

    // And deletes them again, by key.
    let deletes: Vec<Change> = changes
        .iter()
        .map(|c| change(Op::Delete, &c.set, c.elements.clone()))
        .collect();
    s.nft
        .commit("podnet", &deletes)
        .expect("commit the deletes");
    for (kind, name) in [("set", "nodes"), ("map", "service-ips"), ("map", "ep-2")] {
        assert_eq!(elements(&s, kind, name), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn replaces_a_map_value_by_delete_then_add_in_one_batch() {
    let mut s = setup("nftnl-replace");
    let old = element(&ep_key(80, 0), endpoint([10, 244, 1, 5], 8080));
    let new = element(&ep_key(80, 0), endpoint([10, 244, 3, 7], 9090));
    s.nft
        .commit("podnet", &[change(Op::Add, "ep-2", vec![old.clone()])])
        .expect("add the old value");

    // Adding the same key with another value alone is refused...
    let err = s
        .nft
        .commit("podnet", &[change(Op::Add, "ep-2", vec![new.clone()])])
        .expect_err("a second value for a key");
    assert!(
        matches!(err.errno(), Some(Errno::EEXIST | Errno::EBUSY)),
        "{err}"
    );
    assert_eq!(
        elements(&s, "map", "ep-2"),
        ["10.96.0.10 . tcp . 80 . 0 : 10.244.1.5 . 8080"]
    );

    // ...deleting it first in the same batch replaces it.
    s.nft
        .commit(
            "podnet",
            &[
                change(Op::Delete, "ep-2", vec![old]),
                change(Op::Add, "ep-2", vec![new]),
            ],
        )
        .expect("replace");
    assert_eq!(
        elements(&s, "map", "ep-2"),
        ["10.96.0.10 . tcp . 80 . 0 : 10.244.3.7 . 9090"]
    );
}

#[test]
fn a_refused_change_rolls_back_the_whole_batch() {
    let mut s = setup("nftnl-rollback");
    let missing = encode(&[Ipv4(Ipv4Addr::new(10, 96, 0, 99)), Proto(UDP), Port(53)]);
    let err = s
        .nft
        .commit(
            "podnet",
            &[
                change(
                    Op::Add,
                    "nodes",
                    vec![element(
                        &[Ipv4(Ipv4Addr::new(10, 0, 0, 2))],
                        ElementData::None,
                    )],
                ),
                change(
                    Op::Delete,
                    "service-ports",
                    vec![Element {
                        key: missing.clone(),
                        data: ElementData::None,
                    }],
                ),
            ],
        )
        .expect_err("deleting an element that is not there");
    let text = err.to_string();
    match &err {
        NftError::Element {
            op,
            set,
            errno,
            key,
            ..
        } => {
            assert_eq!(*op, Op::Delete, "{text}");
            assert_eq!(set, "service-ports", "{text}");
            assert_eq!(*errno, Errno::ENOENT, "{text}");
            // The kernel points at the element when it supports extended acks.
            if let Some(key) = key {
                assert_eq!(*key, missing, "{text}");
            }
        }
        other => panic!("not an element error: {other}"),
    }
    assert!(
        text.contains("delete elements from inet podnet service-ports"),
        "{text}"
    );
    assert!(text.contains("No such file or directory"), "{text}");
    eprintln!("{text}");
    // The first change, which the kernel accepted, was rolled back with the rest.
    assert_eq!(elements(&s, "set", "nodes"), Vec::<String>::new());

    // The socket still works after a refused batch.
    s.nft
        .commit(
            "podnet",
            &[change(
                Op::Add,
                "nodes",
                vec![element(
                    &[Ipv4(Ipv4Addr::new(10, 0, 0, 3))],
                    ElementData::None,
                )],
            )],
        )
        .expect("commit after a refused batch");
    assert_eq!(elements(&s, "set", "nodes"), ["10.0.0.3"]);
}

#[test]
fn commits_thousands_of_elements_in_one_batch() {
    let mut s = setup("nftnl-many");
    const N: u32 = 5000;
    let ip = |i: u32| Ipv4Addr::from(0x0a01_0000 + i);
    let nodes: Vec<Element> = (0..N)
        .map(|i| element(&[Ipv4(ip(i))], ElementData::None))
        .collect();
    // Map elements are bigger: they take more messages than set elements.
    let endpoints: Vec<Element> = (0..N)
        .map(|i| {
            element(
                &ep_key(1000 + (i / 100) as u16, i % 100),
                ElementData::Value(encode(&[Ipv4(ip(i)), Port(8080)])),
            )
        })
        .collect();
    s.nft
        .commit(
            "podnet",
            &[
                change(Op::Add, "nodes", nodes),
                change(Op::Add, "ep-2", endpoints),
            ],
        )
        .expect("commit 2 x 5,000 elements");

    let nodes = elements(&s, "set", "nodes");
    assert_eq!(nodes.len(), N as usize);
    assert!(nodes.contains(&"10.1.0.0".to_string()));
    assert!(nodes.contains(&ip(N - 1).to_string()));
    let endpoints = elements(&s, "map", "ep-2");
    assert_eq!(endpoints.len(), N as usize);
    assert!(endpoints.contains(&format!(
        "10.96.0.10 . tcp . 1049 . 99 : {} . 8080",
        ip(N - 1)
    )));
}

#[test]
fn an_empty_commit_is_ok() {
    let mut s = setup("nftnl-empty");
    s.nft.commit("podnet", &[]).expect("no changes");
    s.nft
        .commit("podnet", &[change(Op::Delete, "nodes", Vec::new())])
        .expect("a change without elements");
    // Nothing was sent: not even the table is looked at.
    s.nft
        .commit("no-such-table", &[change(Op::Add, "nodes", Vec::new())])
        .expect("nothing to send");
}

/// Runs `nft ARGS` in the test namespace; returns its pid (the port id its changes are
/// notified with).
fn nft_pid(ns: &NetNs, args: &[&str]) -> u32 {
    let child = in_netns(Command::new("nft").args(args), ns)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run nft {args:?}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    pid
}

/// The handles of a chain's rules, in order, from `nft -a list`.
fn handles(s: &Setup, chain: &str) -> Vec<String> {
    run_nft(&s.ns, &["-a", "list", "chain", "inet", "podnet", chain])
        .lines()
        .filter_map(|l| l.split("# handle ").nth(1))
        .map(|h| h.trim().to_string())
        .skip(1) // the chain's own handle
        .collect()
}

#[test]
fn lists_elements_as_they_were_committed() {
    let mut s = setup("nftnl-list-elements");
    let nodes = vec![
        element(&[Ipv4(Ipv4Addr::new(172, 18, 0, 2))], ElementData::None),
        element(&[Ipv4(Ipv4Addr::new(172, 18, 0, 3))], ElementData::None),
    ];
    let services = vec![element(
        &[Ipv4(CLUSTER_IP), Proto(TCP), Port(80)],
        ElementData::Goto("lb-2".into()),
    )];
    let endpoints = vec![
        element(&ep_key(80, 0), endpoint([10, 244, 1, 5], 8080)),
        element(&ep_key(80, 1), endpoint([10, 244, 2, 7], 8080)),
    ];
    s.nft
        .commit(
            "podnet",
            &[
                change(Op::Add, "nodes", nodes.clone()),
                change(Op::Add, "service-ips", services.clone()),
                change(Op::Add, "ep-2", endpoints.clone()),
            ],
        )
        .expect("commit");
    // An element nft adds reads back the same way as one podnet adds.
    run_nft(
        &s.ns,
        &[
            "add",
            "element",
            "inet",
            "podnet",
            "service-ips",
            "{ 10.96.0.10 . udp . 53 : accept }",
        ],
    );
    let sorted = |mut v: Vec<Element>| {
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    };
    let list = |s: &mut Setup, set: &str| {
        s.nft
            .list_elements("podnet", set)
            .unwrap_or_else(|e| panic!("list {set}: {e}"))
            .map(sorted)
    };
    assert_eq!(list(&mut s, "nodes"), Some(sorted(nodes)));
    assert_eq!(list(&mut s, "ep-2"), Some(sorted(endpoints)));
    let mut services = services;
    services.push(element(
        &[Ipv4(CLUSTER_IP), Proto(UDP), Port(53)],
        ElementData::Verdict(1),
    ));
    assert_eq!(list(&mut s, "service-ips"), Some(sorted(services)));
    assert_eq!(list(&mut s, "service-ports"), Some(Vec::new()));
    assert_eq!(list(&mut s, "no-such-set"), None);
    assert_eq!(
        s.nft.list_elements("no-such-table", "nodes").expect("list"),
        None
    );
}

#[test]
fn lists_chains_and_rules_and_tells_every_change_to_them() {
    let mut s = setup("nftnl-list-rules");
    let before = s.nft.list_table("podnet").expect("list").expect("table");
    assert_eq!(
        before.chains.keys().collect::<Vec<_>>(),
        ["lb-2"],
        "the chains of the table"
    );
    assert_eq!(before.chains["lb-2"].rules.len(), 1);
    // Unchanged: the same listing, at the same generation.
    assert_eq!(
        s.nft.list_table("podnet").expect("list"),
        Some(before.clone())
    );
    // Written again the same: the same rules (whatever their handles).
    let script = s._fx.dir().join("again.nft");
    std::fs::write(
        &script,
        format!("add table inet podnet\ndelete table inet podnet\n{TABLE}"),
    )
    .expect("write the script");
    run_nft(&s.ns, &["-f", script.to_str().expect("utf-8 path")]);
    let again = s.nft.list_table("podnet").expect("list").expect("table");
    let rule = |l: &podnet_kernel::nftables::Listing| l.chains["lb-2"].rules[0].clone();
    assert_eq!(rule(&again).content, rule(&before).content);
    assert_eq!(
        again.chains["lb-2"].definition,
        before.chains["lb-2"].definition
    );
    let before = again;

    // Each change shows in the listing and starts a new generation.
    let mut last = before.clone();
    let mut changed = |s: &mut Setup, args: &[&str], what: &str| {
        run_nft(&s.ns, args);
        let now = s.nft.list_table("podnet").expect("list").expect("table");
        assert_ne!(now.chains, last.chains, "{what} shows in the listing");
        assert!(now.generation > last.generation, "{what}: a new generation");
        last = now.clone();
        now
    };
    let added = changed(
        &mut s,
        &[
            "add", "rule", "inet", "podnet", "lb-2", "meta", "mark", "set", "1",
        ],
        "an added rule",
    );
    assert_eq!(added.chains["lb-2"].rules.len(), 2);
    let first = &added.chains["lb-2"].rules[0];
    assert_eq!(
        first, &before.chains["lb-2"].rules[0],
        "the first rule kept"
    );
    let handle = handles(&s, "lb-2")[1].clone();
    let replaced = changed(
        &mut s,
        &[
            "replace", "rule", "inet", "podnet", "lb-2", "handle", &handle, "meta", "mark", "set",
            "2",
        ],
        "a replaced rule",
    );
    let rule = &replaced.chains["lb-2"].rules[1];
    assert_eq!(
        rule.handle.to_string(),
        handle,
        "replacing keeps the handle"
    );
    assert_ne!(rule.content, added.chains["lb-2"].rules[1].content);
    let flushed = changed(
        &mut s,
        &["flush", "chain", "inet", "podnet", "lb-2"],
        "a flushed chain",
    );
    assert!(flushed.chains["lb-2"].rules.is_empty());
    let hooked = changed(
        &mut s,
        &[
            "add", "chain", "inet", "podnet", "out", "{", "type", "filter", "hook", "output",
            "priority", "0;", "policy", "accept;", "}",
        ],
        "a new base chain",
    );
    let policy = changed(
        &mut s,
        &[
            "add", "chain", "inet", "podnet", "out", "{", "type", "filter", "hook", "output",
            "priority", "0;", "policy", "drop;", "}",
        ],
        "a changed policy",
    );
    assert_ne!(
        hooked.chains["out"].definition,
        policy.chains["out"].definition
    );
    assert_ne!(
        hooked.chains["out"].definition,
        flushed.chains["lb-2"].definition
    );
    // Elements are not part of this listing.
    s.nft
        .commit(
            "podnet",
            &[change(
                Op::Add,
                "nodes",
                vec![element(
                    &[Ipv4(Ipv4Addr::new(10, 0, 0, 1))],
                    ElementData::None,
                )],
            )],
        )
        .expect("commit");
    let now = s.nft.list_table("podnet").expect("list").expect("table");
    assert_eq!(now.chains, policy.chains);
    assert!(now.generation > policy.generation);

    run_nft(&s.ns, &["delete", "table", "inet", "podnet"]);
    assert_eq!(s.nft.list_table("podnet").expect("list"), None);
}

#[test]
fn notifications_name_who_committed_what() {
    let mut s = setup("nftnl-monitor");
    let mut monitor =
        s.ns.run(podnet_kernel::nftables::Monitor::open)
            .expect("enter the test namespace")
            .expect("subscribe to nftables notifications");
    assert_eq!(monitor.read().expect("read"), []);

    // A batch of podnet's own: its changes, then the generation it started, both with
    // the port id of its socket.
    s.nft
        .commit(
            "podnet",
            &[change(
                Op::Add,
                "nodes",
                vec![element(
                    &[Ipv4(Ipv4Addr::new(10, 0, 0, 1))],
                    ElementData::None,
                )],
            )],
        )
        .expect("commit");
    let generation = s.nft.generation().expect("generation");
    let notices = monitor.read().expect("read");
    let Some(Notice::Change { portid: own, .. }) = notices.first() else {
        panic!("no change notified: {notices:?}");
    };
    assert_eq!(
        notices[0],
        Notice::Change {
            what: "add element",
            family: 1,
            table: "podnet".into(),
            object: Some("nodes".into()),
            portid: *own,
        }
    );
    match notices.last() {
        Some(Notice::Generation { id, portid, .. }) => {
            assert_eq!((*id, portid), (generation, own), "{notices:?}")
        }
        other => panic!("no generation after the change: {other:?}"),
    }

    // Not heard while paused, heard again once resumed.
    monitor.pause().expect("pause");
    run_nft(&s.ns, &["add", "rule", "inet", "podnet", "lb-2", "accept"]);
    monitor.resume().expect("resume");
    assert_eq!(monitor.read().expect("read"), []);

    // Someone else's: nft's pid, and its name.
    let pid = nft_pid(&s.ns, &["flush", "chain", "inet", "podnet", "lb-2"]);
    let notices = monitor.read().expect("read");
    assert!(
        notices.contains(&Notice::Change {
            what: "delete rule",
            family: 1,
            table: "podnet".into(),
            object: Some("lb-2".into()),
            portid: pid,
        }),
        "{notices:?}"
    );
    match notices.last() {
        Some(Notice::Generation {
            portid, process, ..
        }) => assert_eq!((*portid, process.as_str()), (pid, "nft"), "{notices:?}"),
        other => panic!("no generation after the flush: {other:?}"),
    }
    // Nothing is read twice.
    assert_eq!(monitor.read().expect("read"), []);
}
