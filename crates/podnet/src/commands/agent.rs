//! `podnet agent`: the node agent.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
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
    /// The node bridge pods attach to.
    #[arg(long, default_value = "podnet0")]
    bridge: String,
    /// The pods' MTU.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let layout = Layout::new(&args.lab).map_err(anyhow::Error::msg)?;
    let dir: PathBuf = layout.node_dir(&args.node);
    let config = AgentConfig {
        node: args.node.clone(),
        cni_dir: layout.node_cni_dir(&args.node),
        node_file: dir.join("node.json"),
        ipam_dir: dir.join("ipam"),
        bridge: args.bridge,
        mtu: args.mtu,
    };
    let mut source = LabSource::new(&args.lab).map_err(anyhow::Error::msg)?;
    tracing::info!(lab = %args.lab, node = %args.node, "agent starting");
    podnet_agent::run(&config, &mut source).with_context(|| format!("agent of node {}", args.node))
}
