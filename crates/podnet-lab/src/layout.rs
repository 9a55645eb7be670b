//! Where everything of a lab lives and which addresses it uses. Pure.
//!
//! Every namespace of lab `N` is named `pnlab_N_...`: lab names cannot contain `_`, so no
//! lab's prefix is another's, and `lab down` can find everything of one lab by name alone.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Root of all labs' state.
pub const LABS_DIR: &str = "/run/podnet/labs";
/// The nodes' networks: a switch (bridge) in the fabric namespace, which also routes.
pub const NODE_NET: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 0);
pub const NODE_PREFIX: u8 = 24;
/// The host outside the cluster, behind the fabric's router.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const EXTERNAL_GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
pub const EXTERNAL_PREFIX: u8 = 24;
/// The most nodes a lab may have (on the switch, node addresses run .11 to .210).
pub const MAX_NODES: usize = 200;

/// How a lab was asked to be built; kept in its state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabConfig {
    pub name: String,
    pub nodes: usize,
    pub backend: String,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    /// `l2`: every node on one switch; `routed`: each node in a subnet of its own behind
    /// the fabric's router.
    #[serde(default = "default_underlay")]
    pub underlay: String,
    /// With vxlan: plain routes to peers on the same segment.
    #[serde(default)]
    pub direct_routing: bool,
    /// The agents run with `--untracked-pod-traffic`.
    #[serde(default)]
    pub untracked_pod_traffic: bool,
    /// The agents run with `--bridge-netfilter` (bridged pod traffic passes the IP hooks).
    #[serde(default)]
    pub bridge_netfilter: bool,
}

fn default_underlay() -> String {
    "l2".into()
}

impl LabConfig {
    pub fn routed(&self) -> bool {
        self.underlay == "routed"
    }
}

/// Lab names: 1-20 characters of lower-case letters, digits and '-', starting with a letter.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 20
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "lab name {name:?} is invalid: use 1-20 lower-case letters, digits and '-', starting with a letter"
        ))
    }
}

/// The names and paths of one lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub name: String,
}

impl Layout {
    pub fn new(name: &str) -> Result<Layout, String> {
        check_name(name)?;
        Ok(Layout {
            name: name.to_string(),
        })
    }

    /// Prefix of every network namespace of this lab.
    pub fn netns_prefix(&self) -> String {
        format!("pnlab_{}_", self.name)
    }

    pub fn fabric_netns(&self) -> String {
        format!("{}fabric", self.netns_prefix())
    }

    pub fn external_netns(&self) -> String {
        format!("{}external", self.netns_prefix())
    }

    pub fn node_netns(&self, node: &str) -> String {
        format!("{}{node}", self.netns_prefix())
    }

    /// A pod's namespace, by the first 12 characters of its UID: unique while it lives,
    /// and a recreated pod of the same name never meets its predecessor's namespace.
    pub fn pod_netns(&self, uid: &str) -> String {
        let short: String = uid.chars().filter(|c| *c != '-').take(12).collect();
        format!("{}pod-{short}", self.netns_prefix())
    }

    pub fn dir(&self) -> PathBuf {
        PathBuf::from(LABS_DIR).join(&self.name)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir().join("api.sock")
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir().join("lab.json")
    }

    /// Held (flock) by `lab up` and then by the supervisor: one lab of a name at a time.
    pub fn lock_file(&self) -> PathBuf {
        self.dir().join("lock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir().join("supervisor.pid")
    }

    pub fn supervisor_log(&self) -> PathBuf {
        self.dir().join("supervisor.log")
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir().join("nodes").join(node)
    }

    /// The CNI config directory of a node (`/etc/cni/net.d` on a real node).
    pub fn node_cni_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni")
    }

    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.dir().join("pods").join(format!("{namespace}_{pod}"))
    }
}

/// Node `i` (1-based) is called `node-i`.
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// Node `i`'s address: 172.18.0.(10 + i) on the shared switch, or 172.18.i.11 in a
/// subnet of its own when the underlay is routed.
pub fn node_ip(i: usize, routed: bool) -> Ipv4Addr {
    let o = NODE_NET.octets();
    if routed {
        Ipv4Addr::new(o[0], o[1], i as u8, 11)
    } else {
        Ipv4Addr::new(o[0], o[1], 0, 10 + i as u8)
    }
}

/// Node `i`'s network and its router (in the fabric namespace).
pub fn node_network(i: usize, routed: bool) -> (Ipv4Net, Ipv4Addr) {
    let o = NODE_NET.octets();
    let third = if routed { i as u8 } else { 0 };
    let net = Ipv4Net::new(Ipv4Addr::new(o[0], o[1], third, 0), NODE_PREFIX).unwrap_or_default();
    (net, Ipv4Addr::new(o[0], o[1], third, 1))
}

/// Parses `node-i` back to `i`.
pub fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix("node-")?.parse().ok().filter(|i| *i >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefixes_never_overlap_between_labs() {
        let a = Layout::new("podnet").expect("valid");
        let b = Layout::new("podnet-x").expect("valid");
        assert!(!b.node_netns("node-1").starts_with(&a.netns_prefix()));
        assert_eq!(a.node_netns("node-1"), "pnlab_podnet_node-1");
        assert_eq!(
            a.pod_netns("0f6e1a6c-4c1b-4d7e-9f1a-2b3c4d5e6f70"),
            "pnlab_podnet_pod-0f6e1a6c4c1b"
        );
        assert_eq!(
            a.socket(),
            PathBuf::from("/run/podnet/labs/podnet/api.sock")
        );
    }

    #[test]
    fn bad_names_are_refused() {
        for n in ["", "A", "1lab", "a_b", "a/b", "averyveryverylonglabname"] {
            assert!(check_name(n).is_err(), "{n}");
        }
    }

    #[test]
    fn address_plan() {
        assert_eq!(node_ip(1, false), Ipv4Addr::new(172, 18, 0, 11));
        assert_eq!(node_ip(3, true), Ipv4Addr::new(172, 18, 3, 11));
        assert_eq!(node_network(2, false).1, Ipv4Addr::new(172, 18, 0, 1));
        assert_eq!(node_network(2, true).0.to_string(), "172.18.2.0/24");
        assert_eq!(node_index("node-3"), Some(3));
        assert_eq!(node_index("node-0"), None);
        assert_eq!(node_name(2), "node-2");
    }
}
