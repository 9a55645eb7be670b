//! podnet-cni against the real kernel, in namespaces each test creates. Run as root.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::{pod_ip, Node, Out};
use podnet_kernel::{NetNs, Netlink};
use podnet_testkit::{
    in_netns, netns, tcp_ask_source, tcp_echo_source, udp_ask_source, udp_echo_source,
};
use serde_json::json;

fn ping(from: &NetNs, to: &str) -> bool {
    ping_within(from, to, 2)
}

fn ping_within(from: &NetNs, to: &str, seconds: u32) -> bool {
    let mut cmd = Command::new("ping");
    cmd.args(["-c", "1", "-W", &seconds.to_string(), to]);
    in_netns(&mut cmd, from)
        .output()
        .expect("run ping (install iputils-ping)")
        .status
        .success()
}

#[test]
fn two_pods_on_one_node_reach_each_other_with_their_real_addresses() {
    let mut node = Node::new("cni-2pods", "10.244.1.0/24");
    let a = node.pod("a");
    let b = node.pod("b");
    let ra = node.add("ctr-a", &a);
    let rb = node.add("ctr-b", &b);
    let (ip_a, ip_b) = (pod_ip(&ra), pod_ip(&rb));
    assert_ne!(ip_a, ip_b);

    // The result names the bridge, the host veth and the pod interface in its sandbox.
    assert_eq!(ra["cniVersion"], "1.1.0");
    assert_eq!(ra["interfaces"][0]["name"], "podnet0");
    assert!(ra["interfaces"][1]["name"]
        .as_str()
        .expect("name")
        .starts_with("pn"));
    assert_eq!(ra["interfaces"][2]["name"], "eth0");
    assert_eq!(
        ra["interfaces"][2]["sandbox"],
        a.path().display().to_string()
    );
    assert_eq!(ra["ips"][0]["gateway"], "10.244.1.1");
    assert_eq!(ra["ips"][0]["interface"], 2);
    assert_eq!(
        ra["routes"][0],
        json!({"dst": "0.0.0.0/0", "gw": "10.244.1.1"})
    );

    assert!(ping(&b, &ip_a), "pod b cannot ping pod a ({ip_a})");
    assert!(ping(&a, &ip_b), "pod a cannot ping pod b ({ip_b})");
    let tcp = tcp_echo_source(&a, format!("{ip_a}:0").parse().expect("addr"));
    assert_eq!(tcp_ask_source(&b, tcp).expect("TCP b -> a"), ip_b);
    let udp = udp_echo_source(&b, format!("{ip_b}:0").parse().expect("addr"));
    assert_eq!(udp_ask_source(&a, udp).expect("UDP a -> b"), ip_a);
    // The node reaches its pods through the bridge's gateway address.
    assert_eq!(
        tcp_ask_source(&node.ns, tcp).expect("TCP node -> a"),
        "10.244.1.1"
    );

    // MTU from the config; hairpin on the bridge port; the pod MAC follows its address.
    let mut pod_nl = Netlink::open_in(&a).expect("netlink in pod");
    let eth0 = pod_nl.link_by_name("eth0").expect("lookup").expect("eth0");
    assert_eq!(eth0.mtu, 1450);
    let octets: Vec<String> = ip_a
        .split('.')
        .map(|o| format!("{:02x}", o.parse::<u8>().expect("octet")))
        .collect();
    assert_eq!(
        eth0.mac_string().expect("mac"),
        format!("0a:58:{}", octets.join(":"))
    );
    let host_veth = ra["interfaces"][1]["name"].as_str().expect("name");
    let mut node_nl = Netlink::open_in(&node.ns).expect("netlink in node");
    let port = node_nl
        .bridge_port(host_veth)
        .expect("bridge port")
        .expect("on the bridge");
    assert!(port.hairpin, "{port:?}");
}

#[test]
fn containers_of_a_pod_talk_over_localhost() {
    let mut node = Node::new("cni-lo", "10.244.2.0/24");
    let pod = node.pod("p");
    let mut nl = Netlink::open_in(&pod).expect("netlink");
    assert!(
        !nl.link_by_name("lo").expect("lookup").expect("lo").up,
        "a new namespace has lo down"
    );
    node.add("ctr-lo", &pod);
    assert!(
        nl.link_by_name("lo").expect("lookup").expect("lo").up,
        "ADD brings lo up"
    );
    let server = tcp_echo_source(&pod, "127.0.0.1:0".parse().expect("addr"));
    assert_eq!(
        tcp_ask_source(&pod, server).expect("localhost TCP"),
        "127.0.0.1"
    );
    let userver = udp_echo_source(&pod, "127.0.0.1:0".parse().expect("addr"));
    assert_eq!(
        udp_ask_source(&pod, userver).expect("localhost UDP"),
        "127.0.0.1"
    );
}

#[test]
fn del_is_idempotent_and_survives_a_deleted_namespace() {
    let mut node = Node::new("cni-del", "10.244.3.0/24");
    let pod = node.pod("p");
    let peer = node.pod("peer");
    let conf = node.conf("1.1.0");
    let ip = pod_ip(&node.add("ctr-del", &pod));
    node.add("ctr-peer", &peer);
    assert!(ping(&peer, &ip));
    assert_eq!(node.host_veths().len(), 2);
    assert_eq!(node.allocations().len(), 2);
    for _ in 0..2 {
        let out = node.cni("DEL", "ctr-del", Some(pod.path()), &conf);
        assert!(out.ok, "DEL: {out:?}");
        assert_eq!(out.json, serde_json::Value::Null, "DEL prints nothing");
        // Cut off the moment DEL answers, even while the kernel still deletes the pair.
        assert!(!ping_within(&peer, &ip, 1), "the deleted pod still answers");
    }
    node.cni("DEL", "ctr-peer", Some(peer.path()), &conf);
    node.assert_host_veths_gone();
    assert!(node.allocations().is_empty());

    // The runtime deletes the namespace before DEL: still succeeds and frees the address.
    let gone = node.pod("gone");
    node.add("ctr-gone", &gone);
    let gone_path = gone.path().to_path_buf();
    drop(gone);
    let name = gone_path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    netns::delete_named(&name).expect("delete pod namespace");
    let out = node.cni("DEL", "ctr-gone", Some(&gone_path), &conf);
    assert!(out.ok, "DEL after the namespace is gone: {out:?}");
    let out = node.cni("DEL", "ctr-gone", None, &conf);
    assert!(out.ok, "DEL without CNI_NETNS: {out:?}");
    node.assert_host_veths_gone();
    assert!(node.allocations().is_empty());
}

#[test]
fn check_passes_then_catches_a_deleted_route() {
    let mut node = Node::new("cni-check", "10.244.4.0/24");
    let pod = node.pod("p");
    let result = node.add("ctr-chk", &pod);
    let mut conf = node.conf("1.1.0");
    conf["prevResult"] = result;
    let out = node.cni("CHECK", "ctr-chk", Some(pod.path()), &conf);
    assert!(out.ok, "CHECK on an intact pod: {out:?}");

    let mut nl = Netlink::open_in(&pod).expect("netlink");
    let default = nl
        .routes()
        .expect("routes")
        .into_iter()
        .find(|r| r.destination.prefix_len() == 0)
        .expect("a default route");
    assert!(nl.delete_route(&default).expect("delete route"));
    let out = node.cni("CHECK", "ctr-chk", Some(pod.path()), &conf);
    assert!(!out.ok);
    assert_eq!(out.code(), 101, "{out:?}");
    assert!(
        out.msg()
            .contains("route 0.0.0.0/0 via 10.244.4.1 is missing"),
        "{}",
        out.msg()
    );

    // CHECK is not part of versions before 0.4.0.
    conf["cniVersion"] = json!("0.3.1");
    assert_eq!(
        node.cni("CHECK", "ctr-chk", Some(pod.path()), &conf).code(),
        1
    );
}

#[test]
fn thirty_two_concurrent_adds_get_distinct_addresses_and_dels_leave_nothing() {
    let mut node = Node::new("cni-conc", "10.244.5.0/24");
    let pods: Vec<NetNs> = (0..32).map(|i| node.pod(&format!("p{i}"))).collect();
    let conf = node.conf("1.1.0");
    let children: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| node.spawn("ADD", &format!("ctr-{i}"), Some(p.path()), &conf))
        .collect();
    let mut ips = HashSet::new();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "ADD failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        ips.insert(pod_ip(&v));
    }
    assert_eq!(ips.len(), 32, "addresses: {ips:?}");
    assert_eq!(node.allocations().len(), 32);
    assert_eq!(node.host_veths().len(), 32);

    let children: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| node.spawn("DEL", &format!("ctr-{i}"), Some(p.path()), &conf))
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "DEL failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(node.allocations().is_empty());
    node.assert_host_veths_gone();
}

#[test]
fn a_plugin_killed_mid_add_then_gc_leaves_no_leak() {
    let mut node = Node::new("cni-kill", "10.244.6.0/24");
    let conf = node.conf("1.1.0");
    let keeper = node.pod("keep");
    let kept = node.add("ctr-keep", &keeper);
    let pods: Vec<NetNs> = (0..24).map(|i| node.pod(&format!("k{i}"))).collect();
    for (i, p) in pods.iter().enumerate() {
        let mut child = node.spawn("ADD", &format!("ctr-k{i}"), Some(p.path()), &conf);
        // Spread the kills over the whole ADD: before IPAM, after it, mid-netlink.
        std::thread::sleep(Duration::from_micros((i as u64 * 211) % 4000));
        let _ = child.kill();
        let _ = child.wait();
    }
    let leaked = node.allocations().len() - 1;
    assert!(
        leaked > 0,
        "no kill landed after the allocation; nothing for GC to prove"
    );
    let mut gc = node.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-keep", "ifname": "eth0"}]);
    let out = node.cni("GC", "", None, &gc);
    assert!(out.ok, "GC: {out:?}");
    assert_eq!(node.allocations(), vec![pod_ip(&kept)]);
    assert_eq!(
        node.host_veths(),
        vec![kept["interfaces"][1]["name"]
            .as_str()
            .expect("name")
            .to_string()]
    );
    // The kept pod still works after GC.
    let mut check = node.conf("1.1.0");
    check["prevResult"] = kept;
    assert!(
        node.cni("CHECK", "ctr-keep", Some(keeper.path()), &check)
            .ok
    );
}

#[test]
fn a_slash_29_pool_exhausts_with_a_clear_error() {
    let mut node = Node::new("cni-full", "10.244.7.0/29");
    for i in 0..5 {
        let p = node.pod(&format!("p{i}"));
        node.add(&format!("ctr-{i}"), &p);
    }
    let extra = node.pod("extra");
    let veths_before = node.host_veths();
    let out = node.cni("ADD", "ctr-extra", Some(extra.path()), &node.conf("1.1.0"));
    assert!(!out.ok);
    assert_eq!(out.code(), 100, "{out:?}");
    assert_eq!(
        out.msg(),
        "container ctr-extra: no free address in 10.244.7.0/29 (5 in use); delete pods or widen the node's pod CIDR"
    );
    assert_eq!(
        node.host_veths(),
        veths_before,
        "a failed ADD leaves nothing behind"
    );
    assert_eq!(node.allocations().len(), 5);
    let status = node.cni("STATUS", "", None, &node.conf("1.1.0"));
    assert_eq!(status.code(), 50, "{status:?}");
    assert!(status
        .msg()
        .contains("no free address in 10.244.7.0/29 (5 in use)"));
}

fn assert_nothing_changed(node: &Node) {
    assert_eq!(
        node.node_links(),
        vec!["lo".to_string()],
        "links appeared on the node"
    );
    assert!(!node.data_dir().exists(), "IPAM state was written");
}

#[test]
fn bad_input_gets_the_spec_code_and_changes_nothing() {
    let mut node = Node::new("cni-bad", "10.244.8.0/24");
    let pod = node.pod("p");
    let conf = node.conf("1.1.0");
    let p = pod.path().to_str().expect("path");
    let full = |cmd: &str| {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "ctr-bad".to_string()),
            ("CNI_NETNS", p.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
        ]
    };
    let run = |env: Vec<(&str, String)>, stdin: &[u8]| -> Out {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        node.cni_env(&env, stdin)
    };

    let out = run(full("ADD"), b"{\"cniVersion\": ");
    assert_eq!((out.ok, out.code()), (false, 6), "invalid JSON: {out:?}");

    let mut unknown = conf.clone();
    unknown["cniVersion"] = json!("7.0.0");
    let out = run(full("ADD"), unknown.to_string().as_bytes());
    assert_eq!(
        (out.ok, out.code()),
        (false, 1),
        "unknown cniVersion: {out:?}"
    );
    assert!(out.json["details"]
        .as_str()
        .expect("details")
        .contains("1.1.0"));

    let no_cmd: Vec<_> = full("ADD")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_COMMAND")
        .collect();
    let out = run(no_cmd, conf.to_string().as_bytes());
    assert_eq!(
        (out.ok, out.code()),
        (false, 4),
        "missing CNI_COMMAND: {out:?}"
    );
    assert!(out.msg().contains("CNI_COMMAND"));

    let mut missing_ns = full("ADD");
    missing_ns[2].1 = format!("{p}-does-not-exist");
    let out = run(missing_ns, conf.to_string().as_bytes());
    assert_eq!((out.ok, out.code()), (false, 3), "missing netns: {out:?}");
    assert!(out.msg().contains("does not exist"));

    // Errors are JSON on stdout and also explained on stderr.
    assert!(out.stderr.contains("does not exist"));

    let mut ipam = conf.clone();
    ipam["ipam"] = json!({"type": "host-local"});
    let out = run(full("ADD"), ipam.to_string().as_bytes());
    assert_eq!((out.ok, out.code()), (false, 2), "delegated ipam: {out:?}");
    assert_nothing_changed(&node);

    // IPAM state that cannot be written (dataDir under a regular file): an I/O error.
    let file = node.fx.dir().join("a-file");
    std::fs::write(&file, b"").expect("write");
    let mut unwritable = conf.clone();
    unwritable["dataDir"] = json!(file.join("ipam"));
    let out = run(full("ADD"), unwritable.to_string().as_bytes());
    assert_eq!((out.ok, out.code()), (false, 5), "unwritable IPAM: {out:?}");
    assert!(out.msg().contains("a-file/ipam"), "{}", out.msg());
    assert_nothing_changed(&node);
}

#[test]
fn subnet_and_mtu_come_from_the_node_file_and_status_follows_it() {
    let mut node = Node::new("cni-nodefile", "unused");
    let pod = node.pod("p");
    let mut conf = node.conf("1.1.0");
    conf.as_object_mut().expect("object").remove("subnet");
    conf.as_object_mut().expect("object").remove("mtu");

    let status = node.cni("STATUS", "", None, &conf);
    assert_eq!(status.code(), 50, "{status:?}");
    assert!(
        status.msg().contains("node.json does not exist"),
        "{}",
        status.msg()
    );
    let add = node.cni("ADD", "ctr-nf", Some(pod.path()), &conf);
    assert_eq!(
        add.code(),
        11,
        "ADD before the agent wrote the node file: {add:?}"
    );

    std::fs::write(
        node.node_file(),
        r#"{"subnet": "10.244.9.0/24", "mtu": 1400}"#,
    )
    .expect("write");
    let status = node.cni("STATUS", "", None, &conf);
    assert!(status.ok, "{status:?}");
    let add = node.cni("ADD", "ctr-nf", Some(pod.path()), &conf);
    assert!(add.ok, "{add:?}");
    assert!(pod_ip(&add.json).starts_with("10.244.9."));
    let mut nl = Netlink::open_in(&pod).expect("netlink");
    assert_eq!(
        nl.link_by_name("eth0").expect("lookup").expect("eth0").mtu,
        1400
    );
}

#[test]
fn results_follow_the_requested_version_and_version_reports_all() {
    let mut node = Node::new("cni-ver", "10.244.10.0/24");
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let pod = node.pod(&format!("p{i}"));
        let out = node.cni("ADD", &format!("ctr-{i}"), Some(pod.path()), &node.conf(v));
        assert!(out.ok, "{v}: {out:?}");
        assert_eq!(out.json["cniVersion"], *v);
        assert_eq!(
            out.json["ips"][0].get("version").is_some(),
            v.starts_with('0'),
            "{v}"
        );
    }
    let out = node.cni_env(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"1.0.0"}"#);
    assert!(out.ok);
    assert_eq!(
        out.json["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    // STATUS and GC arrived in 1.1.0.
    assert_eq!(node.cni("STATUS", "", None, &node.conf("1.0.0")).code(), 1);
}

#[test]
fn nothing_is_ever_configured_outside_the_node_namespace() {
    // The plugin only acts in the namespace it runs in: after an ADD in a node namespace
    // the test's own namespace has no podnet bridge.
    let mut node = Node::new("cni-iso", "10.244.11.0/24");
    let pod = node.pod("p");
    node.add("ctr-iso", &pod);
    let mut here = Netlink::open().expect("netlink");
    assert!(here.link_by_name("podnet0").expect("lookup").is_none());
}

#[test]
fn the_node_namespace_or_a_namespace_of_another_kind_is_refused_with_code_4() {
    let node = Node::new("cni-ownns", "10.244.12.0/24");
    let mut conf = node.conf("1.1.0");
    // CHECK reads prevResult first; a plausible one.
    conf["prevResult"] = json!({"cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.244.12.2/24", "interface": 0}]});
    // The node's namespace by its bind mount, by the plugin's own /proc link, and a UTS
    // namespace file: none of them is a pod's network namespace.
    for (target, needle) in [
        (node.ns.path().to_path_buf(), "runs in"),
        ("/proc/self/ns/net".into(), "runs in"),
        ("/proc/thread-self/ns/net".into(), "runs in"),
        ("/proc/self/ns/uts".into(), "not a network namespace"),
    ] {
        for verb in ["ADD", "CHECK"] {
            let out = node.cni(verb, "ctr-own", Some(&target), &conf);
            assert_eq!(
                (out.ok, out.code()),
                (false, 4),
                "{verb} into {}: {out:?}",
                target.display()
            );
            assert!(out.msg().contains(needle), "{}", out.msg());
        }
    }
    // Nothing was configured: the node still has only lo and no default route.
    assert_nothing_changed(&node);
    let mut nl = Netlink::open_in(&node.ns).expect("netlink");
    assert!(nl.routes().expect("routes").is_empty());
}

#[test]
fn subnets_that_are_not_plain_unicast_are_refused_before_anything_is_made() {
    let mut node = Node::new("cni-unicast", "unused");
    let pod = node.pod("p");
    for subnet in [
        "0.0.0.0/0",
        "0.0.0.0/8",
        "224.0.0.0/24",
        "239.1.0.0/16",
        "240.0.0.0/24",
        "127.0.0.0/24",
        "169.254.0.0/24",
    ] {
        let mut conf = node.conf("1.1.0");
        conf["subnet"] = json!(subnet);
        let out = node.cni("ADD", "ctr-uni", Some(pod.path()), &conf);
        assert_eq!((out.ok, out.code()), (false, 7), "{subnet}: {out:?}");
        assert!(out.msg().contains("unicast"), "{}", out.msg());
        assert_eq!(node.cni("STATUS", "", None, &conf).code(), 50, "{subnet}");
    }
    assert_nothing_changed(&node);
}

/// The portMappings capability: ADD records the pod's hostPorts (with its address)
/// beside the node file for the agent; DEL and GC remove them before freeing the address;
/// a mapping podnet cannot serve is refused with code 7 before anything is made.
#[test]
fn port_mappings_are_recorded_for_the_agent_and_go_with_the_pod() {
    let mut node = Node::new("cni-hp", "10.244.9.0/24");
    let a = node.pod("a");
    let b = node.pod("b");
    let dir = node.fx.dir().join("hostports");
    let with = |mappings: serde_json::Value| {
        let mut c = node.conf("1.1.0");
        c["capabilities"] = json!({"portMappings": true});
        c["runtimeConfig"] = json!({"portMappings": mappings});
        c
    };
    let conf =
        with(json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]));
    let add = node.cni("ADD", "ctr-a", Some(a.path()), &conf);
    assert!(add.ok, "{add:?}");
    let ip = pod_ip(&add.json);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the hostports directory")
        .flatten()
        .collect();
    assert_eq!(files.len(), 1);
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files[0].path()).expect("read")).expect("json");
    assert_eq!(recorded["ip"], ip.as_str());
    assert_eq!(recorded["containerId"], "ctr-a");
    assert_eq!(recorded["portMappings"][0]["hostPort"], 8080);
    assert_eq!(recorded["portMappings"][0]["containerPort"], 80);

    let bad = with(json!([{"hostPort": 9090, "containerPort": 90, "protocol": "icmp"}]));
    let refused = node.cni("ADD", "ctr-b", Some(b.path()), &bad);
    assert_eq!(refused.code(), 7, "{refused:?}");
    assert!(refused.msg().contains("hostPort 9090"), "{refused:?}");
    assert_eq!(
        node.host_veths().len(),
        1,
        "nothing made for the refused ADD"
    );

    let add_b = node.cni(
        "ADD",
        "ctr-b",
        Some(b.path()),
        &with(json!([{"hostPort": 5353, "containerPort": 53, "protocol": "UDP"}])),
    );
    assert!(add_b.ok, "{add_b:?}");
    let del = node.cni("DEL", "ctr-a", Some(a.path()), &conf);
    assert!(del.ok, "{del:?}");
    let left = std::fs::read_dir(&dir).expect("dir").count();
    assert_eq!(left, 1, "DEL removed ctr-a's mappings only");
    let gc = node.cni("GC", "", None, &node.gc_conf(&[]));
    assert!(gc.ok, "{gc:?}");
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        0,
        "GC removed the rest"
    );
}
