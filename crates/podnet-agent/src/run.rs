//! The agent's loop: on every change of the cluster view, decide and apply.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cni_config;
use crate::source::Source;

/// Where the agent writes and what it configures.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    /// The CNI config directory (`/etc/cni/net.d`).
    pub cni_dir: PathBuf,
    /// The node file podnet-cni reads (`/run/podnet/node.json`).
    pub node_file: PathBuf,
    /// IPAM state (`/var/lib/podnet/ipam`).
    pub ipam_dir: PathBuf,
    pub bridge: String,
    /// The pods' MTU.
    pub mtu: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("write {path}: {source}")]
    Write { path: String, source: io::Error },
}

/// Runs until the process is killed; a failing source is retried with backoff.
pub fn run(config: &AgentConfig, source: &mut dyn Source) -> Result<(), AgentError> {
    let mut backoff = Duration::from_millis(100);
    let mut written: Option<String> = None;
    loop {
        let view = match source.changed() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("source: {e}; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let Some(node) = view.nodes.get(&config.node) else {
            tracing::warn!(node = %config.node, "this node is not in the cluster (yet)");
            continue;
        };
        let Some(subnet) = cni_config::pod_cidr(node) else {
            tracing::warn!(node = %config.node, "the node has no pod CIDR yet (spec.podCIDRs); pods cannot start until it has one");
            continue;
        };
        let file =
            serde_json::to_string(&cni_config::node_file(subnet, config.mtu)).unwrap_or_default();
        if written.as_deref() == Some(file.as_str()) {
            continue;
        }
        // The node file first: the conflist's presence tells the kubelet we are ready.
        write_atomic(&config.node_file, file.as_bytes())?;
        let conflist = cni_config::conflist(&config.bridge, &config.ipam_dir, &config.node_file);
        let path = config.cni_dir.join("10-podnet.conflist");
        write_atomic(
            &path,
            serde_json::to_string_pretty(&conflist)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        tracing::info!(node = %config.node, %subnet, mtu = config.mtu, "wrote the node's CNI config");
        written = Some(file);
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    let err = |source| AgentError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}
