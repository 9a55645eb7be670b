//! `podnet lab node add` / `podnet lab node remove NAME`.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Subcommand;
use podnet_lab::Layout;
use podnet_model::{Kind, Object};

#[derive(Subcommand)]
pub enum NodeVerb {
    /// Add a node to the running lab and wait until it is ready.
    Add,
    /// Drain a node (its pods are deleted; Deployments recreate them elsewhere) and remove it.
    Remove { node: String },
}

pub fn run(layout: &Layout, verb: NodeVerb) -> anyhow::Result<u8> {
    let client = super::client(layout);
    match verb {
        NodeVerb::Add => {
            let name = client.add_node()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ready = client.get(Kind::Node, None, Some(&name)).ok().and_then(|v| v.into_iter().next()).is_some_and(|o| {
                    matches!(&o, Object::Node(n) if n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
                });
                if ready {
                    println!("node/{name} added");
                    return Ok(0);
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {name} was not ready after 30s; see its agent's log in {}",
                        layout.node_dir(&name).display()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        NodeVerb::Remove { node } => {
            client.remove_node(&node)?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while client.get(Kind::Node, None, Some(&node)).is_ok() {
                if Instant::now() > deadline {
                    bail!("node {node} is still draining after 60s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            println!("node/{node} removed");
            Ok(0)
        }
    }
}
