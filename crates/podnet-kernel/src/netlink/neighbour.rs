//! Neighbour (ARP) entries and bridge/VXLAN forwarding database (FDB) entries.

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, Result};

/// A permanent IPv4 neighbour entry: `ip` is at `mac` on link `index`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbour {
    pub index: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A permanent FDB entry on a VXLAN device: frames for `mac` go to the VTEP at `dst`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fdb {
    pub index: u32,
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

fn neigh_message(index: u32, family: AddressFamily) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m
}

fn mac_of(attrs: &[NeighbourAttribute]) -> Option<[u8; 6]> {
    attrs.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
        _ => None,
    })
}

impl Netlink {
    /// Adds or replaces a permanent neighbour entry.
    pub fn replace_neighbour(&mut self, n: &Neighbour) -> Result<()> {
        let mut m = neigh_message(n.index, AddressFamily::Inet);
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                n.ip,
            )));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
        self.request(
            || format!("add neighbour {} on link {}", n.ip, n.index),
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    pub fn delete_neighbour(&mut self, n: &Neighbour) -> Result<bool> {
        let mut m = neigh_message(n.index, AddressFamily::Inet);
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                n.ip,
            )));
        match self.request(
            || format!("delete neighbour {} on link {}", n.ip, n.index),
            RouteNetlinkMessage::DelNeighbour(m),
            0,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The permanent IPv4 neighbour entries of link `index`.
    pub fn neighbours(&mut self, index: u32) -> Result<Vec<Neighbour>> {
        Ok(self
            .permanent(index, AddressFamily::Inet, "neighbours")?
            .into_iter()
            .map(|(ip, mac)| Neighbour { index, ip, mac })
            .collect())
    }

    /// (IPv4 address, MAC) of the permanent entries of link `index` in the neighbour
    /// (`Inet`) or forwarding (`Bridge`) table.
    fn permanent(
        &mut self,
        index: u32,
        family: AddressFamily,
        what: &str,
    ) -> Result<Vec<(Ipv4Addr, [u8; 6])>> {
        let answers = self.request(
            || format!("list {what} of link {index}"),
            RouteNetlinkMessage::GetNeighbour(neigh_message(0, family)),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .iter()
            .filter_map(|a| match a {
                RouteNetlinkMessage::NewNeighbour(m)
                    if m.header.ifindex == index && m.header.state == NeighbourState::Permanent =>
                {
                    let ip = m.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                        // In AF_BRIDGE messages the VTEP address may arrive undecoded.
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                            <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                        }
                        _ => None,
                    })?;
                    Some((ip, mac_of(&m.attributes)?))
                }
                _ => None,
            })
            .collect())
    }

    fn fdb_message(f: &Fdb) -> NeighbourMessage {
        let mut m = neigh_message(f.index, AddressFamily::Bridge);
        // NTF_SELF: the entry belongs to the VXLAN device's own table.
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(f.mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                f.dst,
            )));
        m
    }

    /// Adds (or replaces) an FDB entry; NLM_F_APPEND is not used, so a MAC maps to one VTEP.
    pub fn replace_fdb(&mut self, f: &Fdb) -> Result<()> {
        self.request(
            || format!("add FDB entry on link {} to {}", f.index, f.dst),
            RouteNetlinkMessage::NewNeighbour(Self::fdb_message(f)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    pub fn delete_fdb(&mut self, f: &Fdb) -> Result<bool> {
        match self.request(
            || format!("delete FDB entry on link {} to {}", f.index, f.dst),
            RouteNetlinkMessage::DelNeighbour(Self::fdb_message(f)),
            0,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The permanent unicast FDB entries of link `index` that point at a remote VTEP.
    pub fn fdb(&mut self, index: u32) -> Result<Vec<Fdb>> {
        Ok(self
            .permanent(index, AddressFamily::Bridge, "FDB")?
            .into_iter()
            // Skip the all-zeros default entries (flooding), which podnet never makes.
            .filter(|(_, mac)| *mac != [0; 6])
            .map(|(dst, mac)| Fdb { index, mac, dst })
            .collect())
    }
}
