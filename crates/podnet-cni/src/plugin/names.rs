//! Names of the interfaces podnet creates on the node, and the alias it marks them with.

use std::net::Ipv4Addr;

use crate::spec::Attachment;

/// Prefix of every host-side veth podnet creates; GC only ever deletes links with it.
pub const HOST_VETH_PREFIX: &str = "pn";

/// The host end of an attachment's veth pair: `pn` + 12 hex digits of a hash of the
/// container ID and interface name. Derived, not stored, so DEL and GC find it even when
/// the pod's namespace is gone.
pub fn host_veth_name(attachment: &Attachment) -> String {
    // FNV-1a, 64 bits: stable across releases and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in attachment
        .container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(attachment.ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{HOST_VETH_PREFIX}{:012x}", h >> 16)
}

/// Whether `name` has the shape of a name [`host_veth_name`] makes.
pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == HOST_VETH_PREFIX.len() + 12
        && name.starts_with(HOST_VETH_PREFIX)
        && name[HOST_VETH_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Every alias podnet sets starts with this.
const ALIAS_PREFIX: &str = "podnet";

/// The kernel's limit on an alias (IFALIASZ - 1).
const ALIAS_MAX: usize = 255;

/// The alias ADD sets on a host veth as its last step: `podnet <ip> <ifname> <containerID>`
/// (without the container ID if that would not fit). It marks the attachment complete,
/// and lets a rebuild read the address and its owner straight from the node (`ip link`
/// shows it too).
pub fn host_veth_alias(ip: Ipv4Addr, attachment: &Attachment) -> String {
    let full = format!(
        "{ALIAS_PREFIX} {ip} {} {}",
        attachment.ifname, attachment.container_id
    );
    if full.len() <= ALIAS_MAX {
        full
    } else {
        format!("{ALIAS_PREFIX} {ip} {}", attachment.ifname)
    }
}

/// The address and, where it is there, the attachment a [`host_veth_alias`] names.
pub fn parse_host_veth_alias(alias: &str) -> Option<(Ipv4Addr, Option<Attachment>)> {
    let mut words = alias.split(' ');
    if words.next() != Some(ALIAS_PREFIX) {
        return None;
    }
    let ip = words.next()?.parse().ok()?;
    let attachment = match (words.next(), words.next(), words.next()) {
        (Some(ifname), Some(cid), None) if !ifname.is_empty() && !cid.is_empty() => {
            Some(Attachment {
                container_id: cid.to_string(),
                ifname: ifname.to_string(),
            })
        }
        _ => None,
    };
    Some((ip, attachment))
}

/// The address a pod interface's MAC was derived from (the inverse of
/// [`podnet_kernel::netlink::mac_for_ipv4`]), if it has that shape.
pub fn ipv4_of_mac(mac: [u8; 6]) -> Option<Ipv4Addr> {
    match mac {
        [0x0a, 0x58, a, b, c, d] => Some(Ipv4Addr::new(a, b, c, d)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_kernel::netlink::mac_for_ipv4;

    #[test]
    fn aliases_round_trip_and_long_ids_are_left_out() {
        let ip = Ipv4Addr::new(10, 244, 1, 7);
        let a = att(&"c".repeat(64), "eth0");
        let alias = host_veth_alias(ip, &a);
        assert_eq!(alias, format!("podnet 10.244.1.7 eth0 {}", "c".repeat(64)));
        assert_eq!(parse_host_veth_alias(&alias), Some((ip, Some(a))));
        let long = att(&"c".repeat(300), "eth0");
        let alias = host_veth_alias(ip, &long);
        assert_eq!(alias, "podnet 10.244.1.7 eth0");
        assert_eq!(parse_host_veth_alias(&alias), Some((ip, None)));
        for other in [
            "",
            "podnet",
            "podnet x",
            "uplink to rack 3",
            "podnetx 10.0.0.1",
        ] {
            assert_eq!(parse_host_veth_alias(other), None, "{other}");
        }
    }

    #[test]
    fn a_pod_mac_gives_back_its_address() {
        let ip = Ipv4Addr::new(10, 244, 1, 7);
        assert_eq!(ipv4_of_mac(mac_for_ipv4(ip)), Some(ip));
        assert_eq!(ipv4_of_mac([0x02, 0, 0, 0, 0, 1]), None);
    }

    fn att(id: &str, ifname: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: ifname.into(),
        }
    }

    #[test]
    fn names_are_stable_valid_and_distinct() {
        let a = host_veth_name(&att("abc", "eth0"));
        assert_eq!(a, host_veth_name(&att("abc", "eth0")));
        assert!(a.len() <= 15, "{a}");
        assert!(is_host_veth_name(&a), "{a}");
        assert_ne!(a, host_veth_name(&att("abc", "eth1")));
        assert_ne!(a, host_veth_name(&att("abd", "eth0")));
        // The separator keeps ("ab","ceth0") apart from ("abc","eth0").
        assert_ne!(a, host_veth_name(&att("ab", "ceth0")));
    }

    #[test]
    fn only_our_shape_is_recognised() {
        assert!(!is_host_veth_name("podnet0"));
        assert!(!is_host_veth_name("pn12"));
        assert!(!is_host_veth_name("pnABCDEF123456"));
        assert!(!is_host_veth_name("eth0"));
    }
}
