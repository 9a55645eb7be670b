//! Routes in the main table.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, Result};

/// A unicast route in the main table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Who installed it (`RTPROT_*`); podnet marks its own routes with one number so it
    /// only ever lists, diffs and deletes those.
    pub protocol: u8,
    /// The gateway is reachable on `oif` even though no local address covers it.
    pub onlink: bool,
    /// Link scope for directly connected routes, universe for routes via a gateway.
    pub link_scope: bool,
    /// The source address for traffic the node itself sends along this route.
    pub prefsrc: Option<IpAddr>,
}

/// RTPROT_BOOT: what `ip route add` uses unless told otherwise.
pub const PROTO_BOOT: u8 = 3;

impl Route {
    fn message(&self) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = match self.destination {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        msg.header.destination_prefix_length = self.destination.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::from(self.protocol);
        msg.header.scope = if self.link_scope {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        msg.header.kind = RouteType::Unicast;
        if self.onlink {
            msg.header.flags = RouteFlags::Onlink;
        }
        if self.destination.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    self.destination.network(),
                )));
        }
        if let Some(gw) = self.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(src) = self.prefsrc {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        msg
    }

    fn from_message(msg: &RouteMessage) -> Option<Route> {
        if msg.header.table != RouteHeader::RT_TABLE_MAIN || msg.header.kind != RouteType::Unicast {
            return None;
        }
        let mut dst: Option<IpAddr> = None;
        let mut route = Route {
            destination: IpNet::default(),
            gateway: None,
            oif: None,
            protocol: u8::from(msg.header.protocol),
            onlink: msg.header.flags.contains(RouteFlags::Onlink),
            link_scope: msg.header.scope == RouteScope::Link,
            prefsrc: None,
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = ip_of(a),
                RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::PrefSource(a) => route.prefsrc = ip_of(a),
                _ => {}
            }
        }
        let dst = dst.unwrap_or(match msg.header.address_family {
            AddressFamily::Inet6 => IpAddr::from([0u16; 8]),
            _ => IpAddr::from([0u8; 4]),
        });
        route.destination = IpNet::new(dst, msg.header.destination_prefix_length).ok()?;
        Some(route)
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl Netlink {
    /// Adds `route`, replacing one to the same destination.
    pub fn replace_route(&mut self, route: &Route) -> Result<()> {
        self.request(
            || format!("add route to {}", route.destination),
            RouteNetlinkMessage::NewRoute(route.message()),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Deletes `route`; `Ok(false)` if it was not there.
    pub fn delete_route(&mut self, route: &Route) -> Result<bool> {
        match self.request(
            || format!("delete route to {}", route.destination),
            RouteNetlinkMessage::DelRoute(route.message()),
            0,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The unicast routes of the main table, IPv4 and IPv6.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let answers = self.request(
            || "list routes".to_string(),
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Route::from_message(r),
                _ => None,
            })
            .collect())
    }
}
