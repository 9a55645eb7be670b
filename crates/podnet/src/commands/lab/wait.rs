//! `podnet lab wait --for ready|deleted KIND/NAME [--timeout 30s]`.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, ValueEnum};
use podnet_lab::Layout;
use podnet_model::endpoints::pod_is_ready;
use podnet_model::Object;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Condition {
    Ready,
    Deleted,
}

#[derive(Args)]
pub struct WaitArgs {
    #[arg(long = "for", value_enum)]
    condition: Condition,
    /// KIND/NAME, e.g. pod/web-1 or deployment/web.
    target: String,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Whether an object is ready: a pod's Ready condition, a Deployment's ready replicas, a
/// node's Ready condition, a Service with a ready endpoint; anything else by existing.
fn ready(o: &Object, slices: &[Object]) -> bool {
    match o {
        Object::Pod(p) => pod_is_ready(p),
        Object::Deployment(d) => {
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            d.status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
                >= want
                && d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0) == want
        }
        Object::Node(n) => n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        Object::Service(_) => slices.iter().any(|s| match s {
            Object::EndpointSlice(e) => e
                .endpoints
                .iter()
                .any(|ep| ep.conditions.as_ref().and_then(|c| c.ready) != Some(false)),
            _ => false,
        }),
        _ => true,
    }
}

pub fn run(layout: &Layout, a: WaitArgs) -> anyhow::Result<u8> {
    let r = super::parse_ref(&a.target, a.namespace.as_deref())?;
    let client = super::client(layout);
    let deadline = Instant::now() + a.timeout;
    loop {
        let found = match client.get(r.kind, r.namespace.as_deref(), Some(&r.name)) {
            Ok(objs) => objs.into_iter().next(),
            Err(podnet_lab::client::ClientError::Refused(m)) if m.ends_with("not found") => None,
            Err(e) => return Err(e.into()),
        };
        let done = match (a.condition, &found) {
            (Condition::Deleted, None) => true,
            (Condition::Deleted, Some(_)) | (Condition::Ready, None) => false,
            (Condition::Ready, Some(o)) => {
                let slices = if matches!(o, Object::Service(_)) {
                    client
                        .get(
                            podnet_model::Kind::EndpointSlice,
                            r.namespace.as_deref(),
                            None,
                        )?
                        .into_iter()
                        .filter(|s| {
                            s.meta()
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(podnet_model::objects::SERVICE_NAME_LABEL))
                                == Some(&r.name)
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                ready(o, &slices)
            }
        };
        if done {
            println!(
                "{}/{} condition met",
                r.kind.name().to_ascii_lowercase(),
                r.name
            );
            return Ok(0);
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {} waiting for {r} to be {}",
                humantime::format_duration(a.timeout),
                if a.condition == Condition::Ready {
                    "ready"
                } else {
                    "deleted"
                }
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
