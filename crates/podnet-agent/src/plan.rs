//! What the node's dataplane should hold, decided from the cluster view. Pure.
//!
//! - `host-gw`: a route to each peer's pod CIDR via the peer's address, for peers on one
//!   of this node's networks; others are reported, not routed (the route could not work).
//! - `vxlan`: one VXLAN device; for each peer a permanent neighbour entry (the peer's VTEP
//!   address at its VTEP MAC), an FDB entry (that MAC behind the peer's node address) and
//!   an on-link route to its pod CIDR via its VTEP address, as Flannel does. With direct
//!   routing, peers on this node's networks get host-gw routes instead.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podnet_model::k8s_openapi::api::core::v1::Node;

use crate::cni_config::pod_cidr;

/// The annotation on which each agent publishes its VTEP MAC.
pub const VTEP_MAC_ANNOTATION: &str = "podnet.io/vtep-mac";
/// The annotation on which each agent publishes its underlay address.
pub const NODE_IP_ANNOTATION: &str = "podnet.io/node-ip";
/// The VXLAN device podnet creates.
pub const VXLAN_DEVICE: &str = "podnet.vxlan";
/// IPv4 + UDP + VXLAN + inner Ethernet headers.
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    HostGw,
    Vxlan {
        vni: u32,
        port: u16,
        direct_routing: bool,
    },
}

/// What the plan needs of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub vtep_mac: Option<[u8; 6]>,
}

impl NodeInfo {
    /// Reads a node object; `None` until it has an address and a pod CIDR. The address is
    /// the one its agent published ([`NODE_IP_ANNOTATION`]), else its first IPv4
    /// InternalIP.
    pub fn from_node(n: &Node) -> Option<NodeInfo> {
        let annotations = n.metadata.annotations.as_ref();
        let ip = annotations
            .and_then(|a| a.get(NODE_IP_ANNOTATION))
            .and_then(|ip| ip.parse().ok())
            .or_else(|| internal_ip(n))?;
        let vtep_mac = annotations
            .and_then(|a| a.get(VTEP_MAC_ANNOTATION))
            .and_then(|m| parse_mac(m));
        Some(NodeInfo {
            name: n.metadata.name.clone()?,
            ip,
            pod_cidr: pod_cidr(n)?,
            vtep_mac,
        })
    }
}

/// A node's first IPv4 InternalIP (dual-stack nodes may list an IPv6 one first).
pub fn internal_ip(n: &Node) -> Option<Ipv4Addr> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// This node's VTEP MAC: derived from its address, so a restarted agent keeps it and
/// peers' entries stay valid.
pub fn vtep_mac(node_ip: Ipv4Addr) -> [u8; 6] {
    let o = node_ip.octets();
    [0x0e, 0x58, o[0], o[1], o[2], o[3]]
}

/// A route podnet wants, by device name (the applier resolves names to indices).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerRoute {
    pub dst: Ipv4Net,
    pub via: Ipv4Addr,
    pub dev: String,
    pub onlink: bool,
    pub prefsrc: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// The device's own address: the network address of this node's pod CIDR, /32.
    pub address: Ipv4Addr,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub vxlan: Option<VxlanDevice>,
    pub routes: BTreeSet<PeerRoute>,
    /// (VTEP address, VTEP MAC) on the VXLAN device.
    pub neighbours: BTreeSet<(Ipv4Addr, [u8; 6])>,
    /// (VTEP MAC, node address) on the VXLAN device.
    pub fdb: BTreeSet<([u8; 6], Ipv4Addr)>,
    /// The pods' MTU.
    pub pod_mtu: u32,
    /// Peers that cannot be routed, and why.
    pub unreachable: BTreeMap<String, String>,
}

/// The underlay as seen from this node.
#[derive(Debug, Clone)]
pub struct Underlay {
    pub device: String,
    pub mtu: u32,
    /// Networks this node is directly attached to.
    pub networks: Vec<Ipv4Net>,
}

impl Underlay {
    fn on_link(&self, ip: Ipv4Addr) -> bool {
        self.networks.iter().any(|n| n.contains(&ip))
    }
}

pub fn plan(me: &NodeInfo, peers: &[NodeInfo], backend: Backend, underlay: &Underlay) -> Desired {
    let mut d = Desired {
        pod_mtu: underlay.mtu,
        ..Desired::default()
    };
    let host_gw = |d: &mut Desired, p: &NodeInfo| {
        d.routes.insert(PeerRoute {
            dst: p.pod_cidr,
            via: p.ip,
            dev: underlay.device.clone(),
            onlink: false,
            prefsrc: None,
        });
    };
    match backend {
        Backend::HostGw => {
            for p in peers.iter().filter(|p| p.name != me.name) {
                if underlay.on_link(p.ip) {
                    host_gw(&mut d, p);
                } else {
                    d.unreachable.insert(
                        p.name.clone(),
                        format!(
                            "host-gw cannot reach node {} ({}): it is not on this node's network ({}); use --backend vxlan",
                            p.name,
                            p.ip,
                            underlay.networks.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
        }
        Backend::Vxlan {
            vni,
            port,
            direct_routing,
        } => {
            d.pod_mtu = underlay.mtu.saturating_sub(VXLAN_OVERHEAD);
            d.vxlan = Some(VxlanDevice {
                vni,
                port,
                local: me.ip,
                mac: vtep_mac(me.ip),
                mtu: d.pod_mtu,
                address: me.pod_cidr.network(),
            });
            for p in peers.iter().filter(|p| p.name != me.name) {
                if direct_routing && underlay.on_link(p.ip) {
                    host_gw(&mut d, p);
                    continue;
                }
                let Some(mac) = p.vtep_mac else {
                    d.unreachable.insert(
                        p.name.clone(),
                        format!(
                            "node {} has not published its VTEP MAC ({VTEP_MAC_ANNOTATION}) yet",
                            p.name
                        ),
                    );
                    continue;
                };
                let vtep = p.pod_cidr.network();
                d.neighbours.insert((vtep, mac));
                d.fdb.insert((mac, p.ip));
                d.routes.insert(PeerRoute {
                    dst: p.pod_cidr,
                    via: vtep,
                    dev: VXLAN_DEVICE.to_string(),
                    onlink: true,
                    // Traffic the node itself sends to pods leaves with the node's address.
                    prefsrc: Some(me.ip),
                });
            }
        }
    }
    d
}

/// Applies a configured pod MTU: it may lower what the underlay allows, never raise it
/// (full-size packets would be dropped); `Err`, and the plan's own MTU kept, when it asks
/// for more.
pub fn with_mtu(d: &mut Desired, mtu: Option<u32>) -> Result<(), String> {
    let Some(mtu) = mtu else {
        return Ok(());
    };
    if mtu > d.pod_mtu {
        return Err(format!(
            "the configured MTU {mtu} is more than this node's underlay allows ({}); using {}",
            d.pod_mtu, d.pod_mtu
        ));
    }
    d.pod_mtu = mtu;
    if let Some(v) = d.vxlan.as_mut() {
        v.mtu = mtu;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8, net: u8) -> NodeInfo {
        let ip = Ipv4Addr::new(172, 18, net, 10 + i);
        NodeInfo {
            name: format!("node-{i}"),
            ip,
            pod_cidr: format!("10.244.{i}.0/24").parse().expect("net"),
            vtep_mac: Some(vtep_mac(ip)),
        }
    }

    fn l2() -> Underlay {
        Underlay {
            device: "eth0".into(),
            mtu: 1500,
            networks: vec!["172.18.0.0/24".parse().expect("net")],
        }
    }

    #[test]
    fn host_gw_routes_peers_on_the_segment_and_explains_the_rest() {
        let nodes = [node(1, 0), node(2, 0), node(3, 1)];
        let d = plan(&nodes[0], &nodes, Backend::HostGw, &l2());
        assert_eq!(
            d.routes
                .iter()
                .map(|r| (r.dst.to_string(), r.via.to_string(), r.dev.clone()))
                .collect::<Vec<_>>(),
            vec![("10.244.2.0/24".into(), "172.18.0.12".into(), "eth0".into())]
        );
        assert!(
            d.unreachable["node-3"].contains("not on this node's network"),
            "{:?}",
            d.unreachable
        );
        assert_eq!(d.pod_mtu, 1500);
        assert!(d.vxlan.is_none());
    }

    #[test]
    fn a_configured_mtu_may_lower_the_pods_mtu_but_not_raise_it() {
        let nodes = [node(1, 0), node(2, 0)];
        let vx = Backend::Vxlan {
            vni: 1,
            port: 4789,
            direct_routing: false,
        };
        let mut d = plan(&nodes[0], &nodes, vx, &l2());
        assert_eq!(with_mtu(&mut d, None), Ok(()));
        assert_eq!(d.pod_mtu, 1450);
        let e = with_mtu(&mut d, Some(1500)).expect_err("more than VXLAN allows");
        assert!(e.contains("1500") && e.contains("(1450)"), "{e}");
        assert_eq!(
            (d.pod_mtu, d.vxlan.as_ref().map(|v| v.mtu)),
            (1450, Some(1450))
        );
        assert_eq!(with_mtu(&mut d, Some(1400)), Ok(()));
        assert_eq!(
            (d.pod_mtu, d.vxlan.as_ref().map(|v| v.mtu)),
            (1400, Some(1400))
        );
    }

    #[test]
    fn vxlan_programs_neighbour_fdb_and_onlink_route_per_peer() {
        let nodes = [node(1, 0), node(2, 0), node(3, 1)];
        let vx = Backend::Vxlan {
            vni: 1,
            port: 4789,
            direct_routing: false,
        };
        let d = plan(&nodes[0], &nodes, vx, &l2());
        assert_eq!(d.pod_mtu, 1450);
        let dev = d.vxlan.expect("device");
        assert_eq!(
            (dev.vni, dev.port, dev.mtu, dev.address),
            (1, 4789, 1450, Ipv4Addr::new(10, 244, 1, 0))
        );
        assert_eq!(d.routes.len(), 2);
        let r3 = d
            .routes
            .iter()
            .find(|r| r.dst.to_string() == "10.244.3.0/24")
            .expect("route");
        assert_eq!(
            (r3.via, r3.onlink, r3.dev.as_str()),
            (Ipv4Addr::new(10, 244, 3, 0), true, VXLAN_DEVICE)
        );
        assert_eq!(r3.prefsrc, Some(nodes[0].ip));
        assert!(d
            .neighbours
            .contains(&(Ipv4Addr::new(10, 244, 3, 0), vtep_mac(nodes[2].ip))));
        assert!(d.fdb.contains(&(vtep_mac(nodes[2].ip), nodes[2].ip)));
        assert!(d.unreachable.is_empty());
    }

    #[test]
    fn direct_routing_uses_plain_routes_on_the_segment() {
        let nodes = [node(1, 0), node(2, 0), node(3, 1)];
        let vx = Backend::Vxlan {
            vni: 1,
            port: 4789,
            direct_routing: true,
        };
        let d = plan(&nodes[0], &nodes, vx, &l2());
        let devs: Vec<&str> = d.routes.iter().map(|r| r.dev.as_str()).collect();
        assert_eq!(devs, vec!["eth0", VXLAN_DEVICE]);
        assert_eq!(d.fdb.len(), 1);
    }

    #[test]
    fn peers_without_a_published_mac_wait() {
        let mut nodes = [node(1, 0), node(2, 0)];
        nodes[1].vtep_mac = None;
        let d = plan(
            &nodes[0],
            &nodes,
            Backend::Vxlan {
                vni: 1,
                port: 4789,
                direct_routing: false,
            },
            &l2(),
        );
        assert!(d.routes.is_empty());
        assert!(d.unreachable["node-2"].contains("VTEP MAC"));
    }

    #[test]
    fn macs_round_trip() {
        let m = vtep_mac(Ipv4Addr::new(172, 18, 0, 11));
        let s = podnet_kernel_free_format(&m);
        assert_eq!(s, "0e:58:ac:12:00:0b");
        assert_eq!(parse_mac(&s), Some(m));
        assert_eq!(parse_mac("zz"), None);
    }

    fn podnet_kernel_free_format(m: &[u8; 6]) -> String {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}
