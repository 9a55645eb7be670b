//! `podnet lab delete (-f FILE | KIND/NAME) [-n NAMESPACE]`.

use clap::Args;
use podnet_lab::Layout;
use podnet_model::objects::parse_documents;

#[derive(Args)]
pub struct DeleteArgs {
    /// The objects of a YAML file (or - for stdin).
    #[arg(short = 'f', long = "filename", conflicts_with = "target")]
    file: Option<String>,
    /// KIND/NAME, e.g. pod/web-1 or deployment/web.
    #[arg(required_unless_present = "file")]
    target: Option<String>,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

pub fn run(layout: &Layout, a: DeleteArgs) -> anyhow::Result<u8> {
    let refs = match (&a.file, &a.target) {
        (Some(f), _) => parse_documents(&super::read_input(f)?)?
            .iter()
            .map(|o| o.reference())
            .collect(),
        (None, Some(t)) => vec![super::parse_ref(t, a.namespace.as_deref())?],
        (None, None) => anyhow::bail!("give -f FILE or KIND/NAME"),
    };
    for r in super::client(layout).delete(refs)? {
        println!("{}/{} deleted", r.kind.name().to_ascii_lowercase(), r.name);
    }
    Ok(0)
}
