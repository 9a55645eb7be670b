//! The podnet agent, one per node. It learns the cluster from a [`source::Source`] (the
//! lab's supervisor now; the Kubernetes API later, behind the same seam), decides what the
//! node needs with pure functions, and applies it.
//!
//! It routes to every other node's pod CIDR (host-gw or VXLAN, see [`plan`]), masquerades
//! traffic leaving the cluster, proxies Services ([`services`], [`ruleset`]), repairs drift, and writes the node's CNI
//! configuration: the node file `podnet-cni` reads its subnet and MTU from, then the
//! conflist whose presence tells the kubelet the node's network is ready.

pub mod cni_config;
pub mod config;
pub mod dataplane;
pub mod drift;
pub mod health;
pub mod health_checks;
pub mod hostports;
pub mod plan;
pub mod ruleset;
pub mod run;
pub mod services;
pub mod source;
pub mod uninstall;

pub use run::{run, AgentConfig};
