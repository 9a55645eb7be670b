//! Link and namespace helpers against the real kernel, in namespaces each test creates.
//! Run as root.

use podnet_kernel::{NetNs, Netlink, VethSpec};
use podnet_testkit::Fixture;
use std::os::fd::AsFd;

#[test]
fn a_namespace_file_of_another_kind_is_not_a_network_namespace() {
    let err = NetNs::open("/proc/self/ns/uts").expect_err("a UTS namespace");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("not a network namespace"), "{err}");
    let err = NetNs::open("/proc/self/status").expect_err("a plain file");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");

    let mut fx = Fixture::new("nsid");
    let a = fx.netns("a");
    let again = NetNs::open(a.path()).expect("reopen");
    assert_eq!(a.id().expect("id"), again.id().expect("id"));
    let here = NetNs::current().expect("current");
    assert_ne!(a.id().expect("id"), here.id().expect("id"));
    let inside = a
        .run(|| NetNs::current().expect("current").id().expect("id"))
        .expect("enter");
    assert_eq!(inside, a.id().expect("id"));
}

#[test]
fn alias_peer_and_cut_off_on_a_bridge_port() {
    let mut fx = Fixture::new("linkhelp");
    let node = fx.netns("node");
    let pod = fx.netns("pod");
    let mut nl = Netlink::open_in(&node).expect("netlink");
    nl.create_bridge("br0", 1500, [0x0a, 0x58, 10, 0, 0, 1])
        .expect("bridge");
    let br = nl.link_by_name("br0").expect("lookup").expect("br0");
    let pod_mac = [0x0a, 0x58, 10, 0, 0, 7];
    nl.create_veth(&VethSpec {
        name: "pnhost",
        mtu: 1500,
        master: Some(br.index),
        peer_name: "eth0",
        peer_netns: Some(pod.as_fd()),
        peer_mac: Some(pod_mac),
    })
    .expect("veth");
    let host = nl.link_by_name("pnhost").expect("lookup").expect("pnhost");
    assert_eq!(host.alias, None);
    nl.set_alias(host.index, "podnet 10.0.0.7 eth0 ctr")
        .expect("alias");
    nl.set_up(host.index).expect("up");
    let host = nl.link_by_name("pnhost").expect("lookup").expect("pnhost");
    assert_eq!(host.alias.as_deref(), Some("podnet 10.0.0.7 eth0 ctr"));
    assert_eq!(host.master, Some(br.index));
    assert!(host.up);

    // The peer is found from the node without entering the pod's namespace.
    let (peer, nsid) = (
        host.peer.expect("a veth has a peer"),
        host.peer_netnsid.expect("the peer is in another namespace"),
    );
    let pod_end = nl
        .link_in_netnsid(nsid, peer)
        .expect("lookup")
        .expect("the pod end");
    assert_eq!(pod_end.name, "eth0");
    assert_eq!(pod_end.mac, Some(pod_mac));

    nl.cut_off(host.index).expect("cut off");
    let host = nl.link_by_name("pnhost").expect("lookup").expect("pnhost");
    assert!(!host.up);
    assert_eq!(host.master, None);
    // A bridge has no peer and no alias.
    let br = nl.link_by_name("br0").expect("lookup").expect("br0");
    assert_eq!((br.peer, br.alias), (None, None));
}
