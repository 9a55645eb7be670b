//! Where the agent learns the cluster from. The agent only sees a [`ClusterView`] that a
//! source keeps current; the lab source (the supervisor's watch API) and the Kubernetes
//! source (the API server) fill the same view.

pub mod lab;

use std::collections::BTreeMap;

use podnet_model::k8s_openapi::api::core::v1::Node;

/// What the agent knows of the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    pub nodes: BTreeMap<String, Node>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

pub trait Source {
    /// Blocks until the view has changed since the last call (the first call returns as
    /// soon as the initial list is in), then returns it. Changes that arrive together
    /// are returned together.
    fn changed(&mut self) -> Result<&ClusterView, SourceError>;
}
