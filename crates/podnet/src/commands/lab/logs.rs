//! `podnet lab logs POD [-c CONTAINER]`.

use anyhow::{bail, Context};
use clap::Args;
use podnet_lab::Layout;
use podnet_model::objects::DEFAULT_NAMESPACE;
use podnet_model::{Kind, Object};

#[derive(Args)]
pub struct LogsArgs {
    pod: String,
    #[arg(short = 'c', long)]
    container: Option<String>,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

pub fn run(layout: &Layout, a: LogsArgs) -> anyhow::Result<u8> {
    let ns = a.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let pods = super::client(layout).get(Kind::Pod, Some(ns), Some(&a.pod))?;
    let Some(Object::Pod(pod)) = pods.into_iter().next() else {
        bail!("pod {ns}/{} not found", a.pod);
    };
    let names: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
        .collect();
    let container = match (&a.container, names.as_slice()) {
        (Some(c), _) if names.contains(c) => c.clone(),
        (Some(c), _) => bail!(
            "pod {ns}/{} has no container {c:?}; it has {}",
            a.pod,
            names.join(", ")
        ),
        (None, [one]) => one.clone(),
        (None, _) => bail!(
            "pod {ns}/{} has several containers; choose one with -c: {}",
            a.pod,
            names.join(", ")
        ),
    };
    let path = layout.pod_dir(ns, &a.pod).join(format!("{container}.log"));
    match std::fs::read(&path) {
        Ok(bytes) => {
            std::io::Write::write_all(&mut std::io::stdout(), &bytes).context("write to stdout")?;
            Ok(0)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}
