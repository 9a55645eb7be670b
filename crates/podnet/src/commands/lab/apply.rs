//! `podnet lab apply -f FILE|-`.

use clap::Args;
use podnet_lab::Layout;

#[derive(Args)]
pub struct ApplyArgs {
    /// A YAML file of Kubernetes objects, or - for stdin.
    #[arg(short = 'f', long = "filename")]
    file: String,
}

pub fn run(layout: &Layout, a: ApplyArgs) -> anyhow::Result<u8> {
    let yaml = super::read_input(&a.file)?;
    print_applied(&super::client(layout).apply(&yaml)?)?;
    Ok(0)
}

/// `kind/name created|configured|unchanged`, one line each, as kubectl prints them.
pub fn print_applied(applied: &[podnet_lab::api::AppliedObject]) -> anyhow::Result<()> {
    for o in applied {
        let result = serde_json::to_value(o.result)?;
        println!(
            "{}/{} {}",
            o.reference.kind.name().to_ascii_lowercase(),
            o.reference.name,
            result.as_str().unwrap_or_default()
        );
    }
    Ok(())
}
