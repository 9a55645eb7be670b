//! `podnet lab supervise`: the supervisor process (started by `up`).

use anyhow::Context;
use clap::Args;
use podnet_lab::layout::LabConfig;
use podnet_lab::Layout;

#[derive(Args)]
pub struct SuperviseArgs {
    /// The lab's configuration, as JSON.
    #[arg(long)]
    config: String,
}

pub fn run(layout: &Layout, a: SuperviseArgs) -> anyhow::Result<u8> {
    let config: LabConfig = serde_json::from_str(&a.config).context("--config")?;
    anyhow::ensure!(
        config.name == layout.name,
        "--config is for lab {:?}",
        config.name
    );
    let exe = std::env::current_exe().context("find the podnet binary")?;
    podnet_lab::supervisor::run(config, exe)?;
    Ok(0)
}
