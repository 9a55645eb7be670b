//! The service proxy's decisions: from Services and EndpointSlices to the elements of
//! podnet's nftables maps. Pure; [`crate::ruleset`] turns them into transactions.
//!
//! Per Service port: its ClusterIP . protocol . port goes to a verdict map entry that
//! jumps to the load-balancing chain for its endpoint count, and each endpoint is one
//! element of that count's endpoint map (`numgen random mod N` picks one). A port with no
//! usable endpoint is rejected at once instead. NodePorts work the same way, keyed by
//! protocol and node port. So a lookup costs the same with 10 Services or 10,000, and an
//! endpoint costs a constant two elements.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podnet_model::k8s_openapi::api::core::v1::Service;
use podnet_model::k8s_openapi::api::discovery::v1::EndpointSlice;
use podnet_model::objects::SERVICE_NAME_LABEL;

use std::collections::HashMap;

use crate::ruleset::{self, Extra, Ruleset, TableConfig, Tracked};

/// Where traffic for one Service port goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// A ClusterIP port: address, protocol (`tcp`, `udp`, `sctp`) and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub ip: Ipv4Addr,
    pub protocol: String,
    pub port: u16,
}

/// An endpoint (address, protocol, port) that conntrack may translate a flow to: with
/// untracked pod traffic, flows to and from it stay tracked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NatEndpoint {
    pub ip: Ipv4Addr,
    pub protocol: String,
    pub port: u16,
}

impl NatEndpoint {
    /// Its element in `nat-endpoints`.
    fn key(&self) -> String {
        format!("{} . {} . {}", self.ip, self.protocol, self.port)
    }
}

/// What the proxy serves, for comparing syncs (conntrack clean-up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    /// Endpoints of every ClusterIP port that has some.
    pub endpoints: BTreeMap<Frontend, BTreeSet<Endpoint>>,
}

/// UDP conntrack entries that would keep misdirecting a client that keeps its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleUdp {
    /// Flows to a frontend that were sent to an endpoint it no longer has.
    ToEndpoint {
        frontend: Frontend,
        endpoint: Endpoint,
    },
    /// Flows to a frontend from when it had no endpoint (never NATed, never answered).
    Unanswered { frontend: Frontend },
}

/// What conntrack must forget when the proxy goes from `before` to `after`.
pub fn stale_udp(before: &Served, after: &Served) -> Vec<StaleUdp> {
    let mut out = Vec::new();
    for (f, eps) in &before.endpoints {
        if f.protocol != "udp" {
            continue;
        }
        let now = after.endpoints.get(f);
        for e in eps {
            if now.is_none_or(|n| !n.contains(e)) {
                out.push(StaleUdp::ToEndpoint {
                    frontend: f.clone(),
                    endpoint: *e,
                });
            }
        }
    }
    for f in after.endpoints.keys() {
        if f.protocol == "udp" && !before.endpoints.contains_key(f) {
            out.push(StaleUdp::Unanswered {
                frontend: f.clone(),
            });
        }
    }
    out
}

/// Kubernetes' default ClientIP affinity timeout: three hours.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// A short name for an affinity chain: a hash of its frontend, endpoints and timeout.
fn affinity_id(frontend: &str, eps: &[(Ipv4Addr, u16)], timeout: u32) -> String {
    let text = format!("{frontend}|{eps:?}|{timeout}");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:012x}", h >> 16)
}

struct Ep {
    ip: Ipv4Addr,
    port: u16,
    node: Option<String>,
    terminating: bool,
}

fn protocol(p: Option<&str>) -> String {
    p.unwrap_or("TCP").to_ascii_lowercase()
}

/// What the proxy needs of an EndpointSlice: its Service, its ports and its usable
/// endpoints, parsed once when it arrives. A small fraction of the Kubernetes object,
/// which matters with 10,000 of them.
///
/// Usable: ready (and so not terminating), or terminating and still serving. The second
/// kind gets traffic only where a Service has none of the first (as kube-proxy does since
/// 1.28): a Service whose only pod is being replaced keeps answering through it until
/// the new one is ready, instead of refusing connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    /// (namespace, Service name), from `kubernetes.io/service-name`.
    pub service: (String, String),
    /// (port name, protocol, port).
    pub ports: Vec<(String, String, u16)>,
    /// (address, node, terminating).
    pub endpoints: Vec<(Ipv4Addr, Option<String>, bool)>,
}

impl SliceInfo {
    /// `None` for a slice that names no Service.
    pub fn from_slice(s: &EndpointSlice) -> Option<SliceInfo> {
        let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        let ports = s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok()?;
                Some((
                    p.name.clone().unwrap_or_default(),
                    protocol(p.protocol.as_deref()),
                    port,
                ))
            })
            .collect();
        let mut endpoints = Vec::new();
        for e in &s.endpoints {
            let c = e.conditions.as_ref();
            let terminating = c.and_then(|c| c.terminating) == Some(true);
            // `ready` absent means ready; a terminating endpoint is never ready, and is
            // usable only while it says it is serving.
            let usable = if terminating {
                c.and_then(|c| c.serving) == Some(true)
            } else {
                c.and_then(|c| c.ready) != Some(false)
            };
            if !usable {
                continue;
            }
            for a in &e.addresses {
                if let Ok(ip) = a.parse() {
                    endpoints.push((ip, e.node_name.clone(), terminating));
                }
            }
        }
        Some(SliceInfo {
            service: (
                s.metadata.namespace.clone().unwrap_or_default(),
                svc.clone(),
            ),
            ports,
            endpoints,
        })
    }
}

/// Usable endpoints per (port name, protocol), over a Service's slices.
fn endpoints_by_port(slices: &[&SliceInfo]) -> BTreeMap<(String, String), Vec<Ep>> {
    let mut out: BTreeMap<_, Vec<Ep>> = BTreeMap::new();
    for s in slices {
        for (name, proto, port) in &s.ports {
            let list = out.entry((name.clone(), proto.clone())).or_default();
            for (ip, node, terminating) in &s.endpoints {
                list.push(Ep {
                    ip: *ip,
                    port: *port,
                    node: node.clone(),
                    terminating: *terminating,
                });
            }
        }
    }
    for list in out.values_mut() {
        list.sort_by_key(|e| (e.ip, e.port));
        list.dedup_by_key(|e| (e.ip, e.port));
    }
    out
}

/// What one Service adds to the table: its elements, the extras it needs, and what it
/// serves. Depends only on the Service, its slices and this node's name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contribution {
    /// (set or map, key, value).
    pub elements: Vec<(String, String, String)>,
    pub extras: Vec<(String, Extra)>,
    pub served: Vec<(Frontend, BTreeSet<Endpoint>)>,
    /// Every endpoint its ClusterIPs and NodePorts translate to.
    pub nat: BTreeSet<NatEndpoint>,
    /// What of it podnet does not serve, and why (its IPv6 family, until dual-stack).
    pub ignored: Option<String>,
    /// A LoadBalancer Service with `externalTrafficPolicy: Local`: its health check node
    /// port and how many ready endpoints it has on this node.
    pub health_check: Option<(u16, usize)>,
}

impl Contribution {
    fn add(&mut self, set: &str, k: String, v: String) {
        self.elements.push((set.to_string(), k, v));
    }

    fn translates_to(&mut self, eps: &[Endpoint], protocol: &str) {
        self.nat.extend(eps.iter().map(|e| NatEndpoint {
            ip: e.ip,
            protocol: protocol.to_string(),
            port: e.port,
        }));
    }
}

/// One Service's contribution. `slices` are its own EndpointSlices.
pub fn contribution(svc: &Service, slices: &[&SliceInfo], me: &str) -> Contribution {
    let mut c = Contribution::default();
    let eps = endpoints_by_port(slices);
    let Some(spec) = &svc.spec else {
        return c;
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return c;
    }
    // Headless Services (`None`) are not proxied. Of a dual-stack Service, its IPv4
    // ClusterIP is served and its IPv6 one ignored, said once (IPv4 only, for now).
    let ips: Vec<std::net::IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let v4 = ips.iter().find_map(|ip| match ip {
        std::net::IpAddr::V4(v4) => Some(*v4),
        std::net::IpAddr::V6(_) => None,
    });
    if let Some(v6) = ips.iter().find(|ip| ip.is_ipv6()) {
        let name = format!(
            "Service {}/{}",
            svc.metadata.namespace.as_deref().unwrap_or_default(),
            svc.metadata.name.as_deref().unwrap_or_default()
        );
        c.ignored = Some(match v4 {
            Some(v4) => format!("{name}: its IPv6 ClusterIP {v6} is ignored (podnet serves IPv4 until dual-stack comes); {v4} is served"),
            None => format!("{name}: IPv6 only ({v6}), ignored; podnet serves IPv4 Services until dual-stack comes"),
        });
    }
    let Some(cip) = v4 else {
        return c;
    };
    c.add("cluster-ips", cip.to_string(), String::new());
    let local_only = |policy: Option<&str>| policy == Some("Local");
    let load_balancer = ty == "LoadBalancer";
    if let (true, true, Some(port)) = (
        load_balancer,
        local_only(spec.external_traffic_policy.as_deref()),
        spec.health_check_node_port
            .and_then(|p| u16::try_from(p).ok()),
    ) {
        let mut local: Vec<Ipv4Addr> = eps
            .values()
            .flatten()
            .filter(|e| !e.terminating && e.node.as_deref() == Some(me))
            .map(|e| e.ip)
            .collect();
        local.sort();
        local.dedup();
        c.health_check = Some((port, local.len()));
    }
    for p in spec.ports.iter().flatten() {
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let proto = protocol(p.protocol.as_deref());
        let key = (p.name.clone().unwrap_or_default(), proto.clone());
        let all: &[Ep] = eps.get(&key).map(Vec::as_slice).unwrap_or_default();
        // The ready endpoints a traffic policy allows; failing those, the terminating
        // ones that still serve.
        let pick = |local: bool| -> Vec<Endpoint> {
            let allowed = |e: &&Ep| !local || e.node.as_deref() == Some(me);
            let ready = all.iter().filter(allowed).any(|e| !e.terminating);
            all.iter()
                .filter(allowed)
                .filter(|e| e.terminating != ready)
                .map(|e| Endpoint {
                    ip: e.ip,
                    port: e.port,
                })
                .collect()
        };
        let frontend = format!("{cip} . {proto} . {port}");
        c.add("service-ports", frontend.clone(), String::new());
        let cluster = pick(local_only(spec.internal_traffic_policy.as_deref()));
        c.translates_to(&cluster, &proto);
        let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        });
        if cluster.is_empty() {
            c.add("no-endpoints", frontend.clone(), String::new());
        } else if let Some(timeout) = affinity_timeout {
            let eps: Vec<(Ipv4Addr, u16)> = cluster.iter().map(|e| (e.ip, e.port)).collect();
            let (chain, extra) =
                ruleset::affinity(&affinity_id(&frontend, &eps, timeout), &eps, timeout);
            c.extras.push((chain.clone(), extra));
            c.add("service-ips", frontend.clone(), format!("goto {chain}"));
            c.served.push((
                Frontend {
                    ip: cip,
                    protocol: proto.clone(),
                    port,
                },
                cluster.iter().copied().collect(),
            ));
        } else {
            let (chain, def) = ruleset::cluster_lb(cluster.len());
            c.extras.push((chain.clone(), def));
            c.add("service-ips", frontend.clone(), format!("goto {chain}"));
            for (i, e) in cluster.iter().enumerate() {
                c.add(
                    &format!("ep-{}", cluster.len()),
                    format!("{frontend} . {i}"),
                    format!("{} . {}", e.ip, e.port),
                );
            }
            c.served.push((
                Frontend {
                    ip: cip,
                    protocol: proto.clone(),
                    port,
                },
                cluster.iter().copied().collect(),
            ));
        }
        let Some(np) = p
            .node_port
            .and_then(|n| u16::try_from(n).ok())
            // LoadBalancer Services have NodePorts too (the load balancer sends to them).
            .filter(|_| ty == "NodePort" || load_balancer)
        else {
            continue;
        };
        let np_key = format!("{proto} . {np}");
        let external_local = local_only(spec.external_traffic_policy.as_deref());
        let external = pick(external_local);
        c.translates_to(&external, &proto);
        if external.is_empty() {
            c.add("nodeport-no-endpoints", np_key, String::new());
            continue;
        }
        if !external_local {
            // Replies must come back through this node: masquerade.
            c.add("nodeport-masquerade", np_key.clone(), String::new());
        }
        let (chain, def) = ruleset::nodeport_lb(external.len());
        c.extras.push((chain.clone(), def));
        c.add("service-nodeports", np_key.clone(), format!("goto {chain}"));
        for (i, e) in external.iter().enumerate() {
            c.add(
                &format!("np-ep-{}", external.len()),
                format!("{np_key} . {i}"),
                format!("{} . {}", e.ip, e.port),
            );
        }
    }
    c
}

/// The whole table for this node at once: masquerade for `node_ips`, and every Service.
/// (The agent keeps it up to date incrementally with [`ServiceProxy`]; this is the same
/// decision made from scratch.)
pub fn ruleset(
    cluster_cidr: Ipv4Net,
    node_ips: &[Ipv4Addr],
    me: &str,
    services: &[&Service],
    slices: &[&EndpointSlice],
) -> (Ruleset, Served) {
    let mut proxy = ServiceProxy::new(&TableConfig {
        cluster_cidr,
        service_cidr: None,
        vxlan_port: None,
        underlay: None,
        local_pods: None,
        untracked_pods: false,
        service_proxy: true,
    });
    proxy.set_nodes(node_ips);
    let infos: Vec<SliceInfo> = slices
        .iter()
        .filter_map(|s| SliceInfo::from_slice(s))
        .collect();
    let mut by_service: BTreeMap<(String, String), Vec<&SliceInfo>> = BTreeMap::new();
    for info in &infos {
        by_service
            .entry(info.service.clone())
            .or_default()
            .push(info);
    }
    for svc in services {
        let key = (
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        let mine = by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
        proxy.set_service(key, Some(contribution(svc, mine, me)));
    }
    (proxy.table.want().clone(), proxy.served.clone())
}

/// The service proxy's state: every Service's contribution, kept so that a change of one
/// Service costs the same whatever the number of others.
pub struct ServiceProxy {
    contributions: HashMap<(String, String), Contribution>,
    /// Extras shared between Services (the load-balancing chains), with their users.
    extra_users: HashMap<String, usize>,
    nodes: BTreeSet<Ipv4Addr>,
    config: TableConfig,
    /// With untracked pod traffic: what `nat-endpoints` holds, and why.
    nat: Option<NatEndpoints>,
    pub served: Served,
    pub table: Tracked,
    /// Services (or their IPv6 family) not served, and why.
    ignored: BTreeMap<(String, String), String>,
    /// The hostPort elements in the table: (map, key, value).
    hostports: BTreeSet<(&'static str, String, String)>,
}

/// The endpoints in `nat-endpoints`: those Service ports use (with how many), and those
/// no Service uses any more that conntrack may still have translated flows to. Those
/// flows' replies need their reverse NAT until they end, however long that is (a deleted
/// Service's TCP connections live on): an endpoint leaves the set only once a look at
/// conntrack, made after its translation left the kernel, finds no flow translated to it.
#[derive(Default)]
struct NatEndpoints {
    users: HashMap<NatEndpoint, usize>,
    /// The ports of the endpoints in the set, with how many: `nat-ports`, which most
    /// packets are checked against instead (a bitmap, cheaper than the set's hash).
    ports: HashMap<u16, usize>,
    /// Unused since before the last look at conntrack, which found flows to them.
    lingering: BTreeSet<NatEndpoint>,
    /// Unused since the last look: the next one decides.
    unused: BTreeSet<NatEndpoint>,
}

impl NatEndpoints {
    fn used(&mut self, table: &mut Tracked, e: &NatEndpoint) {
        let users = self.users.entry(e.clone()).or_default();
        *users += 1;
        if *users == 1 && !self.unused.remove(e) && !self.lingering.remove(e) {
            self.add(table, e);
        }
    }

    fn add(&mut self, table: &mut Tracked, e: &NatEndpoint) {
        table.element("nat-endpoints", &e.key(), Some(String::new()));
        let n = self.ports.entry(e.port).or_default();
        *n += 1;
        if *n == 1 {
            table.element("nat-ports", &e.port.to_string(), Some(String::new()));
        }
    }

    fn remove(&mut self, table: &mut Tracked, e: &NatEndpoint) {
        table.element("nat-endpoints", &e.key(), None);
        if let Some(n) = self.ports.get_mut(&e.port) {
            *n -= 1;
            if *n == 0 {
                self.ports.remove(&e.port);
                table.element("nat-ports", &e.port.to_string(), None);
            }
        }
    }

    fn released(&mut self, e: &NatEndpoint) {
        if let Some(users) = self.users.get_mut(e) {
            *users -= 1;
            if *users == 0 {
                self.users.remove(e);
                self.unused.insert(e.clone());
            }
        }
    }
}

impl ServiceProxy {
    pub fn new(config: &TableConfig) -> ServiceProxy {
        let mut table = Tracked::new(ruleset::base(config));
        for (set, _) in ruleset::SETS {
            table.declare(set);
        }
        ServiceProxy {
            contributions: HashMap::new(),
            extra_users: HashMap::new(),
            nodes: BTreeSet::new(),
            config: config.clone(),
            nat: None,
            served: Served::default(),
            table,
            ignored: BTreeMap::new(),
            hostports: BTreeSet::new(),
        }
    }

    /// Turns on untracked pod traffic, or keeps it up to date: `translated` are the
    /// endpoints conntrack has translated flows to, looked up now (and, for an update,
    /// after the last transaction was committed). The first call puts every Service's
    /// endpoints and those in `translated` into `nat-endpoints`, and the chain that skips
    /// conntrack into the table, in one transaction. Later calls let endpoints no Service
    /// uses leave the set once no flow is translated to them. Only endpoints in the
    /// cluster CIDR matter: the chain skips only pod-to-pod flows.
    pub fn untrack_pods(&mut self, translated: impl IntoIterator<Item = NatEndpoint>) {
        let cidr = self.config.cluster_cidr;
        let nat = match &mut self.nat {
            Some(nat) => nat,
            None => {
                let mut nat = NatEndpoints::default();
                for c in self.contributions.values() {
                    for e in c.nat.iter().filter(|e| cidr.contains(&e.ip)) {
                        nat.used(&mut self.table, e);
                    }
                }
                self.config.untracked_pods = true;
                self.table.set_base(ruleset::base(&self.config));
                self.nat.insert(nat)
            }
        };
        let mut keep = BTreeSet::new();
        for e in translated.into_iter().filter(|e| cidr.contains(&e.ip)) {
            if nat.users.contains_key(&e) {
                continue;
            }
            if !nat.lingering.contains(&e) && !nat.unused.contains(&e) {
                nat.add(&mut self.table, &e);
            }
            keep.insert(e);
        }
        let ended: Vec<NatEndpoint> = nat.lingering.difference(&keep).cloned().collect();
        for e in &ended {
            nat.remove(&mut self.table, e);
        }
        // Endpoints released since the last look may have flows this one missed (made
        // before their translation left the kernel): the next look decides.
        keep.append(&mut nat.unused);
        nat.lingering = keep;
    }

    /// Whether pod traffic is untracked (see [`ServiceProxy::untrack_pods`]).
    pub fn untracking(&self) -> bool {
        self.nat.is_some()
    }

    /// Whether endpoints no Service uses wait in `nat-endpoints` for their flows to end:
    /// conntrack needs another look.
    pub fn lingering(&self) -> bool {
        self.nat
            .as_ref()
            .is_some_and(|n| !n.lingering.is_empty() || !n.unused.is_empty())
    }

    /// This node's pod CIDR (see [`TableConfig::local_pods`]); a change rewrites the table.
    pub fn set_local_pods(&mut self, cidr: Ipv4Net) {
        if self.config.local_pods != Some(cidr) {
            self.config.local_pods = Some(cidr);
            self.table.set_base(ruleset::base(&self.config));
        }
    }

    /// The device of this node's underlay address (see [`TableConfig::underlay`]); a
    /// change rewrites the table.
    pub fn set_underlay(&mut self, device: &str) {
        if self.config.underlay.as_deref() != Some(device) {
            self.config.underlay = Some(device.to_string());
            self.table.set_base(ruleset::base(&self.config));
        }
    }

    /// The nodes whose addresses traffic from pods keeps (not masqueraded).
    pub fn set_nodes(&mut self, ips: &[Ipv4Addr]) {
        let want: BTreeSet<Ipv4Addr> = ips.iter().copied().collect();
        for gone in self.nodes.difference(&want) {
            self.table.element("nodes", &gone.to_string(), None);
        }
        for new in want.difference(&self.nodes) {
            self.table
                .element("nodes", &new.to_string(), Some(String::new()));
        }
        self.nodes = want;
    }

    /// Replaces one Service's contribution (`None`: the Service is gone); returns the UDP
    /// conntrack entries that became stale.
    pub fn set_service(
        &mut self,
        key: (String, String),
        new: Option<Contribution>,
    ) -> Vec<StaleUdp> {
        let old = self.contributions.remove(&key).unwrap_or_default();
        let new = new.unwrap_or_default();
        match &new.ignored {
            Some(why) => {
                if self.ignored.get(&key) != Some(why) {
                    tracing::warn!("{why}");
                    self.ignored.insert(key.clone(), why.clone());
                }
            }
            None => {
                self.ignored.remove(&key);
            }
        }
        if old == new {
            if !new.elements.is_empty() || !new.extras.is_empty() || !new.served.is_empty() {
                self.contributions.insert(key, new);
            }
            return Vec::new();
        }
        let new_keys: BTreeSet<(&str, &str)> = new
            .elements
            .iter()
            .map(|(s, k, _)| (s.as_str(), k.as_str()))
            .collect();
        for (set, k, _) in &old.elements {
            if !new_keys.contains(&(set.as_str(), k.as_str())) {
                self.table.element(set, k, None);
            }
        }
        for (set, k, v) in &new.elements {
            self.table.element(set, k, Some(v.clone()));
        }
        if let Some(nat) = &mut self.nat {
            let cidr = self.config.cluster_cidr;
            for e in new
                .nat
                .difference(&old.nat)
                .filter(|e| cidr.contains(&e.ip))
            {
                nat.used(&mut self.table, e);
            }
            for e in old.nat.difference(&new.nat) {
                nat.released(e);
            }
        }
        for (name, extra) in &new.extras {
            let users = self.extra_users.entry(name.clone()).or_default();
            *users += 1;
            if *users == 1 {
                self.table.extra(name, Some(extra.clone()));
            }
        }
        for (name, _) in &old.extras {
            if let Some(users) = self.extra_users.get_mut(name) {
                *users -= 1;
                if *users == 0 {
                    self.extra_users.remove(name);
                    self.table.extra(name, None);
                }
            }
        }
        let before = Served {
            endpoints: old.served.iter().cloned().collect(),
        };
        let after = Served {
            endpoints: new.served.iter().cloned().collect(),
        };
        for (f, _) in &old.served {
            self.served.endpoints.remove(f);
        }
        self.served.endpoints.extend(new.served.iter().cloned());
        if !new.elements.is_empty() || !new.extras.is_empty() || !new.served.is_empty() {
            self.contributions.insert(key, new);
        }
        stale_udp(&before, &after)
    }

    /// The health check node ports to serve, and what each answers.
    pub fn health_checks(&self) -> BTreeMap<u16, crate::health_checks::Check> {
        self.contributions
            .iter()
            .filter_map(|(key, c)| {
                let (port, local) = c.health_check?;
                Some((
                    port,
                    crate::health_checks::Check {
                        service: key.clone(),
                        local_endpoints: local,
                    },
                ))
            })
            .collect()
    }

    /// The pods' hostPorts on this node become exactly `want`.
    pub fn set_hostports(&mut self, want: &[crate::hostports::HostPort]) {
        let want: BTreeSet<(&'static str, String, String)> =
            want.iter().map(|h| h.element()).collect();
        // A key whose value changes is replaced by the add below.
        for (map, key, _) in self.hostports.difference(&want) {
            if !want.iter().any(|(m, k, _)| m == map && k == key) {
                self.table.element(map, key, None);
            }
        }
        for (map, key, value) in want.difference(&self.hostports) {
            self.table.element(map, key, Some(value.clone()));
        }
        self.hostports = want;
    }

    /// How many Services it ignores, wholly or in part.
    pub fn ignored(&self) -> usize {
        self.ignored.len()
    }

    /// Every Service key the proxy holds.
    pub fn services(&self) -> impl Iterator<Item = &(String, String)> {
        self.contributions.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_model::objects::parse_documents;
    use podnet_model::Object;

    const YAML: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec: {clusterIP: 10.96.0.11, selector: {app: none}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: default}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: default}
spec: {clusterIP: 10.96.0.12, type: NodePort, externalTrafficPolicy: Local, internalTrafficPolicy: Local, ports: [{port: 80, nodePort: 30081}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [10.244.1.2], nodeName: node-1, conditions: {ready: true}}
- {addresses: [10.244.2.2], nodeName: node-2}
- {addresses: [10.244.2.3], nodeName: node-2, conditions: {ready: false}}
- {addresses: [10.244.2.4], nodeName: node-2, conditions: {ready: true, terminating: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: local-1, namespace: default, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
ports: [{name: "", port: 80}]
endpoints:
- {addresses: [10.244.2.9], nodeName: node-2}
"#;

    fn build(me: &str) -> (Ruleset, Served) {
        let objs = parse_documents(YAML).expect("valid");
        let svcs: Vec<&Service> = objs
            .iter()
            .filter_map(|o| {
                if let Object::Service(s) = o {
                    Some(s)
                } else {
                    None
                }
            })
            .collect();
        let slices: Vec<&EndpointSlice> = objs
            .iter()
            .filter_map(|o| {
                if let Object::EndpointSlice(s) = o {
                    Some(s)
                } else {
                    None
                }
            })
            .collect();
        ruleset(
            "10.244.0.0/16".parse().expect("net"),
            &["172.18.0.11".parse().expect("ip")],
            me,
            &svcs,
            &slices,
        )
    }

    fn el(r: &Ruleset, set: &str) -> Vec<String> {
        r.elements[set]
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k} : {v}")
                }
            })
            .collect()
    }

    fn nat(ip: &str, protocol: &str, port: u16) -> NatEndpoint {
        NatEndpoint {
            ip: ip.parse().expect("ip"),
            protocol: protocol.into(),
            port,
        }
    }

    fn nat_elements(proxy: &ServiceProxy) -> Vec<String> {
        el(proxy.table.want(), "nat-endpoints")
    }

    #[test]
    fn untracked_pods_keep_translated_endpoints_tracked_until_their_flows_end() {
        let objs = parse_documents(YAML).expect("valid");
        let svc = |name: &str| {
            objs.iter()
                .find_map(|o| match o {
                    Object::Service(s) if s.metadata.name.as_deref() == Some(name) => Some(s),
                    _ => None,
                })
                .expect("service")
        };
        let infos: Vec<SliceInfo> = objs
            .iter()
            .filter_map(|o| match o {
                Object::EndpointSlice(s) => SliceInfo::from_slice(s),
                _ => None,
            })
            .collect();
        let slices = |name: &str| -> Vec<&SliceInfo> {
            infos.iter().filter(|i| i.service.1 == name).collect()
        };
        let key = |name: &str| ("default".to_string(), name.to_string());
        let mut proxy = ServiceProxy::new(&TableConfig::test("10.244.0.0/16"));
        proxy.set_local_pods("10.244.2.0/24".parse().expect("net"));
        for name in ["web", "local"] {
            proxy.set_service(
                key(name),
                Some(contribution(svc(name), &slices(name), "node-2")),
            );
        }
        assert!(!proxy.untracking());
        assert!(nat_elements(&proxy).is_empty(), "filled only when asked");
        // Turned on: every endpoint translated to, and a flow from before the agent
        // started to an endpoint no Service has now; not an address outside the pods.
        proxy.untrack_pods([nat("10.244.3.3", "tcp", 80), nat("172.18.0.12", "tcp", 80)]);
        assert!(proxy.table.want().base.contains("chain raw-prerouting"));
        let web = [
            "10.244.1.2 . tcp . 8080",
            "10.244.1.2 . udp . 5353",
            "10.244.2.2 . tcp . 8080",
            "10.244.2.2 . udp . 5353",
        ];
        let mut want: Vec<&str> = web.to_vec();
        want.extend(["10.244.2.9 . tcp . 80", "10.244.3.3 . tcp . 80"]);
        want.sort();
        assert_eq!(nat_elements(&proxy), want);
        assert_eq!(el(proxy.table.want(), "nat-ports"), ["5353", "80", "8080"]);
        assert!(proxy.lingering());
        // That flow ended: its endpoint leaves at the next look.
        proxy.untrack_pods([]);
        want.retain(|e| *e != "10.244.3.3 . tcp . 80");
        assert_eq!(nat_elements(&proxy), want);
        assert!(!proxy.lingering());
        // A Service deleted while conntrack has flows to its endpoint: the endpoint stays
        // through a look made before the deletion reached the kernel, and through every
        // later one that finds the flow; it leaves at the first that does not.
        proxy.set_service(key("local"), None);
        assert_eq!(nat_elements(&proxy), want);
        proxy.untrack_pods([]);
        assert_eq!(
            nat_elements(&proxy),
            want,
            "the look may predate the commit"
        );
        proxy.untrack_pods([nat("10.244.2.9", "tcp", 80)]);
        assert_eq!(nat_elements(&proxy), want, "a flow still uses it");
        proxy.untrack_pods([]);
        want.retain(|e| *e != "10.244.2.9 . tcp . 80");
        assert_eq!(nat_elements(&proxy), want);
        // An endpoint that comes back while it waits is simply in use again.
        proxy.set_service(key("web"), None);
        proxy.set_service(
            key("web"),
            Some(contribution(svc("web"), &slices("web"), "node-2")),
        );
        proxy.untrack_pods([]);
        proxy.untrack_pods([]);
        assert_eq!(nat_elements(&proxy), web);
        assert!(!proxy.lingering());
        // Most packets are checked against the endpoints' ports only.
        assert_eq!(el(proxy.table.want(), "nat-ports"), ["5353", "8080"]);
    }

    #[test]
    fn golden_elements() {
        let (r, _) = build("node-1");
        assert_eq!(
            el(&r, "cluster-ips"),
            ["10.96.0.10", "10.96.0.11", "10.96.0.12"]
        );
        assert_eq!(
            el(&r, "service-ips"),
            [
                "10.96.0.10 . tcp . 80 : goto lb-2",
                "10.96.0.10 . udp . 53 : goto lb-2"
            ]
        );
        assert_eq!(
            el(&r, "ep-2"),
            [
                "10.96.0.10 . tcp . 80 . 0 : 10.244.1.2 . 8080",
                "10.96.0.10 . tcp . 80 . 1 : 10.244.2.2 . 8080",
                "10.96.0.10 . udp . 53 . 0 : 10.244.1.2 . 5353",
                "10.96.0.10 . udp . 53 . 1 : 10.244.2.2 . 5353",
            ]
        );
        // No endpoints, or none on this node for a Local policy: rejected at once.
        assert_eq!(
            el(&r, "no-endpoints"),
            ["10.96.0.11 . tcp . 80", "10.96.0.12 . tcp . 80"]
        );
        assert_eq!(el(&r, "nodeport-no-endpoints"), ["tcp . 30081"]);
        assert_eq!(el(&r, "service-nodeports"), ["tcp . 30080 : goto np-lb-2"]);
        assert_eq!(el(&r, "nodeport-masquerade"), ["tcp . 30080"]);
        assert_eq!(
            el(&r, "service-ports"),
            [
                "10.96.0.10 . tcp . 80",
                "10.96.0.10 . udp . 53",
                "10.96.0.11 . tcp . 80",
                "10.96.0.12 . tcp . 80"
            ]
        );
        assert!(r.extras.contains_key("lb-2") && r.extras.contains_key("np-lb-2"));
    }

    #[test]
    fn stale_udp_flows_follow_endpoint_changes() {
        let f = |proto: &str| Frontend {
            ip: "10.96.0.10".parse().expect("ip"),
            protocol: proto.into(),
            port: 53,
        };
        let ep = |last: u8| Endpoint {
            ip: Ipv4Addr::new(10, 244, 1, last),
            port: 5353,
        };
        let served = |eps: &[(Frontend, &[Endpoint])]| Served {
            endpoints: eps
                .iter()
                .map(|(f, e)| (f.clone(), e.iter().copied().collect()))
                .collect(),
        };
        let before = served(&[(f("udp"), &[ep(2), ep(3)]), (f("tcp"), &[ep(2)])]);
        let after = served(&[(f("udp"), &[ep(3)])]);
        assert_eq!(
            stale_udp(&before, &after),
            vec![StaleUdp::ToEndpoint {
                frontend: f("udp"),
                endpoint: ep(2)
            }]
        );
        assert_eq!(
            stale_udp(&Served::default(), &after),
            vec![StaleUdp::Unanswered { frontend: f("udp") }]
        );
        assert!(stale_udp(&after, &after).is_empty());
    }

    #[test]
    fn local_policies_use_only_this_nodes_endpoints_and_keep_the_client_address() {
        let (r, served) = build("node-2");
        assert!(el(&r, "service-ips").contains(&"10.96.0.12 . tcp . 80 : goto lb-1".to_string()));
        assert!(el(&r, "service-nodeports").contains(&"tcp . 30081 : goto np-lb-1".to_string()));
        assert!(!el(&r, "nodeport-masquerade").contains(&"tcp . 30081".to_string()));
        assert_eq!(served.endpoints.len(), 3);
    }

    /// Kubernetes marks a pod being deleted `terminating` (never `ready`), and `serving`
    /// while its readiness probe passes: such endpoints carry traffic only when a Service
    /// has no ready one.
    #[test]
    fn terminating_endpoints_serve_only_when_nothing_else_is_ready() {
        let yaml = |endpoints: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: one, namespace: default}}\nspec: {{clusterIP: 10.96.0.30, ports: [{{port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: one-1, namespace: default, labels: {{kubernetes.io/service-name: one}}}}\naddressType: IPv4\nports: [{{name: \"\", port: 8080}}]\nendpoints:\n{endpoints}"
            )
        };
        let endpoints_of = |endpoints: &str| -> Vec<String> {
            let objs = parse_documents(&yaml(endpoints)).expect("valid");
            let svc = objs.iter().find_map(|o| match o {
                Object::Service(s) => Some(s),
                _ => None,
            });
            let slices: Vec<SliceInfo> = objs
                .iter()
                .filter_map(|o| match o {
                    Object::EndpointSlice(s) => SliceInfo::from_slice(s),
                    _ => None,
                })
                .collect();
            let refs: Vec<&SliceInfo> = slices.iter().collect();
            let c = contribution(svc.expect("service"), &refs, "node-1");
            let mut eps: Vec<String> = c
                .elements
                .iter()
                .filter(|(set, _, _)| set.starts_with("ep-"))
                .map(|(_, _, v)| v.clone())
                .collect();
            if c.elements.iter().any(|(set, _, _)| set == "no-endpoints") {
                eps.push("no endpoints".into());
            }
            eps.sort();
            eps
        };
        let terminating_serving = "- {addresses: [10.244.1.5], nodeName: node-1, conditions: {ready: false, serving: true, terminating: true}}\n";
        let terminating_gone = "- {addresses: [10.244.1.6], nodeName: node-1, conditions: {ready: false, serving: false, terminating: true}}\n";
        let ready = "- {addresses: [10.244.1.7], nodeName: node-1, conditions: {ready: true, serving: true, terminating: false}}\n";
        // The only pod is terminating but still serving: it keeps the Service answering.
        assert_eq!(endpoints_of(terminating_serving), ["10.244.1.5 . 8080"]);
        // One that no longer serves does not.
        assert_eq!(endpoints_of(terminating_gone), ["no endpoints"]);
        // Once a ready one exists, it takes all new connections.
        assert_eq!(
            endpoints_of(&format!("{terminating_serving}{ready}")),
            ["10.244.1.7 . 8080"]
        );
    }

    #[test]
    fn ipv6_services_are_ignored_and_said_so_dual_stack_keeps_ipv4() {
        // The lab refuses IPv6 Services; an API server sends them.
        let service = |name: &str, ips: &[&str]| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ips[0], "clusterIPs": ips, "ports": [{"port": 80}]}
            }))
            .expect("a Service")
        };
        let svcs = [
            service("six", &["fd00::10"]),
            service("dual", &["10.96.0.40", "fd00::40"]),
        ];
        let mut proxy = ServiceProxy::new(&TableConfig::test("10.244.0.0/16"));
        for s in &svcs {
            let c = contribution(s, &[], "node-1");
            let key = (
                "default".to_string(),
                s.metadata.name.clone().unwrap_or_default(),
            );
            proxy.set_service(key, Some(c));
        }
        assert_eq!(proxy.ignored(), 2);
        let six = contribution(&svcs[0], &[], "node-1");
        assert!(
            six.elements.is_empty(),
            "nothing of an IPv6 Service is served"
        );
        assert!(
            six.ignored
                .as_deref()
                .is_some_and(|w| w.contains("default/six") && w.contains("IPv6 only")),
            "{six:?}"
        );
        let dual = proxy
            .table
            .want()
            .elements
            .get("cluster-ips")
            .cloned()
            .unwrap_or_default();
        assert!(
            dual.contains_key("10.96.0.40"),
            "the IPv4 family of a dual-stack Service is served"
        );
        proxy.set_service(("default".into(), "six".into()), None);
        assert_eq!(proxy.ignored(), 1);
    }
}
