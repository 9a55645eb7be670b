//! `podnet uninstall`: removes podnet from the node it runs on (see
//! `podnet_agent::uninstall`), and its annotations from the node's object.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use ipnet::Ipv4Net;
use podnet_agent::config::FileConfig;
use podnet_agent::run::ANNOTATIONS;
use podnet_agent::source::kubernetes::KubeSource;
use podnet_agent::uninstall::{uninstall, Uninstall};

#[derive(Args)]
pub struct UninstallArgs {
    /// The node's name: its Node object loses podnet's annotations. Without it, the API
    /// server is not asked.
    #[arg(long)]
    node: Option<String>,
    /// A kubeconfig file instead of the in-cluster config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The agent's config file: its clusterCIDR, serviceCIDR and apiServers are used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The cluster's pod CIDR (conntrack entries with its addresses go).
    #[arg(long)]
    cluster_cidr: Option<Ipv4Net>,
    /// The Service CIDR (conntrack entries with its addresses go).
    #[arg(long)]
    service_cidr: Option<Ipv4Net>,
    /// An API server's own address (repeatable), as for the agent.
    #[arg(long = "api-server", value_name = "URL")]
    api_servers: Vec<String>,
    #[arg(long, default_value = "podnet0")]
    bridge: String,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    #[arg(long, default_value = "/run/podnet/node.json")]
    node_file: PathBuf,
    #[arg(long, default_value = "/var/lib/podnet/ipam")]
    ipam_dir: PathBuf,
    #[arg(long, default_value = "/var/lib/podnet")]
    state_dir: PathBuf,
}

pub fn run(args: UninstallArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let cidrs: Vec<Ipv4Net> = [
        args.cluster_cidr.or(file.cluster_cidr),
        args.service_cidr.or(file.service_cidr),
    ]
    .into_iter()
    .flatten()
    .map(|c| c.trunc())
    .collect();
    let report = uninstall(&Uninstall {
        cni_dir: args.cni_conf_dir,
        node_file: args.node_file,
        ipam_dir: args.ipam_dir,
        state_dir: args.state_dir,
        bridge: args.bridge,
        cidrs,
    });
    let mut errors = report.errors;
    if let Some(node) = &args.node {
        let servers = if args.api_servers.is_empty() {
            file.api_servers.unwrap_or_default()
        } else {
            args.api_servers
        };
        match KubeSource::remove_node_annotations(
            args.kubeconfig.as_deref(),
            &servers,
            node,
            &ANNOTATIONS,
        ) {
            Ok(()) => println!("removed: podnet's annotations of node {node}"),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if report.removed.is_empty() {
        println!("nothing of podnet was left on this node");
    }
    for what in &report.removed {
        println!("removed: {what}");
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("not removed: {e}");
        }
        bail!(
            "{} part(s) of podnet could not be removed (above); fix them and run uninstall again",
            errors.len()
        );
    }
    Ok(())
}
