//! Builds a lab's network: a fabric namespace holding the switch the nodes' `eth0`s hang
//! off (and routing to the outside host), one namespace per node, and the `external`
//! host. Only namespaces of the lab are configured, never the machine's own.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;

use ipnet::{IpNet, Ipv4Net};
use podnet_kernel::netlink::PROTO_BOOT;
use podnet_kernel::{netns, sysctl, NetNs, Netlink, Route, VethSpec};

use crate::layout::{self, Layout};

/// The switch in the fabric namespace.
pub const SWITCH: &str = "switch";
/// The link MTU of the lab's underlay.
pub const UNDERLAY_MTU: u32 = 1500;

#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct FabricError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FabricError {
    let what = what.into();
    move |source| FabricError { what, source }
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(podnet_kernel::NetlinkError) -> FabricError {
    let what = what.into();
    move |e| FabricError {
        what,
        source: e.into(),
    }
}

/// Creates a namespace of the lab (`lo` up).
pub fn create_namespace(name: &str) -> Result<NetNs, FabricError> {
    let ns = netns::create_named(name).map_err(err(format!("create network namespace {name}")))?;
    let mut nl = Netlink::open_in(&ns).map_err(nl_err(format!("netlink in {name}")))?;
    let lo = nl
        .link_by_name("lo")
        .map_err(nl_err(format!("look up lo in {name}")))?
        .ok_or_else(|| FabricError {
            what: format!("{name} has no lo"),
            source: std::io::Error::other("missing loopback"),
        })?;
    nl.set_up(lo.index)
        .map_err(nl_err(format!("bring lo up in {name}")))?;
    Ok(ns)
}

/// Builds the fabric and the external host.
pub fn build_fabric(layout: &Layout) -> Result<NetNs, FabricError> {
    let fabric = create_namespace(&layout.fabric_netns())?;
    let external = create_namespace(&layout.external_netns())?;
    let mut fnl = Netlink::open_in(&fabric).map_err(nl_err("netlink in the fabric"))?;
    fnl.create_bridge(SWITCH, UNDERLAY_MTU, [0x0a, 0x58, 172, 18, 0, 1])
        .map_err(nl_err("create the switch"))?;
    let switch = link(&mut fnl, SWITCH)?;
    let (subnet, gw) = layout::node_network(1, false);
    let gw = IpNet::V4(Ipv4Net::new(gw, subnet.prefix_len()).unwrap_or_default());
    fnl.add_address(switch.index, gw)
        .map_err(nl_err("address the switch"))?;
    // The fabric routes between the node network and the outside host.
    fabric
        .run(|| sysctl::set("net.ipv4.ip_forward", "1"))
        .map_err(err("enter the fabric"))?
        .map_err(err("enable forwarding in the fabric"))?;
    // The switch only switches: without this, br_netfilter (when the host has it) would
    // run every frame crossing it through the fabric's IP hooks, a cost no real switch adds.
    fabric
        .run(|| -> std::io::Result<()> {
            for key in sysctl::BRIDGE_NF_CALL {
                sysctl::set_if_present(key, "0")?;
            }
            Ok(())
        })
        .map_err(err("enter the fabric"))?
        .map_err(err("turn off br_netfilter on the switch"))?;
    connect(
        &mut fnl,
        "external",
        None,
        &external,
        net(layout::EXTERNAL_GW, layout::EXTERNAL_PREFIX),
        net(layout::EXTERNAL_IP, layout::EXTERNAL_PREFIX),
        layout::EXTERNAL_GW,
    )?;
    Ok(fabric)
}

/// Adds node `i`: its namespace, its `eth0` (on the switch, or on a routed link of its
/// own), its address and default route.
pub fn add_node(
    layout: &Layout,
    fabric: &NetNs,
    i: usize,
    routed: bool,
) -> Result<NetNs, FabricError> {
    let name = layout::node_name(i);
    let ns = create_namespace(&layout.node_netns(&name))?;
    let mut fnl = Netlink::open_in(fabric).map_err(nl_err("netlink in the fabric"))?;
    let (subnet, gw) = layout::node_network(i, routed);
    let master = if routed {
        None
    } else {
        Some(link(&mut fnl, SWITCH)?.index)
    };
    connect(
        &mut fnl,
        &name,
        master,
        &ns,
        net(gw, subnet.prefix_len()),
        net(layout::node_ip(i, routed), subnet.prefix_len()),
        gw,
    )?;
    Ok(ns)
}

fn net(ip: Ipv4Addr, prefix: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new(ip, prefix).unwrap_or_default())
}

fn link(nl: &mut Netlink, name: &str) -> Result<podnet_kernel::Link, FabricError> {
    nl.link_by_name(name)
        .map_err(nl_err(format!("look up {name}")))?
        .ok_or_else(|| FabricError {
            what: format!("look up {name}"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "link missing"),
        })
}

/// A veth from the fabric (`port`, on `master` or addressed with `local`) to `eth0` in
/// `peer`, which gets `remote` and a default route via `gateway`.
fn connect(
    fnl: &mut Netlink,
    port: &str,
    master: Option<u32>,
    peer: &NetNs,
    local: IpNet,
    remote: IpNet,
    gateway: Ipv4Addr,
) -> Result<(), FabricError> {
    fnl.create_veth(&VethSpec {
        name: port,
        mtu: UNDERLAY_MTU,
        master,
        peer_name: "eth0",
        peer_netns: Some(peer.as_fd()),
        peer_mac: None,
    })
    .map_err(nl_err(format!("create veth {port}")))?;
    let p = link(fnl, port)?;
    if master.is_none() {
        fnl.add_address(p.index, local)
            .map_err(nl_err(format!("address {port}")))?;
    }
    fnl.set_up(p.index)
        .map_err(nl_err(format!("bring {port} up")))?;
    let mut pnl = Netlink::open_in(peer).map_err(nl_err("netlink in a lab host"))?;
    let eth0 = link(&mut pnl, "eth0")?;
    pnl.add_address(eth0.index, remote)
        .map_err(nl_err(format!("address eth0 behind {port}")))?;
    pnl.set_up(eth0.index)
        .map_err(nl_err(format!("bring eth0 behind {port} up")))?;
    pnl.replace_route(&Route {
        destination: IpNet::V4(Ipv4Net::default()),
        gateway: Some(IpAddr::V4(gateway)),
        oif: Some(eth0.index),
        protocol: PROTO_BOOT,
        onlink: false,
        link_scope: false,
        prefsrc: None,
    })
    .map_err(nl_err(format!("default route behind {port}")))?;
    Ok(())
}
