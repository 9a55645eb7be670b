//! `podnet`: the lab, the node agent and the probe workload. This file only wires the
//! command line to the libraries.

mod commands;
mod output;

/// The agent keeps thousands of small objects alive while a watch thread allocates and
/// the main thread frees; mimalloc keeps that from fragmenting into a large RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "podnet",
    version,
    about = "A Kubernetes pod network, and a lab to see it work"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A whole cluster made of network namespaces on this machine.
    Lab(commands::lab::LabArgs),
    /// The per-node agent.
    Agent(commands::agent::AgentArgs),
    /// Copies the CNI plugin into the node's CNI binary directory, atomically.
    InstallCni(commands::install_cni::InstallCniArgs),
    /// Removes podnet from this node: its conflist, nftables table, routes, VXLAN device,
    /// pods' interfaces and bridge, conntrack entries, files, sysctl changes and Node
    /// annotations. Run it on a drained node, after deleting the DaemonSet.
    Uninstall(commands::uninstall::UninstallArgs),
    /// The built-in workload: HTTP/TCP/UDP servers and clients.
    #[command(subcommand)]
    Probe(podnet_probe::ProbeCommand),
}

fn main() -> ExitCode {
    // Behave like other command-line tools when stdout is a closed pipe (`| head`): end
    // quietly instead of panicking on the failed write.
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(
                |_| // kube's client logs every failed request at error level; the agent
                // reports what matters once, with what it does about it.
                tracing_subscriber::EnvFilter::new("info,kube_client=off"),
            ),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(args) => commands::lab::run(args),
        Command::Agent(args) => commands::agent::run(args).map(|()| 0),
        Command::InstallCni(args) => commands::install_cni::run(args).map(|()| 0),
        Command::Uninstall(args) => commands::uninstall::run(args).map(|()| 0),
        Command::Probe(cmd) => podnet_probe::run(cmd).map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
