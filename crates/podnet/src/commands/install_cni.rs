//! `podnet install-cni`: copies the CNI plugin into the node's CNI binary directory,
//! atomically (a temporary file in the same directory, synced, then renamed over the old
//! one), so a kubelet running the plugin meanwhile runs either the old or the new binary,
//! never half of one. The DaemonSet's init container runs it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

/// The plugin's file name: the `type` in the conflist.
const PLUGIN: &str = "podnet-cni";

#[derive(Args)]
pub struct InstallCniArgs {
    /// The plugin to install (default: podnet-cni next to this podnet executable).
    #[arg(long)]
    from: Option<PathBuf>,
    /// The CNI binary directory the container runtime reads.
    #[arg(long, default_value = "/opt/cni/bin")]
    to: PathBuf,
}

pub fn run(args: InstallCniArgs) -> anyhow::Result<()> {
    let from = match args.from {
        Some(p) => p,
        None => std::env::current_exe()
            .context("finding the podnet executable")?
            .with_file_name(PLUGIN),
    };
    let installed = install(&from, &args.to)?;
    println!(
        "installed {} (from {})",
        installed.display(),
        from.display()
    );
    Ok(())
}

fn install(from: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let bytes = fs::read(from).with_context(|| {
        format!(
            "reading the plugin {}; pass --from with the podnet-cni binary",
            from.display()
        )
    })?;
    if bytes.get(..4) != Some(b"\x7fELF") {
        bail!(
            "{} is not an executable (no ELF header); pass --from with the podnet-cni binary",
            from.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = dir.join(PLUGIN);
    let tmp = dir.join(format!(".{PLUGIN}.tmp-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        // The mode given at creation is masked by the umask; the plugin must be 0755.
        f.set_permissions(fs::Permissions::from_mode(0o755))?;
        f.sync_all()?;
        fs::rename(&tmp, &target)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("installing {}", target.display()));
    }
    Ok(target)
}
