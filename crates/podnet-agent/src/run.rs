//! The agent's loop: on every change of the cluster view, and every second to repair
//! drift, decide (pure) and apply only the difference.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use podnet_kernel::netlink::format_mac;

use crate::cni_config;
use crate::dataplane::{Dataplane, DataplaneError};
use crate::plan::{self, Backend, NodeInfo, VTEP_MAC_ANNOTATION};
use crate::services::{self, ServiceProxy};
use crate::source::Source;
use crate::source::{Dirty, Key};

/// The annotation where the agent says which peers it cannot route to, and why.
pub const ROUTING_ANNOTATION: &str = "podnet.io/routing";
/// How often the node is checked for drift when nothing changes.
const RESYNC: Duration = Duration::from_secs(1);
/// How often podnet's nftables table is checked for existence.
const NFT_CHECK: Duration = Duration::from_secs(5);

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
    pub backend: Backend,
    /// The whole cluster's pod CIDR (traffic leaving it is masqueraded).
    pub cluster_cidr: Ipv4Net,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("write {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("{0}")]
    Dataplane(#[from] DataplaneError),
}

/// Runs until the process is killed. A failing source is retried with backoff; the
/// dataplane is left as it is meanwhile (and when the agent stops), so traffic flows on.
pub fn run(config: &AgentConfig, source: &mut dyn Source) -> Result<(), AgentError> {
    let mut dp = Dataplane::new()?;
    dp.sysctls()?;
    let mut backoff = Duration::from_millis(100);
    let mut written: Option<String> = None;
    let mut last_nft_check = Instant::now();
    let mut unreachable: BTreeMap<String, String> = BTreeMap::new();
    let mut warned_missing = false;
    let mut published_routing = false;
    let mut proxy = ServiceProxy::new(config.cluster_cidr, &config.bridge);
    // Changes not yet decided, and UDP flows not yet forgotten (kept across failures).
    let mut pending = Dirty::default();
    let mut stale = Vec::new();
    loop {
        let changed = match source.wait(RESYNC) {
            Ok(c) => {
                backoff = Duration::from_millis(100);
                c
            }
            Err(e) => {
                tracing::warn!(
                    "cluster source: {e}; keeping the dataplane as it is, retrying in {backoff:?}"
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let dirty = source.take_dirty();
        pending.all |= dirty.all;
        pending.services.extend(dirty.services);
        let view = source.view();
        let Some(me) = view.nodes.get(&config.node).and_then(NodeInfo::from_node) else {
            if !warned_missing {
                tracing::warn!(node = %config.node, "this node has no address or no pod CIDR (spec.podCIDRs) yet; pods cannot start until it has");
                warned_missing = true;
            }
            continue;
        };
        warned_missing = false;
        let peers: Vec<NodeInfo> = view
            .nodes
            .values()
            .filter_map(NodeInfo::from_node)
            .collect();
        let node_ips: Vec<_> = peers.iter().map(|p| p.ip).collect();
        // Services: only those whose inputs changed are decided again.
        proxy.set_nodes(&node_ips);
        let keys: Vec<Key> = if pending.all {
            view.services
                .keys()
                .chain(proxy.services())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            pending.services.iter().cloned().collect()
        };
        pending = Dirty::default();
        for key in keys {
            let c = view
                .services
                .get(&key)
                .map(|svc| services::contribution(svc, &view.slices_of(&key), &config.node));
            stale.extend(proxy.set_service(key, c));
        }
        if matches!(config.backend, Backend::Vxlan { .. }) {
            let mac = format_mac(&plan::vtep_mac(me.ip));
            let published = view
                .nodes
                .get(&config.node)
                .and_then(|n| n.metadata.annotations.as_ref())
                .and_then(|a| a.get(VTEP_MAC_ANNOTATION));
            if published != Some(&mac) {
                if let Err(e) = source.annotate_node(&config.node, VTEP_MAC_ANNOTATION, &mac) {
                    tracing::warn!("publishing the VTEP MAC: {e}");
                }
            }
        }
        let underlay = match dp.underlay(me.ip) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!("{e}");
                continue;
            }
        };
        let desired = plan::plan(&me, &peers, config.backend, &underlay);
        if desired.unreachable != unreachable || !published_routing {
            for why in desired.unreachable.values() {
                tracing::warn!("{why}");
            }
            // Where a user looks: the node object (`lab get nodes -o wide`).
            let summary = if desired.unreachable.is_empty() {
                "ok".to_string()
            } else {
                desired
                    .unreachable
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            published_routing = source
                .annotate_node(&config.node, ROUTING_ANNOTATION, &summary)
                .is_ok();
            unreachable = desired.unreachable.clone();
        }
        let check_nft = last_nft_check.elapsed() >= NFT_CHECK;
        if check_nft {
            last_nft_check = Instant::now();
        }
        let result = dp.sync(&desired, &underlay).and_then(|mut c| {
            let started = Instant::now();
            let commands = dp.sync_nft(&mut proxy.table, check_nft)?;
            if commands > 0 {
                c.push(format!(
                    "nftables: {commands} commands in {:?}",
                    started.elapsed()
                ));
            }
            // Only once the new rules are in, or a flow could be recreated the old way.
            let forgotten = dp.forget_udp(&stale)?;
            stale.clear();
            if forgotten > 0 {
                c.push(format!("forgot {forgotten} stale UDP conntrack entries"));
            }
            Ok(c)
        });
        match result {
            Ok(changes) if changes.is_empty() => {}
            Ok(changes) if changed || written.is_none() => {
                tracing::info!(node = %config.node, "applied: {}", changes.join("; "))
            }
            Ok(changes) => tracing::warn!(
                node = %config.node,
                "repaired what was changed behind podnet's back: {}",
                changes.join("; ")
            ),
            Err(e) => {
                tracing::error!("applying the dataplane failed: {e}; retrying");
                continue;
            }
        }
        let file = serde_json::to_string(&cni_config::node_file(me.pod_cidr, desired.pod_mtu))
            .unwrap_or_default();
        if written.as_deref() != Some(file.as_str()) {
            // The node file first: the conflist's presence tells the kubelet we are ready.
            write_atomic(&config.node_file, file.as_bytes())?;
            let conflist =
                cni_config::conflist(&config.bridge, &config.ipam_dir, &config.node_file);
            let path = config.cni_dir.join("10-podnet.conflist");
            write_atomic(
                &path,
                serde_json::to_string_pretty(&conflist)
                    .unwrap_or_default()
                    .as_bytes(),
            )?;
            tracing::info!(node = %config.node, subnet = %me.pod_cidr, mtu = desired.pod_mtu, "wrote the node's CNI config");
            written = Some(file);
        }
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
