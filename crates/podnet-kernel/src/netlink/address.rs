//! Addresses on links.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, Result};

fn message(index: u32, addr: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = addr.prefix_len();
    match addr {
        IpNet::V4(v4) => {
            msg.header.family = AddressFamily::Inet;
            msg.attributes
                .push(AddressAttribute::Local(IpAddr::V4(v4.addr())));
            msg.attributes
                .push(AddressAttribute::Address(IpAddr::V4(v4.addr())));
            if v4.prefix_len() < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        }
        IpNet::V6(v6) => {
            msg.header.family = AddressFamily::Inet6;
            msg.attributes
                .push(AddressAttribute::Address(IpAddr::V6(v6.addr())));
        }
    }
    msg
}

impl Netlink {
    /// Adds `addr` (address and prefix) to link `index`; adding one it already has succeeds.
    pub fn add_address(&mut self, index: u32, addr: IpNet) -> Result<()> {
        self.request(
            || format!("add address {addr} to link {index}"),
            RouteNetlinkMessage::NewAddress(message(index, addr)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Removes `addr` from link `index`; `Ok(false)` if it was not there.
    pub fn delete_address(&mut self, index: u32, addr: IpNet) -> Result<bool> {
        match self.request(
            || format!("delete address {addr} from link {index}"),
            RouteNetlinkMessage::DelAddress(message(index, addr)),
            0,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The addresses on link `index`.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>> {
        Ok(self
            .all_addresses()?
            .into_iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, a)| a)
            .collect())
    }

    /// Every address of the namespace, with the index of its link.
    pub fn all_addresses(&mut self) -> Result<Vec<(u32, IpNet)>> {
        let answers = self.request(
            || "list addresses".to_string(),
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for answer in answers {
            let RouteNetlinkMessage::NewAddress(a) = answer else {
                continue;
            };
            let local = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                if let Ok(net) = IpNet::new(ip, a.header.prefix_len) {
                    out.push((a.header.index, net));
                }
            }
        }
        Ok(out)
    }
}
