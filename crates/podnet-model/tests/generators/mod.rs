//! Generators of lab documents for property tests: valid objects of every kind the lab
//! accepts (as Kubernetes JSON), arbitrary JSON values, and mutations of documents.
//! Shared with podnet-lab's admission properties (included there by path).

#![allow(dead_code)] // each test binary uses its own part of this module

use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// A DNS label of up to 12 characters.
pub fn dns_label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,10}[a-z0-9])?"
}

fn label_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]([a-z0-9._-]{0,6}[a-z0-9])?",
        "example\\.com/[a-z]([a-z0-9]{0,6})",
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9]([A-Za-z0-9._-]{0,6}[A-Za-z0-9])?"
    ]
}

fn labels() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(label_key(), label_value(), 0..4)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k, json!(v))).collect())
}

fn metadata(name: String, namespace: Option<String>, labels: Map<String, Value>) -> Value {
    let mut m = json!({ "name": name });
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    if !labels.is_empty() {
        m["labels"] = Value::Object(labels);
    }
    m
}

fn port() -> impl Strategy<Value = i64> {
    1i64..=65535
}

fn protocol() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::of(prop::sample::select(vec!["TCP", "UDP", "SCTP"]))
}

/// A container: a command (the lab runs no images), ports with distinct names, maybe a
/// readiness probe.
fn container(name: String) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec("[ -~]{1,12}", 1..4),
        prop::collection::btree_map("[a-z]{1,8}", port(), 0..3),
        prop::option::of(prop_oneof![
            port().prop_map(|p| json!({ "tcpSocket": { "port": p } })),
            (port(), "/[a-z]{0,8}")
                .prop_map(|(p, path)| json!({ "httpGet": { "port": p, "path": path } })),
            prop::collection::vec("[a-z]{1,6}", 1..3)
                .prop_map(|c| json!({ "exec": { "command": c } })),
        ]),
    )
        .prop_map(move |(command, ports, probe)| {
            let mut c = json!({ "name": name, "command": command });
            if !ports.is_empty() {
                c["ports"] = ports
                    .into_iter()
                    .map(|(n, p)| json!({ "name": n, "containerPort": p }))
                    .collect();
            }
            if let Some(p) = probe {
                c["readinessProbe"] = p;
            }
            c
        })
}

/// A pod spec; `nodes` are the node names it may pin to (none: never pinned).
fn pod_spec(nodes: Vec<String>) -> impl Strategy<Value = Value> {
    let node = if nodes.is_empty() {
        Just(None).boxed()
    } else {
        prop::option::of(prop::sample::select(nodes)).boxed()
    };
    (
        prop::collection::btree_set(dns_label(), 1..3),
        prop::option::of(prop::sample::select(vec!["Always", "OnFailure", "Never"])),
        node,
    )
        .prop_flat_map(|(names, restart, node)| {
            let containers: Vec<_> = names.into_iter().map(container).collect();
            (containers, Just(restart), Just(node))
        })
        .prop_map(|(containers, restart, node)| {
            let mut s = json!({ "containers": containers });
            if let Some(r) = restart {
                s["restartPolicy"] = json!(r);
            }
            if let Some(n) = node {
                s["nodeName"] = json!(n);
            }
            s
        })
}

fn pod(namespace: Option<String>, nodes: Vec<String>) -> impl Strategy<Value = Value> {
    (dns_label(), labels(), pod_spec(nodes)).prop_map(move |(name, labels, spec)| {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata(name, namespace.clone(), labels),
            "spec": spec,
        })
    })
}

fn deployment(namespace: Option<String>, nodes: Vec<String>) -> impl Strategy<Value = Value> {
    (
        dns_label(),
        labels(),
        "[a-z0-9]{1,8}",
        prop::option::of(0i64..5),
        pod_spec(nodes),
    )
        .prop_map(move |(name, mut template_labels, app, replicas, spec)| {
            template_labels.insert("app".into(), json!(app));
            let mut d = json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": metadata(name, namespace.clone(), Map::new()),
                "spec": {
                    "selector": { "matchLabels": { "app": app } },
                    "template": { "metadata": { "labels": template_labels }, "spec": spec },
                },
            });
            if let Some(r) = replicas {
                d["spec"]["replicas"] = json!(r);
            }
            d
        })
}

/// A Service that admission can always place: no fixed ClusterIP or NodePort.
fn service(namespace: Option<String>) -> impl Strategy<Value = Value> {
    let ports = prop::collection::btree_map((port(), protocol()), dns_label(), 1..4)
        .prop_flat_map(|m| {
            let n = m.len();
            let targets = prop::collection::vec(
                prop::option::of(prop_oneof![
                    port().prop_map(|p| json!(p)),
                    "[a-z]{1,15}".prop_map(|s| json!(s)),
                ]),
                n,
            );
            (Just(m), targets)
        })
        .prop_map(|(m, targets)| {
            let many = m.len() > 1;
            m.into_iter()
                .zip(targets)
                .enumerate()
                .map(|(i, (((port, proto), name), target))| {
                    let mut p = json!({ "port": port });
                    if many {
                        // Distinct, as they must be.
                        p["name"] = json!(format!("{name}-{i}"));
                    }
                    if let Some(proto) = proto {
                        p["protocol"] = json!(proto);
                    }
                    if let Some(t) = target {
                        p["targetPort"] = t;
                    }
                    p
                })
                .collect::<Vec<_>>()
        });
    (
        dns_label(),
        prop::sample::select(vec!["ClusterIP", "NodePort", "ExternalName", "Headless"]),
        labels(),
        ports,
        prop::option::of(prop::sample::select(vec!["None", "ClientIP"])),
    )
        .prop_map(move |(name, ty, selector, ports, affinity)| {
            let mut spec = json!({ "ports": ports });
            match ty {
                "ExternalName" => {
                    spec = json!({ "type": ty, "externalName": "db.example.com" });
                }
                "Headless" => spec["clusterIP"] = json!("None"),
                _ => spec["type"] = json!(ty),
            }
            if !selector.is_empty() {
                spec["selector"] = Value::Object(selector);
            }
            if let Some(a) = affinity {
                spec["sessionAffinity"] = json!(a);
            }
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": metadata(name, namespace.clone(), Map::new()),
                "spec": spec,
            })
        })
}

fn endpoint_slice(namespace: Option<String>) -> impl Strategy<Value = Value> {
    (
        dns_label(),
        dns_label(),
        prop::collection::vec(
            prop::collection::vec(any::<[u8; 4]>(), 1..3).prop_map(|addrs| {
                let a: Vec<String> = addrs
                    .iter()
                    .map(|o| format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3]))
                    .collect();
                json!({ "addresses": a })
            }),
            0..4,
        ),
        prop::collection::vec((port(), protocol()), 0..3),
    )
        .prop_map(move |(name, service, endpoints, ports)| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(p, proto)| match proto {
                    Some(proto) => json!({ "port": p, "protocol": proto }),
                    None => json!({ "port": p }),
                })
                .collect();
            let mut labels = Map::new();
            labels.insert("kubernetes.io/service-name".into(), json!(service));
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": metadata(name, namespace.clone(), labels),
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": ports,
            })
        })
}

fn network_policy(namespace: Option<String>) -> impl Strategy<Value = Value> {
    (dns_label(), labels()).prop_map(move |(name, sel)| {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata(name, namespace.clone(), Map::new()),
            "spec": { "podSelector": { "matchLabels": sel } },
        })
    })
}

/// A valid namespaced object in `namespace` (`None`: left out, so `default`), pods pinned
/// only to `nodes`.
pub fn namespaced_object(
    namespace: Option<String>,
    nodes: Vec<String>,
) -> impl Strategy<Value = Value> {
    prop_oneof![
        pod(namespace.clone(), nodes.clone()),
        deployment(namespace.clone(), nodes),
        service(namespace.clone()),
        endpoint_slice(namespace.clone()),
        network_policy(namespace),
    ]
}

pub fn namespace_object() -> impl Strategy<Value = Value> {
    dns_label().prop_map(
        |name| json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } }),
    )
}

/// `(kind, namespace, name)`: what makes two documents the same object.
fn identity(v: &Value) -> (String, String, String) {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let ns = if s("/kind") == "Namespace" {
        String::new()
    } else {
        let ns = s("/metadata/namespace");
        if ns.is_empty() {
            "default".into()
        } else {
            ns
        }
    };
    (s("/kind"), ns, s("/metadata/name"))
}

/// A batch of valid documents, each object once: namespaces first, then objects in them
/// or in `default`, pods pinned only to `nodes`.
pub fn valid_batch(nodes: Vec<String>, max: usize) -> impl Strategy<Value = Vec<Value>> {
    prop::collection::btree_set(dns_label(), 0..3).prop_flat_map(move |namespaces| {
        let mut choices: Vec<Option<String>> = vec![None];
        choices.extend(namespaces.iter().cloned().map(Some));
        let objects = prop::collection::vec(
            prop::sample::select(choices).prop_flat_map({
                let nodes = nodes.clone();
                move |ns| namespaced_object(ns, nodes.clone())
            }),
            1..max,
        );
        (Just(namespaces), objects).prop_map(|(namespaces, objects)| {
            let mut docs: Vec<Value> = namespaces
                .into_iter()
                .map(|n| json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": n } }))
                .collect();
            let mut seen = std::collections::BTreeSet::new();
            for o in objects {
                if seen.insert(identity(&o)) {
                    docs.push(o);
                }
            }
            docs
        })
    })
}

/// Multi-document YAML of `docs`.
pub fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml_ng::to_string(d).expect("JSON values are YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Any JSON value, a few levels deep.
pub fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[ -~]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "",
            "None",
            "TCP",
            "Pod",
            "v1",
            "node-1",
            "10.96.0.10",
            "-1",
            "0",
            "70000",
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A change to one place of a document.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Replace the value at a path (never the whole document) with another.
    Replace(prop::sample::Index, Value),
    /// Remove the value at a path.
    Remove(prop::sample::Index),
    /// Add a field to a mapping.
    Insert(prop::sample::Index, String, Value),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), any_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        any::<prop::sample::Index>().prop_map(Mutation::Remove),
        (any::<prop::sample::Index>(), "[a-zA-Z]{1,10}", any_value())
            .prop_map(|(i, k, v)| Mutation::Insert(i, k, v)),
    ]
}

/// JSON pointers of every place below the root of `v`.
fn paths(v: &Value, here: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{here}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                paths(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let p = format!("{here}/{i}");
                out.push(p.clone());
                paths(x, p, out);
            }
        }
        _ => {}
    }
}

/// Applies `m` to `doc`.
pub fn mutate(doc: &mut Value, m: &Mutation) {
    let mut all = Vec::new();
    paths(doc, String::new(), &mut all);
    if all.is_empty() {
        return;
    }
    match m {
        Mutation::Replace(i, v) => {
            if let Some(x) = doc.pointer_mut(i.get(&all).as_str()) {
                *x = v.clone();
            }
        }
        Mutation::Remove(i) => {
            let p = i.get(&all).as_str();
            let (parent, last) = p.rsplit_once('/').unwrap_or(("", p));
            let key = last.replace("~1", "/").replace("~0", "~");
            match doc.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.remove(&key);
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = key.parse::<usize>() {
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                }
                _ => {}
            }
        }
        Mutation::Insert(i, k, v) => {
            let mut maps: Vec<String> = all
                .into_iter()
                .filter(|p| doc.pointer(p).is_some_and(Value::is_object))
                .collect();
            maps.push(String::new());
            if let Some(Value::Object(m)) = doc.pointer_mut(i.get(&maps).as_str()) {
                m.insert(k.clone(), v.clone());
            }
        }
    }
}
