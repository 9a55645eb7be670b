//! A cluster of API objects fed to several indexes at once (the whole cluster, and one per
//! node, updated incrementally), with the checks every test makes: the compiled decision,
//! the node-by-node decision and the oracle agree with what is expected, and the
//! incremental index equals one built from scratch.

#![allow(dead_code)] // each test binary uses part of it

pub mod oracle;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use podnet_model::k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus,
};
use podnet_model::k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use podnet_policy::{
    decide, judge, Compiled, CompiledRule, Delta, Direction, NamespaceInfo, PodInfo, PolicyIndex,
    PolicyInfo, PolicyKey, Protocol, Scope, Source, View,
};

pub type Labels = BTreeMap<String, String>;

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn namespace(name: &str, l: Labels) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(l),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A running pod with an address on a node, and named container ports.
pub fn pod(
    ns: &str,
    name: &str,
    l: Labels,
    ip: Option<Ipv4Addr>,
    node: &str,
    ports: &[(&str, Protocol, u16)],
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(l),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "serve".into(),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, num)| ContainerPort {
                            name: Some(n.to_string()),
                            protocol: Some(
                                match p {
                                    Protocol::Tcp => "TCP",
                                    Protocol::Udp => "UDP",
                                    Protocol::Sctp => "SCTP",
                                }
                                .into(),
                            ),
                            container_port: i32::from(*num),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: ip.map(|ip| ip.to_string()),
            ..Default::default()
        }),
    }
}

/// A NetworkPolicy with its spec written in YAML.
pub fn np(ns: &str, name: &str, spec_yaml: &str) -> NetworkPolicy {
    let spec: NetworkPolicySpec = serde_yaml_ng::from_str(spec_yaml)
        .unwrap_or_else(|e| panic!("policy {ns}/{name}: {e}\n{spec_yaml}"));
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(spec),
    }
}

type ObjKey = (String, String);

fn key_of(meta: &ObjectMeta) -> ObjKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

pub struct Cluster {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<ObjKey, Pod>,
    pub policies: BTreeMap<ObjKey, NetworkPolicy>,
    /// Scope::All, fed every change.
    pub index: PolicyIndex,
    /// One per node, fed every change.
    pub nodes: BTreeMap<String, PolicyIndex>,
}

impl Cluster {
    pub fn new(nodes: &[&str]) -> Cluster {
        Cluster {
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            policies: BTreeMap::new(),
            index: PolicyIndex::new(Scope::All),
            nodes: nodes
                .iter()
                .map(|n| (n.to_string(), PolicyIndex::new(Scope::Node(n.to_string()))))
                .collect(),
        }
    }

    fn indexes(&mut self) -> impl Iterator<Item = &mut PolicyIndex> {
        std::iter::once(&mut self.index).chain(self.nodes.values_mut())
    }

    pub fn apply_namespace(&mut self, ns: Namespace) {
        let info = NamespaceInfo::from_namespace(&ns).expect("valid namespace");
        for ix in self.indexes() {
            ix.apply_namespace(info.clone());
        }
        self.namespaces.insert(info.name, ns);
    }

    pub fn delete_namespace(&mut self, name: &str) {
        for ix in self.indexes() {
            ix.delete_namespace(name);
        }
        self.namespaces.remove(name);
    }

    pub fn apply_pod(&mut self, p: Pod) {
        let info = PodInfo::from_pod(&p).expect("valid pod");
        for ix in self.indexes() {
            ix.apply_pod(info.clone());
        }
        self.pods.insert(key_of(&p.metadata), p);
    }

    pub fn delete_pod(&mut self, ns: &str, name: &str) {
        for ix in self.indexes() {
            ix.delete_pod(ns, name);
        }
        self.pods.remove(&(ns.to_string(), name.to_string()));
    }

    pub fn apply_policy(&mut self, p: NetworkPolicy) {
        let info = PolicyInfo::from_policy(&p).expect("valid policy");
        for ix in self.indexes() {
            ix.apply_policy(info.clone());
        }
        self.policies.insert(key_of(&p.metadata), p);
    }

    pub fn delete_policy(&mut self, ns: &str, name: &str) {
        for ix in self.indexes() {
            ix.delete_policy(ns, name);
        }
        self.policies.remove(&(ns.to_string(), name.to_string()));
    }

    /// Changes a pod's labels (the API's patch of metadata.labels).
    pub fn label_pod(&mut self, ns: &str, name: &str, extra: &[(&str, &str)]) {
        let mut p = self.pods[&(ns.to_string(), name.to_string())].clone();
        let l = p.metadata.labels.get_or_insert_with(Labels::new);
        for (k, v) in extra {
            l.insert(k.to_string(), v.to_string());
        }
        self.apply_pod(p);
    }

    pub fn label_namespace(&mut self, name: &str, extra: &[(&str, &str)]) {
        let mut n = self.namespaces[name].clone();
        let l = n.metadata.labels.get_or_insert_with(Labels::new);
        for (k, v) in extra {
            l.insert(k.to_string(), v.to_string());
        }
        self.apply_namespace(n);
    }

    pub fn pod_infos(&self) -> Vec<PodInfo> {
        self.pods
            .values()
            .map(|p| PodInfo::from_pod(p).expect("valid"))
            .collect()
    }

    pub fn namespace_infos(&self) -> Vec<NamespaceInfo> {
        self.namespaces
            .values()
            .map(|n| NamespaceInfo::from_namespace(n).expect("valid"))
            .collect()
    }

    pub fn policy_list(&self) -> Vec<NetworkPolicy> {
        self.policies.values().cloned().collect()
    }

    /// An index built from the current objects in one go (policies first, then pods: the
    /// incremental ones saw another order).
    pub fn scratch(&self, scope: Scope) -> PolicyIndex {
        let mut ix = PolicyIndex::new(scope);
        for p in self.policies.values() {
            ix.apply_policy(PolicyInfo::from_policy(p).expect("valid"));
        }
        for n in self.namespace_infos() {
            ix.apply_namespace(n);
        }
        for p in self.pod_infos() {
            ix.apply_pod(p);
        }
        ix
    }

    pub fn pod_ip(&self, ns: &str, name: &str) -> Ipv4Addr {
        PodInfo::from_pod(&self.pods[&(ns.to_string(), name.to_string())])
            .expect("valid")
            .ip
            .expect("pod has an address")
    }

    /// The decision made node by node: the source's egress where the source runs, the
    /// destination's ingress where it runs.
    pub fn decide_by_nodes(&self, src: Source, dst: Ipv4Addr, proto: Protocol, port: u16) -> bool {
        let node_of = |ip: Ipv4Addr| {
            self.pod_infos()
                .into_iter()
                .filter(|p| p.ip == Some(ip))
                .min_by_key(|p| p.key())
                .and_then(|p| p.node)
        };
        let side = |d: Direction, ip: Ipv4Addr| match node_of(ip).and_then(|n| self.nodes.get(&n)) {
            Some(ix) => judge(ix, d, src, dst, proto, port).allows(),
            // Not a pod (or on a node without an index): nobody isolates it.
            None => true,
        };
        let egress = match src {
            Source::Addr(s) => side(Direction::Egress, s),
            Source::Node => true,
        };
        egress && side(Direction::Ingress, dst)
    }

    pub fn oracle(&self, src: Source, dst: Ipv4Addr, proto: Protocol, port: u16) -> bool {
        let (ns, pods, pols) = (self.namespace_infos(), self.pod_infos(), self.policy_list());
        oracle::World {
            namespaces: &ns,
            pods: &pods,
            policies: &pols,
        }
        .allows(src, dst, proto, port)
    }

    /// The incremental indexes equal indexes built from scratch (up to the ids they
    /// allocated), and hold together.
    pub fn assert_incremental_equals_scratch(&self) {
        let check = |ix: &PolicyIndex, scope: Scope| {
            let inc = ix.compiled();
            assert_consistent(&inc);
            let scratch = self.scratch(scope.clone()).compiled();
            assert_eq!(
                canonical(&inc),
                canonical(&scratch),
                "{scope:?}: incremental index differs from one built from scratch"
            );
        };
        check(&self.index, Scope::All);
        for (n, ix) in &self.nodes {
            check(ix, Scope::Node(n.clone()));
        }
    }
}

/// The compiled form with ids replaced by what they stand for.
#[derive(Debug, PartialEq, Eq)]
pub struct Canonical {
    pub maps: BTreeMap<(Direction, Ipv4Addr), BTreeSet<PolicyKey>>,
    pub rules: BTreeMap<(PolicyKey, Direction, u32), CompiledRule>,
}

pub fn canonical(c: &Compiled) -> Canonical {
    let mut maps = BTreeMap::new();
    for d in Direction::BOTH {
        for (ip, id) in c.map(d) {
            maps.insert((d, *ip), c.sets[id].policies.iter().cloned().collect());
        }
    }
    let rules = c
        .rules
        .iter()
        .map(|(id, r)| ((r.policy.clone(), id.direction, id.index), r.clone()))
        .collect();
    Canonical { maps, rules }
}

/// Every verdict names a policy set, every set is used and of its direction, and the rules
/// are exactly those of the sets.
pub fn assert_consistent(c: &Compiled) {
    let mut used = BTreeSet::new();
    for d in Direction::BOTH {
        for (ip, id) in c.map(d) {
            let set = c
                .sets
                .get(id)
                .unwrap_or_else(|| panic!("{ip} → missing set {id}"));
            assert_eq!(set.direction, d);
            assert!(!set.policies.is_empty());
            used.insert(*id);
        }
    }
    assert_eq!(used, c.sets.keys().copied().collect(), "unused policy sets");
    let referenced: BTreeSet<_> = c
        .sets
        .values()
        .flat_map(|s| s.rules.iter().copied())
        .collect();
    assert_eq!(
        referenced,
        c.rules.keys().copied().collect(),
        "rules vs sets"
    );
}

/// Applies a delta to the snapshot taken when the previous delta was taken, reading what
/// was added from the index, as the nftables applier will.
pub fn replay(old: &Compiled, delta: &Delta, ix: &PolicyIndex) -> Compiled {
    let mut c = old.clone();
    for id in &delta.sets_removed {
        assert!(
            c.sets.remove(id).is_some(),
            "removed set {id} was not there"
        );
    }
    for id in &delta.sets_added {
        let set = ix.policy_set(*id).expect("added set exists").clone();
        assert!(
            c.sets.insert(*id, set).is_none(),
            "added set {id} was there"
        );
    }
    for id in &delta.rules_removed {
        assert!(
            c.rules.remove(id).is_some(),
            "removed rule {id} was not there"
        );
    }
    for id in &delta.rules_added {
        let r = ix.rule(*id).expect("added rule exists").clone();
        assert!(
            c.rules.insert(*id, r).is_none(),
            "added rule {id} was there"
        );
    }
    for (added, set) in [
        (true, &delta.elements_added),
        (false, &delta.elements_removed),
    ] {
        for (id, el) in set {
            let r = c.rules.get_mut(id).expect("element of an existing rule");
            let changed = match (el, &mut r.peers, &mut r.ports) {
                (
                    podnet_policy::Element::Pod(ip),
                    podnet_policy::PeerMatch::Only { pods: Some(p), .. },
                    _,
                ) => {
                    if added {
                        p.insert(*ip)
                    } else {
                        p.remove(ip)
                    }
                }
                (
                    podnet_policy::Element::Named(n),
                    _,
                    podnet_policy::PortMatch::Only { named: Some(s), .. },
                ) => {
                    if added {
                        s.insert(*n)
                    } else {
                        s.remove(n)
                    }
                }
                _ => panic!("element {el:?} does not fit rule {id}"),
            };
            assert!(
                changed,
                "element {el:?} of {id}: no change (added: {added})"
            );
        }
    }
    for ((d, ip), v) in &delta.verdicts {
        let map = match d {
            Direction::Ingress => &mut c.ingress,
            Direction::Egress => &mut c.egress,
        };
        match v {
            Some(id) => map.insert(*ip, *id),
            None => map.remove(ip),
        };
    }
    c
}

// ---- The upstream e2e model: namespaces x, y, z × pods a, b, c ----

pub const NS: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const NODES: [&str; 2] = ["node-1", "node-2"];

/// The containers' named ports of the model: serve-<port>-<proto>.
pub fn model_ports() -> Vec<(String, Protocol, u16)> {
    let mut v = Vec::new();
    for port in [80u16, 81] {
        for proto in Protocol::ALL {
            v.push((format!("serve-{port}-{proto}"), proto, port));
        }
    }
    v
}

pub fn model_ip(ns: usize, pod: usize) -> Ipv4Addr {
    let node = (ns + pod) % 2 + 1;
    Ipv4Addr::new(10, 244, node as u8, (10 * (ns + 1) + pod) as u8)
}

/// The model's cluster: namespaces labelled `ns: <name>` (and, as the API server does,
/// `kubernetes.io/metadata.name`), pods labelled `pod: <name>`, spread over two nodes.
pub fn upstream_model() -> Cluster {
    let mut c = Cluster::new(&NODES);
    let ports = model_ports();
    let ports: Vec<(&str, Protocol, u16)> = ports
        .iter()
        .map(|(n, p, num)| (n.as_str(), *p, *num))
        .collect();
    for (i, ns) in NS.iter().enumerate() {
        c.apply_namespace(namespace(ns, labels(&[("ns", ns)])));
        for (j, p) in PODS.iter().enumerate() {
            let node = NODES[(i + j) % 2];
            c.apply_pod(pod(
                ns,
                p,
                labels(&[("pod", p)]),
                Some(model_ip(i, j)),
                node,
                &ports,
            ));
        }
    }
    c
}

/// Who may reach whom: 9×9, sources in rows.
#[derive(Clone, PartialEq, Eq)]
pub struct Reachability {
    m: [[bool; 9]; 9],
}

pub fn all_pods() -> Vec<String> {
    NS.iter()
        .flat_map(|n| PODS.iter().map(move |p| format!("{n}/{p}")))
        .collect()
}

fn idx(pod: &str) -> usize {
    all_pods()
        .iter()
        .position(|p| p == pod)
        .unwrap_or_else(|| panic!("no model pod {pod}"))
}

/// A set of model pods, as upstream's `Peer{Namespace, Pod}`: empty fields match all.
pub fn peer_matches(sel: &str, pod: &str) -> bool {
    let (ns, name) = pod.split_once('/').expect("ns/pod");
    match sel.split_once('/') {
        _ if sel == "*" => true,
        Some((sns, spod)) => sns == ns && spod == name,
        None => sel == ns,
    }
}

impl Reachability {
    pub fn new(default: bool) -> Reachability {
        Reachability {
            m: [[default; 9]; 9],
        }
    }

    /// `from`/`to`: `*` (every pod), a namespace (`x`) or a pod (`x/a`).
    pub fn expect_peer(&mut self, from: &str, to: &str, v: bool) -> &mut Self {
        let pods = all_pods();
        for (i, f) in pods.iter().enumerate() {
            for (j, t) in pods.iter().enumerate() {
                if peer_matches(from, f) && peer_matches(to, t) {
                    self.m[i][j] = v;
                }
            }
        }
        self
    }

    pub fn expect(&mut self, from: &str, to: &str, v: bool) -> &mut Self {
        self.m[idx(from)][idx(to)] = v;
        self
    }

    pub fn expect_all_ingress(&mut self, to: &str, v: bool) -> &mut Self {
        self.expect_peer("*", to, v)
    }

    pub fn expect_all_egress(&mut self, from: &str, v: bool) -> &mut Self {
        self.expect_peer(from, "*", v)
    }

    /// A pod may always reach itself (upstream leaves loopback undefined and ignores it).
    fn with_self_allowed(&self) -> Reachability {
        let mut r = self.clone();
        for i in 0..9 {
            r.m[i][i] = true;
        }
        r
    }

    fn table(&self) -> String {
        let pods = all_pods();
        let mut s = format!("{:6}", "");
        for p in &pods {
            s += &format!("{p:>5}");
        }
        s += "\n";
        for (i, f) in pods.iter().enumerate() {
            s += &format!("{f:6}");
            for j in 0..9 {
                s += if self.m[i][j] { "    ." } else { "    X" };
            }
            s += "\n";
        }
        s
    }
}

impl Cluster {
    /// Asserts the full 9×9 matrix on one port and protocol, four ways: the index's compiled
    /// decision, the per-node indexes' decisions, an index built from scratch, and the oracle.
    pub fn check(&self, proto: Protocol, port: u16, want: &Reachability) {
        let want = want.with_self_allowed();
        let scratch = self.scratch(Scope::All);
        let pods = all_pods();
        let ip = |p: &str| {
            let (n, name) = p.split_once('/').expect("ns/pod");
            self.pod_ip(n, name)
        };
        let mut got: BTreeMap<&str, Reachability> = BTreeMap::new();
        for (i, f) in pods.iter().enumerate() {
            for (j, t) in pods.iter().enumerate() {
                let (src, dst) = (Source::Addr(ip(f)), ip(t));
                let ways = [
                    (
                        "compiled",
                        decide(&self.index, src, dst, proto, port).allowed,
                    ),
                    ("per node", self.decide_by_nodes(src, dst, proto, port)),
                    (
                        "from scratch",
                        decide(&scratch, src, dst, proto, port).allowed,
                    ),
                    ("oracle", self.oracle(src, dst, proto, port)),
                ];
                for (way, v) in ways {
                    got.entry(way).or_insert_with(|| Reachability::new(false)).m[i][j] = v;
                }
            }
        }
        for (way, r) in &got {
            assert!(
                *r == want,
                "{proto}/{port}, {way}: expected\n{}got\n{}",
                want.table(),
                r.table()
            );
        }
        self.assert_incremental_equals_scratch();
    }
}
