//! Applies a [`Desired`] to the node: diffs it against what the kernel holds and changes
//! only the difference, through netlink (and nftables for masquerade). It only ever lists,
//! changes and deletes what podnet owns: routes with podnet's protocol number, the VXLAN
//! device, entries on that device, and the `inet podnet` table.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use podnet_kernel::netlink::{format_mac, Fdb, Neighbour, VxlanSpec};
use podnet_kernel::nftables::{Change, Listing, Monitor, NfTables, NftError};
use podnet_kernel::{nft, sysctl, Netlink, NetlinkError, Route};

use crate::drift::{self, Due, Report, Watch};
use crate::health::Health;
use crate::plan::{Desired, PeerRoute, Underlay, VXLAN_DEVICE};
use crate::ruleset::{self, Ruleset, Tracked, Transaction};
use crate::services::{NatEndpoint, StaleUdp};
use podnet_kernel::conntrack::{Conntrack, Flow, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// The route protocol number podnet marks its routes with (RTPROT_*; unassigned).
pub const ROUTE_PROTO: u8 = 112;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{0}")]
    Netlink(#[from] NetlinkError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Underlay(String),
    #[error("{0}")]
    Nft(#[from] NftError),
    #[error("podnet's nftables table differs from what podnet wrote: {report}; repairing it failed: {source}")]
    Drift {
        report: String,
        source: Box<DataplaneError>,
    },
}

pub struct Dataplane {
    nl: Netlink,
    conntrack: Conntrack,
    /// nf_tables over netlink: ordinary syncs (element changes) and drift checks.
    nftnl: NfTables,
    nft: NftState,
}

/// A change someone else made to podnet's nftables table is repaired at once if the
/// kernel notifies it; a full comparison is also made this often at least, at most...
const DRIFT_CHECK: Duration = Duration::from_secs(10);
/// ...taking one part in this many of the agent's time: a comparison at 10,000 Services
/// (130,001 elements) takes 0.4-0.5 s, listing them most of it, so then it runs every
/// 40-50 s.
const DRIFT_CHECK_SHARE: u32 = 100;

/// What the agent knows of podnet's nftables table beyond what it wants.
struct NftState {
    /// Whether the table has been written once (so it can drift).
    synced: bool,
    /// The kernel's notifications, and what they call for.
    monitor: Monitor,
    watch: Watch,
    /// The table's chains and rules as listed right after the agent last wrote them.
    committed_rules: Option<Listing>,
    next_check: Instant,
    /// What differs, while repairing it fails (the whole table is written again at
    /// every sync until it goes through).
    unrepaired: Option<Report>,
}

impl Dataplane {
    pub fn new() -> Result<Dataplane, DataplaneError> {
        Ok(Dataplane {
            nl: Netlink::open()?,
            conntrack: Conntrack::open().map_err(|e| DataplaneError::Underlay(e.to_string()))?,
            nftnl: NfTables::open().map_err(|source| DataplaneError::Io {
                what: "open an nf_tables netlink socket".into(),
                source,
            })?,
            nft: NftState {
                synced: false,
                monitor: Monitor::open().map_err(|source| DataplaneError::Io {
                    what: "listen to nftables notifications".into(),
                    source,
                })?,
                watch: Watch::new(ruleset::TABLE),
                committed_rules: None,
                next_check: Instant::now() + DRIFT_CHECK,
                unrepaired: None,
            },
        })
    }

    /// Forwarding and the sysctls the datapath needs, in this node's namespace.
    ///
    /// Unless `bridge_netfilter`, bridged pod-to-pod frames skip the IP netfilter hooks
    /// (`bridge-nf-call-*` = 0 where br_netfilter is loaded): podnet's rules do not need
    /// them (same-node Service traffic is routed and masqueraded, see `ruleset::base`),
    /// and running every bridged frame through conntrack costs a third of a same-node
    /// round trip.
    ///
    /// Replies to the node's own traffic to other nodes' pods come back over the underlay
    /// while the route to their source is through the tunnel (and the other way round),
    /// which strict reverse-path checking drops. Where any device has it (or `all`, or
    /// `default`, which new devices copy) and `all` does not already make it loose,
    /// checking becomes loose everywhere. Where it is off it stays off: loose checking is
    /// one more route lookup for every forwarded packet (1-2% of the CPU time of a round
    /// trip between pods on two nodes, in perf).
    ///
    /// Only forwarding is required: without it no pod traffic passes the node (an error).
    /// The others are improvements, and a failure to set them (a read-only /proc/sys in a
    /// container that is not privileged: set them in the privileged init container) is a
    /// warning in the returned list, never fatal. podnet's rules work with br_netfilter on.
    ///
    /// Each value it changes keeps its original in `originals`, for `podnet uninstall`.
    pub fn sysctls(
        &self,
        bridge_netfilter: bool,
        originals: &Path,
    ) -> Result<Vec<String>, DataplaneError> {
        sysctl::set_keeping_original("net.ipv4.ip_forward", "1", originals).map_err(|source| DataplaneError::Io {
            what: "enable forwarding (net.ipv4.ip_forward=1; set it in the privileged init container if /proc/sys is read-only here)".into(),
            source,
        })?;
        let mut warnings = Vec::new();
        match (
            sysctl::get("net.ipv4.conf.all.rp_filter"),
            sysctl::strict_rp_filter(),
        ) {
            // A device's value counts only up to `all`'s (the kernel takes the larger).
            (Ok(all), Ok(strict)) if all != "2" && !strict.is_empty() => {
                tracing::info!(
                    "strict reverse-path checking on {}: making it loose (net.ipv4.conf.all.rp_filter=2)",
                    strict.join(", ")
                );
                if let Err(e) =
                    sysctl::set_keeping_original("net.ipv4.conf.all.rp_filter", "2", originals)
                {
                    warnings.push(format!(
                        "{e}: strict reverse-path checking may drop replies between nodes' pods"
                    ));
                }
            }
            (Ok(_), Ok(_)) => {}
            (Err(e), _) | (_, Err(e)) => warnings.push(format!("{e}")),
        }
        let bridge_nf = if bridge_netfilter { "1" } else { "0" };
        for k in sysctl::BRIDGE_NF_CALL {
            if !sysctl::exists(k) {
                continue;
            }
            if let Err(e) = sysctl::set_keeping_original(k, bridge_nf, originals) {
                warnings.push(format!(
                    "{e}: bridged pod traffic keeps passing the IP netfilter hooks (slower, still correct)"
                ));
            }
        }
        Ok(warnings)
    }

    /// The underlay: the device holding `node_ip`, its MTU and the networks it is on.
    pub fn underlay(&mut self, node_ip: Ipv4Addr) -> Result<Underlay, DataplaneError> {
        let addrs = self.nl.all_addresses()?;
        let index = addrs
            .iter()
            .find(|(_, a)| a.addr() == IpAddr::V4(node_ip))
            .map(|(i, _)| *i)
            .ok_or_else(|| {
                DataplaneError::Underlay(format!(
                    "no device of this node holds its address {node_ip}"
                ))
            })?;
        let link = self
            .nl
            .links()?
            .into_iter()
            .find(|l| l.index == index)
            .ok_or_else(|| DataplaneError::Underlay(format!("the device of {node_ip} vanished")))?;
        let networks = addrs
            .iter()
            .filter(|(i, _)| *i == index)
            .filter_map(|(_, a)| match a {
                IpNet::V4(v4) => Some(v4.trunc()),
                IpNet::V6(_) => None,
            })
            .collect();
        Ok(Underlay {
            device: link.name,
            mtu: link.mtu,
            networks,
        })
    }

    /// Brings routes, the VXLAN device, neighbours and FDB entries to `d`; returns what it
    /// changed, for the log.
    pub fn sync(
        &mut self,
        d: &Desired,
        underlay: &Underlay,
    ) -> Result<Vec<String>, DataplaneError> {
        let mut changes = Vec::new();
        let vx_index = self.sync_vxlan(d, underlay, &mut changes)?;
        let mut index: BTreeMap<String, u32> = BTreeMap::new();
        for l in self.nl.links()? {
            index.insert(l.name, l.index);
        }
        let want_routes: BTreeMap<Ipv4Net, Route> = d
            .routes
            .iter()
            .filter_map(|r| Some((r.dst, kernel_route(r, *index.get(&r.dev)?))))
            .collect();
        let have_routes: BTreeMap<Ipv4Net, Route> = self
            .nl
            .routes()?
            .into_iter()
            .filter(|r| r.protocol == ROUTE_PROTO)
            .filter_map(|r| match r.destination {
                IpNet::V4(v4) => Some((v4, r)),
                IpNet::V6(_) => None,
            })
            .collect();
        // Routes that go first, so nothing is sent along a route whose next hop is gone.
        for (dst, r) in &have_routes {
            if !want_routes.contains_key(dst) {
                self.nl.delete_route(r)?;
                changes.push(format!("deleted route {dst}"));
            }
        }
        if let Some(vx) = vx_index {
            let want_n: BTreeSet<Neighbour> = d
                .neighbours
                .iter()
                .map(|(ip, mac)| Neighbour {
                    index: vx,
                    ip: *ip,
                    mac: *mac,
                })
                .collect();
            let have_n: BTreeSet<Neighbour> = self.nl.neighbours(vx)?.into_iter().collect();
            for n in want_n.difference(&have_n) {
                self.nl.replace_neighbour(n)?;
                changes.push(format!("neighbour {} at {}", n.ip, format_mac(&n.mac)));
            }
            let want_f: BTreeSet<Fdb> = d
                .fdb
                .iter()
                .map(|(mac, dst)| Fdb {
                    index: vx,
                    mac: *mac,
                    dst: *dst,
                })
                .collect();
            let have_f: BTreeSet<Fdb> = self.nl.fdb(vx)?.into_iter().collect();
            for f in want_f.difference(&have_f) {
                self.nl.replace_fdb(f)?;
                changes.push(format!("FDB {} via {}", format_mac(&f.mac), f.dst));
            }
            // Neighbours and FDB entries before routes: the kernel never has to resolve a
            // next hop it cannot reach.
            self.apply_routes(&want_routes, &have_routes, &mut changes)?;
            for f in have_f.difference(&want_f) {
                self.nl.delete_fdb(f)?;
                changes.push(format!("deleted FDB {} via {}", format_mac(&f.mac), f.dst));
            }
            for n in have_n.difference(&want_n) {
                self.nl.delete_neighbour(n)?;
                changes.push(format!("deleted neighbour {}", n.ip));
            }
        } else {
            self.apply_routes(&want_routes, &have_routes, &mut changes)?;
        }
        Ok(changes)
    }

    fn apply_routes(
        &mut self,
        want: &BTreeMap<Ipv4Net, Route>,
        have: &BTreeMap<Ipv4Net, Route>,
        changes: &mut Vec<String>,
    ) -> Result<(), DataplaneError> {
        for (dst, r) in want {
            if have.get(dst) != Some(r) {
                self.nl.replace_route(r)?;
                let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
                changes.push(format!("route {dst}{via}"));
            }
        }
        Ok(())
    }

    fn sync_vxlan(
        &mut self,
        d: &Desired,
        underlay: &Underlay,
        changes: &mut Vec<String>,
    ) -> Result<Option<u32>, DataplaneError> {
        let existing = self.nl.link_by_name(VXLAN_DEVICE)?;
        let Some(want) = &d.vxlan else {
            if existing.is_some() {
                self.nl.delete_link_by_name(VXLAN_DEVICE)?;
                changes.push(format!("deleted {VXLAN_DEVICE}"));
            }
            return Ok(None);
        };
        let matches = existing.as_ref().is_some_and(|l| {
            l.vxlan.as_ref().is_some_and(|v| {
                v.vni == want.vni
                    && v.port == want.port
                    && v.local == Some(want.local)
                    && !v.learning
            }) && l.mac == Some(want.mac)
        });
        if !matches {
            if existing.is_some() {
                self.nl.delete_link_by_name(VXLAN_DEVICE)?;
            }
            let underlay_index = self
                .nl
                .link_by_name(&underlay.device)?
                .map(|l| l.index)
                .ok_or_else(|| {
                    DataplaneError::Underlay(format!("underlay device {} is gone", underlay.device))
                })?;
            self.nl.create_vxlan(&VxlanSpec {
                name: VXLAN_DEVICE,
                vni: want.vni,
                port: want.port,
                local: want.local,
                underlay: underlay_index,
                mtu: want.mtu,
                mac: want.mac,
            })?;
            changes.push(format!(
                "created {VXLAN_DEVICE} (VNI {}, port {})",
                want.vni, want.port
            ));
        }
        let link = self
            .nl
            .link_by_name(VXLAN_DEVICE)?
            .ok_or_else(|| DataplaneError::Underlay(format!("{VXLAN_DEVICE} vanished")))?;
        if link.mtu != want.mtu {
            self.nl.set_mtu(link.index, want.mtu)?;
            changes.push(format!("{VXLAN_DEVICE} MTU {}", want.mtu));
        }
        let addr = IpNet::V4(Ipv4Net::new(want.address, 32).unwrap_or_default());
        if !self.nl.addresses(link.index)?.contains(&addr) {
            self.nl.add_address(link.index, addr)?;
            changes.push(format!("{VXLAN_DEVICE} address {addr}"));
        }
        if !link.up {
            self.nl.set_up(link.index)?;
        }
        Ok(Some(link.index))
    }

    /// Commits what changed in `table` since its last commit, as one transaction (the
    /// whole table at start or after a failed sync); then, if someone else changed the
    /// table (see [`Dataplane::drift_suspected`]) or the periodic check is due, compares
    /// the kernel with what was committed and repairs what differs. Returns how many
    /// commands it sent.
    pub fn sync_nft(
        &mut self,
        table: &mut Tracked,
        health: &Health,
    ) -> Result<usize, DataplaneError> {
        let committed = self.commit_table(table);
        let sent = committed.map_err(|e| self.unrepaired(e))?;
        // A repair that failed went through with this commit (the whole table).
        if let Some(report) = self.nft.unrepaired.take() {
            tracing::info!("repaired podnet's nftables table");
            health.repaired(&report.kinds());
        }
        if !self.drift_suspected() {
            return Ok(sent);
        }
        let mut due = self.nft.watch.take().unwrap_or_default();
        if Instant::now() >= self.nft.next_check {
            due.merge(Due::everything("periodic check"));
        }
        let started = Instant::now();
        let report = match self.compare(table.want(), &due) {
            Ok(report) => report,
            Err(e) => {
                // Still due: next time.
                self.nft.watch.suspect(due);
                return Err(e);
            }
        };
        let took = started.elapsed();
        health.drift_checked(took);
        if due.all_sets {
            self.nft.next_check = Instant::now() + (took * DRIFT_CHECK_SHARE).max(DRIFT_CHECK);
        }
        tracing::debug!(
            "compared podnet's nftables table with what it wrote in {took:?} ({})",
            due.why
        );
        if report.is_empty() {
            return Ok(sent);
        }
        tracing::warn!(
            "podnet's nftables table differs from what podnet wrote (seen after: {}): \
             {report}; repairing it",
            due.why
        );
        let repaired = if report.needs_rewrite() {
            table.failed();
            self.commit_table(table)
        } else {
            let changes = report.element_repair();
            let size = changes.iter().map(|c| c.elements.len()).sum();
            self.commit_own(Commit::Elements(&changes)).map(|_| size)
        };
        match repaired {
            Ok(n) => {
                health.repaired(&report.kinds());
                Ok(sent + n)
            }
            Err(e) => {
                table.failed();
                self.nft.unrepaired = Some(report);
                Err(self.unrepaired(e))
            }
        }
    }

    /// `e`, saying what differs while a repair is due.
    fn unrepaired(&self, e: DataplaneError) -> DataplaneError {
        match &self.nft.unrepaired {
            Some(report) => DataplaneError::Drift {
                report: report.to_string(),
                source: Box::new(e),
            },
            None => e,
        }
    }

    /// Whether podnet's nftables table needs a comparison: someone else changed it,
    /// notifications were lost, or the periodic check is due. Cheap: reads only what
    /// the kernel has queued.
    pub fn drift_suspected(&mut self) -> bool {
        self.read_notices();
        self.nft.synced && (self.nft.watch.is_due() || Instant::now() >= self.nft.next_check)
    }

    fn read_notices(&mut self) {
        match self.nft.monitor.read() {
            Ok(notices) => notices.into_iter().for_each(|n| self.nft.watch.notice(n)),
            Err(e) => self.nft.watch.suspect(Due::everything(&e.to_string())),
        }
    }

    /// Commits what changed in `table`; after chains or rules changed, lists them as the
    /// reference later comparisons use.
    fn commit_table(&mut self, table: &mut Tracked) -> Result<usize, DataplaneError> {
        // A listing someone else's change may have spoilt is taken again, once, with the
        // table written again.
        for retry in [true, false] {
            let Some(tx) = table.changes() else {
                return Ok(0);
            };
            // Element changes go over netlink: `nft` would first read back the whole
            // table (over a second at 10,000 Services). Everything else is a script for
            // `nft`.
            let netlink = match &tx {
                Transaction::Elements(sets) => ruleset::encode(sets)
                    .inspect_err(|e| tracing::warn!("{e}; sending this change with nft instead"))
                    .ok(),
                Transaction::Script(_) => None,
            };
            let commit = match &netlink {
                Some(changes) => Commit::Elements(changes),
                None => Commit::Script(tx.script()),
            };
            let generation = match self.commit_own(commit) {
                Ok(generation) => generation,
                Err(e) => {
                    table.failed();
                    return Err(e);
                }
            };
            table.committed();
            self.nft.synced = true;
            if matches!(tx, Transaction::Script(_))
                && !self.list_committed_rules(generation)?
                && retry
            {
                tracing::warn!(
                    "podnet's nftables table changed while podnet wrote it; writing it again"
                );
                table.failed();
                continue;
            }
            return Ok(tx.size());
        }
        Ok(0)
    }

    /// Lists the chains and rules just committed (in generation `generation`, if known)
    /// as the reference for later comparisons; `false` if someone else may have changed
    /// them in between (the listing is taken all the same).
    fn list_committed_rules(&mut self, generation: Option<u32>) -> Result<bool, DataplaneError> {
        let listing =
            self.nftnl
                .list_table(ruleset::TABLE)
                .map_err(|source| DataplaneError::Io {
                    what: "list podnet's nftables rules after writing them".into(),
                    source,
                })?;
        self.read_notices();
        let clean = match (&listing, generation) {
            (Some(l), Some(g)) => !self.nft.watch.foreign_between(g, l.generation),
            _ => false,
        };
        self.nft.committed_rules = listing;
        Ok(clean)
    }

    /// Commits with the notification socket deaf to it (so the kernel need not build a
    /// notification per element); returns the generation it started, or `None` if
    /// someone else's commit may have slipped in unseen (then a comparison is due).
    fn commit_own(&mut self, commit: Commit) -> Result<Option<u32>, DataplaneError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| DataplaneError::Io { what, source }
        };
        let before = self
            .nftnl
            .generation()
            .map_err(io("before committing to podnet's nftables table"))?;
        self.nft.watch.own_commit();
        self.nft
            .monitor
            .pause()
            .map_err(io("stop listening to nftables notifications"))?;
        let result = match commit {
            Commit::Elements(changes) => self
                .nftnl
                .commit(ruleset::TABLE, changes)
                .map_err(DataplaneError::from),
            Commit::Script(script) => nft::apply(&script).map_err(io("apply nftables")),
        };
        self.nft
            .monitor
            .resume()
            .map_err(io("listen to nftables notifications again"))?;
        let after = self
            .nftnl
            .generation()
            .map_err(io("after committing to podnet's nftables table"))?;
        result?;
        // A commit that changed nothing (elements already there) starts no generation.
        if after == before.wrapping_add(1) || after == before {
            return Ok(Some(after));
        }
        self.nft.watch.suspect(Due::everything(&format!(
            "{} other nftables commits while podnet committed",
            after.wrapping_sub(before).wrapping_sub(1)
        )));
        Ok(None)
    }

    /// Compares podnet's table in the kernel with what the agent committed: its chains
    /// and rules, and the elements of the sets `due` covers.
    fn compare(&mut self, want: &Ruleset, due: &Due) -> Result<Report, DataplaneError> {
        let io = |what: String| move |source| DataplaneError::Io { what, source };
        let Some(listing) = self
            .nftnl
            .list_table(ruleset::TABLE)
            .map_err(io("list podnet's nftables rules".into()))?
        else {
            return Ok(Report::table_gone());
        };
        let mut report = Report::default();
        if let Some(committed) = &self.nft.committed_rules {
            drift::compare_chains(committed, &listing, &mut report);
        }
        let wanted = match want.wanted(|set| due.covers(set)) {
            Ok(wanted) => wanted,
            Err(e) => {
                tracing::warn!("{e}; comparing podnet's nftables rules but not its elements");
                BTreeMap::new()
            }
        };
        for (set, want) in &wanted {
            let have = self
                .nftnl
                .list_elements(ruleset::TABLE, set)
                .map_err(io(format!(
                    "list the elements of podnet's nftables set {set}"
                )))?;
            match have {
                None => report.sets_gone.push(set.to_string()),
                Some(have) => report
                    .sets
                    .extend(drift::compare_set(set, want, &have, |e| {
                        ruleset::describe(set, e)
                    })),
            }
        }
        Ok(report)
    }
}

/// What a commit of the agent's own sends.
enum Commit<'a> {
    Elements(&'a [Change]),
    Script(String),
}

impl Dataplane {
    /// Deletes the UDP conntrack entries `stale` describes; returns how many.
    pub fn forget_udp(&mut self, stale: &[StaleUdp]) -> Result<usize, DataplaneError> {
        if stale.is_empty() {
            return Ok(0);
        }
        let matches = |f: &Flow| {
            stale.iter().any(|s| match s {
                StaleUdp::ToEndpoint { frontend, endpoint } => {
                    f.original.dst == frontend.ip
                        && f.original.dst_port == frontend.port
                        && f.reply.src == endpoint.ip
                        && f.reply.src_port == endpoint.port
                }
                StaleUdp::Unanswered { frontend } => {
                    f.original.dst == frontend.ip
                        && f.original.dst_port == frontend.port
                        && f.reply.src == frontend.ip
                }
            })
        };
        self.conntrack
            .delete_where(PROTO_UDP, matches)
            .map_err(|e| DataplaneError::Underlay(format!("clean up UDP conntrack entries: {e}")))
    }

    /// The endpoints this node's conntrack has translated flows to (TCP, UDP and SCTP
    /// flows whose replies come from elsewhere than where they were sent).
    pub fn translated_endpoints(&mut self) -> Result<BTreeSet<NatEndpoint>, DataplaneError> {
        let flows = self.conntrack.all_flows().map_err(|e| {
            DataplaneError::Underlay(format!("find the flows Services translated: {e}"))
        })?;
        Ok(flows
            .iter()
            .filter(|f| (f.reply.src, f.reply.src_port) != (f.original.dst, f.original.dst_port))
            .filter_map(|f| {
                let protocol = match f.protocol {
                    PROTO_TCP => "tcp",
                    PROTO_UDP => "udp",
                    PROTO_SCTP => "sctp",
                    _ => return None,
                };
                Some(NatEndpoint {
                    ip: f.reply.src,
                    protocol: protocol.into(),
                    port: f.reply.src_port,
                })
            })
            .collect())
    }
}

fn kernel_route(r: &PeerRoute, oif: u32) -> Route {
    Route {
        destination: IpNet::V4(r.dst),
        gateway: Some(IpAddr::V4(r.via)),
        oif: Some(oif),
        protocol: ROUTE_PROTO,
        onlink: r.onlink,
        link_scope: false,
        prefsrc: r.prefsrc.map(IpAddr::V4),
    }
}
