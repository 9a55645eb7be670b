//! The protocol spoken over the lab's unix socket: one JSON request per line, answered by
//! one JSON line (`{"ok": ...}` or `{"error": "..."}`); a watch is answered by a stream of
//! event lines, as the Kubernetes API streams watch events.

use podnet_model::{Kind, ObjectRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::layout::LabConfig;
use crate::store::Applied;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// How the lab is and how far building it has got.
    Status,
    /// Create or update the objects of a multi-document YAML text, all or none.
    Apply { yaml: String },
    /// Delete objects (pods are stopped and their network torn down first).
    Delete { refs: Vec<ObjectRef> },
    /// Objects of a kind, optionally of one namespace or one name.
    Get {
        kind: Kind,
        namespace: Option<String>,
        name: Option<String>,
    },
    /// Every object of some kinds, with the resourceVersion to watch from.
    List { kinds: Vec<Kind> },
    /// Events after `resource_version`; the connection then carries [`WatchEvent`]s.
    Watch {
        kinds: Vec<Kind>,
        #[serde(rename = "resourceVersion")]
        resource_version: u64,
    },
    /// Sets one annotation of an object (agents publish what peers need this way).
    Annotate {
        #[serde(rename = "ref")]
        reference: ObjectRef,
        key: String,
        value: String,
    },
    /// Adds a node; answers with its name.
    AddNode,
    /// Drains a node (its pods are deleted) and removes it.
    RemoveNode { node: String },
    /// Stop everything the lab runs, remove its namespaces and exit.
    Shutdown,
}

impl Request {
    /// The request's name on the wire, for messages.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Apply { .. } => "apply",
            Request::Delete { .. } => "delete",
            Request::Get { .. } => "get",
            Request::List { .. } => "list",
            Request::Watch { .. } => "watch",
            Request::Annotate { .. } => "annotate",
            Request::AddNode => "addNode",
            Request::RemoveNode { .. } => "removeNode",
            Request::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabStatus {
    pub config: LabConfig,
    /// `building`, `ready`, or `failed`.
    pub phase: String,
    /// What the supervisor is doing now, or why it failed.
    pub message: String,
    /// Steps done and steps in all, for a progress bar.
    pub done: u64,
    pub total: u64,
    pub supervisor_pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectList {
    pub resource_version: u64,
    pub items: Vec<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppliedObject {
    #[serde(rename = "ref")]
    pub reference: ObjectRef,
    pub result: Applied,
}

/// One line of a watch stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum WatchEvent {
    #[serde(rename = "ADDED")]
    Added { object: Value },
    #[serde(rename = "MODIFIED")]
    Modified { object: Value },
    #[serde(rename = "DELETED")]
    Deleted { object: Value },
    /// Nothing happened up to this version (sent while idle, so both ends notice a dead peer).
    #[serde(rename = "BOOKMARK")]
    Bookmark {
        #[serde(rename = "resourceVersion")]
        resource_version: u64,
    },
    /// The watch cannot continue from where it was (410 Gone): list again.
    #[serde(rename = "ERROR")]
    Gone,
}
