//! The lab: a whole Kubernetes-like cluster on one Linux machine, made of network
//! namespaces, running the real podnet agent and CNI plugin.
//!
//! - [`layout`]: names, paths and the address plan of a lab (pure);
//! - [`store`]: the object store the supervisor serves, with watches (in memory);
//! - [`api`]: the protocol between the CLI, agents and the supervisor;
//! - [`client`] / [`server`]: both ends of it, over a unix socket;
//! - [`fabric`]: builds and removes the lab's namespaces and links;
//! - [`kubelet`]: runs pods: namespace, CNI, processes, readiness;
//! - [`controllers`]: scheduling, Deployments and EndpointSlices;
//! - [`lock`]: one lab of a name at a time, from `lab up` to the supervisor's exit;
//! - [`supervisor`]: the background process that ties them together;
//! - [`teardown`]: removes a lab, also after its supervisor crashed.

pub mod api;
pub mod client;
pub mod controllers;
pub mod fabric;
pub mod kubelet;
pub mod layout;
pub mod lock;
pub mod server;
pub mod store;
pub mod supervisor;
pub mod teardown;

pub use client::Client;
pub use layout::{LabConfig, Layout};
