//! Pod CIDRs for nodes, cut from the cluster's pod CIDR as kube-controller-manager does
//! (`--allocate-node-cidrs`): the first free block of the node size, in order.

use ipnet::Ipv4Net;

/// The per-node block size: /24 (254 pods), as Kubernetes' default.
pub const NODE_PREFIX: u8 = 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("pod CIDR {cluster} holds {capacity} node subnets of /{node_prefix}; {wanted} nodes need a /{needed} or larger")]
    TooSmall {
        cluster: Ipv4Net,
        node_prefix: u8,
        capacity: u64,
        wanted: usize,
        needed: u8,
    },
}

/// How many node blocks `cluster` holds.
pub fn capacity(cluster: Ipv4Net, node_prefix: u8) -> u64 {
    if node_prefix < cluster.prefix_len() {
        return 0;
    }
    1u64 << (node_prefix - cluster.prefix_len())
}

/// The first block of `cluster` not in `used`, or an error naming what would fit.
pub fn next_free(
    cluster: Ipv4Net,
    node_prefix: u8,
    used: &[Ipv4Net],
    nodes_after: usize,
) -> Result<Ipv4Net, CidrError> {
    let too_small = || {
        let bits = (usize::BITS - nodes_after.saturating_sub(1).leading_zeros()) as u8;
        CidrError::TooSmall {
            cluster,
            node_prefix,
            capacity: capacity(cluster, node_prefix),
            wanted: nodes_after,
            needed: node_prefix.saturating_sub(bits),
        }
    };
    let subnets = cluster.subnets(node_prefix).map_err(|_| too_small())?;
    subnets
        .into_iter()
        .find(|s| {
            !used
                .iter()
                .any(|u| u.contains(&s.network()) || s.contains(&u.network()))
        })
        .ok_or_else(too_small)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("net")
    }

    #[test]
    fn allocates_in_order_and_fills_gaps() {
        let c = net("10.244.0.0/16");
        let a = next_free(c, 24, &[], 1).expect("a");
        assert_eq!(a, net("10.244.0.0/24"));
        let b = next_free(c, 24, &[a], 2).expect("b");
        assert_eq!(b, net("10.244.1.0/24"));
        let d = next_free(c, 24, &[b], 2).expect("gap");
        assert_eq!(d, net("10.244.0.0/24"));
    }

    #[test]
    fn a_cidr_too_small_for_the_nodes_says_what_fits() {
        let c = net("10.244.0.0/23");
        let used = [net("10.244.0.0/24"), net("10.244.1.0/24")];
        let err = next_free(c, 24, &used, 3).expect_err("full");
        assert_eq!(
            err.to_string(),
            "pod CIDR 10.244.0.0/23 holds 2 node subnets of /24; 3 nodes need a /22 or larger"
        );
        let err = next_free(net("10.0.0.0/25"), 24, &[], 1).expect_err("smaller than a node block");
        assert!(err.to_string().contains("holds 0 node subnets"), "{err}");
    }
}
