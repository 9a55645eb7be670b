//! The compiled form: what the nftables rules implement, and the decision they make.
//!
//! Shape (see docs/network-policy.md for the nftables layout):
//! - two verdict maps, pod address → policy set, one per direction; a pod that no policy
//!   isolates in a direction is absent from that direction's map;
//! - a policy set ([`PolicySet`]) per distinct combination of policies isolating some pod in a
//!   direction: its rules are those of its policies, in order; it is immutable (a new
//!   combination is a new set);
//! - a rule ([`CompiledRule`]) per rule of a policy: a peer match and a port match, whose
//!   changing parts (the peers' pod addresses, named ports resolved per destination pod) are
//!   elements of named sets, so that pods and labels changing are element updates.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use crate::objects::{PolicyKey, Protocol};
use crate::ranges::{addrs_contain, ports_contain, AddrRange, PortRange};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub(crate) fn idx(self) -> usize {
        match self {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }
    }

    /// `in` or `out`, as in chain and set names.
    pub fn short(self) -> &'static str {
        match self {
            Direction::Ingress => "in",
            Direction::Egress => "out",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// A policy's identity in the compiled form: allocated when the index first sees the policy
/// and replaced when its spec changes (its rules are then new objects), never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId(pub u32);

/// A policy set's identity (nftables chain `pol-in-<id>` / `pol-out-<id>`), never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetId(pub u32);

/// A rule's identity: the `index`th rule of a policy in a direction. Its nftables sets are
/// named `r<policy>-<in|out>-<index>-<pods|blocks|ports|named>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId {
    pub policy: PolicyId,
    pub direction: Direction,
    pub index: u32,
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "r{}-{}-{}",
            self.policy.0,
            self.direction.short(),
            self.index
        )
    }
}

impl fmt::Display for SetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A named port resolved on a destination pod: an element of an
/// `ipv4_addr . inet_proto . inet_service` set matched against
/// `ip daddr . meta l4proto . th dport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub ip: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
}

/// One rule, compiled. Which alternatives exist (`Some`) follows from the policy's spec only,
/// so the nftables rules for it never change while the policy does not; their contents are
/// set elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    /// The policy the rule belongs to (for verdicts, comments and traces).
    pub policy: PolicyKey,
    pub peers: PeerMatch,
    pub ports: PortMatch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMatch {
    /// Any address.
    Any,
    /// An address in either set: `ip saddr @pods` / `ip saddr @blocks` (`daddr` for egress).
    Only {
        /// Addresses of the pods the rule's pod/namespace selectors select (a hash set);
        /// `None` if the rule has no such peer.
        pods: Option<BTreeSet<Ipv4Addr>>,
        /// ipBlocks, excepts removed (an interval set); `None` if the rule has none.
        blocks: Option<Vec<AddrRange>>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// All traffic.
    Any,
    /// A port in either set.
    Only {
        /// `meta l4proto . th dport @ports` (an interval set); `None` if the rule has only
        /// named ports.
        ranges: Option<Vec<PortRange>>,
        /// `ip daddr . meta l4proto . th dport @named`: named ports resolved on each
        /// destination pod (ingress: the pods the policy selects; egress: each peer pod);
        /// `None` if the rule has no named port.
        named: Option<BTreeSet<NamedPort>>,
    },
}

impl CompiledRule {
    /// Whether a new connection matches: `peer` is its source for ingress, its destination
    /// for egress; named ports are looked up with the destination `dst`.
    pub fn matches(&self, peer: Ipv4Addr, dst: Ipv4Addr, protocol: Protocol, port: u16) -> bool {
        let peer_ok = match &self.peers {
            PeerMatch::Any => true,
            PeerMatch::Only { pods, blocks } => {
                pods.as_ref().is_some_and(|p| p.contains(&peer))
                    || blocks.as_ref().is_some_and(|b| addrs_contain(b, peer))
            }
        };
        peer_ok
            && match &self.ports {
                PortMatch::Any => true,
                PortMatch::Only { ranges, named } => {
                    ranges
                        .as_ref()
                        .is_some_and(|r| ports_contain(r, protocol, port))
                        || named.as_ref().is_some_and(|n| {
                            n.contains(&NamedPort {
                                ip: dst,
                                protocol,
                                port,
                            })
                        })
                }
            }
    }

    /// Number of set elements (pod addresses, blocks, port ranges, named ports).
    pub fn elements(&self) -> usize {
        let peers = match &self.peers {
            PeerMatch::Any => 0,
            PeerMatch::Only { pods, blocks } => {
                pods.as_ref().map_or(0, |p| p.len()) + blocks.as_ref().map_or(0, |b| b.len())
            }
        };
        let ports = match &self.ports {
            PortMatch::Any => 0,
            PortMatch::Only { ranges, named } => {
                ranges.as_ref().map_or(0, |r| r.len()) + named.as_ref().map_or(0, |n| n.len())
            }
        };
        peers + ports
    }
}

/// The policies isolating some pods in one direction, and their rules in order: the chain
/// `pol-<in|out>-<id>`. A connection is admitted if any rule matches; else dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySet {
    pub direction: Direction,
    pub policies: Vec<PolicyKey>,
    pub rules: Vec<RuleId>,
}

/// A changing element of a rule's sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// In `pods` (peers).
    Pod(Ipv4Addr),
    /// In `named` (ports).
    Named(NamedPort),
}

/// What changed since the last [`crate::PolicyIndex::take_delta`], in the terms of nftables
/// objects. Apply as: create the added rules' sets (their current elements read from the
/// index), the added policy sets' chains, element changes, verdict map changes; then delete
/// the removed chains, then the removed rules' sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub rules_added: BTreeSet<RuleId>,
    pub rules_removed: BTreeSet<RuleId>,
    pub sets_added: BTreeSet<SetId>,
    pub sets_removed: BTreeSet<SetId>,
    /// Elements added to / removed from rules that exist before and after.
    pub elements_added: BTreeSet<(RuleId, Element)>,
    pub elements_removed: BTreeSet<(RuleId, Element)>,
    /// Verdict map entries: the new policy set of (direction, pod address), `None` to remove.
    pub verdicts: BTreeMap<(Direction, Ipv4Addr), Option<SetId>>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        *self == Delta::default()
    }

    /// Kernel objects or elements this changes (a measure of the change's size).
    pub fn size(&self) -> usize {
        self.rules_added.len()
            + self.rules_removed.len()
            + self.sets_added.len()
            + self.sets_removed.len()
            + self.elements_added.len()
            + self.elements_removed.len()
            + self.verdicts.len()
    }
}

/// Read access to a compiled form: the index itself, or a [`Compiled`] snapshot.
pub trait View {
    fn policy_set_of(&self, direction: Direction, ip: Ipv4Addr) -> Option<SetId>;
    fn policy_set(&self, id: SetId) -> Option<&PolicySet>;
    fn rule(&self, id: RuleId) -> Option<&CompiledRule>;
}

/// A snapshot of the compiled form of the pods in scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub ingress: BTreeMap<Ipv4Addr, SetId>,
    pub egress: BTreeMap<Ipv4Addr, SetId>,
    pub sets: BTreeMap<SetId, PolicySet>,
    /// The rules of the policies in `sets`.
    pub rules: BTreeMap<RuleId, CompiledRule>,
}

impl Compiled {
    pub fn map(&self, direction: Direction) -> &BTreeMap<Ipv4Addr, SetId> {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Set elements over all rules.
    pub fn elements(&self) -> usize {
        self.rules.values().map(CompiledRule::elements).sum()
    }
}

impl View for Compiled {
    fn policy_set_of(&self, direction: Direction, ip: Ipv4Addr) -> Option<SetId> {
        self.map(direction).get(&ip).copied()
    }
    fn policy_set(&self, id: SetId) -> Option<&PolicySet> {
        self.sets.get(&id)
    }
    fn rule(&self, id: RuleId) -> Option<&CompiledRule> {
        self.rules.get(&id)
    }
}

/// Where a connection comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// An address: a pod's or any other.
    Addr(Ipv4Addr),
    /// The node that runs the destination pod (kubelet probes, the node's own processes).
    Node,
}

/// Why traffic is allowed without looking at policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Always {
    /// A pod to itself.
    SamePod,
    /// The node to its own pods.
    Node,
}

/// The judgement of one direction: the source pod's egress or the destination pod's ingress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// No policy isolates this end in this direction (or it is not a pod in scope).
    NotIsolated,
    Always(Always),
    /// The first matching rule's policy.
    AllowedBy(PolicyKey),
    /// Isolated by these policies, and none of their rules matches.
    Denied {
        isolated_by: Vec<PolicyKey>,
    },
}

impl Judgement {
    pub fn allows(&self) -> bool {
        !matches!(self, Judgement::Denied { .. })
    }
}

/// The decision on a new connection. Established connections and their replies are not
/// judged (conntrack passes them first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The source pod's egress.
    pub egress: Judgement,
    /// The destination pod's ingress.
    pub ingress: Judgement,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allowed { "allowed" } else { "denied" })?;
        for (dir, j) in [("egress", &self.egress), ("ingress", &self.ingress)] {
            match j {
                Judgement::NotIsolated => write!(f, "; {dir}: not isolated")?,
                Judgement::Always(Always::SamePod) => write!(f, "; {dir}: a pod to itself")?,
                Judgement::Always(Always::Node) => write!(f, "; {dir}: from the pod's node")?,
                Judgement::AllowedBy(p) => write!(f, "; {dir}: allowed by {p}")?,
                Judgement::Denied { isolated_by } => {
                    let names: Vec<String> = isolated_by.iter().map(|p| p.to_string()).collect();
                    write!(
                        f,
                        "; {dir}: isolated by {} and no rule allows it",
                        names.join(", ")
                    )?
                }
            }
        }
        Ok(())
    }
}

/// Judges one direction of a new connection from `src` to `dst` as the compiled form does:
/// the isolated end's policy set, its rules in order, the first match wins.
pub fn judge(
    view: &impl View,
    direction: Direction,
    src: Source,
    dst: Ipv4Addr,
    protocol: Protocol,
    port: u16,
) -> Judgement {
    let src_ip = match src {
        Source::Addr(ip) if ip == dst => return Judgement::Always(Always::SamePod),
        Source::Addr(ip) => ip,
        Source::Node => {
            return match direction {
                Direction::Ingress => Judgement::Always(Always::Node),
                Direction::Egress => Judgement::NotIsolated,
            }
        }
    };
    let (subject, peer) = match direction {
        Direction::Ingress => (dst, src_ip),
        Direction::Egress => (src_ip, dst),
    };
    let Some(set) = view
        .policy_set_of(direction, subject)
        .and_then(|id| view.policy_set(id))
    else {
        return Judgement::NotIsolated;
    };
    for rid in &set.rules {
        if let Some(rule) = view.rule(*rid) {
            if rule.matches(peer, dst, protocol, port) {
                return Judgement::AllowedBy(rule.policy.clone());
            }
        }
    }
    Judgement::Denied {
        isolated_by: set.policies.clone(),
    }
}

/// Decides a new connection: allowed if the source's egress and the destination's ingress
/// both allow it.
pub fn decide(
    view: &impl View,
    src: Source,
    dst: Ipv4Addr,
    protocol: Protocol,
    port: u16,
) -> Verdict {
    let egress = judge(view, Direction::Egress, src, dst, protocol, port);
    let ingress = judge(view, Direction::Ingress, src, dst, protocol, port);
    Verdict {
        allowed: egress.allows() && ingress.allows(),
        egress,
        ingress,
    }
}
