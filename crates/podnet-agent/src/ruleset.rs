//! podnet's nftables table as data, and the transaction that moves the kernel from what
//! was committed to what is wanted. Pure.
//!
//! The table has a fixed *base* (sets, verdict maps and the hooked chains), *extras*
//! created on demand (one load-balancing chain and endpoint map per endpoint count in
//! use), and the *elements* of its sets and maps, which carry everything that changes
//! with Services and nodes. An ordinary sync only adds and deletes elements (and
//! creates an extra when a new endpoint count appears): no rule or chain is rewritten,
//! nothing is flushed, and the kernel never re-validates the whole table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;

use ipnet::Ipv4Net;
use podnet_kernel::nftables;

use crate::drift::{WantSet, Wanted};

/// podnet's own table; podnet touches no other.
pub const TABLE: &str = "podnet";
/// The mark that asks postrouting to masquerade a connection (NodePort, policy Cluster).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// What the fixed part of the table depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    /// The whole cluster's pod CIDR (traffic leaving it is masqueraded).
    pub cluster_cidr: Ipv4Net,
    /// Its addresses that no Service has are refused at once.
    pub service_cidr: Option<Ipv4Net>,
    /// With VXLAN, its UDP port: the tunnel's outer packets skip conntrack.
    pub vxlan_port: Option<u16>,
    /// The device the node's underlay address is on, once known: with VXLAN, arriving
    /// outer packets are picked out at its ingress.
    pub underlay: Option<String>,
    /// This node's pod CIDR, once known: Service traffic between two of its pods is
    /// masqueraded.
    pub local_pods: Option<Ipv4Net>,
    /// Pod-to-pod traffic that no Service translates skips conntrack (opt-in:
    /// `untrackedPodTraffic`). Set once `nat-endpoints` holds every endpoint that
    /// conntrack may have translated a flow to, and effective once `local_pods` is known.
    pub untracked_pods: bool,
    /// Whether podnet proxies Services; without (`serviceProxy: false`, kube-proxy does),
    /// no hooked chain looks at Service traffic.
    pub service_proxy: bool,
}

#[cfg(test)]
impl TableConfig {
    pub fn test(cluster_cidr: &str) -> TableConfig {
        TableConfig {
            cluster_cidr: cluster_cidr.parse().expect("net"),
            service_cidr: None,
            vxlan_port: None,
            underlay: None,
            local_pods: None,
            untracked_pods: false,
            service_proxy: true,
        }
    }
}

/// Everything podnet wants in its table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub base: String,
    /// Objects created on demand, by name.
    pub extras: BTreeMap<String, Extra>,
    /// Elements by set or map name: key → value (empty for plain sets).
    pub elements: BTreeMap<String, BTreeMap<String, String>>,
}

impl Ruleset {
    /// The chains this table has: the base's and the extras'. A drift check compares
    /// them with the kernel's.
    pub fn chains(&self) -> BTreeSet<String> {
        let base = self.base.lines().filter_map(|l| {
            l.trim()
                .strip_prefix("chain ")
                .and_then(|r| r.strip_suffix(" {"))
        });
        let prefix = format!("add chain inet {TABLE} ");
        let extras = self
            .extras
            .values()
            .flat_map(|e| e.create.lines())
            .filter_map(|l| l.strip_prefix(prefix.as_str()));
        base.chain(extras).map(str::to_string).collect()
    }

    /// The sets and maps this table has: the base's and the extras'.
    pub fn sets(&self) -> BTreeSet<String> {
        let [set, map] = ["set", "map"].map(|k| format!("add {k} inet {TABLE} "));
        let extras = self
            .extras
            .values()
            .flat_map(|e| e.create.lines())
            .filter_map(|l| {
                l.strip_prefix(set.as_str())
                    .or(l.strip_prefix(map.as_str()))
            })
            .filter_map(|l| l.split_whitespace().next());
        SETS.iter()
            .map(|(name, _)| *name)
            .chain(extras)
            .map(str::to_string)
            .collect()
    }

    /// The elements the agent wants, as the kernel stores them, in each set and map of
    /// the table whose elements it writes (not those the datapath fills, such as
    /// affinity's) and `only` names, for a drift check to compare with the kernel's.
    pub fn wanted(
        &self,
        only: impl Fn(&str) -> bool,
    ) -> Result<BTreeMap<&str, WantSet<'_>>, String> {
        let sets = self.sets();
        self.elements
            .iter()
            .filter(|(set, _)| sets.contains(*set) && only(set))
            .map(|(set, items)| {
                let wanted = items
                    .iter()
                    .map(|(key, value)| {
                        let w = Wanted {
                            data: encode_data(value)?,
                            key,
                            value,
                        };
                        Ok((encode_key(set, key)?, w))
                    })
                    .collect::<Result<WantSet, String>>()?;
                Ok((set.as_str(), wanted))
            })
            .collect()
    }
}

/// An element of `set` as nft writes it, from its bytes (for a drift report).
pub fn describe(set: &str, e: &nftables::Element) -> String {
    let key = decode(&e.key, &key_fields(set));
    let value = match &e.data {
        nftables::ElementData::None => return key,
        nftables::ElementData::Value(v) => decode(v, &[Field::Ipv4, Field::Port]),
        nftables::ElementData::Goto(chain) => format!("goto {chain}"),
        nftables::ElementData::Jump(chain) => format!("jump {chain}"),
        nftables::ElementData::Verdict(code) => match *code as i32 {
            0 => "drop".into(),
            1 => "accept".into(),
            -1 => "continue".into(),
            -5 => "return".into(),
            code => format!("verdict {code}"),
        },
    };
    format!("{key} : {value}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Ipv4,
    Proto,
    Port,
    /// `numgen`'s result: a host-order u32.
    Slot,
}

/// The fields of a key of `set`: those of its type in [`SETS`]; an endpoint map's end
/// with the `numgen` slot.
fn key_fields(set: &str) -> Vec<Field> {
    let service = [Field::Proto, Field::Port, Field::Slot];
    if set.starts_with("np-ep-") {
        return service.to_vec();
    }
    if set.starts_with("ep-") {
        return [Field::Ipv4].iter().chain(&service).copied().collect();
    }
    let ty = SETS
        .iter()
        .find(|(name, _)| *name == set)
        .map_or("", |(_, ty)| ty);
    let key = ty
        .trim_start_matches("type ")
        .split(" : ")
        .next()
        .unwrap_or("");
    key.split(" . ")
        .filter_map(|t| match t {
            "ipv4_addr" => Some(Field::Ipv4),
            "inet_proto" => Some(Field::Proto),
            "inet_service" => Some(Field::Port),
            _ => None,
        })
        .collect()
}

/// Bytes laid out as [`nftables::encode`] does, as nft writes them; in hex if they do
/// not fit `fields`.
fn decode(bytes: &[u8], fields: &[Field]) -> String {
    let hex = || {
        let words: Vec<String> = bytes
            .chunks(4)
            .map(|w| w.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        format!("0x{}", words.join(" "))
    };
    let width = |f: &Field| match f {
        Field::Ipv4 | Field::Slot => 4,
        Field::Proto => 1,
        Field::Port => 2,
    };
    let widths: Vec<usize> = match fields {
        [one] => vec![width(one)],
        _ => vec![4; fields.len()],
    };
    if fields.is_empty() || widths.iter().sum::<usize>() != bytes.len() {
        return hex();
    }
    let mut at = 0;
    let mut out = Vec::new();
    for (field, w) in fields.iter().zip(widths) {
        let b = &bytes[at..at + w];
        at += w;
        out.push(match field {
            Field::Ipv4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
            Field::Proto => match b[0] {
                6 => "tcp".into(),
                17 => "udp".into(),
                132 => "sctp".into(),
                p => p.to_string(),
            },
            Field::Port => u16::from_be_bytes([b[0], b[1]]).to_string(),
            Field::Slot => u32::from_ne_bytes([b[0], b[1], b[2], b[3]]).to_string(),
        });
    }
    out.join(" . ")
}

/// Chains, maps or sets made on demand: the commands that create them, and those that
/// delete them once nothing refers to them any more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    pub create: String,
    pub delete: String,
}

/// The sets and maps of the base, with their element types.
pub const SETS: &[(&str, &str)] = &[
    ("nodes", "type ipv4_addr"),
    ("cluster-ips", "type ipv4_addr"),
    (
        "service-ports",
        "type ipv4_addr . inet_proto . inet_service",
    ),
    ("no-endpoints", "type ipv4_addr . inet_proto . inet_service"),
    ("nodeport-no-endpoints", "type inet_proto . inet_service"),
    ("nodeport-masquerade", "type inet_proto . inet_service"),
    // Endpoints whose flows must stay tracked, and their ports (see `untracked_pods`).
    (
        "nat-endpoints",
        "type ipv4_addr . inet_proto . inet_service",
    ),
    ("nat-ports", "type inet_service"),
    (
        "service-ips",
        "type ipv4_addr . inet_proto . inet_service : verdict",
    ),
    (
        "service-nodeports",
        "type inet_proto . inet_service : verdict",
    ),
    // hostPorts: to any address of the node, or to one.
    (
        "hostports",
        "type inet_proto . inet_service : ipv4_addr . inet_service",
    ),
    (
        "hostport-ips",
        "type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service",
    ),
];

/// The fixed part of the table. Service traffic between two pods of one node (and a pod
/// reaching itself) is masqueraded to the bridge's address: otherwise the endpoint would
/// answer the client directly over the bridge, past the node's NAT, and a pod reaching
/// itself would get a packet from its own address, which it drops as a martian.
///
/// Every check runs in a hook that a packet must pass anyway, and only where it is
/// needed: each base chain is one more call on every packet of its hook, and the cost
/// of a pod-to-pod packet across nodes is mostly those calls (see BENCHMARKS.md).
/// - Refusing (no endpoints, a port or address a ClusterIP does not serve) is decided
///   in the nat chains, which the kernel runs for the first packet of a connection only:
///   the packets of established flows, nearly all, pass no lookup at all.
/// - Same-node Service traffic is recognised in nat postrouting by addresses (a DNATed
///   connection from a local pod to a local pod), not by devices: when br_netfilter is
///   on (`--bridge-netfilter`), such a packet is *bridged* back out of the bridge it came
///   in on, and br_netfilter runs postrouting with no input device.
///
/// Priorities are numbers (dstnat is -100): nft 1.0.6 knows the names only for some
/// hooks.
pub fn base(c: &TableConfig) -> String {
    let cluster_cidr = c.cluster_cidr;
    // VXLAN's outer packets go from node to node and are never translated: tracking them
    // would add a second conntrack pass to every tunnelled packet, on both nodes, so
    // they skip conntrack (priority -300 comes before it), at both ends. Arriving ones
    // are picked out at the underlay device's ingress, not in prerouting: a prerouting
    // chain would be one more call for every packet the node forwards, the pods' own
    // included, where the ingress chain sees only what arrives from the underlay.
    //
    // The pods' own packets stay tracked in both directions by default. Skipping
    // conntrack for one direction only (say, a local pod's packets to other nodes' pods)
    // saves nothing: the other node then sees every packet of the flow as the middle of a
    // connection it never saw open, and conntrack takes that path as slowly as a normal
    // one, marks each packet INVALID (which a host firewall with `ct state invalid drop`
    // in forward would drop) and keeps unanswered entries for minutes.
    let mut notrack = String::new();
    if let Some(port) = c.vxlan_port {
        let ingress = c.underlay.as_ref().map(|dev| {
            let hook = format!("ingress device \"{dev}\"");
            ("ingress", hook)
        });
        for (name, hook) in ingress.into_iter().chain([("output", "output".into())]) {
            // The port first: most packets are not UDP, and that needs no set lookup.
            let _ = write!(
                notrack,
                "\tchain raw-{name} {{\n\
                 \t\ttype filter hook {hook} priority -300; policy accept;\n\
                 \t\tudp dport {port} ip daddr @nodes notrack\n\
                 \t}}\n"
            );
        }
    }
    // An address of the service CIDR that no Service has is refused at once, as a port a
    // ClusterIP does not serve is.
    let unallocated = c
        .service_cidr
        .map(|c| format!("\t\tip daddr {c} ip daddr != @cluster-ips jump reject-now\n"))
        .unwrap_or_default();
    let hairpin = c
        .local_pods
        .map(|l| format!("\t\tip saddr {l} ip daddr {l} ct status dnat masquerade\n"))
        .unwrap_or_default();
    if let (true, Some(local)) = (c.untracked_pods, c.local_pods) {
        notrack.push_str(&untracked_pods(cluster_cidr, local));
    }
    // hostPorts first (a pod asked for that port of its node), then Services, unless
    // kube-proxy serves them.
    let services = if c.service_proxy {
        "\t\tjump services-reject\n\t\tjump services\n"
    } else {
        ""
    };
    let nat_hooks = ["prerouting", "output"]
        .map(|hook| {
            format!(
                "\tchain nat-{hook} {{\n\
                 \t\ttype nat hook {hook} priority -100; policy accept;\n\
                 \t\tjump hostports\n\
                 {services}\
                 \t}}\n"
            )
        })
        .concat();
    let mut s = format!("table inet {TABLE} {{\n");
    s.push_str(&notrack);
    for (name, ty) in SETS {
        let kind = if ty.contains(':') { "map" } else { "set" };
        let _ = writeln!(s, "\t{kind} {name} {{\n\t\t{ty}\n\t}}");
    }
    let _ = write!(
        s,
        "\tchain reject-now {{\n\
         \t\tmeta l4proto tcp reject with tcp reset\n\
         \t\treject\n\
         \t}}\n\
         \tchain services-reject {{\n\
         \t\tip daddr . meta l4proto . th dport @no-endpoints jump reject-now\n\
         \t\tip daddr @cluster-ips meta l4proto {{ tcp, udp, sctp }} ip daddr . meta l4proto . th dport != @service-ports jump reject-now\n\
         \t\tfib daddr type local meta l4proto . th dport @nodeport-no-endpoints jump reject-now\n\
         {unallocated}\
         \t}}\n\
         \tchain services {{\n\
         \t\tip daddr . meta l4proto . th dport vmap @service-ips\n\
         \t\tfib daddr type local meta l4proto . th dport @nodeport-masquerade meta mark set meta mark | {MASQUERADE_MARK:#x}\n\
         \t\tfib daddr type local meta l4proto . th dport vmap @service-nodeports\n\
         \t}}\n\
         \tchain hostports {{\n\
         \t\tfib daddr type local meta l4proto {{ tcp, udp, sctp }} dnat ip to meta l4proto . th dport map @hostports\n\
         \t\tfib daddr type local meta l4proto {{ tcp, udp, sctp }} dnat ip to ip daddr . meta l4proto . th dport map @hostport-ips\n\
         \t}}\n\
         {nat_hooks}\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {MASQUERADE_MARK:#x} == {MASQUERADE_MARK:#x} masquerade\n\
         {hairpin}\
         \t\tip saddr {cluster_cidr} ip daddr != {cluster_cidr} ip daddr != @nodes masquerade\n\
         \t}}\n\
         }}\n"
    );
    s
}

/// With `untrackedPodTraffic`: both directions of a pod-to-pod flow skip conntrack (and
/// so the conntrack lookup and NAT hooks on each node they cross), unless this node may
/// have to translate it or a host firewall to recognise it:
/// - a flow with, at either end, an endpoint this node translates Service traffic to
///   (`nat-endpoints`): replies to a DNAT made here need their reverse NAT, and checking
///   both ends keeps both directions of any flow on the same side of the line;
/// - a flow to this node itself (its VXLAN and bridge addresses, the first two of its pod
///   CIDR): a host firewall must see a kubelet probe's reply as ESTABLISHED;
/// - ICMP: an error about a translated flow is translated with it.
///
/// Every check is a cheap one for most packets: comparisons, then the two ports against
/// `nat-ports` (a bitmap). Only a packet with an endpoint's port at either end is looked
/// up in `nat-endpoints` (hashed on address, protocol and port), which costs as much as
/// the conntrack lookup it would save.
fn untracked_pods(cluster: Ipv4Net, local: Ipv4Net) -> String {
    let own = Ipv4Net::new(local.network(), 31).unwrap_or(local);
    let pods =
        format!("ip saddr {cluster} ip daddr {cluster} ip daddr != {own} meta l4proto != icmp");
    format!(
        "\tchain raw-prerouting {{\n\
         \t\ttype filter hook prerouting priority -300; policy accept;\n\
         \t\t{pods} th sport != @nat-ports th dport != @nat-ports notrack accept\n\
         \t\t{pods} ip saddr . meta l4proto . th sport != @nat-endpoints ip daddr . meta l4proto . th dport != @nat-endpoints notrack\n\
         \t}}\n"
    )
}

/// The load-balancing chain and endpoint map for ClusterIP services with `n` endpoints.
pub fn cluster_lb(n: usize) -> (String, Extra) {
    (
        format!("lb-{n}"),
        Extra {
            create: format!(
                "add map inet {TABLE} ep-{n} {{ typeof ip daddr . meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport; }}\n\
                 add chain inet {TABLE} lb-{n}\n\
                 add rule inet {TABLE} lb-{n} meta l4proto {{ tcp, udp, sctp }} dnat ip to ip daddr . meta l4proto . th dport . numgen random mod {n} map @ep-{n}\n"
            ),
            delete: format!("delete chain inet {TABLE} lb-{n}\ndelete map inet {TABLE} ep-{n}\n"),
        },
    )
}

/// The same for NodePorts (keyed by protocol and node port: the destination is a node).
pub fn nodeport_lb(n: usize) -> (String, Extra) {
    (
        format!("np-lb-{n}"),
        Extra {
            create: format!(
                "add map inet {TABLE} np-ep-{n} {{ typeof meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport; }}\n\
                 add chain inet {TABLE} np-lb-{n}\n\
                 add rule inet {TABLE} np-lb-{n} meta l4proto {{ tcp, udp, sctp }} dnat ip to meta l4proto . th dport . numgen random mod {n} map @np-ep-{n}\n"
            ),
            delete: format!("delete chain inet {TABLE} np-lb-{n}\ndelete map inet {TABLE} np-ep-{n}\n"),
        },
    )
}

/// ClientIP session affinity for one Service port (kube-proxy's design, used only for
/// Services that ask for it): a set per endpoint remembers which clients it served for
/// `timeout` seconds; a known client goes back to its endpoint, a new one is placed at
/// random and remembered. Named by a hash of what it holds, so a change of endpoints
/// makes a new chain and the old one is deleted.
pub fn affinity(
    id: &str,
    endpoints: &[(std::net::Ipv4Addr, u16)],
    timeout: u32,
) -> (String, Extra) {
    let chain = format!("aff-{id}");
    let n = endpoints.len();
    let mut create = String::new();
    let mut delete = format!("delete chain inet {TABLE} {chain}\n");
    for (i, (ip, port)) in endpoints.iter().enumerate() {
        let set = format!("{chain}-{i}");
        let _ = writeln!(create, "add set inet {TABLE} {set} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}");
        let _ = writeln!(create, "add chain inet {TABLE} {set}");
        let _ = writeln!(
            create,
            "add rule inet {TABLE} {set} update @{set} {{ ip saddr }} meta l4proto {{ tcp, udp, sctp }} dnat ip to {ip}:{port}"
        );
    }
    let _ = writeln!(create, "add chain inet {TABLE} {chain}");
    for i in 0..n {
        let _ = writeln!(
            create,
            "add rule inet {TABLE} {chain} ip saddr @{chain}-{i} goto {chain}-{i}"
        );
    }
    let arms: Vec<String> = (0..n).map(|i| format!("{i} : goto {chain}-{i}")).collect();
    let _ = writeln!(
        create,
        "add rule inet {TABLE} {chain} numgen random mod {n} vmap {{ {} }}",
        arms.join(", ")
    );
    for i in 0..n {
        let _ = writeln!(
            delete,
            "delete chain inet {TABLE} {chain}-{i}\ndelete set inet {TABLE} {chain}-{i}"
        );
    }
    (chain, Extra { create, delete })
}

/// Elements are sent in chunks: one huge line makes nft slow to parse.
const CHUNK: usize = 2000;

fn elements(out: &mut String, verb: &str, set: &str, items: &[String]) {
    for chunk in items.chunks(CHUNK) {
        let _ = writeln!(
            out,
            "{verb} element inet {TABLE} {set} {{ {} }}",
            chunk.join(", ")
        );
    }
}

fn item(k: &str, v: &str) -> String {
    if v.is_empty() {
        k.to_string()
    } else {
        format!("{k} : {v}")
    }
}

/// The transaction from `committed` (what the kernel holds, or `None` if unknown) to
/// `want`. `None` when nothing needs to change.
pub fn transaction(committed: Option<&Ruleset>, want: &Ruleset) -> Option<String> {
    let mut out = String::new();
    match committed {
        Some(c) if c.base == want.base => {
            for (name, extra) in &want.extras {
                if !c.extras.contains_key(name) {
                    out.push_str(&extra.create);
                }
            }
            let empty = BTreeMap::new();
            // Deletions first: a changed map value is a delete and an add of its key.
            for (set, have) in &c.elements {
                let want_set = want.elements.get(set).unwrap_or(&empty);
                let gone: Vec<String> = have
                    .iter()
                    .filter(|(k, v)| want_set.get(*k) != Some(*v))
                    .map(|(k, _)| k.clone())
                    .collect();
                elements(&mut out, "delete", set, &gone);
            }
            for (set, want_set) in &want.elements {
                let have = c.elements.get(set).unwrap_or(&empty);
                let new: Vec<String> = want_set
                    .iter()
                    .filter(|(k, v)| have.get(*k) != Some(*v))
                    .map(|(k, v)| item(k, v))
                    .collect();
                elements(&mut out, "add", set, &new);
            }
            // Last: extras nothing refers to any more (their elements went above).
            for (name, extra) in &c.extras {
                if !want.extras.contains_key(name) {
                    out.push_str(&extra.delete);
                }
            }
        }
        _ => {
            // Start over: the whole table, atomically replacing whatever was there.
            let _ = writeln!(out, "add table inet {TABLE}\ndelete table inet {TABLE}");
            out.push_str(&want.base);
            for extra in want.extras.values() {
                out.push_str(&extra.create);
            }
            for (set, items) in &want.elements {
                let all: Vec<String> = items.iter().map(|(k, v)| item(k, v)).collect();
                elements(&mut out, "add", set, &all);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// One set's (or map's) element changes in a transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElementChanges {
    pub set: String,
    /// Keys to delete (before the adds: a changed value is a delete and an add).
    pub delete: Vec<String>,
    /// (key, value; empty for a plain set) to add.
    pub add: Vec<(String, String)>,
}

/// What a sync sends to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transaction {
    /// The whole table, or chains and maps created or deleted: an `nft -f` script.
    Script(String),
    /// Only elements change (an ordinary sync): small enough to send over netlink
    /// without `nft` reading the whole table first.
    Elements(Vec<ElementChanges>),
}

impl Transaction {
    /// The transaction as `nft` commands.
    pub fn script(&self) -> String {
        match self {
            Transaction::Script(s) => s.clone(),
            Transaction::Elements(sets) => element_script(sets),
        }
    }

    /// How many commands (script lines) or element changes it carries.
    pub fn size(&self) -> usize {
        match self {
            Transaction::Script(s) => s.lines().count(),
            Transaction::Elements(sets) => sets.iter().map(|c| c.delete.len() + c.add.len()).sum(),
        }
    }
}

/// Element changes as `nft` commands: all deletes, then all adds.
fn element_script(sets: &[ElementChanges]) -> String {
    let mut out = String::new();
    for c in sets.iter().filter(|c| !c.delete.is_empty()) {
        elements(&mut out, "delete", &c.set, &c.delete);
    }
    for c in sets.iter().filter(|c| !c.add.is_empty()) {
        let items: Vec<String> = c.add.iter().map(|(k, v)| item(k, v)).collect();
        elements(&mut out, "add", &c.set, &items);
    }
    out
}

/// Element changes as nf_tables netlink carries them, typed from podnet's own element
/// syntax (the sets' types are podnet's, so the text is known to be one of a few forms):
/// all deletes, then all adds, as [`element_script`] orders them.
pub fn encode(sets: &[ElementChanges]) -> Result<Vec<nftables::Change>, String> {
    let deletes = sets.iter().filter(|c| !c.delete.is_empty()).map(|c| {
        let keys = c.delete.iter().map(|k| (k.as_str(), ""));
        encode_change(nftables::Op::Delete, &c.set, keys)
    });
    let adds = sets.iter().filter(|c| !c.add.is_empty()).map(|c| {
        let items = c.add.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        encode_change(nftables::Op::Add, &c.set, items)
    });
    deletes.chain(adds).collect()
}

/// One set's elements (key, value; the value empty for a plain set or a delete).
fn encode_change<'a>(
    op: nftables::Op,
    set: &str,
    items: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<nftables::Change, String> {
    let elements = items
        .map(|(k, v)| {
            Ok(nftables::Element {
                key: encode_key(set, k)?,
                data: encode_data(v)?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(nftables::Change {
        op,
        set: set.to_string(),
        elements,
    })
}

/// A key: `.`-separated addresses, protocols and ports; in an endpoint map (`ep-N`,
/// `np-ep-N`) the last number is the `numgen` result, a 32-bit value.
fn encode_key(set: &str, key: &str) -> Result<Vec<u8>, String> {
    let numgen_last = set.starts_with("ep-") || set.starts_with("np-ep-");
    let tokens: Vec<&str> = key.split(" . ").collect();
    let fields = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if numgen_last && i + 1 == tokens.len() {
                t.parse().map(nftables::Datum::U32).map_err(|_| ())
            } else {
                datum(t)
            }
        })
        .collect::<Result<Vec<_>, ()>>()
        .map_err(|()| format!("element {key:?} of {set}: not a key podnet writes"))?;
    Ok(nftables::encode(&fields))
}

fn encode_data(value: &str) -> Result<nftables::ElementData, String> {
    if value.is_empty() {
        return Ok(nftables::ElementData::None);
    }
    if let Some(chain) = value.strip_prefix("goto ") {
        return Ok(nftables::ElementData::Goto(chain.to_string()));
    }
    if let Some(chain) = value.strip_prefix("jump ") {
        return Ok(nftables::ElementData::Jump(chain.to_string()));
    }
    let fields = value
        .split(" . ")
        .map(datum)
        .collect::<Result<Vec<_>, ()>>()
        .map_err(|()| format!("element value {value:?}: not a value podnet writes"))?;
    Ok(nftables::ElementData::Value(nftables::encode(&fields)))
}

fn datum(t: &str) -> Result<nftables::Datum, ()> {
    Ok(match t {
        "tcp" => nftables::Datum::Proto(6),
        "udp" => nftables::Datum::Proto(17),
        "sctp" => nftables::Datum::Proto(132),
        _ => match t.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => nftables::Datum::Ipv4(ip),
            Err(_) => nftables::Datum::Port(t.parse().map_err(|_| ())?),
        },
    })
}

/// The table as the agent keeps it: what it wants now, and what changed since the last
/// commit, so a transaction costs what changed, not the size of the table.
#[derive(Debug, Clone)]
pub struct Tracked {
    want: Ruleset,
    /// (set, key) → its committed value (`None`: absent), for elements touched since.
    touched: HashMap<(String, String), Option<String>>,
    /// Extras touched since the commit, with whether they were committed.
    touched_extras: HashMap<String, bool>,
    /// Extras removed since the commit: their delete commands are still needed.
    deleted_extras: HashMap<String, Extra>,
    /// The next transaction rewrites the whole table (at start, after a failure).
    full: bool,
}

impl Tracked {
    pub fn new(base: String) -> Tracked {
        Tracked {
            want: Ruleset {
                base,
                ..Ruleset::default()
            },
            touched: HashMap::new(),
            touched_extras: HashMap::new(),
            deleted_extras: HashMap::new(),
            full: true,
        }
    }

    pub fn want(&self) -> &Ruleset {
        &self.want
    }

    /// Replaces the base (a setting it depends on changed): the next transaction
    /// rewrites the whole table.
    pub fn set_base(&mut self, base: String) {
        if self.want.base != base {
            self.want.base = base;
            self.full = true;
        }
    }

    /// Declares an (empty) set or map, so full syncs list it.
    pub fn declare(&mut self, set: &str) {
        self.want.elements.entry(set.to_string()).or_default();
    }

    /// Sets (`Some`) or removes (`None`) one element.
    pub fn element(&mut self, set: &str, key: &str, value: Option<String>) {
        let elems = self.want.elements.entry(set.to_string()).or_default();
        let before = match &value {
            Some(v) => elems.insert(key.to_string(), v.clone()),
            None => elems.remove(key),
        };
        self.touched
            .entry((set.to_string(), key.to_string()))
            .or_insert(before);
    }

    /// Creates (`Some`) or deletes (`None`) an extra.
    pub fn extra(&mut self, name: &str, value: Option<Extra>) {
        let before = match value {
            Some(e) => self.want.extras.insert(name.to_string(), e),
            None => self.want.extras.remove(name),
        };
        let was = self
            .touched_extras
            .get(name)
            .copied()
            .unwrap_or(before.is_some());
        self.touched_extras.insert(name.to_string(), was);
        if let (true, Some(old)) = (was, before) {
            self.deleted_extras.insert(name.to_string(), old);
        }
    }

    /// The transaction to commit, if any, as an `nft` script.
    pub fn transaction(&self) -> Option<String> {
        self.changes().map(|t| t.script())
    }

    /// The transaction to commit, if any: only element changes when that is all there is
    /// (an ordinary sync), else a script.
    pub fn changes(&self) -> Option<Transaction> {
        if self.full {
            return transaction(None, &self.want).map(Transaction::Script);
        }
        let mut creates = String::new();
        let mut gone_extras = Vec::new();
        for (name, was) in &self.touched_extras {
            match (self.want.extras.get(name), was) {
                (Some(e), false) => creates.push_str(&e.create),
                (None, true) => gone_extras.push(name),
                _ => {}
            }
        }
        let mut by_set: BTreeMap<&str, ElementChanges> = BTreeMap::new();
        for ((set, key), was) in &self.touched {
            let now = self.want.elements.get(set).and_then(|e| e.get(key));
            if now == was.as_ref() {
                continue;
            }
            let c = by_set.entry(set).or_insert_with(|| ElementChanges {
                set: set.clone(),
                ..ElementChanges::default()
            });
            if was.is_some() {
                c.delete.push(key.clone());
            }
            if let Some(v) = now {
                c.add.push((key.clone(), v.clone()));
            }
        }
        let sets: Vec<ElementChanges> = by_set.into_values().collect();
        if creates.is_empty() && gone_extras.is_empty() {
            return (!sets.is_empty()).then_some(Transaction::Elements(sets));
        }
        let mut out = creates;
        out.push_str(&element_script(&sets));
        for name in gone_extras {
            if let Some(e) = self.deleted_extras.get(name) {
                out.push_str(&e.delete);
            }
        }
        Some(Transaction::Script(out))
    }

    /// The last transaction is in the kernel.
    pub fn committed(&mut self) {
        // New maps rather than clear(): iterating a cleared map still walks its old
        // capacity, which after a full sync is the size of the whole table.
        self.touched = HashMap::new();
        self.touched_extras = HashMap::new();
        self.deleted_extras = HashMap::new();
        self.full = false;
    }

    /// The last transaction failed, or the table vanished: rewrite it all next time.
    pub fn failed(&mut self) {
        self.full = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(elements: &[(&str, &[(&str, &str)])]) -> Ruleset {
        Ruleset {
            base: base(&TableConfig::test("10.244.0.0/16")),
            extras: BTreeMap::from([cluster_lb(2)]),
            elements: elements
                .iter()
                .map(|(s, items)| {
                    (
                        s.to_string(),
                        items
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn the_base_declares_every_set_and_hooks_the_services_chain() {
        let b = base(&TableConfig::test("10.244.0.0/16"));
        for (name, _) in SETS {
            assert!(b.contains(&format!(" {name} {{")), "{name}");
        }
        // Refusing is decided where new connections are NATed; no filter chain is hooked.
        for hook in ["prerouting", "output"] {
            assert!(
                b.contains(&format!("type nat hook {hook} priority -100; policy accept;\n\t\tjump hostports\n\t\tjump services-reject\n\t\tjump services\n")),
                "{b}"
            );
        }
        assert!(!b.contains("type filter"), "{b}");
        assert!(b.contains("meta mark & 0x4000 == 0x4000 masquerade"));
        assert!(b.contains(
            "ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != @nodes masquerade"
        ));
        // Same-node Service traffic is known by its addresses once the node's pod CIDR
        // is: br_netfilter's bridged DNAT reaches postrouting with no input device.
        assert!(!b.contains("ct status dnat"), "{b}");
        let mut c = TableConfig::test("10.244.0.0/16");
        c.local_pods = "10.244.3.0/24".parse().ok();
        let b = base(&c);
        let post = &b[b.find("chain postrouting").expect("postrouting")..];
        assert!(
            post.contains(
                "ip saddr 10.244.3.0/24 ip daddr 10.244.3.0/24 ct status dnat masquerade"
            ),
            "{post}"
        );
        assert!(!post.contains("iifname"));
    }

    #[test]
    fn a_first_sync_writes_everything_and_an_unchanged_one_nothing() {
        let want = rs(&[("nodes", &[("172.18.0.11", "")])]);
        let t = transaction(None, &want).expect("full");
        assert!(
            t.starts_with("add table inet podnet\ndelete table inet podnet\ntable inet podnet {")
        );
        assert!(t.contains("add chain inet podnet lb-2"));
        assert!(t.contains("add element inet podnet nodes { 172.18.0.11 }"));
        assert_eq!(transaction(Some(&want), &want), None);
    }

    #[test]
    fn an_ordinary_sync_only_moves_elements() {
        let before = rs(&[("service-ips", &[("10.96.0.10 . tcp . 80", "goto lb-2")])]);
        let mut after = rs(&[(
            "service-ips",
            &[
                ("10.96.0.10 . tcp . 80", "goto lb-3"),
                ("10.96.0.11 . udp . 53", "goto lb-2"),
            ],
        )]);
        after.extras.extend([cluster_lb(3)]);
        let t = transaction(Some(&before), &after).expect("changes");
        assert_eq!(
            t,
            format!(
                "{}delete element inet podnet service-ips {{ 10.96.0.10 . tcp . 80 }}\n\
                 add element inet podnet service-ips {{ 10.96.0.10 . tcp . 80 : goto lb-3, 10.96.0.11 . udp . 53 : goto lb-2 }}\n",
                cluster_lb(3).1.create
            )
        );
        assert!(!t.contains("flush") && !t.contains("delete table"));
    }

    #[test]
    fn extras_nothing_uses_are_deleted_after_their_elements() {
        let before = rs(&[("service-ips", &[("10.96.0.10 . tcp . 80", "goto lb-2")])]);
        let mut after = rs(&[]);
        after.extras.clear();
        let t = transaction(Some(&before), &after).expect("changes");
        let del_el = t
            .find("delete element inet podnet service-ips")
            .expect("element deleted");
        let del_chain = t
            .find("delete chain inet podnet lb-2")
            .expect("chain deleted");
        assert!(del_el < del_chain, "{t}");
    }

    #[test]
    fn affinity_remembers_clients_per_endpoint() {
        let eps = [
            ("10.244.1.2".parse().expect("ip"), 8080),
            ("10.244.2.2".parse().expect("ip"), 8080),
        ];
        let (name, extra) = affinity("abc", &eps, 10800);
        assert_eq!(name, "aff-abc");
        assert!(extra.create.contains("add set inet podnet aff-abc-0 { type ipv4_addr; flags dynamic,timeout; timeout 10800s; }"));
        assert!(extra
            .create
            .contains("add rule inet podnet aff-abc ip saddr @aff-abc-1 goto aff-abc-1"));
        assert!(extra.create.contains("update @aff-abc-0 { ip saddr } meta l4proto { tcp, udp, sctp } dnat ip to 10.244.1.2:8080"));
        assert!(extra
            .create
            .contains("numgen random mod 2 vmap { 0 : goto aff-abc-0, 1 : goto aff-abc-1 }"));
        assert!(extra
            .delete
            .starts_with("delete chain inet podnet aff-abc\n"));
    }

    #[test]
    fn tracked_changes_give_the_same_transaction_as_a_full_diff() {
        let mut t = Tracked::new(base(&TableConfig::test("10.244.0.0/16")));
        t.declare("service-ips");
        let (lb2, e2) = cluster_lb(2);
        t.extra(&lb2, Some(e2));
        t.element(
            "service-ips",
            "10.96.0.10 . tcp . 80",
            Some("goto lb-2".into()),
        );
        assert!(t
            .transaction()
            .expect("full")
            .contains("delete table inet podnet"));
        t.committed();
        assert_eq!(t.transaction(), None);
        let before = t.want().clone();
        let (lb3, e3) = cluster_lb(3);
        t.extra(&lb3, Some(e3));
        t.element(
            "service-ips",
            "10.96.0.10 . tcp . 80",
            Some("goto lb-3".into()),
        );
        t.extra(&lb2, None);
        let incremental = t.transaction().expect("changes");
        assert_eq!(Some(incremental), transaction(Some(&before), t.want()));
        // Touching and restoring is no change at all.
        t.committed();
        t.element("service-ips", "10.96.0.10 . tcp . 80", None);
        t.element(
            "service-ips",
            "10.96.0.10 . tcp . 80",
            Some("goto lb-3".into()),
        );
        assert_eq!(t.transaction(), None);
        t.failed();
        assert!(t
            .transaction()
            .expect("full")
            .contains("delete table inet podnet"));
    }

    #[test]
    fn untracked_pod_traffic_skips_conntrack_only_where_nothing_is_translated() {
        let mut c = TableConfig::test("10.244.0.0/16");
        c.untracked_pods = true;
        // Not before the node's own addresses are known.
        assert!(!base(&c).contains("raw-prerouting"));
        c.local_pods = Some("10.244.1.0/24".parse().expect("net"));
        let b = base(&c);
        let pods = "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 ip daddr != 10.244.1.0/31 meta l4proto != icmp";
        assert!(
            b.contains(&format!("\tchain raw-prerouting {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n\
                \t\t{pods} th sport != @nat-ports th dport != @nat-ports notrack accept\n\
                \t\t{pods} ip saddr . meta l4proto . th sport != @nat-endpoints ip daddr . meta l4proto . th dport != @nat-endpoints notrack\n")),
            "{b}"
        );
        c.untracked_pods = false;
        assert!(!base(&c).contains("notrack"));
    }

    #[test]
    fn with_vxlan_the_tunnel_skips_conntrack() {
        let mut c = TableConfig::test("10.244.0.0/16");
        assert!(!base(&c).contains("notrack"));
        c.vxlan_port = Some(8472);
        let b = base(&c);
        assert!(b.contains("type filter hook output priority -300; policy accept;\n\t\tudp dport 8472 ip daddr @nodes notrack"), "{b}");
        // Arriving ones at the underlay's ingress once it is known, never in prerouting,
        // which every forwarded packet passes.
        assert!(!b.contains("hook ingress"), "{b}");
        c.underlay = Some("eth0".into());
        let b = base(&c);
        assert!(b.contains("type filter hook ingress device \"eth0\" priority -300; policy accept;\n\t\tudp dport 8472 ip daddr @nodes notrack"), "{b}");
        assert!(!b.contains("prerouting priority -300"), "{b}");
    }

    #[test]
    fn the_node_cidr_brings_same_node_masquerading_and_pods_stay_tracked() {
        let mut t = Tracked::new(base(&TableConfig::test("10.244.0.0/16")));
        t.committed();
        let mut c = TableConfig::test("10.244.0.0/16");
        c.local_pods = "10.244.3.0/24".parse().ok();
        t.set_base(base(&c));
        let script = t.transaction().expect("a new base rewrites the table");
        assert!(script.starts_with("add table inet podnet\ndelete table inet podnet\n"));
        assert!(
            script.contains(
                "ip saddr 10.244.3.0/24 ip daddr 10.244.3.0/24 ct status dnat masquerade"
            ),
            "{script}"
        );
        // Pods' flows are tracked both ways: no notrack, no raw chain without vxlan.
        assert!(!script.contains("notrack"), "{script}");
        assert!(!script.contains("raw-"), "{script}");
        t.committed();
        t.set_base(base(&c));
        assert_eq!(t.transaction(), None, "the same base again changes nothing");
    }

    #[test]
    fn the_chains_are_the_base_and_the_extras() {
        let mut t = Tracked::new(base(&TableConfig::test("10.244.0.0/16")));
        let (name, extra) = cluster_lb(3);
        t.extra(&name, Some(extra));
        let chains = t.want().chains();
        for c in [
            "services",
            "nat-prerouting",
            "postrouting",
            "reject-now",
            "lb-3",
        ] {
            assert!(chains.contains(c), "{c} in {chains:?}");
        }
        assert!(!chains.iter().any(|c| c.contains(' ')), "{chains:?}");
    }

    #[test]
    fn ordinary_syncs_are_element_changes_encoded_as_the_kernel_stores_them() {
        let mut t = Tracked::new(base(&TableConfig::test("10.244.0.0/16")));
        t.committed();
        t.element(
            "service-ips",
            "10.96.0.10 . tcp . 80",
            Some("goto lb-2".into()),
        );
        t.element(
            "ep-2",
            "10.96.0.10 . tcp . 80 . 1",
            Some("10.244.1.5 . 8080".into()),
        );
        t.element("nodes", "172.18.0.11", Some(String::new()));
        let Some(Transaction::Elements(sets)) = t.changes() else {
            panic!("an ordinary sync is element changes: {:?}", t.changes());
        };
        let enc = encode(&sets).expect("podnet's own elements encode");
        let find = |set: &str| {
            enc.iter()
                .find(|c| c.set == set)
                .map(|c| &c.elements[0])
                .unwrap_or_else(|| panic!("{set} in {enc:?}"))
        };
        // A concatenation pads each field to 4 bytes; numgen's result is host-endian.
        let mut ep_key = vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0];
        ep_key.extend(1u32.to_ne_bytes());
        assert_eq!(find("ep-2").key, ep_key);
        assert_eq!(
            find("ep-2").data,
            nftables::ElementData::Value(vec![10, 244, 1, 5, 0x1f, 0x90, 0, 0])
        );
        assert_eq!(
            find("service-ips").key,
            vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0]
        );
        assert_eq!(
            find("service-ips").data,
            nftables::ElementData::Goto("lb-2".into())
        );
        assert_eq!(find("nodes").key, vec![172, 18, 0, 11]);
        assert_eq!(find("nodes").data, nftables::ElementData::None);
        // A new load-balancing chain is not an element: that goes to nft as a script.
        let (name, extra) = cluster_lb(3);
        t.extra(&name, Some(extra));
        assert!(matches!(t.changes(), Some(Transaction::Script(_))));
    }

    #[test]
    fn a_drift_check_compares_the_elements_of_the_sets_podnet_fills() {
        let mut want = rs(&[
            ("service-ips", &[("10.96.0.10 . tcp . 80", "goto lb-2")]),
            (
                "ep-2",
                &[
                    ("10.96.0.10 . tcp . 80 . 0", "10.244.1.5 . 8080"),
                    ("10.96.0.10 . tcp . 80 . 1", "10.244.2.7 . 8080"),
                ],
            ),
            ("nat-ports", &[("8080", "")]),
            // Emptied when its extra went: no such map in the kernel.
            ("ep-3", &[]),
        ]);
        let (aff, extra) = affinity("abc", &[("10.244.1.5".parse().expect("ip"), 8080)], 60);
        want.extras.insert(aff, extra);
        let sets = want.sets();
        for set in ["nodes", "service-ips", "ep-2", "aff-abc-0"] {
            assert!(sets.contains(set), "{set}: {sets:?}");
        }
        assert!(!sets.contains("ep-3"));
        let wanted = want.wanted(|_| true).expect("encodable");
        assert_eq!(
            want.wanted(|set| set == "ep-2")
                .expect("encodable")
                .keys()
                .collect::<Vec<_>>(),
            [&"ep-2"]
        );
        // Affinity's sets are filled by packets, not by podnet: not compared.
        assert_eq!(
            wanted.keys().copied().collect::<Vec<_>>(),
            ["ep-2", "nat-ports", "service-ips"]
        );
        let key = vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0];
        let vip = &wanted["service-ips"][&key];
        assert_eq!(vip.data, nftables::ElementData::Goto("lb-2".into()));
        assert_eq!((vip.key, vip.value), ("10.96.0.10 . tcp . 80", "goto lb-2"));
        assert_eq!(wanted["ep-2"].len(), 2);
        assert_eq!(wanted["nat-ports"][&vec![0x1f, 0x90]].value, "");
    }

    #[test]
    fn kernel_elements_read_as_nft_writes_them() {
        let e = |key: Vec<u8>, data| nftables::Element { key, data };
        let vip = nftables::encode(&[
            nftables::Datum::Ipv4("10.96.0.10".parse().expect("ip")),
            nftables::Datum::Proto(6),
            nftables::Datum::Port(80),
        ]);
        assert_eq!(
            describe(
                "service-ips",
                &e(vip.clone(), nftables::ElementData::Goto("lb-2".into()))
            ),
            "10.96.0.10 . tcp . 80 : goto lb-2"
        );
        assert_eq!(
            describe("service-ips", &e(vip, nftables::ElementData::Verdict(0))),
            "10.96.0.10 . tcp . 80 : drop"
        );
        let slot = nftables::encode(&[
            nftables::Datum::Proto(17),
            nftables::Datum::Port(30053),
            nftables::Datum::U32(3),
        ]);
        let endpoint = nftables::encode(&[
            nftables::Datum::Ipv4("10.244.1.5".parse().expect("ip")),
            nftables::Datum::Port(5353),
        ]);
        assert_eq!(
            describe("np-ep-4", &e(slot, nftables::ElementData::Value(endpoint))),
            "udp . 30053 . 3 : 10.244.1.5 . 5353"
        );
        assert_eq!(
            describe(
                "nat-ports",
                &e(vec![0x1f, 0x90], nftables::ElementData::None)
            ),
            "8080"
        );
        assert_eq!(
            describe(
                "nodes",
                &e(vec![172, 18, 0, 2], nftables::ElementData::None)
            ),
            "172.18.0.2"
        );
        // Bytes that fit no key of the set, in hex.
        assert_eq!(
            describe(
                "nodes",
                &e(vec![1, 2, 3, 4, 5], nftables::ElementData::None)
            ),
            "0x01020304 05"
        );
    }

    #[test]
    fn a_changed_base_replaces_the_table() {
        let before = rs(&[]);
        let mut after = rs(&[]);
        after.base = base(&TableConfig::test("10.200.0.0/16"));
        assert!(transaction(Some(&before), &after)
            .expect("full")
            .contains("delete table inet podnet"));
    }
}
