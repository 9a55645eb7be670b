//! podnet-cni: the CNI plugin that the container runtime executes for every pod.
//!
//! - [`spec`]: the CNI specification as data (pure);
//! - [`ipam`]: the node's address pool (pure decisions, kept on disk under a lock);
//! - [`plugin`]: the verbs, which apply the decisions through netlink.

pub mod ipam;
pub mod plugin;
pub mod spec;
