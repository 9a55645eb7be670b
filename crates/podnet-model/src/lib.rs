//! podnet's cluster model, pure: no I/O, no clock, no randomness (callers pass them in).
//!
//! - [`objects`]: the Kubernetes kinds the lab accepts, parsed and validated from YAML;
//! - [`selector`]: label selectors;
//! - [`cidr`]: pod CIDRs for nodes;
//! - [`schedule`]: which node runs a pod;
//! - [`deployment`]: the pods a Deployment should have;
//! - [`endpoints`]: the EndpointSlices of a Service.

pub mod cidr;
pub mod deployment;
pub mod endpoints;
pub mod objects;
pub mod schedule;
pub mod selector;

pub use objects::{Kind, Object, ObjectRef};

/// Re-exported so users of the model name the same types.
pub use k8s_openapi;
