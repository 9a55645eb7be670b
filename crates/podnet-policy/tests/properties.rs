//! Random clusters: the compiled decision equals the oracle for every flow, node by node
//! too; and an index fed changes in random order (with deltas taken along the way) equals
//! one built from scratch.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use common::{namespace, oracle, pod, Cluster};
use podnet_model::k8s_openapi::api::core::v1::{Namespace, Pod};
use podnet_model::k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use podnet_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podnet_policy::{decide, Compiled, Protocol, Source};
use proptest::collection::vec;
use proptest::prelude::*;

const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
const NODES: [&str; 2] = ["node-1", "node-2"];
const POD_KEYS: &[&str] = &["app", "tier"];
const POD_VALUES: &[&str] = &["a", "b", "c"];
const NS_KEYS: &[&str] = &["team", "kubernetes.io/metadata.name"];
const NS_VALUES: &[&str] = &["a", "b", "n0", "n1"];
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// In the pods' range but no pod's.
const STRAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 200);
const PORTS: [u16; 5] = [53, 80, 81, 85, 8080];

fn labels_from(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = BTreeMap<String, String>> {
    vec((0..keys.len(), 0..values.len()), 0..=2).prop_map(move |kv| {
        kv.into_iter()
            .map(|(k, v)| (keys[k].to_string(), values[v].to_string()))
            .collect()
    })
}

fn selector(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = LabelSelector> {
    let exprs = vec(
        (0..keys.len(), 0..4usize, vec(0..values.len(), 1..=2)),
        0..=2,
    );
    (labels_from(keys, values), exprs).prop_map(move |(ml, ex)| LabelSelector {
        match_labels: (!ml.is_empty()).then_some(ml),
        match_expressions: (!ex.is_empty()).then(|| {
            ex.into_iter()
                .map(|(k, op, vs)| {
                    let op = ["In", "NotIn", "Exists", "DoesNotExist"][op];
                    LabelSelectorRequirement {
                        key: keys[k].into(),
                        operator: op.into(),
                        values: op
                            .ends_with("In")
                            .then(|| vs.iter().map(|v| values[*v].to_string()).collect()),
                    }
                })
                .collect()
        }),
    })
}

/// CIDRs and, for each, excepts strictly inside it.
const BLOCKS: &[(&str, &[&str])] = &[
    (
        "10.0.0.0/28",
        &["10.0.0.0/30", "10.0.0.4/31", "10.0.0.8/29", "10.0.0.3/32"],
    ),
    ("10.0.0.0/24", &["10.0.0.0/29", "10.0.0.5/32"]),
    ("0.0.0.0/0", &["10.0.0.0/8", "10.0.0.2/32"]),
    ("198.51.100.0/24", &[]),
    ("10.0.0.6/31", &[]),
    ("fd00::/64", &["fd00::/96"]),
];

fn peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    let pods = || selector(POD_KEYS, POD_VALUES);
    let nss = || selector(NS_KEYS, NS_VALUES);
    let block =
        (0..BLOCKS.len(), vec(any::<prop::sample::Index>(), 0..=2)).prop_map(|(b, picks)| {
            let (cidr, excepts) = BLOCKS[b];
            let mut except: Vec<String> = picks
                .iter()
                .filter(|_| !excepts.is_empty())
                .map(|i| excepts[i.index(excepts.len())].to_string())
                .collect();
            except.dedup();
            NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cidr.into(),
                    except: (!except.is_empty()).then_some(except),
                }),
                ..Default::default()
            }
        });
    prop_oneof![
        pods().prop_map(|p| NetworkPolicyPeer {
            pod_selector: Some(p),
            ..Default::default()
        }),
        nss().prop_map(|n| NetworkPolicyPeer {
            namespace_selector: Some(n),
            ..Default::default()
        }),
        (pods(), nss()).prop_map(|(p, n)| NetworkPolicyPeer {
            pod_selector: Some(p),
            namespace_selector: Some(n),
            ..Default::default()
        }),
        block,
    ]
}

fn port() -> impl Strategy<Value = NetworkPolicyPort> {
    let protocol = prop::option::of(prop::sample::select(vec!["TCP", "UDP", "SCTP"]));
    let number = prop_oneof![
        Just((None, None)),
        (
            prop::sample::select(vec![53, 80, 81]),
            prop::option::of(prop::sample::select(vec![81, 90]))
        )
            .prop_map(|(p, e): (i32, Option<i32>)| (
                Some(IntOrString::Int(p)),
                e.filter(|e| *e >= p)
            )),
        prop::sample::select(vec!["http", "dns", "m", "nope"])
            .prop_map(|n| (Some(IntOrString::String(n.into())), None)),
    ];
    (protocol, number).prop_map(|(protocol, (port, end_port))| NetworkPolicyPort {
        protocol: protocol.map(Into::into),
        port,
        end_port,
    })
}

type RuleParts = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn rule() -> impl Strategy<Value = RuleParts> {
    (
        prop::option::of(vec(peer(), 0..=2)),
        prop::option::of(vec(port(), 0..=2)),
    )
}

fn policy(i: usize) -> impl Strategy<Value = NetworkPolicy> {
    (
        0..NAMESPACES.len(),
        prop::option::of(selector(POD_KEYS, POD_VALUES)),
        0..4usize,
        prop::option::of(vec(rule(), 0..=2)),
        prop::option::of(vec(rule(), 0..=2)),
    )
        .prop_map(move |(ns, sel, types, ingress, egress)| NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(format!("q{i}")),
                namespace: Some(NAMESPACES[ns].into()),
                ..Default::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: sel,
                policy_types: [
                    None,
                    Some(vec!["Ingress".into()]),
                    Some(vec!["Egress".into()]),
                    Some(vec!["Ingress".into(), "Egress".into()]),
                ][types]
                    .clone(),
                ingress: ingress.map(|rs| {
                    rs.into_iter()
                        .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
                        .collect()
                }),
                egress: egress.map(|rs| {
                    rs.into_iter()
                        .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                        .collect()
                }),
            }),
        })
}

const NAMED: &[(&str, Protocol, u16)] = &[
    ("http", Protocol::Tcp, 80),
    ("http", Protocol::Tcp, 8080),
    ("http", Protocol::Udp, 80),
    ("dns", Protocol::Udp, 53),
    ("dns", Protocol::Tcp, 53),
    ("m", Protocol::Sctp, 81),
];

/// Pod `i` (its address is always 10.0.0.<i+1> when it has one, so addresses stay unique).
fn pod_obj(i: usize) -> impl Strategy<Value = Pod> {
    (
        0..NAMESPACES.len(),
        labels_from(POD_KEYS, POD_VALUES),
        prop::bool::weighted(0.9),
        0..NODES.len(),
        vec(0..NAMED.len(), 0..=3),
    )
        .prop_map(move |(ns, l, has_ip, node, ports)| {
            let ports: Vec<_> = ports.into_iter().map(|p| NAMED[p]).collect();
            let ip = has_ip.then(|| Ipv4Addr::new(10, 0, 0, i as u8 + 1));
            pod(NAMESPACES[ns], &format!("p{i}"), l, ip, NODES[node], &ports)
        })
}

fn ns_obj(i: usize) -> impl Strategy<Value = Namespace> {
    labels_from(&["team"], &["a", "b"]).prop_map(move |l| namespace(NAMESPACES[i], l))
}

#[derive(Clone, Debug)]
struct World {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    policies: Vec<NetworkPolicy>,
}

fn world() -> impl Strategy<Value = World> {
    (1..=8usize, 1..=5usize).prop_flat_map(|(np, nq)| {
        (
            (0..NAMESPACES.len()).map(ns_obj).collect::<Vec<_>>(),
            (0..np).map(pod_obj).collect::<Vec<_>>(),
            (0..nq).map(policy).collect::<Vec<_>>(),
        )
            .prop_map(|(namespaces, pods, policies)| World {
                namespaces,
                pods,
                policies,
            })
    })
}

fn build(w: &World) -> Cluster {
    let mut c = Cluster::new(&NODES);
    for n in &w.namespaces {
        c.apply_namespace(n.clone());
    }
    for p in &w.pods {
        c.apply_pod(p.clone());
    }
    for p in &w.policies {
        c.apply_policy(p.clone());
    }
    c
}

/// Every flow between the cluster's pods, a stray address, the outside and the node.
fn assert_decisions_match_oracle(c: &Cluster) -> Result<(), TestCaseError> {
    let (ns, pods, pols) = (c.namespace_infos(), c.pod_infos(), c.policy_list());
    let world = oracle::World {
        namespaces: &ns,
        pods: &pods,
        policies: &pols,
    };
    let mut addrs: Vec<Ipv4Addr> = pods.iter().filter_map(|p| p.ip).collect();
    addrs.extend([OUTSIDE, STRAY]);
    let sources = addrs.iter().map(|a| Source::Addr(*a)).chain([Source::Node]);
    for src in sources {
        for dst in &addrs {
            for proto in Protocol::ALL {
                for port in PORTS {
                    let want = world.allows(src, *dst, proto, port);
                    let v = decide(&c.index, src, *dst, proto, port);
                    prop_assert_eq!(
                        v.allowed,
                        want,
                        "{:?} → {}:{} {}: compiled says {}",
                        src,
                        dst,
                        port,
                        proto,
                        v
                    );
                    prop_assert_eq!(
                        c.decide_by_nodes(src, *dst, proto, port),
                        want,
                        "{:?} → {}:{} {} node by node",
                        src,
                        dst,
                        port,
                        proto
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn compiled_decision_equals_the_oracle(w in world()) {
        let c = build(&w);
        assert_decisions_match_oracle(&c)?;
        c.assert_incremental_equals_scratch();
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Apply version 0 or 1 of an object, or delete it (2).
    Namespace(usize, usize),
    Pod(usize, usize),
    Policy(usize, usize),
    /// Take a delta and check it replays.
    Delta,
}

/// Two versions of every object, and operations applying or deleting them. A pod keeps its
/// namespace (and address) across versions, as a pod does; a policy's versions may live in
/// different namespaces (two policies of one name).
fn scenario() -> impl Strategy<Value = (World, World, Vec<Op>)> {
    (world(), world()).prop_flat_map(|(a, mut b)| {
        let np = a.pods.len().min(b.pods.len());
        let nq = a.policies.len().min(b.policies.len());
        for (pa, pb) in a.pods.iter().zip(b.pods.iter_mut()) {
            pb.metadata.namespace = pa.metadata.namespace.clone();
        }
        let op = prop_oneof![
            (0..NAMESPACES.len(), 0..3usize).prop_map(|(i, v)| Op::Namespace(i, v)),
            (0..np, 0..3usize).prop_map(|(i, v)| Op::Pod(i, v)),
            (0..nq, 0..3usize, any::<bool>()).prop_map(|(i, v, _)| Op::Policy(i, v)),
            Just(Op::Delta),
        ];
        (Just(a), Just(b), vec(op, 1..40))
    })
}

fn meta_ns(m: &ObjectMeta) -> &str {
    m.namespace.as_deref().unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn incremental_updates_in_any_order_equal_a_fresh_build((a, b, ops) in scenario()) {
        let mut c = Cluster::new(&NODES);
        let mut snapshot = Compiled::default();
        let pick = |v: usize| if v == 0 { &a } else { &b };
        for op in ops {
            match op {
                Op::Namespace(i, 2) => c.delete_namespace(NAMESPACES[i]),
                Op::Namespace(i, v) => c.apply_namespace(pick(v).namespaces[i].clone()),
                Op::Pod(i, 2) => c.delete_pod(meta_ns(&a.pods[i].metadata), &format!("p{i}")),
                Op::Pod(i, v) => c.apply_pod(pick(v).pods[i].clone()),
                Op::Policy(i, 2) => {
                    for w in [&a, &b] {
                        c.delete_policy(meta_ns(&w.policies[i].metadata), &format!("q{i}"));
                    }
                }
                Op::Policy(i, v) => c.apply_policy(pick(v).policies[i].clone()),
                Op::Delta => {
                    let delta = c.index.take_delta();
                    let now = c.index.compiled();
                    prop_assert_eq!(common::replay(&snapshot, &delta, &c.index), now.clone());
                    snapshot = now;
                }
            }
        }
        c.assert_incremental_equals_scratch();
        assert_decisions_match_oracle(&c)?;
    }
}

/// Anything a client could send, valid or not.
fn wild_policy() -> impl Strategy<Value = NetworkPolicy> {
    let text = prop_oneof![
        Just(String::new()),
        "[a-z0-9./:-]{0,20}",
        prop::sample::select(vec![
            "10.0.0.0/8",
            "10.0.0.0/33",
            "10.0.0.1/24",
            "fd00::/64",
            "::/0",
            "0.0.0.0/0",
            "10.1.0.0/16",
            "In",
            "NotIn",
            "Exists",
            "DoesNotExist",
            "TCP",
            "udp",
            "SCTP",
            "Ingress",
            "Egress",
            "http",
            "80",
            "a--b",
        ])
        .prop_map(String::from),
    ];
    let sel = (
        prop::option::of(vec((text.clone(), text.clone()), 0..2)),
        prop::option::of(vec(
            (
                text.clone(),
                text.clone(),
                prop::option::of(vec(text.clone(), 0..2)),
            ),
            0..2,
        )),
    )
        .prop_map(|(ml, ex)| LabelSelector {
            match_labels: ml.map(|v| v.into_iter().collect()),
            match_expressions: ex.map(|v| {
                v.into_iter()
                    .map(|(key, operator, values)| LabelSelectorRequirement {
                        key,
                        operator,
                        values,
                    })
                    .collect()
            }),
        });
    let peer = (
        prop::option::of((text.clone(), prop::option::of(vec(text.clone(), 0..3)))),
        prop::option::of(sel.clone()),
        prop::option::of(sel.clone()),
    )
        .prop_map(|(block, pods, nss)| NetworkPolicyPeer {
            ip_block: block.map(|(cidr, except)| IPBlock { cidr, except }),
            pod_selector: pods,
            namespace_selector: nss,
        });
    let port = (
        prop::option::of(text.clone()),
        prop::option::of(prop_oneof![
            any::<i32>().prop_map(IntOrString::Int),
            (0..70000i32).prop_map(IntOrString::Int),
            text.clone().prop_map(IntOrString::String),
        ]),
        prop::option::of(prop_oneof![any::<i32>(), 0..70000i32]),
    )
        .prop_map(|(protocol, port, end_port)| NetworkPolicyPort {
            protocol,
            port,
            end_port,
        });
    let rule = (
        prop::option::of(vec(peer, 0..3)),
        prop::option::of(vec(port, 0..3)),
    );
    (
        prop::option::of(sel),
        prop::option::of(vec(text, 0..3)),
        prop::option::of(vec(rule.clone(), 0..3)),
        prop::option::of(vec(rule, 0..3)),
    )
        .prop_map(
            |(pod_selector, policy_types, ingress, egress)| NetworkPolicy {
                metadata: ObjectMeta {
                    name: Some("wild".into()),
                    namespace: Some("x".into()),
                    ..Default::default()
                },
                spec: Some(NetworkPolicySpec {
                    pod_selector,
                    policy_types,
                    ingress: ingress.map(|rs| {
                        rs.into_iter()
                            .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
                            .collect()
                    }),
                    egress: egress.map(|rs| {
                        rs.into_iter()
                            .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                            .collect()
                    }),
                }),
            },
        )
}

proptest! {
    #[test]
    fn parsing_any_policy_never_panics_and_names_the_field(np in wild_policy()) {
        match podnet_policy::PolicyInfo::from_policy(&np) {
            Ok(info) => {
                // A valid policy compiles.
                let mut ix = podnet_policy::PolicyIndex::new(podnet_policy::Scope::All);
                ix.apply_policy(info);
            }
            Err(e) => {
                prop_assert_eq!(e.object.as_str(), "x/wild");
                prop_assert!(e.field.starts_with("spec."), "{}", e);
                prop_assert!(e.to_string().starts_with("networkpolicy x/wild: spec."), "{}", e);
            }
        }
    }
}
