//! Where the agent learns the cluster from. The agent only sees a [`ClusterView`] that a
//! source keeps current; the lab source (the supervisor's watch API) and the Kubernetes
//! source (the API server) fill the same view.

pub mod kubernetes;
pub mod lab;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use podnet_model::k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Service};
use podnet_model::k8s_openapi::api::discovery::v1::EndpointSlice;
use podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::services::SliceInfo;

/// (namespace, name) of a namespaced object.
pub type Key = (String, String);

/// What the agent knows of the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<Key, Service>,
    /// EndpointSlices, as much of them as the proxy reads.
    pub slices: BTreeMap<Key, SliceInfo>,
    /// Slice names by the Service they belong to (their `kubernetes.io/service-name`).
    pub slices_by_service: BTreeMap<Key, BTreeSet<String>>,
    /// Services whose inputs changed since the agent last looked; all of them after a
    /// (re)list.
    pub dirty: Dirty,
}

/// Only what the proxy reads of a Service: at 10,000 Services the rest is most of the
/// agent's memory.
fn slim_service(mut s: Service) -> Service {
    let m = &mut s.metadata;
    *m = ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        ..ObjectMeta::default()
    };
    s.status = None;
    s
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    pub all: bool,
    pub services: BTreeSet<Key>,
}

impl ClusterView {
    /// A Service's own EndpointSlices.
    pub fn slices_of(&self, svc: &Key) -> Vec<&SliceInfo> {
        self.slices_by_service
            .get(svc)
            .into_iter()
            .flatten()
            .filter_map(|name| self.slices.get(&(svc.0.clone(), name.clone())))
            .collect()
    }

    /// Records a Service (or its removal); `true` if that changed what the proxy reads.
    pub fn put_service(&mut self, key: Key, svc: Option<Service>) -> bool {
        let svc = svc.map(slim_service);
        if self.services.get(&key) == svc.as_ref() {
            return false;
        }
        match svc {
            Some(s) => drop(self.services.insert(key.clone(), s)),
            None => drop(self.services.remove(&key)),
        }
        self.dirty.services.insert(key);
        true
    }

    /// Records an EndpointSlice (or its removal), marking the Services it leaves and
    /// joins; `true` if that changed what the proxy reads.
    pub fn put_slice(&mut self, key: Key, slice: Option<EndpointSlice>) -> bool {
        let new = slice.as_ref().and_then(SliceInfo::from_slice);
        if self.slices.get(&key) == new.as_ref() {
            return false;
        }
        if let Some(old) = self.slices.remove(&key) {
            if let Some(names) = self.slices_by_service.get_mut(&old.service) {
                names.remove(&key.1);
            }
            self.dirty.services.insert(old.service);
        }
        if let Some(new) = new {
            self.slices_by_service
                .entry(new.service.clone())
                .or_default()
                .insert(key.1.clone());
            self.dirty.services.insert(new.service.clone());
            self.slices.insert(key, new);
        }
        true
    }

    /// Records a Node; `true` if that changed what the agent reads.
    pub fn put_node(&mut self, node: Node) -> bool {
        let node = slim_node(node);
        let name = node.metadata.name.clone().unwrap_or_default();
        if self.nodes.get(&name) == Some(&node) {
            return false;
        }
        self.nodes.insert(name, node);
        true
    }

    /// Forgets a Node; `true` if it was known.
    pub fn remove_node(&mut self, name: &str) -> bool {
        self.nodes.remove(name).is_some()
    }
}

/// Only what the agent reads of a Node (name, annotations, pod CIDRs, addresses): the
/// rest (images, conditions, capacity) is most of a real Node object and changes every
/// few seconds with its heartbeat.
fn slim_node(n: Node) -> Node {
    let spec = n.spec.map(|s| NodeSpec {
        pod_cidr: s.pod_cidr,
        pod_cidrs: s.pod_cidrs,
        ..NodeSpec::default()
    });
    let status = n.status.map(|s| NodeStatus {
        addresses: s.addresses,
        ..NodeStatus::default()
    });
    Node {
        metadata: ObjectMeta {
            name: n.metadata.name,
            annotations: n.metadata.annotations,
            ..ObjectMeta::default()
        },
        spec,
        status,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// After the first change of a burst, how long a source waits for the rest of it.
const BATCH: Duration = Duration::from_millis(10);

/// Receives a source's messages for up to `timeout`, handing each to `handle`, which
/// says whether it changed the view. After the first change only a short wait for the
/// rest of the burst, and never past the deadline, so a steady stream of events cannot
/// hold the agent's loop up. `None` when the sender is gone.
fn receive<M>(
    rx: &Receiver<M>,
    timeout: Duration,
    mut handle: impl FnMut(M) -> Result<bool, SourceError>,
) -> Result<Option<bool>, SourceError> {
    let deadline = Instant::now() + timeout;
    let mut changed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = if changed { BATCH.min(left) } else { left };
        if wait.is_zero() {
            return Ok(Some(changed));
        }
        match rx.recv_timeout(wait) {
            Ok(m) => changed |= handle(m)?,
            Err(RecvTimeoutError::Timeout) => return Ok(Some(changed)),
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
        }
    }
}

pub trait Source {
    /// Waits up to `timeout` for the view to change; `true` if it did (the first call
    /// returns as soon as the initial list is in). Changes arriving together are
    /// returned together.
    fn wait(&mut self, timeout: Duration) -> Result<bool, SourceError>;

    fn view(&self) -> &ClusterView;

    /// Takes the record of what changed since the last call.
    fn take_dirty(&mut self) -> Dirty;

    /// Publishes something peers need on this node's object (an annotation).
    fn annotate_node(&mut self, node: &str, key: &str, value: &str) -> Result<(), SourceError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn a_steady_stream_of_events_does_not_hold_the_loop_past_its_deadline() {
        let (tx, rx) = channel();
        let sender = std::thread::spawn(move || {
            // An event every 2 ms for half a second: always within BATCH of the last.
            for i in 0..250 {
                if tx.send(i).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let started = Instant::now();
        let mut seen = 0;
        let got = receive(&rx, Duration::from_millis(100), |_| {
            seen += 1;
            Ok(true)
        });
        assert!(matches!(got, Ok(Some(true))), "{got:?}");
        assert!(seen > 0);
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "held for {:?}",
            started.elapsed()
        );
        drop(rx);
        let _ = sender.join();
    }

    #[test]
    fn a_burst_is_taken_whole_and_a_gone_sender_is_said() {
        let (tx, rx) = channel();
        for i in 0..3 {
            tx.send(i).expect("send");
        }
        let mut seen = Vec::new();
        let got = receive(&rx, Duration::from_secs(5), |m| {
            seen.push(m);
            Ok(true)
        });
        assert!(matches!(got, Ok(Some(true))));
        assert_eq!(seen, vec![0, 1, 2]);
        drop(tx);
        assert!(matches!(
            receive(&rx, Duration::from_secs(1), |_: i32| Ok(true)),
            Ok(None)
        ));
    }
}
