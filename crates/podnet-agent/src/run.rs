//! The agent's loop: on every change of the cluster view, and every second to repair
//! drift, decide (pure) and apply only the difference.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use podnet_kernel::netlink::format_mac;

use crate::cni_config;
use crate::dataplane::{Dataplane, DataplaneError};
use crate::health::Health;
use crate::health_checks::HealthChecks;
use crate::hostports;
use crate::plan::{self, Backend, NodeInfo, NODE_IP_ANNOTATION, VTEP_MAC_ANNOTATION};
use crate::ruleset::TableConfig;
use crate::services::{self, ServiceProxy};
use crate::source::Source;
use crate::source::{Dirty, Key, SourceError};

/// The annotation where the agent says which peers it cannot route to, and why.
pub const ROUTING_ANNOTATION: &str = "podnet.io/routing";
/// Every annotation the agent puts on its Node.
pub const ANNOTATIONS: [&str; 3] = [NODE_IP_ANNOTATION, VTEP_MAC_ANNOTATION, ROUTING_ANNOTATION];
/// Where, in the state directory, the sysctls podnet changed keep their original values.
pub const SYSCTL_ORIGINALS: &str = "sysctl-originals";
/// How often the node is checked for drift when nothing changes.
const RESYNC: Duration = Duration::from_secs(1);
/// How often, while waiting for the cluster to change, the agent looks whether someone
/// changed its nftables table (the kernel notifies it): a repair follows within this.
const DRIFT_POLL: Duration = Duration::from_millis(100);
/// With untracked pod traffic, how often conntrack is looked at while endpoints no
/// Service uses wait for their translated flows to end.
const TRANSLATED_CHECK: Duration = Duration::from_secs(2);
/// How often a node that cannot be configured yet is reported again.
const REPORT_EVERY: Duration = Duration::from_secs(30);

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
    /// podnet's own state on the node (`/var/lib/podnet`): the original values of the
    /// sysctls it changed, under [`SYSCTL_ORIGINALS`].
    pub state_dir: PathBuf,
    pub bridge: String,
    pub backend: Backend,
    /// The whole cluster's pod CIDR (traffic leaving it is masqueraded).
    pub cluster_cidr: Ipv4Net,
    /// The Service CIDR: its addresses that no Service has are refused at once.
    pub service_cidr: Option<Ipv4Net>,
    /// The pods' MTU; `None`: the underlay's, minus the encapsulation overhead.
    pub mtu: Option<u32>,
    /// Leave br_netfilter on for bridged pod traffic (for other software on the node
    /// that relies on it); podnet itself does not need it.
    pub bridge_netfilter: bool,
    /// Pod-to-pod flows that no Service translates skip conntrack (`untrackedPodTraffic`).
    pub untracked_pod_traffic: bool,
    /// podnet proxies Services (`serviceProxy`; off where kube-proxy does).
    pub service_proxy: bool,
    /// What the health endpoints report.
    pub health: Arc<Health>,
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
    remove_stale_conflist(config)?;
    let mut sysctls_set = false;
    let mut backoff = Duration::from_millis(100);
    let mut written: Option<String> = None;
    let mut unreachable: BTreeMap<String, String> = BTreeMap::new();
    let mut published_routing = false;
    let health = &config.health;
    let mut readiness = Readiness {
        node: &config.node,
        health,
        reported: None,
    };
    let mut proxy = ServiceProxy::new(&TableConfig {
        cluster_cidr: config.cluster_cidr,
        service_cidr: config.service_cidr,
        vxlan_port: match config.backend {
            Backend::Vxlan { port, .. } => Some(port),
            Backend::HostGw => None,
        },
        underlay: None,
        local_pods: None,
        untracked_pods: false,
        service_proxy: config.service_proxy,
    });
    let mut last_translated_check: Option<Instant> = None;
    let mut synced = false;
    // Changes not yet decided, and UDP flows not yet forgotten (kept across failures).
    let mut pending = Dirty::default();
    let mut stale = Vec::new();
    let mut health_checks = HealthChecks::default();
    let mut serving_checks = BTreeMap::new();
    let hostport_dir = hostports::dir(&config.node_file);
    let mut hostport_errors = Vec::new();
    loop {
        health.tick();
        let changed = match wait(source, &mut dp, RESYNC) {
            Ok(c) => {
                backoff = Duration::from_millis(100);
                c
            }
            Err(e) => {
                if written.is_none() {
                    readiness.not(format!("cluster source: {e}"));
                } else {
                    tracing::warn!(
                        "cluster source: {e}; keeping the dataplane as it is, retrying in {backoff:?}"
                    );
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let dirty = source.take_dirty();
        if changed {
            tracing::debug!(
                all = dirty.all,
                services = dirty.services.len(),
                "the cluster view changed"
            );
        }
        pending.all |= dirty.all;
        pending.services.extend(dirty.services);
        let view = source.view();
        let mine = view.nodes.get(&config.node);
        // This node's own address is what its status says now; peers read what it published.
        let me = mine.and_then(|n| {
            let mut me = NodeInfo::from_node(n)?;
            me.ip = plan::internal_ip(n).unwrap_or(me.ip);
            Some(me)
        });
        let Some(me) = me else {
            readiness.not(match mine {
                None => format!("node {} is not in the cluster (check --node)", config.node),
                Some(_) => format!(
                    "node {} has no IPv4 InternalIP or no pod CIDR (spec.podCIDRs) yet; run kube-controller-manager with --allocate-node-cidrs, or set spec.podCIDR; pods cannot start until then",
                    config.node
                ),
            });
            continue;
        };
        let peers: Vec<NodeInfo> = view
            .nodes
            .values()
            .filter_map(NodeInfo::from_node)
            .collect();
        let node_ips: Vec<_> = peers.iter().map(|p| p.ip).collect();
        // Services: only those whose inputs changed are decided again.
        proxy.set_nodes(&node_ips);
        proxy.set_local_pods(me.pod_cidr);
        let keys: Vec<Key> = if !config.service_proxy {
            Vec::new()
        } else if pending.all {
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
        health.set_services_ignored(proxy.ignored());
        // Pods' hostPorts, as podnet-cni recorded them at ADD.
        let errors = match hostports::read(&hostport_dir) {
            Ok((attachments, mut errors)) => {
                let (want, refused) = hostports::decide(&attachments);
                errors.extend(refused);
                proxy.set_hostports(&want);
                errors
            }
            Err(e) => vec![e.to_string()],
        };
        if errors != hostport_errors {
            for e in &errors {
                tracing::warn!("hostPort: {e}");
            }
            hostport_errors = errors;
        }
        let checks = proxy.health_checks();
        if checks != serving_checks {
            for e in health_checks.sync(checks.clone()) {
                tracing::warn!("{e}");
            }
            serving_checks = checks;
        }
        // What peers need of this node, on its Node object.
        let mut publish = vec![(NODE_IP_ANNOTATION, me.ip.to_string())];
        if matches!(config.backend, Backend::Vxlan { .. }) {
            publish.push((VTEP_MAC_ANNOTATION, format_mac(&plan::vtep_mac(me.ip))));
        }
        let annotations = mine.and_then(|n| n.metadata.annotations.clone());
        for (key, value) in publish {
            if annotations.as_ref().and_then(|a| a.get(key)) != Some(&value) {
                if let Err(e) = source.annotate_node(&config.node, key, &value) {
                    tracing::warn!("publishing {key}: {e}");
                }
            }
        }
        if !sysctls_set {
            match dp.sysctls(
                config.bridge_netfilter,
                &config.state_dir.join(SYSCTL_ORIGINALS),
            ) {
                Ok(warnings) => {
                    for w in &warnings {
                        tracing::warn!("{w}");
                    }
                    health.set_warnings(warnings);
                    sysctls_set = true;
                }
                Err(e) => {
                    readiness.not(e.to_string());
                    continue;
                }
            }
        }
        let underlay = match dp.underlay(me.ip) {
            Ok(u) => u,
            Err(e) => {
                readiness.not(e.to_string());
                continue;
            }
        };
        proxy.set_underlay(&underlay.device);
        let mut desired = plan::plan(&me, &peers, config.backend, &underlay);
        let mtu = plan::with_mtu(&mut desired, config.mtu);
        if let Err(why) = &mtu {
            readiness.not(why.clone());
        }
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
        // Untracked pod traffic starts, and endpoints no Service uses leave its set, only
        // after a look at conntrack made once their translation is out of the kernel.
        let due = last_translated_check.is_none_or(|t| t.elapsed() >= TRANSLATED_CHECK);
        let look = !proxy.untracking() || (proxy.lingering() && synced);
        if config.untracked_pod_traffic && look && due {
            last_translated_check = Some(Instant::now());
            match dp.translated_endpoints() {
                Ok(translated) => proxy.untrack_pods(translated),
                Err(e) => {
                    tracing::warn!("{e}; pod traffic stays tracked until conntrack can be read")
                }
            }
        }
        let sync_started = Instant::now();
        let result = dp.sync(&desired, &underlay).and_then(|mut c| {
            let started = Instant::now();
            let commands = dp.sync_nft(&mut proxy.table, health)?;
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
        synced = result.is_ok();
        health.synced(
            result.is_ok(),
            sync_started.elapsed(),
            proxy.services().count(),
            peers.len().saturating_sub(1),
        );
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
                health.set_ready(Err(format!("applying the dataplane failed: {e}")));
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
            let path = config.cni_dir.join(cni_config::CONFLIST);
            write_atomic(
                &path,
                serde_json::to_string_pretty(&conflist)
                    .unwrap_or_default()
                    .as_bytes(),
            )?;
            tracing::info!(node = %config.node, subnet = %me.pod_cidr, mtu = desired.pod_mtu, "wrote the node's CNI config");
            written = Some(file);
        }
        if mtu.is_ok() {
            readiness.ready();
        }
    }
}

/// After a reboot the conflist (on disk) survives while the node file (on tmpfs) is gone:
/// the kubelet would report the node Ready while every ADD fails. So a conflist without a
/// node file goes at start; the loop writes both again once the node is synced.
fn remove_stale_conflist(config: &AgentConfig) -> Result<(), AgentError> {
    let conflist = config.cni_dir.join(cni_config::CONFLIST);
    if config.node_file.exists() || !conflist.exists() {
        return Ok(());
    }
    match fs::remove_file(&conflist) {
        Ok(()) => {
            tracing::info!(
                "removed {} (its node file {} is gone, as after a reboot); the node is Ready again once synced",
                conflist.display(),
                config.node_file.display()
            );
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AgentError::Write {
            path: conflist.display().to_string(),
            source,
        }),
    }
}

/// Waits up to `timeout` for the cluster view to change (`true`), returning early when
/// podnet's nftables table needs a look.
fn wait(
    source: &mut dyn Source,
    dp: &mut Dataplane,
    timeout: Duration,
) -> Result<bool, SourceError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let changed = source.wait(left.min(DRIFT_POLL))?;
        if changed || left <= DRIFT_POLL || dp.drift_suspected() {
            return Ok(changed);
        }
    }
}

/// Why the node is not ready: in the log (again every [`REPORT_EVERY`], or when the
/// reason changes) and on `/readyz`.
struct Readiness<'a> {
    node: &'a str,
    health: &'a Health,
    reported: Option<(String, Instant)>,
}

impl Readiness<'_> {
    fn not(&mut self, why: String) {
        let again = self
            .reported
            .as_ref()
            .is_none_or(|(last, at)| *last != why || at.elapsed() >= REPORT_EVERY);
        if again {
            tracing::warn!(node = %self.node, "not ready: {why}");
            self.reported = Some((why.clone(), Instant::now()));
        }
        self.health.set_ready(Err(why));
    }

    fn ready(&mut self) {
        if self.reported.take().is_some() {
            tracing::info!(node = %self.node, "ready");
        }
        self.health.set_ready(Ok(()));
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
