//! `podnet lab get KIND [-n NS|-A] [-o wide|json|yaml]`.

use clap::{Args, ValueEnum};
use podnet_lab::{Client, Layout};
use podnet_model::k8s_openapi::api::core::v1::Pod;
use podnet_model::objects::DEFAULT_NAMESPACE;
use podnet_model::{Kind, Object};
use serde_json::json;

use crate::output::{age, print, table};

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Wide,
    Json,
    Yaml,
}

#[derive(Args)]
pub struct GetArgs {
    /// nodes, pods, deployments, services, endpointslices, networkpolicies or namespaces.
    kind: String,
    /// Only this object.
    #[arg(value_name = "NAME")]
    object: Option<String>,
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[arg(short = 'o', long, value_enum)]
    output: Option<Format>,
}

pub fn run(layout: &Layout, a: GetArgs) -> anyhow::Result<u8> {
    let kind = Kind::parse(&a.kind).ok_or_else(|| anyhow::anyhow!("unknown kind {:?}", a.kind))?;
    let ns = if !kind.namespaced() || a.all_namespaces {
        None
    } else {
        Some(
            a.namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        )
    };
    let client = super::client(layout);
    let objs = client.get(kind, ns.as_deref(), a.object.as_deref())?;
    match a.output {
        Some(Format::Json) | Some(Format::Yaml) => {
            let items: Vec<_> = objs.iter().map(Object::to_json).collect();
            let doc = match (&a.object, items.as_slice()) {
                (Some(_), [one]) => one.clone(),
                _ => json!({"apiVersion": "v1", "kind": "List", "items": items}),
            };
            if matches!(a.output, Some(Format::Json)) {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", serde_yaml_ng::to_string(&doc)?);
            }
            return Ok(0);
        }
        _ => {}
    }
    let wide = matches!(a.output, Some(Format::Wide));
    let show_ns = a.all_namespaces && kind.namespaced();
    if objs.is_empty() {
        match &ns {
            Some(n) => eprintln!("No {} found in namespace {n}.", kind.plural()),
            None => eprintln!("No {} found.", kind.plural()),
        }
        return Ok(0);
    }
    match kind {
        Kind::Node => print_node_table(&objs, wide),
        Kind::Pod => print_pods(&objs, wide, show_ns),
        Kind::Deployment => print_deployments(&objs, show_ns),
        Kind::Service => print_services(&objs, wide, show_ns),
        Kind::EndpointSlice => print_slices(&objs, show_ns),
        Kind::Namespace | Kind::NetworkPolicy => {
            let mut t = table(&with_ns(show_ns, &["NAME", "AGE"]));
            for o in &objs {
                t.add_row(row(
                    show_ns,
                    o,
                    vec![
                        o.name().to_string(),
                        age(o.meta().creation_timestamp.as_ref()),
                    ],
                ));
            }
            print(&t);
        }
    }
    Ok(0)
}

fn with_ns<'a>(show: bool, cols: &[&'a str]) -> Vec<&'a str> {
    let mut v = Vec::new();
    if show {
        v.push("NAMESPACE");
    }
    v.extend_from_slice(cols);
    v
}

fn row(show: bool, o: &Object, mut cells: Vec<String>) -> Vec<String> {
    if show {
        cells.insert(0, o.meta().namespace.clone().unwrap_or_default());
    }
    cells
}

pub fn print_nodes(client: &Client, wide: bool) -> anyhow::Result<()> {
    print_node_table(&client.get(Kind::Node, None, None)?, wide);
    Ok(())
}

fn print_node_table(objs: &[Object], wide: bool) {
    let mut cols = vec!["NAME", "STATUS", "INTERNAL-IP", "POD-CIDR", "AGE"];
    if wide {
        cols.push("MESSAGE");
    }
    let mut t = table(&cols);
    for o in objs {
        let Object::Node(n) = o else { continue };
        let st = n.status.as_ref();
        let ready = st
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        let mut cells = vec![
            o.name().to_string(),
            if ready.is_some_and(|c| c.status == "True") {
                "Ready"
            } else {
                "NotReady"
            }
            .to_string(),
            st.and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .map(|a| a.address.clone())
                .unwrap_or_default(),
            n.spec
                .as_ref()
                .and_then(|s| s.pod_cidr.clone())
                .unwrap_or_default(),
            age(n.metadata.creation_timestamp.as_ref()),
        ];
        if wide {
            let routing = n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("podnet.io/routing"))
                .filter(|r| *r != "ok");
            cells.push(
                routing
                    .cloned()
                    .or_else(|| ready.and_then(|c| c.message.clone()))
                    .unwrap_or_default(),
            );
        }
        t.add_row(cells);
    }
    print(&t);
}

/// What `STATUS` shows for a pod, as kubectl does.
pub fn pod_status(p: &Pod) -> String {
    if p.metadata.deletion_timestamp.is_some() {
        return "Terminating".into();
    }
    let st = p.status.as_ref();
    let waiting = st
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        });
    let phase = st
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    if phase == "Pending" {
        return st
            .and_then(|s| s.reason.clone())
            .or(waiting)
            .unwrap_or(phase);
    }
    phase
}

fn print_pods(objs: &[Object], wide: bool, show_ns: bool) {
    let mut cols = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
    if wide {
        cols.extend(["IP", "NODE"]);
    }
    let mut t = table(&with_ns(show_ns, &cols));
    for o in objs {
        let Object::Pod(p) = o else { continue };
        let cs = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        let total = p.spec.as_ref().map(|s| s.containers.len()).unwrap_or(0);
        let ready = cs.iter().filter(|c| c.ready).count();
        let restarts: i32 = cs.iter().map(|c| c.restart_count).sum();
        let mut cells = vec![
            o.name().to_string(),
            format!("{ready}/{total}"),
            pod_status(p),
            restarts.to_string(),
            age(p.metadata.creation_timestamp.as_ref()),
        ];
        if wide {
            cells.push(
                p.status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_else(|| "<none>".into()),
            );
            cells.push(
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_else(|| "<none>".into()),
            );
        }
        t.add_row(row(show_ns, o, cells));
    }
    print(&t);
}

fn print_deployments(objs: &[Object], show_ns: bool) {
    let mut t = table(&with_ns(
        show_ns,
        &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
    ));
    for o in objs {
        let Object::Deployment(d) = o else { continue };
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let st = d.status.clone().unwrap_or_default();
        t.add_row(row(
            show_ns,
            o,
            vec![
                o.name().to_string(),
                format!("{}/{want}", st.ready_replicas.unwrap_or(0)),
                st.updated_replicas.unwrap_or(0).to_string(),
                st.available_replicas.unwrap_or(0).to_string(),
                age(d.metadata.creation_timestamp.as_ref()),
            ],
        ));
    }
    print(&t);
}

fn print_services(objs: &[Object], wide: bool, show_ns: bool) {
    let mut cols = vec!["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"];
    if wide {
        cols.push("SELECTOR");
    }
    let mut t = table(&with_ns(show_ns, &cols));
    for o in objs {
        let Object::Service(s) = o else { continue };
        let spec = s.spec.clone().unwrap_or_default();
        let ports: Vec<String> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                match p.node_port {
                    Some(np) => format!("{}:{np}/{proto}", p.port),
                    None => format!("{}/{proto}", p.port),
                }
            })
            .collect();
        let mut cells = vec![
            o.name().to_string(),
            spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
            spec.cluster_ip.clone().unwrap_or_else(|| "<none>".into()),
            if ports.is_empty() {
                "<none>".into()
            } else {
                ports.join(",")
            },
            age(s.metadata.creation_timestamp.as_ref()),
        ];
        if wide {
            let sel: Vec<String> = spec
                .selector
                .iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            cells.push(if sel.is_empty() {
                "<none>".into()
            } else {
                sel.join(",")
            });
        }
        t.add_row(row(show_ns, o, cells));
    }
    print(&t);
}

fn print_slices(objs: &[Object], show_ns: bool) {
    let mut t = table(&with_ns(
        show_ns,
        &["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
    ));
    for o in objs {
        let Object::EndpointSlice(e) = o else {
            continue;
        };
        let ports: Vec<String> = e
            .ports
            .iter()
            .flatten()
            .map(|p| {
                p.port
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "<unset>".into())
            })
            .collect();
        let addrs: Vec<String> = e
            .endpoints
            .iter()
            .flat_map(|ep| ep.addresses.clone())
            .collect();
        t.add_row(row(
            show_ns,
            o,
            vec![
                o.name().to_string(),
                e.address_type.clone(),
                if ports.is_empty() {
                    "<unset>".into()
                } else {
                    ports.join(",")
                },
                if addrs.is_empty() {
                    "<none>".into()
                } else {
                    addrs.join(",")
                },
                age(e.metadata.creation_timestamp.as_ref()),
            ],
        ));
    }
    print(&t);
}
