//! `podnet agent`: the node agent, on the lab's supervisor or on a Kubernetes API server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use ipnet::Ipv4Net;
use podnet_agent::config::{BackendName, FileConfig};
use podnet_agent::health::{self, Health};
use podnet_agent::plan::Backend;
use podnet_agent::source::kubernetes::KubeSource;
use podnet_agent::source::lab::LabSource;
use podnet_agent::source::Source;
use podnet_agent::AgentConfig;
use podnet_lab::Layout;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SourceKind {
    /// A lab's supervisor (`--lab NAME`).
    Lab,
    /// The Kubernetes API server (in-cluster config, or `--kubeconfig`).
    Kubernetes,
}

#[derive(Args)]
pub struct AgentArgs {
    /// Where the agent learns the cluster from.
    #[arg(long, value_enum, default_value = "lab")]
    source: SourceKind,
    /// With `--source lab`: the lab whose supervisor to follow.
    #[arg(long, required_if_eq("source", "lab"))]
    lab: Option<String>,
    /// With `--source kubernetes`: a kubeconfig file instead of the in-cluster config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node this agent runs on (its Node object's name).
    #[arg(long)]
    node: String,
    /// A config file (YAML) with the keys backend, clusterCIDR, serviceCIDR, mtu, vni,
    /// vxlanPort, directRouting, untrackedPodTraffic, apiServers, serviceProxy; flags
    /// given here win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// How this node reaches other nodes' pods: vxlan (default) or host-gw.
    #[arg(long)]
    backend: Option<BackendName>,
    /// The cluster's pod CIDR: traffic from it to anywhere else is masqueraded.
    #[arg(long)]
    cluster_cidr: Option<Ipv4Net>,
    /// The Service CIDR: its addresses that no Service has are refused at once.
    #[arg(long)]
    service_cidr: Option<Ipv4Net>,
    /// Pod MTU (default: the underlay's, minus 50 with vxlan).
    #[arg(long)]
    mtu: Option<u32>,
    /// VXLAN network identifier (default 1).
    #[arg(long)]
    vni: Option<u32>,
    /// VXLAN UDP port (default 4789).
    #[arg(long)]
    vxlan_port: Option<u16>,
    /// With vxlan: plain routes to peers on this node's network, the tunnel for the rest.
    #[arg(long)]
    direct_routing: bool,
    /// Pod-to-pod flows that no Service translates skip conntrack: faster across nodes,
    /// but a host firewall must then accept pod traffic without `ct state` (see
    /// docs/architecture.md).
    #[arg(long)]
    untracked_pod_traffic: bool,
    /// Keep bridged pod-to-pod frames going through the IP netfilter hooks (br_netfilter's
    /// bridge-nf-call-* sysctls at 1), for other software on the node that relies on
    /// them; podnet does not, and turns them off by default (faster same-node traffic).
    #[arg(long)]
    bridge_netfilter: bool,
    /// With `--source kubernetes`: an API server's own address (https://HOST:PORT),
    /// replacing the in-cluster one; repeat it for several, tried in turn. Needed where
    /// kube-proxy is removed: the `kubernetes` Service's ClusterIP answers only once podnet
    /// proxies Services.
    #[arg(long = "api-server", value_name = "URL")]
    api_servers: Vec<String>,
    /// Leave Services to kube-proxy: no Service rules, no Service or EndpointSlice watches.
    #[arg(long)]
    no_service_proxy: bool,
    /// The node bridge pods attach to.
    #[arg(long, default_value = "podnet0")]
    bridge: String,
    /// Where /healthz, /readyz and /metrics are served ("off" for nowhere).
    #[arg(long, default_value = "127.0.0.1:9099")]
    health_addr: String,
    /// The Service proxy's health for load balancers, as kube-proxy's (`/healthz`, 200
    /// once the rules are synced); "off" for nowhere. Not served with --no-service-proxy.
    #[arg(long, default_value = "0.0.0.0:10256")]
    proxy_health_addr: String,
    /// Also serve /metrics (and the health endpoints) here, for Prometheus: an address
    /// other nodes reach, e.g. the node's own with port 9098. Off by default.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// With `--source kubernetes`: the CNI config directory.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// With `--source kubernetes`: the node file podnet-cni reads.
    #[arg(long, default_value = "/run/podnet/node.json")]
    node_file: PathBuf,
    /// With `--source kubernetes`: podnet-cni's address pool directory.
    #[arg(long, default_value = "/var/lib/podnet/ipam")]
    ipam_dir: PathBuf,
    /// With `--source kubernetes`: podnet's own state on the node (the original values
    /// of the sysctls it changes, for `podnet uninstall`).
    #[arg(long, default_value = "/var/lib/podnet")]
    state_dir: PathBuf,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    exit_on_termination()?;
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let c = file.overridden_by(FileConfig {
        backend: args.backend,
        cluster_cidr: args.cluster_cidr,
        service_cidr: args.service_cidr,
        mtu: args.mtu,
        vni: args.vni,
        vxlan_port: args.vxlan_port,
        direct_routing: args.direct_routing.then_some(true),
        untracked_pod_traffic: args.untracked_pod_traffic.then_some(true),
        api_servers: (!args.api_servers.is_empty()).then_some(args.api_servers),
        service_proxy: args.no_service_proxy.then_some(false),
    });
    let service_proxy = c.service_proxy.unwrap_or(true);
    let Some(cluster_cidr) = c.cluster_cidr else {
        bail!("no cluster CIDR: pass --cluster-cidr or set clusterCIDR in the --config file (the controller-manager's --cluster-cidr)");
    };
    let backend = match c.backend.unwrap_or(BackendName::Vxlan) {
        BackendName::HostGw => Backend::HostGw,
        BackendName::Vxlan => Backend::Vxlan {
            vni: c.vni.unwrap_or(1),
            port: c.vxlan_port.unwrap_or(4789),
            direct_routing: c.direct_routing.unwrap_or(false),
        },
    };
    let health = Arc::new(Health::default());
    if args.health_addr != "off" {
        let addr: SocketAddr = args.health_addr.parse().with_context(|| {
            format!(
                "--health-addr {}: not an address:port (or \"off\")",
                args.health_addr
            )
        })?;
        let bound = health::serve(addr, health.clone()).with_context(|| {
            format!("serving health on {addr}; pick another --health-addr, or \"off\"")
        })?;
        tracing::info!("health on http://{bound} (/healthz, /readyz, /metrics)");
    }
    if service_proxy && args.proxy_health_addr != "off" {
        let addr: SocketAddr = args.proxy_health_addr.parse().with_context(|| {
            format!(
                "--proxy-health-addr {}: not an address:port (or \"off\")",
                args.proxy_health_addr
            )
        })?;
        let bound = health::serve_proxy(addr, health.clone()).with_context(|| {
            format!("serving the proxy's health on {addr}; pick another --proxy-health-addr, or \"off\"")
        })?;
        tracing::info!("proxy health on http://{bound}/healthz");
    }
    if let Some(addr) = args.metrics_addr {
        let bound = health::serve(addr, health.clone())
            .with_context(|| format!("serving metrics on {addr}; pick another --metrics-addr"))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    // The source, and where the node's files go: the lab keeps them in its node
    // directory; on Kubernetes they go where the flags say.
    let (mut source, cni_dir, node_file, ipam_dir, state_dir): (Box<dyn Source>, _, _, _, _) =
        match args.source {
            SourceKind::Lab => {
                let lab = args.lab.as_deref().unwrap_or_default();
                let layout = Layout::new(lab).map_err(anyhow::Error::msg)?;
                let dir = layout.node_dir(&args.node);
                tracing::info!(lab, node = %args.node, "agent starting");
                (
                    Box::new(LabSource::new(lab).map_err(anyhow::Error::msg)?),
                    layout.node_cni_dir(&args.node),
                    dir.join("node.json"),
                    dir.join("ipam"),
                    dir,
                )
            }
            SourceKind::Kubernetes => {
                tracing::info!(node = %args.node, "agent starting on the Kubernetes API");
                (
                    Box::new(
                        KubeSource::connect(
                            args.kubeconfig.as_deref(),
                            c.api_servers.as_deref().unwrap_or_default(),
                            service_proxy,
                        )
                        .map_err(anyhow::Error::msg)?,
                    ),
                    args.cni_conf_dir,
                    args.node_file,
                    args.ipam_dir,
                    args.state_dir,
                )
            }
        };
    let config = AgentConfig {
        node: args.node.clone(),
        cni_dir,
        node_file,
        ipam_dir,
        state_dir,
        bridge: args.bridge,
        backend,
        cluster_cidr: cluster_cidr.trunc(),
        service_cidr: c.service_cidr.map(|n| n.trunc()),
        mtu: c.mtu,
        bridge_netfilter: args.bridge_netfilter,
        untracked_pod_traffic: c.untracked_pod_traffic.unwrap_or(false),
        service_proxy,
        health,
    };
    podnet_agent::run(&config, source.as_mut())
        .with_context(|| format!("agent of node {}", args.node))
}

/// SIGTERM (the kubelet stopping the pod; PID 1 in a container has no default action for
/// it) and SIGINT end the agent at once, with the dataplane left in place: routes, the
/// VXLAN device and the nftables table stay in the kernel and traffic keeps flowing until
/// the next agent takes over. Nothing needs finishing first: files are replaced by rename
/// and each nftables transaction is atomic. The signals are blocked before any thread
/// starts (threads inherit the mask), so only the waiting thread receives them.
fn exit_on_termination() -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .context("blocking SIGTERM and SIGINT for the signal thread")?;
    std::thread::Builder::new()
        .name("podnet-signals".into())
        .spawn(move || {
            let signal = set.wait();
            let name = signal.map(|s| s.as_str()).unwrap_or("a signal");
            tracing::info!("{name}: exiting; the dataplane stays in place");
            std::process::exit(0);
        })
        .context("starting the signal thread")?;
    Ok(())
}
