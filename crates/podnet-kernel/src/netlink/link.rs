//! Links: look up, create bridges and veth pairs, set state, delete.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Netlink, NetlinkError, Result};

/// What podnet needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    /// Index of the bridge (or bond, VRF) this link is enslaved to.
    pub master: Option<u32>,
    /// For VXLAN devices, their tunnel settings.
    pub vxlan: Option<Vxlan>,
    /// The link's alias (`ip link set ... alias`), where it has one.
    pub alias: Option<String>,
    /// For a veth, its peer's index, in the namespace `peer_netnsid` names (or this one).
    pub peer: Option<u32>,
    /// The id, in this namespace, of the namespace the peer lives in, if another one.
    pub peer_netnsid: Option<i32>,
}

/// The settings of a VXLAN device that podnet cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    pub learning: bool,
}

/// A VXLAN device to create: point-to-point to VTEPs given by FDB entries, no multicast
/// group and no learning (peers are programmed, never learnt).
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    /// The underlay device the tunnel leaves through.
    pub underlay: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mtu: 0,
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            master: None,
            vxlan: None,
            alias: None,
            peer: None,
            peer_netnsid: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Controller(m) => link.master = Some(*m),
                LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a.clone()),
                // A link's IFLA_LINK names itself when it has no lower device.
                LinkAttribute::Link(l) if *l != msg.header.index => link.peer = Some(*l),
                LinkAttribute::LinkNetNsId(id) if *id >= 0 => link.peer_netnsid = Some(*id),
                LinkAttribute::Address(a) => link.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(opts)) => {
                                let mut v = Vxlan {
                                    vni: 0,
                                    port: 0,
                                    local: None,
                                    learning: true,
                                };
                                for o in opts {
                                    match o {
                                        InfoVxlan::Id(id) => v.vni = *id,
                                        InfoVxlan::Port(p) => v.port = *p,
                                        InfoVxlan::Local(l) => v.local = Some(*l),
                                        InfoVxlan::Learning(l) => v.learning = *l,
                                        _ => {}
                                    }
                                }
                                link.vxlan = Some(v);
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// The MAC address as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> Option<String> {
        self.mac.map(|m| format_mac(&m))
    }
}

pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A stable, locally administered MAC address for an IPv4 address (`0a:58:` + the four
/// octets, as Kubernetes' kubenet did): a reused address keeps its MAC, so neighbours'
/// ARP caches stay right when an address moves from a deleted pod to a new one.
pub fn mac_for_ipv4(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// Bridge-port options podnet sets on a pod's host veth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgePort {
    /// A frame may leave the port it came in on.
    pub hairpin: bool,
    /// The port talks only to non-isolated ports (the bridge itself), never to other
    /// isolated ports directly.
    pub isolated: bool,
}

/// A veth pair to create: `name` stays in the socket's namespace, `peer_name` is created
/// directly in `peer_netns` (no move afterwards, so it never appears on the host).
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub mtu: u32,
    /// Bridge to attach the local end to, at creation.
    pub master: Option<u32>,
    pub peer_name: &'a str,
    pub peer_netns: Option<BorrowedFd<'a>>,
    pub peer_mac: Option<[u8; 6]>,
}

impl Netlink {
    /// The link called `name`, or `None` if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            || format!("get link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(answers) => Ok(answers.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let answers = self.request(
            || "list links".to_string(),
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a bridge with a fixed MAC (a bridge without one takes the lowest MAC of its
    /// ports, and its MAC would change under the pods' ARP caches as ports come and go).
    /// Fails with EEXIST if a link of that name exists.
    pub fn create_bridge(&mut self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            || format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Creates a VXLAN device (down). Fails with EEXIST if the name is taken.
    pub fn create_vxlan(&mut self, spec: &VxlanSpec<'_>) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        msg.attributes
            .push(LinkAttribute::Address(spec.mac.to_vec()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(spec.vni),
                InfoVxlan::Local(spec.local),
                InfoVxlan::Link(spec.underlay),
                InfoVxlan::Port(spec.port),
                InfoVxlan::Learning(false),
            ])),
        ]));
        self.request(
            || format!("create VXLAN device {}", spec.name),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(
            || format!("set the MTU of link {index} to {mtu}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
        .map(drop)
    }

    /// Creates a veth pair in one request. Fails with EEXIST if either name is taken.
    pub fn create_veth(&mut self, spec: &VethSpec<'_>) -> Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.to_string()));
        peer.attributes.push(LinkAttribute::Mtu(spec.mtu));
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(fd) = spec.peer_netns {
            peer.attributes.push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        if let Some(master) = spec.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(
            || format!("create veth pair {} / {}", spec.name, spec.peer_name),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Brings a link up.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.set_state(index, true)
    }

    /// Takes a link down. Cheap, unlike deleting it: a down bridge port forwards nothing.
    pub fn set_down(&mut self, index: u32) -> Result<()> {
        self.set_state(index, false)
    }

    fn set_state(&mut self, index: u32, up: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            || format!("bring link {index} {}", if up { "up" } else { "down" }),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
        .map(drop)
    }

    /// Sets the bridge-port options of an enslaved link and brings it up, in one request.
    pub fn set_bridge_port_up(&mut self, index: u32, port: BridgePort) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![
                InfoBridgePort::HairpinMode(port.hairpin),
                InfoBridgePort::Isolated(port.isolated),
            ])),
        ]));
        self.request(
            || format!("configure bridge port {index}"),
            RouteNetlinkMessage::NewLink(msg),
            0,
        )
        .map(drop)
    }

    /// The bridge-port settings of an enslaved link.
    pub fn bridge_port(&mut self, name: &str) -> Result<Option<BridgePort>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let answers = self.request(
            || format!("get link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        )?;
        for answer in &answers {
            let RouteNetlinkMessage::NewLink(l) = answer else {
                continue;
            };
            for attr in &l.attributes {
                let LinkAttribute::LinkInfo(infos) = attr else {
                    continue;
                };
                for info in infos {
                    if let LinkInfo::PortData(InfoPortData::BridgePort(opts)) = info {
                        let mut port = BridgePort::default();
                        for opt in opts {
                            match opt {
                                InfoBridgePort::HairpinMode(h) => port.hairpin = *h,
                                InfoBridgePort::Isolated(i) => port.isolated = *i,
                                _ => {}
                            }
                        }
                        return Ok(Some(port));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The link with index `index` in the namespace this one knows as `netnsid` (a veth
    /// peer's [`Link::peer_netnsid`]), read without entering that namespace; `None` if
    /// there is no such link.
    pub fn link_in_netnsid(&mut self, netnsid: i32, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::IfNetnsId(netnsid));
        match self.request(
            || format!("get link {index} in namespace id {netnsid}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(answers) => Ok(answers.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets a link's alias, a free text of up to 255 bytes the kernel keeps with it.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.request(
            || format!("set the alias of link {index}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
        .map(drop)
    }

    /// Takes a link down and off its bridge in one request: it forwards nothing from
    /// then on, even if something brings it up again.
    pub fn cut_off(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::empty();
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::Controller(0));
        self.request(
            || format!("take link {index} down and off its bridge"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
        .map(drop)
    }

    /// Deletes a link by name; `Ok(false)` if there was none.
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.delete_link(msg, || format!("delete link {name}"))
    }

    /// Deletes a link by index; `Ok(false)` if there was none. An index is never reused
    /// for another link while the namespace lives, unlike a name.
    pub fn delete_link_by_index(&mut self, index: u32) -> Result<bool> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.delete_link(msg, || format!("delete link {index}"))
    }

    fn delete_link(&mut self, msg: LinkMessage, op: impl Fn() -> String) -> Result<bool> {
        match self.request(op, RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl From<NetlinkError> for std::io::Error {
    fn from(e: NetlinkError) -> Self {
        match e.errno() {
            Some(errno) => std::io::Error::new(std::io::Error::from(errno).kind(), e.to_string()),
            None => std::io::Error::other(e.to_string()),
        }
    }
}
