//! Egress masquerade: traffic from pods to anything outside the cluster leaves with the
//! node's address. Traffic between pods, and between pods and nodes, keeps its addresses.
//! Pure: renders podnet's nftables table; [`crate::dataplane`] applies it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// podnet's own table; podnet touches no other.
pub const TABLE: &str = "podnet";

/// The table's structure (chains and rules), which changes only with the cluster CIDR.
pub fn structure(cluster_cidr: Ipv4Net) -> String {
    format!(
        "table inet {TABLE} {{\n\
         \tset nodes {{\n\t\ttype ipv4_addr\n\t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cluster_cidr} ip daddr != {cluster_cidr} ip daddr != @nodes masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// The set elements: every node's address.
pub fn node_addresses<'a>(nodes: impl IntoIterator<Item = &'a Ipv4Addr>) -> BTreeSet<String> {
    nodes.into_iter().map(|ip| ip.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden() {
        assert_eq!(
            structure("10.244.0.0/16".parse().expect("net")),
            "table inet podnet {\n\tset nodes {\n\t\ttype ipv4_addr\n\t}\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != @nodes masquerade\n\t}\n}\n"
        );
        let ips = [Ipv4Addr::new(172, 18, 0, 12), Ipv4Addr::new(172, 18, 0, 11)];
        assert_eq!(
            node_addresses(&ips).into_iter().collect::<Vec<_>>(),
            vec!["172.18.0.11", "172.18.0.12"]
        );
    }
}
