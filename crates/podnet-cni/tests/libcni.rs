//! podnet-cni driven through libcni, the library containerd, CRI-O and Podman use, with
//! a reference plugin chained after it. Run as root; needs Debian's golang-go,
//! golang-github-appc-cni-dev and containernetworking-plugins.

mod common;

use common::{libcni, pod_ip, Node};
use podnet_kernel::Netlink;
use podnet_testkit::on_thread_in;
use serde_json::json;

#[test]
fn add_check_del_through_libcni_with_a_chained_tuning_plugin() {
    let mut node = Node::new("libcni", "10.244.20.0/24");
    let pod = node.pod("p");
    let mut podnet = node.conf("1.0.0");
    let podnet_obj = podnet.as_object_mut().expect("object");
    podnet_obj.remove("cniVersion");
    podnet_obj.remove("name");
    // libcni 1.1.2 (Debian 12) knows results up to 1.0.0.
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "podnet-test",
        "plugins": [podnet, {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}}],
    });
    let file = node.fx.dir().join("10-podnet.conflist");
    std::fs::write(&file, conflist.to_string()).expect("write conflist");
    let netns = pod.path().to_str().expect("path").to_string();
    let attach = ["-netns", netns.as_str(), "-id", "ctr-libcni"];

    let add = libcni(&node, &file, &[&["add"][..], &attach[..]].concat());
    assert!(add.ok, "ADD through libcni: {add:?}");
    // The result made it through the chain: tuning passed podnet's result on.
    let ip = pod_ip(&add.json);
    assert!(ip.starts_with("10.244.20."), "{}", add.json);
    assert_eq!(add.json["interfaces"][2]["sandbox"], netns);
    assert_eq!(add.json["routes"][0]["gw"], "10.244.20.1");
    // And tuning acted on the pod podnet made.
    let somaxconn = on_thread_in(&pod, || {
        std::fs::read_to_string("/proc/sys/net/core/somaxconn").expect("read sysctl")
    })
    .join()
    .expect("thread");
    assert_eq!(somaxconn.trim(), "512");
    let mut nl = Netlink::open_in(&pod).expect("netlink");
    let eth0 = nl.link_by_name("eth0").expect("lookup").expect("eth0");
    let addrs = nl.addresses(eth0.index).expect("addresses");
    let v4: Vec<String> = addrs
        .iter()
        .filter(|a| a.addr().is_ipv4())
        .map(|a| a.addr().to_string())
        .collect();
    assert_eq!(v4, vec![ip]);

    let check = libcni(&node, &file, &[&["check"][..], &attach[..]].concat());
    assert!(check.ok, "CHECK through libcni: {check:?}");

    let default = nl
        .routes()
        .expect("routes")
        .into_iter()
        .find(|r| r.destination.prefix_len() == 0)
        .expect("default route");
    nl.delete_route(&default).expect("delete default route");
    let check = libcni(&node, &file, &[&["check"][..], &attach[..]].concat());
    assert!(!check.ok);
    assert_eq!(check.code(), 101, "{check:?}");
    assert!(
        check
            .msg()
            .contains("route 0.0.0.0/0 via 10.244.20.1 is missing"),
        "{check:?}"
    );

    let del = libcni(&node, &file, &[&["del"][..], &attach[..]].concat());
    assert!(del.ok, "DEL through libcni: {del:?}");
    node.assert_host_veths_gone();
    assert!(node.allocations().is_empty());
}

#[test]
fn libcni_sees_every_supported_version() {
    let node = Node::new("libcni-ver", "10.244.21.0/24");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "podnet-test",
        "plugins": [{"type": "podnet-cni", "subnet": "10.244.21.0/24"}],
    });
    let file = node.fx.dir().join("10-podnet.conflist");
    std::fs::write(&file, conflist.to_string()).expect("write conflist");
    let out = libcni(&node, &file, &["version"]);
    assert!(out.ok, "{out:?}");
    assert_eq!(out.json[0]["type"], "podnet-cni");
    assert_eq!(
        out.json[0]["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}
