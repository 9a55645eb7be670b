//! Where the agent learns the cluster from. The agent only sees a [`ClusterView`] that a
//! source keeps current; the lab source (the supervisor's watch API) and the Kubernetes
//! source (the API server) fill the same view.

pub mod lab;

use std::collections::BTreeMap;
use std::time::Duration;

use podnet_model::k8s_openapi::api::core::v1::{Node, Service};
use podnet_model::k8s_openapi::api::discovery::v1::EndpointSlice;

/// What the agent knows of the cluster. Namespaced objects are keyed by (namespace, name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<(String, String), Service>,
    pub slices: BTreeMap<(String, String), EndpointSlice>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

pub trait Source {
    /// Waits up to `timeout` for the view to change; `true` if it did (the first call
    /// returns as soon as the initial list is in). Changes arriving together are
    /// returned together.
    fn wait(&mut self, timeout: Duration) -> Result<bool, SourceError>;

    fn view(&self) -> &ClusterView;

    /// Publishes something peers need on this node's object (an annotation).
    fn annotate_node(&mut self, node: &str, key: &str, value: &str) -> Result<(), SourceError>;
}
