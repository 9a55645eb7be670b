//! `podnet uninstall`: removes from a node everything podnet put there, in the namespace
//! it runs in. The order keeps the node consistent at each step: first the conflist (the
//! kubelet starts no new pod on podnet), then the rules and routes, the VXLAN device, the
//! pods' interfaces and bridge, podnet's conntrack entries, its files, and last the
//! sysctls it changed. It keeps going past a failure and reports every one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use podnet_kernel::conntrack::{Conntrack, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use podnet_kernel::nftables::NfTables;
use podnet_kernel::{nft, sysctl, Netlink};

use crate::cni_config;
use crate::dataplane::ROUTE_PROTO;
use crate::plan::VXLAN_DEVICE;
use crate::ruleset::TABLE;
use crate::run::SYSCTL_ORIGINALS;

/// What to remove.
#[derive(Debug, Clone)]
pub struct Uninstall {
    pub cni_dir: PathBuf,
    pub node_file: PathBuf,
    pub ipam_dir: PathBuf,
    pub state_dir: PathBuf,
    pub bridge: String,
    /// Conntrack entries with an address in these (the cluster's pod CIDR and the
    /// Service CIDR) were made by podnet's pods and rules.
    pub cidrs: Vec<Ipv4Net>,
}

/// What was removed, in words, and what could not be.
#[derive(Debug, Default)]
pub struct Report {
    pub removed: Vec<String>,
    pub errors: Vec<String>,
}

impl Report {
    fn did(&mut self, what: impl Into<String>) {
        self.removed.push(what.into());
    }

    fn failed(&mut self, what: impl std::fmt::Display) {
        self.errors.push(what.to_string());
    }

    fn file(&mut self, path: &Path) {
        match fs::remove_file(path) {
            Ok(()) => self.did(path.display().to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => self.failed(format!("remove {}: {e}", path.display())),
        }
    }

    fn dir(&mut self, path: &Path) {
        match fs::remove_dir_all(path) {
            Ok(()) => self.did(path.display().to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => self.failed(format!("remove {}: {e}", path.display())),
        }
    }
}

pub fn uninstall(u: &Uninstall) -> Report {
    let mut r = Report::default();
    r.file(&u.cni_dir.join(cni_config::CONFLIST));
    table(&mut r);
    match Netlink::open() {
        Ok(mut nl) => links_and_routes(&mut nl, u, &mut r),
        Err(e) => r.failed(format!("open netlink: {e}")),
    }
    conntrack(u, &mut r);
    r.file(&u.node_file);
    r.dir(&u.ipam_dir);
    match sysctl::restore_originals(&u.state_dir.join(SYSCTL_ORIGINALS)) {
        Ok(restored) => {
            for (key, value) in restored {
                r.did(format!("sysctl {key} (back to {value})"));
            }
        }
        Err(errors) => r.errors.extend(errors),
    }
    r
}

fn table(r: &mut Report) {
    let exists = NfTables::open().and_then(|mut nf| nf.list_table(TABLE));
    match exists {
        Ok(None) => {}
        Ok(Some(_)) => match nft::apply(&format!("delete table inet {TABLE}\n")) {
            Ok(()) => r.did(format!("nftables table inet {TABLE}")),
            Err(e) => r.failed(format!("delete nftables table inet {TABLE}: {e}")),
        },
        Err(e) => r.failed(format!("look for nftables table inet {TABLE}: {e}")),
    }
}

fn links_and_routes(nl: &mut Netlink, u: &Uninstall, r: &mut Report) {
    match nl.routes() {
        Ok(routes) => {
            for route in routes.iter().filter(|rt| rt.protocol == ROUTE_PROTO) {
                match nl.delete_route(route) {
                    Ok(_) => r.did(format!("route {}", route.destination)),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => r.failed(format!("delete route {}: {e}", route.destination)),
                }
            }
        }
        Err(e) => r.failed(format!("list routes: {e}")),
    }
    let links = match nl.links() {
        Ok(l) => l,
        Err(e) => return r.failed(format!("list links: {e}")),
    };
    let bridge = links.iter().find(|l| l.name == u.bridge).map(|l| l.index);
    // The VXLAN device, then the pods' host ends (taking their pod ends with them), then
    // the bridge.
    let pods = links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("veth") && bridge.is_some() && l.master == bridge);
    let vxlan = links.iter().filter(|l| l.name == VXLAN_DEVICE);
    for link in vxlan.chain(pods) {
        match nl.delete_link_by_index(link.index) {
            Ok(_) => r.did(format!("device {}", link.name)),
            Err(e) if e.is_not_found() => {}
            Err(e) => r.failed(format!("delete device {}: {e}", link.name)),
        }
    }
    if let Some(index) = bridge {
        match nl.delete_link_by_index(index) {
            Ok(_) => r.did(format!("bridge {}", u.bridge)),
            Err(e) if e.is_not_found() => {}
            Err(e) => r.failed(format!("delete bridge {}: {e}", u.bridge)),
        }
    }
}

fn conntrack(u: &Uninstall, r: &mut Report) {
    if u.cidrs.is_empty() {
        return;
    }
    let ours = |ip: &std::net::Ipv4Addr| u.cidrs.iter().any(|c| c.contains(ip));
    let mut ct = match Conntrack::open() {
        Ok(ct) => ct,
        Err(e) => return r.failed(format!("open conntrack: {e}")),
    };
    let mut deleted = 0;
    for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP] {
        let result = ct.delete_where(proto, |f| {
            [f.original.src, f.original.dst, f.reply.src, f.reply.dst]
                .iter()
                .any(ours)
        });
        match result {
            Ok(n) => deleted += n,
            Err(e) => r.failed(format!("delete conntrack entries: {e}")),
        }
    }
    if deleted > 0 {
        let cidrs: Vec<String> = u.cidrs.iter().map(|c| IpNet::V4(*c).to_string()).collect();
        r.did(format!(
            "{deleted} conntrack entries of {}",
            cidrs.join(" and ")
        ));
    }
}
