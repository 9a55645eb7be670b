//! Names of the interfaces podnet creates on the node.

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

#[cfg(test)]
mod tests {
    use super::*;

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
