//! `podnet lab up`: starts the supervisor in the background and shows its progress.

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ipnet::Ipv4Net;
use podnet_lab::layout::{self, LabConfig};
use podnet_lab::Layout;
use podnet_model::cidr;

#[derive(Args)]
pub struct UpArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// How nodes reach each other's pods.
    #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "host-gw"])]
    backend: String,
    /// The cluster's pod CIDR; each node gets a /24 of it.
    #[arg(long, default_value = "10.244.0.0/16")]
    pod_cidr: Ipv4Net,
    /// The Services' CIDR.
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cidr: Ipv4Net,
    /// `l2`: all nodes on one switch; `routed`: each node in its own subnet behind a router
    /// (host-gw cannot work there; VXLAN can).
    #[arg(long, default_value = "l2", value_parser = ["l2", "routed"])]
    underlay: String,
    /// With vxlan: plain routes to peers on the same segment, the tunnel for the rest.
    #[arg(long)]
    direct_routing: bool,
    /// The agents let pod-to-pod flows that no Service translates skip conntrack.
    #[arg(long)]
    untracked_pod_traffic: bool,
    /// The nodes keep br_netfilter's hooks on for bridged pod traffic (bridge-nf-call-*
    /// at 1, as on kubeadm and Docker hosts) and the agents run with --bridge-netfilter.
    #[arg(long)]
    bridge_netfilter: bool,
    /// How long to wait for the lab to be ready.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub fn run(layout: &Layout, a: UpArgs) -> anyhow::Result<u8> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network namespaces: run as root");
    }
    let client = super::client(layout);
    if let Ok(st) = client.status() {
        bail!(
            "lab {:?} already exists ({} nodes, {}, {}); use it, or remove it with `podnet lab down --name {}`",
            layout.name,
            st.config.nodes,
            st.config.backend,
            st.phase,
            layout.name
        );
    }
    if layout.dir().exists()
        || !podnet_kernel::netns::list_named(&layout.netns_prefix())?.is_empty()
    {
        bail!(
            "lab {:?} has leftovers of an earlier run whose supervisor is gone; remove them with `podnet lab down --name {}`",
            layout.name,
            layout.name
        );
    }
    if a.nodes == 0 || a.nodes > layout::MAX_NODES {
        bail!(
            "--nodes {} is out of range (1-{})",
            a.nodes,
            layout::MAX_NODES
        );
    }
    let pod_cidr = a.pod_cidr.trunc();
    let service_cidr = a.service_cidr.trunc();
    if pod_cidr.contains(&service_cidr.network()) || service_cidr.contains(&pod_cidr.network()) {
        bail!("--pod-cidr {pod_cidr} and --service-cidr {service_cidr} overlap");
    }
    let node_net: Ipv4Net = if a.underlay == "routed" {
        Ipv4Net::new(layout::NODE_NET, 16)?
    } else {
        Ipv4Net::new(layout::NODE_NET, layout::NODE_PREFIX)?
    };
    for (flag, c) in [("--pod-cidr", pod_cidr), ("--service-cidr", service_cidr)] {
        if c.contains(&node_net.network()) || node_net.contains(&c.network()) {
            bail!("{flag} {c} overlaps the lab's node network {node_net}");
        }
    }
    let mut used = Vec::new();
    for i in 0..a.nodes {
        used.push(
            cidr::next_free(pod_cidr, cidr::NODE_PREFIX, &used, i + 1)
                .map_err(|e| anyhow::anyhow!("--pod-cidr: {e}"))?,
        );
    }
    let config = LabConfig {
        name: layout.name.clone(),
        nodes: a.nodes,
        backend: a.backend.clone(),
        pod_cidr,
        service_cidr,
        underlay: a.underlay.clone(),
        direct_routing: a.direct_routing,
        untracked_pod_traffic: a.untracked_pod_traffic,
        bridge_netfilter: a.bridge_netfilter,
    };

    fs::create_dir_all(layout.dir())
        .with_context(|| format!("create {}", layout.dir().display()))?;
    let log = fs::File::create(layout.supervisor_log()).context("create the supervisor log")?;
    let exe = std::env::current_exe().context("find the podnet binary")?;
    let mut cmd = Command::new(&exe);
    cmd.args(["lab", "supervise", "--name", &layout.name])
        .arg("--config")
        .arg(serde_json::to_string(&config)?)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session: the supervisor outlives this command and the user's shell.
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().context("start the lab supervisor")?;

    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} lab {prefix}: [{bar:24}] {pos}/{len} {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(layout.name.clone());
    bar.enable_steady_tick(Duration::from_millis(100));
    let deadline = Instant::now() + a.timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bar.abandon();
            bail!(
                "the supervisor exited ({status}); see {} and run `podnet lab down --name {}`",
                layout.supervisor_log().display(),
                layout.name
            );
        }
        if let Ok(st) = client.status() {
            bar.set_length(st.total);
            bar.set_position(st.done);
            bar.set_message(st.message.clone());
            match st.phase.as_str() {
                "ready" => break,
                "failed" => {
                    bar.abandon();
                    bail!(
                        "building lab {:?} failed: {}; remove what was made with `podnet lab down --name {}`",
                        layout.name,
                        st.message,
                        layout.name
                    );
                }
                _ => {}
            }
        }
        if Instant::now() > deadline {
            bar.abandon();
            bail!(
                "lab {:?} was not ready after {}; see {} (`podnet lab down --name {}` removes it)",
                layout.name,
                humantime::format_duration(a.timeout),
                layout.supervisor_log().display(),
                layout.name
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bar.finish_and_clear();
    println!(
        "lab {} is up: {} nodes ({}, {} underlay), pods {}, services {} ({:.1}s)",
        layout.name,
        a.nodes,
        a.backend,
        a.underlay,
        pod_cidr,
        service_cidr,
        bar.elapsed().as_secs_f64()
    );
    super::get::print_nodes(&super::client(layout), false)?;
    Ok(0)
}
