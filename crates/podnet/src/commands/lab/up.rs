//! `podnet lab up`: takes the lab's lock, starts the supervisor in the background (handing
//! it the lock) and shows its progress; if the lab does not become ready, removes it again.

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ipnet::Ipv4Net;
use podnet_lab::layout::{self, LabConfig};
use podnet_lab::lock::{LabLock, LockError};
use podnet_lab::{teardown, Client, Layout};
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
    let config = config(layout, &a)?;
    // A status answer takes milliseconds; a stopped supervisor must not stall `up`.
    let client = super::client(layout).with_timeout(Duration::from_secs(2));
    let lock = match LabLock::acquire(layout) {
        Ok(lock) => lock,
        // Say how the lab is, if its supervisor can answer (a stopped one cannot).
        Err(e @ LockError::Held { .. }) => match teardown::supervisor_pid(layout)
            .filter(|pid| !teardown::is_stopped(*pid))
            .and_then(|_| client.status().ok())
        {
            Some(st) => bail!(
                "lab {:?} already exists ({} nodes, {}, {}); use it, or remove it with `podnet lab down --name {}`",
                layout.name,
                st.config.nodes,
                st.config.backend,
                st.phase,
                layout.name
            ),
            None => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    if let Some(what) = leftovers(layout)? {
        if lock.created_dir() {
            let _ = fs::remove_dir_all(layout.dir());
        }
        bail!(
            "lab {:?} has leftovers of an earlier run whose supervisor is gone ({what}); remove them with `podnet lab down --name {}`",
            layout.name,
            layout.name
        );
    }
    let t0 = Instant::now();
    let interrupt = interrupt::Guard::install();
    let started = start(layout, &config, &lock, a.timeout, &client);
    drop(interrupt);
    if let Err(e) = started {
        // A failed `up` leaves nothing running: no supervisor, no namespaces, no state.
        let log = log_tail(layout, 12);
        let removed = match teardown::down(layout) {
            Ok(r) => r.summary(),
            Err(r) => format!(
                "removing it failed too: {r}; run `podnet lab down --name {}`",
                layout.name
            ),
        };
        bail!("{e:#}, so it was removed again:\n{removed}{log}");
    }
    // The supervisor holds the lock now; closing our descriptor leaves it held.
    drop(lock);
    println!(
        "lab {} is up: {} nodes ({}, {} underlay), pods {}, services {} ({:.1}s)",
        layout.name,
        config.nodes,
        config.backend,
        config.underlay,
        config.pod_cidr,
        config.service_cidr,
        t0.elapsed().as_secs_f64()
    );
    super::get::print_nodes(&super::client(layout), false)?;
    Ok(0)
}

/// The lab's configuration from the flags, checked.
fn config(layout: &Layout, a: &UpArgs) -> anyhow::Result<LabConfig> {
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
    Ok(LabConfig {
        name: layout.name.clone(),
        nodes: a.nodes,
        backend: a.backend.clone(),
        pod_cidr,
        service_cidr,
        underlay: a.underlay.clone(),
        direct_routing: a.direct_routing,
        untracked_pod_traffic: a.untracked_pod_traffic,
        bridge_netfilter: a.bridge_netfilter,
    })
}

/// What an earlier lab of this name left (its supervisor is gone: we hold the lock).
fn leftovers(layout: &Layout) -> anyhow::Result<Option<String>> {
    let namespaces = podnet_kernel::netns::list_named(&layout.netns_prefix())?;
    if !namespaces.is_empty() {
        return Ok(Some(format!("{} namespaces", namespaces.len())));
    }
    let lock = layout.lock_file();
    let files = fs::read_dir(layout.dir())
        .with_context(|| format!("read {}", layout.dir().display()))?
        .flatten()
        .filter(|e| e.path() != lock)
        .count();
    Ok((files > 0).then(|| format!("files in {}", layout.dir().display())))
}

/// Starts the supervisor, hands it the lock, and shows its progress until the lab is
/// ready.
fn start(
    layout: &Layout,
    config: &LabConfig,
    lock: &LabLock,
    timeout: Duration,
    client: &Client,
) -> anyhow::Result<()> {
    let log = fs::File::create(layout.supervisor_log()).context("create the supervisor log")?;
    let exe = std::env::current_exe().context("find the podnet binary")?;
    let mut cmd = Command::new(&exe);
    cmd.args(["lab", "supervise", "--name", &layout.name])
        .arg("--config")
        .arg(serde_json::to_string(config)?)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let fd = lock.inherit(&mut cmd);
    cmd.arg("--lock-fd").arg(fd.to_string());
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
    // Recorded at once, so that `down` finds the supervisor even before it writes this.
    fs::write(layout.pid_file(), child.id().to_string()).context("write the pid file")?;

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
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bar.abandon();
            bail!("the supervisor of lab {:?} exited ({status})", layout.name);
        }
        if let Ok(st) = client.status() {
            bar.set_length(st.total);
            bar.set_position(st.done);
            bar.set_message(st.message.clone());
            match st.phase.as_str() {
                "ready" => break,
                "failed" => {
                    bar.abandon();
                    bail!("building lab {:?} failed: {}", layout.name, st.message);
                }
                _ => {}
            }
        }
        if interrupt::happened() {
            bar.abandon();
            bail!("`podnet lab up` of lab {:?} was interrupted", layout.name);
        }
        if Instant::now() > deadline {
            bar.abandon();
            bail!(
                "lab {:?} was not ready after {}",
                layout.name,
                humantime::format_duration(timeout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bar.finish_and_clear();
    Ok(())
}

/// The last `n` lines of the supervisor's log, indented, to show before it is removed.
fn log_tail(layout: &Layout, n: usize) -> String {
    let Ok(text) = fs::read_to_string(layout.supervisor_log()) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    format!("\nthe supervisor's log ended with:\n{tail}")
}

/// Ctrl-C (or SIGTERM) while the lab is being built: stop waiting and remove what was
/// made, instead of leaving a half-built lab running.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: nix::libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }

    /// The handlers, installed while it lives; the earlier ones come back on drop.
    pub struct Guard(Vec<(Signal, SigAction)>);

    impl Guard {
        pub fn install() -> Guard {
            INTERRUPTED.store(false, Ordering::SeqCst);
            let action = SigAction::new(
                SigHandler::Handler(on_signal),
                SaFlags::SA_RESTART,
                SigSet::empty(),
            );
            let mut old = Vec::new();
            for sig in [Signal::SIGINT, Signal::SIGTERM] {
                // SAFETY: the handler only stores to an atomic.
                if let Ok(prev) = unsafe { sigaction(sig, &action) } {
                    old.push((sig, prev));
                }
            }
            Guard(old)
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            for (sig, prev) in &self.0 {
                // SAFETY: restores what was there before.
                let _ = unsafe { sigaction(*sig, prev) };
            }
        }
    }

    pub fn happened() -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }
}
