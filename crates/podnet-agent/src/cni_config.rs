//! What the agent writes for the CNI plugin, decided from the node object. Pure.

use std::path::Path;

use ipnet::Ipv4Net;
use podnet_cni::spec::NodeConfig;
use podnet_model::k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};

/// The conflist's file name in the CNI config directory.
pub const CONFLIST: &str = "10-podnet.conflist";

/// The network name in the conflist (and so the IPAM directory name).
pub const NETWORK: &str = "podnet";

/// The node's pod CIDR: `spec.podCIDRs[0]`, else `spec.podCIDR`; IPv4 only for now.
pub fn pod_cidr(node: &Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|c| c.parse::<Ipv4Net>().ok())
}

/// The node file: subnet and pod MTU.
pub fn node_file(subnet: Ipv4Net, mtu: u32) -> NodeConfig {
    NodeConfig {
        subnet: Some(subnet.to_string()),
        mtu: Some(mtu),
    }
}

/// The CNI version of the conflist. 1.0.0, not 1.1.0: libcni before 1.2 (containerd
/// 1.7.x, and Debian's golang-github-appc-cni-dev) refuses a 1.1.0 result with
/// `unsupported CNI result version "1.1.0"`, so a node would go Ready and then fail every
/// sandbox. 1.1.0 would only add STATUS and GC, which podnet-cni still answers when a
/// runtime asks with a 1.1.0 config.
pub const CNI_VERSION: &str = "1.0.0";

/// The conflist: podnet-cni alone, reading subnet and MTU from the node file, and taking
/// the pods' hostPorts (the `portMappings` capability).
pub fn conflist(bridge: &str, ipam_dir: &Path, node_file: &Path) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK,
        "plugins": [{
            "type": "podnet-cni",
            "bridge": bridge,
            "dataDir": ipam_dir,
            "nodeConfig": node_file,
            // The runtime passes pods' hostPorts as runtimeConfig.portMappings.
            "capabilities": {"portMappings": true},
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_model::k8s_openapi::api::core::v1::NodeSpec;

    #[test]
    fn pod_cidr_prefers_the_list() {
        let mut n = Node::default();
        assert_eq!(pod_cidr(&n), None);
        n.spec = Some(NodeSpec {
            pod_cidr: Some("10.244.9.0/24".into()),
            pod_cidrs: Some(vec!["fd00::/64".into(), "10.244.1.0/24".into()]),
            ..NodeSpec::default()
        });
        assert_eq!(
            pod_cidr(&n).map(|c| c.to_string()).as_deref(),
            Some("10.244.1.0/24")
        );
    }

    #[test]
    fn conflist_golden() {
        let c = conflist(
            "podnet0",
            Path::new("/var/lib/podnet/ipam"),
            Path::new("/run/podnet/node.json"),
        );
        assert_eq!(
            c,
            json!({"cniVersion": "1.0.0", "name": "podnet", "plugins": [{"type": "podnet-cni", "bridge": "podnet0",
                   "dataDir": "/var/lib/podnet/ipam", "nodeConfig": "/run/podnet/node.json",
                   "capabilities": {"portMappings": true}}]})
        );
        let f = serde_json::to_value(node_file("10.244.1.0/24".parse().expect("net"), 1450))
            .expect("json");
        assert_eq!(f, json!({"subnet": "10.244.1.0/24", "mtu": 1450}));
    }
}
