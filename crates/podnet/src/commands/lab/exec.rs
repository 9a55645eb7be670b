//! `podnet lab exec TARGET -- CMD...`: runs a command inside a pod (its network namespace
//! and hostname), on a node, or on the external host. The command replaces this process,
//! so its exit status is ours.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;
use nix::sched::{setns, unshare, CloneFlags};
use podnet_kernel::NetNs;
use podnet_lab::kubelet::pod::NETNS_ANNOTATION;
use podnet_lab::Layout;
use podnet_model::objects::DEFAULT_NAMESPACE;
use podnet_model::{Kind, Object};

#[derive(Args)]
pub struct ExecArgs {
    /// A pod NAME (in -n NAMESPACE), node/NAME, or external.
    target: String,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(layout: &Layout, a: ExecArgs) -> anyhow::Result<u8> {
    let (ns_path, hostname) = if a.target == "external" {
        (format!("/run/netns/{}", layout.external_netns()), None)
    } else if let Some(node) = a.target.strip_prefix("node/") {
        (format!("/run/netns/{}", layout.node_netns(node)), None)
    } else {
        let ns = a.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let pods = super::client(layout).get(Kind::Pod, Some(ns), Some(&a.target))?;
        let Some(Object::Pod(pod)) = pods.into_iter().next() else {
            bail!("pod {ns}/{} not found", a.target);
        };
        let path = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|m| m.get(NETNS_ANNOTATION))
            .cloned()
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "pod {ns}/{} has no network yet (it is {})",
                    a.target,
                    super::get::pod_status(&pod)
                )
            })?;
        (path, Some(a.target.clone()))
    };
    let netns = NetNs::open(&ns_path).with_context(|| format!("{}: open {ns_path}", a.target))?;
    let mut argv = a.command.clone();
    if argv.first().map(String::as_str) == Some("podnet") {
        argv[0] = std::env::current_exe()?.display().to_string();
    }
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("no command given"))?;
    let fd = netns.as_fd().try_clone_to_owned()?;
    let mut cmd = Command::new(prog);
    cmd.args(args);
    // SAFETY: only async-signal-safe syscalls run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)?;
            if let Some(h) = &hostname {
                unshare(CloneFlags::CLONE_NEWUTS)?;
                nix::unistd::sethostname(h.chars().take(63).collect::<String>())?;
            }
            Ok(())
        });
    }
    let err = cmd.exec();
    bail!("run {prog}: {err}")
}
