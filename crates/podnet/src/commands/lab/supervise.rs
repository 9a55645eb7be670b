//! `podnet lab supervise`: the supervisor process (started by `up`).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use anyhow::Context;
use clap::Args;
use podnet_lab::layout::LabConfig;
use podnet_lab::lock::LabLock;
use podnet_lab::Layout;

#[derive(Args)]
pub struct SuperviseArgs {
    /// The lab's configuration, as JSON.
    #[arg(long)]
    config: String,
    /// The lab's lock, taken by `up` and inherited as this descriptor; without it the
    /// supervisor takes the lock itself.
    #[arg(long)]
    lock_fd: Option<RawFd>,
}

pub fn run(layout: &Layout, a: SuperviseArgs) -> anyhow::Result<u8> {
    let config: LabConfig = serde_json::from_str(&a.config).context("--config")?;
    anyhow::ensure!(
        config.name == layout.name,
        "--config is for lab {:?}",
        config.name
    );
    let lock = match a.lock_fd {
        Some(fd) => {
            // SAFETY: F_GETFD only reads the descriptor's flags; it fails if it is not open.
            let open = unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } >= 0;
            anyhow::ensure!(open, "--lock-fd {fd}: no such open descriptor");
            // SAFETY: it is open, `up` passed it to this process alone, and nothing else
            // here owns it.
            LabLock::adopt(layout, unsafe { OwnedFd::from_raw_fd(fd) })?
        }
        None => LabLock::acquire(layout)?,
    };
    let exe = std::env::current_exe().context("find the podnet binary")?;
    podnet_lab::supervisor::run(config, exe, lock)?;
    Ok(0)
}
