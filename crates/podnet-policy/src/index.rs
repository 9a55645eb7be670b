//! The policy index: fed Pods, Namespaces and NetworkPolicies one at a time (`apply_*`,
//! `delete_*`), it keeps the compiled form of the pods in its scope up to date and records
//! what changed, for [`PolicyIndex::take_delta`].
//!
//! Each update costs in proportion to what it touches, not to the cluster:
//! - a pod: the policies of its namespace, the policies with a namespaceSelector peer that
//!   selects its namespace, and the few egress rules with named ports towards any pod;
//! - a namespace's labels: the policies with a namespaceSelector peer, and its pods;
//! - a policy: the namespaces (its namespaceSelectors) and the pods they and its own
//!   namespace hold.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use crate::compiled::{
    Compiled, CompiledRule, Delta, Direction, Element, NamedPort, PeerMatch, PolicyId, PolicySet,
    PortMatch, RuleId, SetId, View,
};
use crate::objects::{
    Key, Labels, NamespaceInfo, PodInfo, PodKey, PolicyKey, NAMESPACE_NAME_LABEL,
};
use crate::policy::{Namespaces, Peers, PodPeer, PolicyInfo, Ports, Rule};
use crate::ranges::addrs_contain;
use crate::selector::Selector;

/// Which pods the index compiles for: a node's (what its agent enforces) or every pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Node(String),
}

impl Scope {
    fn includes(&self, pod: &PodInfo) -> bool {
        match self {
            Scope::All => true,
            Scope::Node(n) => pod.node.as_deref() == Some(n.as_str()),
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct PolicyIndex {
    scope: Scope,
    /// Namespaces seen, their labels carrying `kubernetes.io/metadata.name`.
    namespaces: HashMap<String, Labels>,
    /// Namespace → name → pod (by namespace, so that scans need no keys).
    pods: HashMap<String, BTreeMap<String, PodInfo>>,
    /// Pods in scope by address (an address may briefly be two pods'; the first key wins).
    local_by_ip: BTreeMap<Ipv4Addr, BTreeSet<PodKey>>,
    policies: HashMap<PolicyId, PolicyState>,
    policy_ids: HashMap<PolicyKey, PolicyId>,
    policies_by_ns: HashMap<String, BTreeSet<PolicyId>>,
    /// Policies with a namespaceSelector peer.
    ns_selecting: BTreeSet<PolicyId>,
    /// Namespace → the policies with a namespaceSelector peer selecting it.
    ns_match: HashMap<String, BTreeSet<PolicyId>>,
    /// Policies with an egress rule whose named ports resolve on any pod (to all, or to
    /// ipBlocks): every pod is a candidate for them.
    wide_named: BTreeSet<PolicyId>,
    next_policy: u32,
    /// Pods in scope → the policies selecting them, per direction.
    selection: HashMap<PodKey, [BTreeSet<PolicyId>; 2]>,
    /// The verdict maps, per direction.
    maps: [BTreeMap<Ipv4Addr, SetId>; 2],
    sets: BTreeMap<SetId, SetState>,
    set_ids: HashMap<(Direction, Vec<PolicyId>), SetId>,
    next_set: u32,
    /// (policy, direction) → how many policy sets hold it: its rules exist while > 0.
    live: HashMap<(PolicyId, Direction), u32>,
    batch: Batch,
}

#[derive(Debug)]
struct PolicyState {
    info: PolicyInfo,
    key: PolicyKey,
    rules: [Vec<RuleState>; 2],
}

#[derive(Debug)]
struct RuleState {
    compiled: CompiledRule,
    /// How many pods contribute each element (two pods may briefly share an address).
    counts: HashMap<Element, u32>,
}

#[derive(Debug)]
struct SetState {
    set: PolicySet,
    key: Vec<PolicyId>,
    refs: u32,
}

/// What changed since the last `take_delta`, recorded as it happens.
#[derive(Debug, Default)]
struct Batch {
    verdicts_before: HashMap<(Direction, Ipv4Addr), Option<SetId>>,
    /// (policy, direction) → (its rules existed at the start, how many).
    live_before: HashMap<(PolicyId, Direction), (bool, u32)>,
    sets_added: BTreeSet<SetId>,
    sets_removed: BTreeSet<SetId>,
    /// Net element changes of rules that existed at the start.
    elements: HashMap<(RuleId, Element), i32>,
}

/// What one pod brings to one policy: whether the policy selects it (per direction) and the
/// elements it puts in the policy's rules.
#[derive(Debug, Default, PartialEq, Eq)]
struct Contribs {
    selected: [bool; 2],
    elements: Vec<(RuleId, Element)>,
}

fn peer_selects(peer: &PodPeer, policy_ns: &str, pod: &PodInfo, ns_labels: &Labels) -> bool {
    let ns_ok = match &peer.namespaces {
        Namespaces::Policy => pod.namespace == policy_ns,
        Namespaces::Matching(s) => s.matches(ns_labels),
    };
    ns_ok && peer.pods.matches(&pod.labels)
}

fn contributions(
    scope: &Scope,
    pid: PolicyId,
    p: &PolicyState,
    pod: &PodInfo,
    ns_labels: &Labels,
) -> Contribs {
    let mut c = Contribs::default();
    let selects = pod.namespace == p.info.namespace
        && scope.includes(pod)
        && p.info.pod_selector.matches(&pod.labels);
    for d in Direction::BOTH {
        let Some(rules) = p.info.rules(d) else {
            continue;
        };
        c.selected[d.idx()] = selects;
        let Some(ip) = pod.ip else {
            continue;
        };
        for (i, rule) in rules.iter().enumerate() {
            let rid = RuleId {
                policy: pid,
                direction: d,
                index: i as u32,
            };
            let (any, pod_peer, in_block) = match &rule.peers {
                Peers::Any => (true, false, false),
                Peers::Only { pods, blocks } => (
                    false,
                    pods.iter()
                        .any(|pp| peer_selects(pp, &p.info.namespace, pod, ns_labels)),
                    blocks.as_ref().is_some_and(|b| addrs_contain(b, ip)),
                ),
            };
            if pod_peer {
                c.elements.push((rid, Element::Pod(ip)));
            }
            if let Ports::Only { named, .. } = &rule.ports {
                // Named ports resolve on the destination: for ingress the selected pod,
                // for egress each pod the rule lets the selected pods reach.
                let resolves_here = match d {
                    Direction::Ingress => selects,
                    Direction::Egress => any || pod_peer || in_block,
                };
                if resolves_here {
                    for (name, protocol) in named {
                        if let Some(port) = pod.named_port(name, *protocol) {
                            c.elements.push((
                                rid,
                                Element::Named(NamedPort {
                                    ip,
                                    protocol: *protocol,
                                    port,
                                }),
                            ));
                        }
                    }
                }
            }
        }
    }
    c.elements.sort();
    c.elements.dedup();
    c
}

/// The rule with its structure and no elements yet.
fn empty_rule(rule: &Rule, policy: &PolicyKey) -> CompiledRule {
    CompiledRule {
        policy: policy.clone(),
        peers: match &rule.peers {
            Peers::Any => PeerMatch::Any,
            Peers::Only { pods, blocks } => PeerMatch::Only {
                pods: (!pods.is_empty()).then(BTreeSet::new),
                blocks: blocks.clone(),
            },
        },
        ports: match &rule.ports {
            Ports::Any => PortMatch::Any,
            Ports::Only { ranges, named } => PortMatch::Only {
                ranges: (!ranges.is_empty()).then(|| ranges.clone()),
                named: (!named.is_empty()).then(BTreeSet::new),
            },
        },
    }
}

/// The namespaceSelectors of a policy's peers.
fn ns_selectors(info: &PolicyInfo) -> Vec<&Selector> {
    Direction::BOTH
        .iter()
        .filter_map(|d| info.rules(*d))
        .flatten()
        .filter_map(|r| match &r.peers {
            Peers::Any => None,
            Peers::Only { pods, .. } => Some(pods),
        })
        .flatten()
        .filter_map(|pp| match &pp.namespaces {
            Namespaces::Policy => None,
            Namespaces::Matching(s) => Some(s),
        })
        .collect()
}

/// Whether each namespaceSelector peer of a policy selects a namespace with these labels.
fn ns_peer_matches(info: &PolicyInfo, labels: &Labels) -> Vec<bool> {
    ns_selectors(info)
        .iter()
        .map(|s| s.matches(labels))
        .collect()
}

fn has_ns_peers(info: &PolicyInfo) -> bool {
    Direction::BOTH
        .iter()
        .filter_map(|d| info.rules(*d))
        .flatten()
        .any(|r| {
            matches!(&r.peers, Peers::Only { pods, .. }
            if pods.iter().any(|pp| matches!(pp.namespaces, Namespaces::Matching(_))))
        })
}

fn has_wide_named(info: &PolicyInfo) -> bool {
    info.egress.iter().flatten().any(|r| {
        let named = matches!(&r.ports, Ports::Only { named, .. } if !named.is_empty());
        let wide = match &r.peers {
            Peers::Any => true,
            Peers::Only { blocks, .. } => blocks.is_some(),
        };
        named && wide
    })
}

impl PolicyIndex {
    pub fn new(scope: Scope) -> PolicyIndex {
        PolicyIndex {
            scope,
            namespaces: HashMap::new(),
            pods: HashMap::new(),
            local_by_ip: BTreeMap::new(),
            policies: HashMap::new(),
            policy_ids: HashMap::new(),
            policies_by_ns: HashMap::new(),
            ns_selecting: BTreeSet::new(),
            ns_match: HashMap::new(),
            wide_named: BTreeSet::new(),
            next_policy: 0,
            selection: HashMap::new(),
            maps: [BTreeMap::new(), BTreeMap::new()],
            sets: BTreeMap::new(),
            set_ids: HashMap::new(),
            next_set: 0,
            live: HashMap::new(),
            batch: Batch::default(),
        }
    }

    /// The id the compiled form uses for a policy now (it changes when the spec does).
    pub fn policy_id(&self, namespace: &str, name: &str) -> Option<PolicyId> {
        self.policy_ids.get(&Key::new(namespace, name)).copied()
    }

    /// The verdict map of a direction: the isolated pods in scope and their policy sets.
    pub fn map(&self, direction: Direction) -> &BTreeMap<Ipv4Addr, SetId> {
        &self.maps[direction.idx()]
    }

    /// A snapshot of the compiled form.
    pub fn compiled(&self) -> Compiled {
        let mut rules = BTreeMap::new();
        for ((pid, d), n) in &self.live {
            if *n == 0 {
                continue;
            }
            if let Some(p) = self.policies.get(pid) {
                for (i, r) in p.rules[d.idx()].iter().enumerate() {
                    rules.insert(
                        RuleId {
                            policy: *pid,
                            direction: *d,
                            index: i as u32,
                        },
                        r.compiled.clone(),
                    );
                }
            }
        }
        Compiled {
            ingress: self.maps[0].clone(),
            egress: self.maps[1].clone(),
            sets: self
                .sets
                .iter()
                .map(|(id, s)| (*id, s.set.clone()))
                .collect(),
            rules,
        }
    }

    /// What changed since the last call (or since the index was made: everything).
    pub fn take_delta(&mut self) -> Delta {
        let batch = std::mem::take(&mut self.batch);
        let mut delta = Delta {
            sets_added: batch.sets_added,
            sets_removed: batch.sets_removed,
            ..Delta::default()
        };
        for ((pid, d), (before, n)) in batch.live_before {
            let after = self.is_live(pid, d);
            let ids = (0..n).map(|index| RuleId {
                policy: pid,
                direction: d,
                index,
            });
            match (before, after) {
                (false, true) => delta.rules_added.extend(ids),
                (true, false) => delta.rules_removed.extend(ids),
                _ => {}
            }
        }
        for ((rid, el), net) in batch.elements {
            // Tracked only for rules that existed at the start; reported if they still do.
            if net == 0 || !self.is_live(rid.policy, rid.direction) {
                continue;
            }
            if net > 0 {
                delta.elements_added.insert((rid, el));
            } else {
                delta.elements_removed.insert((rid, el));
            }
        }
        for ((d, ip), before) in batch.verdicts_before {
            let now = self.maps[d.idx()].get(&ip).copied();
            if now != before {
                delta.verdicts.insert((d, ip), now);
            }
        }
        delta
    }

    pub fn apply_namespace(&mut self, ns: NamespaceInfo) {
        let NamespaceInfo { name, mut labels } = ns;
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
        let known = self.namespaces.contains_key(&name) || self.pods.contains_key(&name);
        let old = self.ns_labels(&name).into_owned();
        self.namespaces.insert(name.clone(), labels.clone());
        if !known || old != labels {
            self.namespace_changed(&name, &old, &labels);
        }
    }

    pub fn delete_namespace(&mut self, name: &str) {
        let Some(old) = self.namespaces.remove(name) else {
            return;
        };
        if self.pods.contains_key(name) {
            // Its pods stay until deleted; their namespace is then known only by name.
            let new = NamespaceInfo::default_labels(name);
            if old != new {
                self.namespace_changed(name, &old, &new);
            }
        } else {
            self.ns_match.remove(name);
        }
    }

    pub fn apply_pod(&mut self, pod: PodInfo) {
        if self.pod(&pod.namespace, &pod.name) == Some(&pod) {
            return;
        }
        self.ensure_namespace_known(&pod.namespace);
        let key = pod.key();
        let old = self
            .pods
            .get_mut(&pod.namespace)
            .and_then(|m| m.remove(&pod.name));
        self.pod_changed(&key, old.as_ref(), Some(&pod));
        self.pods
            .entry(key.namespace)
            .or_default()
            .insert(key.name, pod);
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        let Some(old) = self.pods.get_mut(namespace).and_then(|m| m.remove(name)) else {
            return;
        };
        // Keep the namespace known while its last pod leaves the policies.
        self.pod_changed(&Key::new(namespace, name), Some(&old), None);
        if self.pods.get(namespace).is_some_and(|m| m.is_empty()) {
            self.pods.remove(namespace);
            if !self.namespaces.contains_key(namespace) {
                self.ns_match.remove(namespace);
            }
        }
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods.get(namespace)?.get(name)
    }

    pub fn apply_policy(&mut self, info: PolicyInfo) {
        let key = info.key();
        let old = self.policy_ids.get(&key).copied();
        if let Some(pid) = old {
            if self.policies.get(&pid).is_some_and(|p| p.info == info) {
                return;
            }
        }
        let mut touched = BTreeSet::new();
        if let Some(pid) = old {
            self.unselect(pid, &mut touched);
        }
        self.add_policy(info, &mut touched);
        self.refresh_pods(&touched);
        if let Some(pid) = old {
            self.forget_policy(pid);
        }
    }

    pub fn delete_policy(&mut self, namespace: &str, name: &str) {
        let Some(pid) = self.policy_ids.get(&Key::new(namespace, name)).copied() else {
            return;
        };
        let mut touched = BTreeSet::new();
        self.unselect(pid, &mut touched);
        self.refresh_pods(&touched);
        self.forget_policy(pid);
    }

    fn is_live(&self, pid: PolicyId, d: Direction) -> bool {
        self.live.get(&(pid, d)).is_some_and(|n| *n > 0)
    }

    fn live_at_start(&self, pid: PolicyId, d: Direction) -> bool {
        match self.batch.live_before.get(&(pid, d)) {
            Some((before, _)) => *before,
            None => self.is_live(pid, d),
        }
    }

    fn ns_labels(&self, ns: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(ns) {
            Some(l) => Cow::Borrowed(l),
            None => Cow::Owned(NamespaceInfo::default_labels(ns)),
        }
    }

    /// A namespace first heard of through a pod: which namespaceSelectors select it.
    fn ensure_namespace_known(&mut self, ns: &str) {
        if self.namespaces.contains_key(ns) || self.pods.contains_key(ns) {
            return;
        }
        let labels = NamespaceInfo::default_labels(ns);
        let matching: BTreeSet<PolicyId> = self
            .ns_selecting
            .iter()
            .filter(|pid| {
                self.policies
                    .get(pid)
                    .is_some_and(|p| ns_selectors(&p.info).iter().any(|s| s.matches(&labels)))
            })
            .copied()
            .collect();
        if !matching.is_empty() {
            self.ns_match.insert(ns.to_string(), matching);
        }
    }

    fn namespace_changed(&mut self, ns: &str, old: &Labels, new: &Labels) {
        let mut matching = BTreeSet::new();
        let mut affected = Vec::new();
        for pid in &self.ns_selecting {
            let Some(p) = self.policies.get(pid) else {
                continue;
            };
            let (before, after) = (ns_peer_matches(&p.info, old), ns_peer_matches(&p.info, new));
            if after.contains(&true) {
                matching.insert(*pid);
            }
            if before != after {
                affected.push(*pid);
            }
        }
        if matching.is_empty() {
            self.ns_match.remove(ns);
        } else {
            self.ns_match.insert(ns.to_string(), matching);
        }
        let mut changes = Vec::new();
        for pod in self.pods.get(ns).into_iter().flat_map(|m| m.values()) {
            let key = pod.key();
            for pid in &affected {
                let Some(p) = self.policies.get(pid) else {
                    continue;
                };
                let before = contributions(&self.scope, *pid, p, pod, old);
                let after = contributions(&self.scope, *pid, p, pod, new);
                if before != after {
                    changes.push((key.clone(), *pid, before, after));
                }
            }
        }
        let mut touched = BTreeSet::new();
        for (key, pid, before, after) in changes {
            self.apply_contribs(&key, pid, &before, &after, &mut touched);
        }
        self.refresh_pods(&touched);
    }

    fn pod_changed(&mut self, key: &PodKey, old: Option<&PodInfo>, new: Option<&PodInfo>) {
        let ns = key.namespace.as_str();
        let labels = self.ns_labels(ns);
        let mut candidates: BTreeSet<PolicyId> = self.wide_named.clone();
        candidates.extend(self.policies_by_ns.get(ns).into_iter().flatten());
        candidates.extend(self.ns_match.get(ns).into_iter().flatten());
        let mut changes = Vec::new();
        for pid in candidates {
            let Some(p) = self.policies.get(&pid) else {
                continue;
            };
            let of = |pod: Option<&PodInfo>| {
                pod.map(|pod| contributions(&self.scope, pid, p, pod, &labels))
                    .unwrap_or_default()
            };
            let (before, after) = (of(old), of(new));
            if before != after {
                changes.push((pid, before, after));
            }
        }
        drop(labels);
        let mut touched = BTreeSet::new();
        for (pid, before, after) in changes {
            self.apply_contribs(key, pid, &before, &after, &mut touched);
        }
        let local_ip =
            |p: Option<&PodInfo>| p.filter(|p| self.scope.includes(p)).and_then(|p| p.ip);
        let (old_ip, new_ip) = (local_ip(old), local_ip(new));
        if old_ip != new_ip {
            if let Some(ip) = old_ip {
                if let Some(keys) = self.local_by_ip.get_mut(&ip) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.local_by_ip.remove(&ip);
                    }
                }
            }
            if let Some(ip) = new_ip {
                self.local_by_ip.entry(ip).or_default().insert(key.clone());
            }
        }
        for ip in old_ip.into_iter().chain(new_ip) {
            self.refresh_ip(ip);
        }
    }

    /// Replaces a pod's contribution to a policy by another.
    fn apply_contribs(
        &mut self,
        key: &PodKey,
        pid: PolicyId,
        before: &Contribs,
        after: &Contribs,
        touched: &mut BTreeSet<PodKey>,
    ) {
        for d in Direction::BOTH {
            let (b, a) = (before.selected[d.idx()], after.selected[d.idx()]);
            if b == a {
                continue;
            }
            let sel = self.selection.entry(key.clone()).or_default();
            if a {
                sel[d.idx()].insert(pid);
            } else {
                sel[d.idx()].remove(&pid);
                if sel.iter().all(|s| s.is_empty()) {
                    self.selection.remove(key);
                }
            }
            touched.insert(key.clone());
        }
        // Both lists are sorted: walk them together.
        let (mut i, mut j) = (0, 0);
        let (b, a) = (&before.elements, &after.elements);
        while i < b.len() || j < a.len() {
            match (b.get(i), a.get(j)) {
                (Some(x), Some(y)) if x == y => {
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x < y => {
                    self.remove_element(x.0, x.1);
                    i += 1;
                }
                (Some(x), None) => {
                    self.remove_element(x.0, x.1);
                    i += 1;
                }
                (_, Some(y)) => {
                    self.add_element(y.0, y.1);
                    j += 1;
                }
                (None, None) => break,
            }
        }
    }

    fn rule_state(&mut self, rid: RuleId) -> Option<&mut RuleState> {
        self.policies.get_mut(&rid.policy)?.rules[rid.direction.idx()].get_mut(rid.index as usize)
    }

    fn add_element(&mut self, rid: RuleId, el: Element) {
        let track = self.live_at_start(rid.policy, rid.direction);
        let Some(rs) = self.rule_state(rid) else {
            return;
        };
        let n = rs.counts.entry(el).or_insert(0);
        *n += 1;
        if *n != 1 {
            return;
        }
        match (el, &mut rs.compiled.peers, &mut rs.compiled.ports) {
            (
                Element::Pod(ip),
                PeerMatch::Only {
                    pods: Some(pods), ..
                },
                _,
            ) => {
                pods.insert(ip);
            }
            (
                Element::Named(np),
                _,
                PortMatch::Only {
                    named: Some(named), ..
                },
            ) => {
                named.insert(np);
            }
            _ => {}
        }
        if track {
            *self.batch.elements.entry((rid, el)).or_insert(0) += 1;
        }
    }

    fn remove_element(&mut self, rid: RuleId, el: Element) {
        let track = self.live_at_start(rid.policy, rid.direction);
        let Some(rs) = self.rule_state(rid) else {
            return;
        };
        let Some(n) = rs.counts.get_mut(&el) else {
            return;
        };
        *n -= 1;
        if *n != 0 {
            return;
        }
        rs.counts.remove(&el);
        match (el, &mut rs.compiled.peers, &mut rs.compiled.ports) {
            (
                Element::Pod(ip),
                PeerMatch::Only {
                    pods: Some(pods), ..
                },
                _,
            ) => {
                pods.remove(&ip);
            }
            (
                Element::Named(np),
                _,
                PortMatch::Only {
                    named: Some(named), ..
                },
            ) => {
                named.remove(&np);
            }
            _ => {}
        }
        if track {
            *self.batch.elements.entry((rid, el)).or_insert(0) -= 1;
        }
    }

    /// Takes a policy out of its pods' selections (its rules stay until `forget_policy`).
    fn unselect(&mut self, pid: PolicyId, touched: &mut BTreeSet<PodKey>) {
        let Some(ns) = self.policies.get(&pid).map(|p| p.info.namespace.clone()) else {
            return;
        };
        for name in self.pods.get(&ns).into_iter().flat_map(|m| m.keys()) {
            let key = Key::new(&ns, name);
            if let Some(sel) = self.selection.get_mut(&key) {
                let mut hit = false;
                for s in sel.iter_mut() {
                    hit |= s.remove(&pid);
                }
                if hit {
                    if sel.iter().all(|s| s.is_empty()) {
                        self.selection.remove(&key);
                    }
                    touched.insert(key);
                }
            }
        }
    }

    fn add_policy(&mut self, info: PolicyInfo, touched: &mut BTreeSet<PodKey>) {
        let pid = PolicyId(self.next_policy);
        self.next_policy += 1;
        let key = info.key();
        let rules = Direction::BOTH.map(|d| {
            info.rules(d)
                .unwrap_or_default()
                .iter()
                .map(|r| RuleState {
                    compiled: empty_rule(r, &key),
                    counts: HashMap::new(),
                })
                .collect()
        });
        let ns = info.namespace.clone();
        let (ns_peers, wide) = (has_ns_peers(&info), has_wide_named(&info));
        self.policy_ids.insert(key.clone(), pid);
        self.policies_by_ns
            .entry(ns.clone())
            .or_default()
            .insert(pid);
        if wide {
            self.wide_named.insert(pid);
        }
        let mut matched_ns = Vec::new();
        if ns_peers {
            self.ns_selecting.insert(pid);
            let selectors = ns_selectors(&info);
            let known = self.namespaces.iter().map(|(n, l)| (n, Cow::Borrowed(l)));
            let by_name_only = self
                .pods
                .keys()
                .filter(|n| !self.namespaces.contains_key(*n))
                .map(|n| (n, Cow::Owned(NamespaceInfo::default_labels(n))));
            for (name, labels) in known.chain(by_name_only) {
                if selectors.iter().any(|s| s.matches(&labels)) {
                    matched_ns.push(name.clone());
                }
            }
            for name in &matched_ns {
                self.ns_match.entry(name.clone()).or_default().insert(pid);
            }
        }
        self.policies.insert(pid, PolicyState { info, key, rules });
        // The namespaces whose pods may contribute: all (named ports towards any pod), or
        // the policy's own and those its namespaceSelectors select.
        let candidates: Vec<&String> = if wide {
            self.pods.keys().collect()
        } else {
            std::iter::once(&ns)
                .chain(matched_ns.iter().filter(|n| **n != ns))
                .collect()
        };
        let mut changes = Vec::new();
        if let Some(p) = self.policies.get(&pid) {
            for n in candidates {
                let labels = self.ns_labels(n);
                for pod in self.pods.get(n).into_iter().flat_map(|m| m.values()) {
                    let c = contributions(&self.scope, pid, p, pod, &labels);
                    if c != Contribs::default() {
                        changes.push((pod.key(), c));
                    }
                }
            }
        }
        for (key, c) in changes {
            self.apply_contribs(&key, pid, &Contribs::default(), &c, touched);
        }
    }

    /// Drops a policy that no pod's selection holds any more.
    fn forget_policy(&mut self, pid: PolicyId) {
        let Some(p) = self.policies.remove(&pid) else {
            return;
        };
        if self.policy_ids.get(&p.key) == Some(&pid) {
            self.policy_ids.remove(&p.key);
        }
        if let Some(ids) = self.policies_by_ns.get_mut(&p.info.namespace) {
            ids.remove(&pid);
            if ids.is_empty() {
                self.policies_by_ns.remove(&p.info.namespace);
            }
        }
        if self.ns_selecting.remove(&pid) {
            self.ns_match.retain(|_, ids| {
                ids.remove(&pid);
                !ids.is_empty()
            });
        }
        self.wide_named.remove(&pid);
    }

    fn refresh_pods(&mut self, keys: &BTreeSet<PodKey>) {
        let ips: BTreeSet<Ipv4Addr> = keys
            .iter()
            .filter_map(|k| self.pod(&k.namespace, &k.name))
            .filter(|p| self.scope.includes(p))
            .filter_map(|p| p.ip)
            .collect();
        for ip in ips {
            self.refresh_ip(ip);
        }
    }

    /// Points the verdict maps' entries for an address at the policy sets its pod needs.
    fn refresh_ip(&mut self, ip: Ipv4Addr) {
        let winner = self
            .local_by_ip
            .get(&ip)
            .and_then(|keys| keys.iter().next())
            .cloned();
        for d in Direction::BOTH {
            let want: Vec<PolicyId> = winner
                .as_ref()
                .and_then(|k| self.selection.get(k))
                .map(|s| s[d.idx()].iter().copied().collect())
                .unwrap_or_default();
            let cur = self.maps[d.idx()].get(&ip).copied();
            let same = match cur {
                Some(c) => self.sets.get(&c).is_some_and(|s| s.key == want),
                None => want.is_empty(),
            };
            if same {
                continue;
            }
            self.batch.verdicts_before.entry((d, ip)).or_insert(cur);
            if want.is_empty() {
                self.maps[d.idx()].remove(&ip);
            } else {
                let id = self.intern_set(d, want);
                if let Some(s) = self.sets.get_mut(&id) {
                    s.refs += 1;
                }
                self.maps[d.idx()].insert(ip, id);
            }
            if let Some(c) = cur {
                self.release_set(c);
            }
        }
    }

    fn intern_set(&mut self, d: Direction, key: Vec<PolicyId>) -> SetId {
        if let Some(id) = self.set_ids.get(&(d, key.clone())) {
            return *id;
        }
        let id = SetId(self.next_set);
        self.next_set += 1;
        let mut policies = Vec::new();
        let mut rules = Vec::new();
        for pid in &key {
            if let Some(p) = self.policies.get(pid) {
                policies.push(p.key.clone());
                rules.extend((0..p.rules[d.idx()].len()).map(|i| RuleId {
                    policy: *pid,
                    direction: d,
                    index: i as u32,
                }));
            }
        }
        for pid in &key {
            self.live_change(*pid, d, true);
        }
        self.sets.insert(
            id,
            SetState {
                set: PolicySet {
                    direction: d,
                    policies,
                    rules,
                },
                key: key.clone(),
                refs: 0,
            },
        );
        self.set_ids.insert((d, key), id);
        self.batch.sets_added.insert(id);
        id
    }

    fn release_set(&mut self, id: SetId) {
        let Some(s) = self.sets.get_mut(&id) else {
            return;
        };
        s.refs -= 1;
        if s.refs > 0 {
            return;
        }
        let Some(s) = self.sets.remove(&id) else {
            return;
        };
        let d = s.set.direction;
        self.set_ids.remove(&(d, s.key.clone()));
        if !self.batch.sets_added.remove(&id) {
            self.batch.sets_removed.insert(id);
        }
        for pid in s.key {
            self.live_change(pid, d, false);
        }
    }

    fn live_change(&mut self, pid: PolicyId, d: Direction, up: bool) {
        let was = self.is_live(pid, d);
        let rules = self
            .policies
            .get(&pid)
            .map_or(0, |p| p.rules[d.idx()].len() as u32);
        self.batch
            .live_before
            .entry((pid, d))
            .or_insert((was, rules));
        let n = self.live.entry((pid, d)).or_insert(0);
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.live.remove(&(pid, d));
            }
        }
    }
}

impl View for PolicyIndex {
    fn policy_set_of(&self, direction: Direction, ip: Ipv4Addr) -> Option<SetId> {
        self.maps[direction.idx()].get(&ip).copied()
    }

    fn policy_set(&self, id: SetId) -> Option<&PolicySet> {
        self.sets.get(&id).map(|s| &s.set)
    }

    fn rule(&self, id: RuleId) -> Option<&CompiledRule> {
        self.policies
            .get(&id.policy)?
            .rules
            .get(id.direction.idx())?
            .get(id.index as usize)
            .map(|r| &r.compiled)
    }
}
