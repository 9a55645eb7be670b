//! `podnet lab ...`: one file per verb.

mod apply;
mod check;
mod delete;
mod demo;
mod down;
mod exec;
mod get;
mod list;
mod logs;
mod node;
mod supervise;
mod test;
mod up;
mod wait;

use clap::{Args, Subcommand};
use podnet_lab::{Client, Layout};
use podnet_model::objects::DEFAULT_NAMESPACE;
use podnet_model::{Kind, ObjectRef};

#[derive(Args)]
pub struct LabArgs {
    /// Which lab (several may exist at once).
    #[arg(long, global = true, default_value = "podnet")]
    name: String,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Build a lab and start its supervisor.
    Up(up::UpArgs),
    /// Create or update objects from multi-document YAML.
    Apply(apply::ApplyArgs),
    /// Delete objects.
    Delete(delete::DeleteArgs),
    /// Show objects.
    Get(get::GetArgs),
    /// Run a command in a pod, on a node or on the external host.
    Exec(exec::ExecArgs),
    /// Show a container's output.
    Logs(logs::LogsArgs),
    /// Wait until an object is ready or deleted.
    Wait(wait::WaitArgs),
    /// Add or remove nodes of a running lab.
    #[command(subcommand)]
    Node(node::NodeVerb),
    /// Remove everything the lab made, even after a crash.
    Down,
    /// Show the labs on this machine.
    List,
    /// Check a running lab's network end to end: containers, pods, nodes, Services, egress.
    Test(test::TestArgs),
    /// Build a 3-node lab named demo, deploy an application, show it and test it.
    Demo(demo::DemoArgs),
    /// The supervisor itself (started by `up`).
    #[command(hide = true)]
    Supervise(supervise::SuperviseArgs),
}

pub fn run(args: LabArgs) -> anyhow::Result<u8> {
    let layout = Layout::new(&args.name).map_err(anyhow::Error::msg)?;
    match args.verb {
        Verb::Up(a) => up::run(&layout, a),
        Verb::Apply(a) => apply::run(&layout, a),
        Verb::Delete(a) => delete::run(&layout, a),
        Verb::Get(a) => get::run(&layout, a),
        Verb::Exec(a) => exec::run(&layout, a),
        Verb::Logs(a) => logs::run(&layout, a),
        Verb::Wait(a) => wait::run(&layout, a),
        Verb::Node(v) => node::run(&layout, v),
        Verb::Down => down::run(&layout),
        Verb::List => list::run(),
        Verb::Test(a) => test::run(&layout, a),
        Verb::Demo(a) => demo::run(a),
        Verb::Supervise(a) => supervise::run(&layout, a),
    }
}

fn client(layout: &Layout) -> Client {
    Client::new(layout)
}

/// Parses `KIND/NAME` (as `pod/web-1`, `deployment/web`, `svc/web`).
fn parse_ref(s: &str, namespace: Option<&str>) -> anyhow::Result<ObjectRef> {
    let (k, name) = s.split_once('/').ok_or_else(|| {
        anyhow::anyhow!("{s:?}: expected KIND/NAME, e.g. pod/web-1 or deployment/web")
    })?;
    let kind = Kind::parse(k).ok_or_else(|| anyhow::anyhow!("{s:?}: unknown kind {k:?}"))?;
    if name.is_empty() {
        anyhow::bail!("{s:?}: the name is missing");
    }
    Ok(ObjectRef {
        kind,
        namespace: kind
            .namespaced()
            .then(|| namespace.unwrap_or(DEFAULT_NAMESPACE).to_string()),
        name: name.to_string(),
    })
}

/// Reads a file, or stdin for `-`.
fn read_input(file: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("read stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("read {file}"))
    }
}
