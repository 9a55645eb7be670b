//! `podnet agent`: the node agent.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ipnet::Ipv4Net;
use podnet_agent::plan::Backend;
use podnet_agent::source::lab::LabSource;
use podnet_agent::AgentConfig;
use podnet_lab::Layout;

#[derive(Args)]
pub struct AgentArgs {
    /// Learn the cluster from this lab's supervisor.
    #[arg(long)]
    lab: String,
    /// The node this agent runs on.
    #[arg(long)]
    node: String,
    /// How this node reaches other nodes' pods.
    #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "host-gw"])]
    backend: String,
    /// The cluster's pod CIDR: traffic from it to anywhere else is masqueraded.
    #[arg(long)]
    cluster_cidr: Ipv4Net,
    /// VXLAN network identifier.
    #[arg(long, default_value_t = 1)]
    vni: u32,
    /// VXLAN UDP port.
    #[arg(long, default_value_t = 4789)]
    vxlan_port: u16,
    /// With vxlan: plain routes to peers on this node's network, the tunnel for the rest.
    #[arg(long)]
    direct_routing: bool,
    /// The node bridge pods attach to.
    #[arg(long, default_value = "podnet0")]
    bridge: String,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let layout = Layout::new(&args.lab).map_err(anyhow::Error::msg)?;
    let dir: PathBuf = layout.node_dir(&args.node);
    let backend = match args.backend.as_str() {
        "host-gw" => Backend::HostGw,
        _ => Backend::Vxlan {
            vni: args.vni,
            port: args.vxlan_port,
            direct_routing: args.direct_routing,
        },
    };
    let config = AgentConfig {
        node: args.node.clone(),
        cni_dir: layout.node_cni_dir(&args.node),
        node_file: dir.join("node.json"),
        ipam_dir: dir.join("ipam"),
        bridge: args.bridge,
        backend,
        cluster_cidr: args.cluster_cidr.trunc(),
    };
    let mut source = LabSource::new(&args.lab).map_err(anyhow::Error::msg)?;
    tracing::info!(lab = %args.lab, node = %args.node, backend = %args.backend, "agent starting");
    podnet_agent::run(&config, &mut source).with_context(|| format!("agent of node {}", args.node))
}
