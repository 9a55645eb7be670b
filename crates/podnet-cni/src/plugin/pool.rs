//! The pool as the verbs use it: locked with a bounded wait, and rebuilt from what the
//! node really holds when it is missing or unreadable, never guessed.

use podnet_kernel::{Link, Netlink};

use super::names::{ipv4_of_mac, is_host_veth_name, parse_host_veth_alias};
use super::{io_error, kernel_error};
use crate::ipam::{Held, Locked, Pool, Store, StoreError};
use crate::spec::{code, CniError, Env};

/// The pool under its lock, for changing. A missing or unreadable pool is rebuilt from
/// the addresses the podnet host veths on `bridge` hold (an unreadable file is moved
/// aside first); while another ADD is in flight that cannot be done safely, and this
/// answers "try again later" (code 11).
pub fn open_pool<'a>(
    store: &'a Store,
    env: &Env,
    bridge: &str,
) -> Result<(Locked<'a>, Pool), CniError> {
    let locked = store.lock(env.lock_timeout).map_err(store_error)?;
    let unreadable = match locked.load() {
        Ok(Some(pool)) => return Ok((locked, pool)),
        Ok(None) => None,
        Err(StoreError::Unreadable { path, reason }) => Some((path, reason)),
        Err(e) => return Err(store_error(e)),
    };
    let path = store.pool_path();
    let Some(_quiet) = locked.no_adds_in_flight().map_err(store_error)? else {
        let what = match &unreadable {
            Some((_, reason)) => format!("is unreadable ({reason})"),
            None => "is missing".to_string(),
        };
        return Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!("IPAM state {} {what}", path.display()),
        )
        .with_details(format!(
            "the next ADD or GC rebuilds it from the pods on bridge {bridge} as soon as no other ADD is in flight; retry shortly (DEL and CHECK keep working)"
        )));
    };
    let held = node_holdings(bridge)?;
    if let Some((path, reason)) = &unreadable {
        let aside = locked.move_aside().map_err(store_error)?;
        eprintln!(
            "podnet-cni: IPAM state {} was unreadable ({reason}); moved it to {} and rebuilt it from the {} addresses the host veths on {bridge} hold",
            path.display(),
            aside.display(),
            held.len()
        );
    }
    let pool = Pool::rebuilt(&held);
    locked.save(&pool).map_err(store_error)?;
    Ok((locked, pool))
}

/// The pool as it is now, or `None` where there is none or it cannot be read (it is
/// rebuilt by the next ADD or GC; the reason goes to stderr).
pub fn read_pool(store: &Store, env: &Env) -> Result<Option<Pool>, CniError> {
    Ok(read_pool_for_update(store, env)?.map(|(_, pool)| pool))
}

/// [`read_pool`], keeping the lock for changing the pool.
pub fn read_pool_for_update<'a>(
    store: &'a Store,
    env: &Env,
) -> Result<Option<(Locked<'a>, Pool)>, CniError> {
    if !store.dir().exists() {
        return Ok(None);
    }
    let locked = store.lock(env.lock_timeout).map_err(store_error)?;
    match locked.load() {
        Ok(pool) => Ok(pool.map(|p| (locked, p))),
        Err(e @ StoreError::Unreadable { .. }) => {
            eprintln!("podnet-cni: {e}; the next ADD or GC rebuilds it");
            Ok(None)
        }
        Err(e) => Err(store_error(e)),
    }
}

/// Every address a podnet host veth on `bridge` holds: from the alias ADD sets on it, or,
/// on a veth without one (an ADD that died before its last step, or a veth of an
/// earlier release), from its pod end's MAC, which is derived from the address.
fn node_holdings(bridge: &str) -> Result<Vec<Held>, CniError> {
    let mut host = Netlink::open().map_err(|e| kernel_error("open netlink on the node", e))?;
    let links = host
        .links()
        .map_err(|e| kernel_error("rebuild IPAM: list links", e))?;
    let Some(br) = links.iter().find(|l| l.name == bridge) else {
        return Ok(Vec::new());
    };
    let mut held = Vec::new();
    for link in links.iter().filter(|l| is_pod_port(l, br.index)) {
        if let Some((ip, attachment)) = link.alias.as_deref().and_then(parse_host_veth_alias) {
            held.push(Held {
                ip,
                host_veth: link.name.clone(),
                attachment,
            });
            continue;
        }
        let pod_end = match (link.peer, link.peer_netnsid) {
            (Some(index), Some(nsid)) => host.link_in_netnsid(nsid, index).map_err(|e| {
                kernel_error(
                    format!("rebuild IPAM: read the pod end of {}", link.name),
                    e,
                )
            })?,
            _ => None,
        };
        let Some(ip) = pod_end.and_then(|l| l.mac).and_then(ipv4_of_mac) else {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "cannot rebuild IPAM: host veth {} on {bridge} has no podnet alias and its pod end's address cannot be read",
                    link.name
                ),
            )
            .with_details(format!(
                "delete its pod, or the veth itself (ip link delete {}), then retry",
                link.name
            )));
        };
        held.push(Held {
            ip,
            host_veth: link.name.clone(),
            attachment: None,
        });
    }
    Ok(held)
}

/// A podnet host veth attached to the bridge with index `bridge`.
pub fn is_pod_port(link: &Link, bridge: u32) -> bool {
    link.master == Some(bridge)
        && link.kind.as_deref() == Some("veth")
        && is_host_veth_name(&link.name)
}

/// The CNI error for a store error: a lock held too long is "try again later".
pub fn store_error(e: StoreError) -> CniError {
    match e {
        e @ StoreError::Busy { .. } => CniError::new(code::TRY_AGAIN_LATER, e.to_string())
            .with_details("retry later; if the lock stays held, its holder is stuck: end it"),
        e @ StoreError::Unreadable { .. } => CniError::new(code::IO, e.to_string()),
        StoreError::Io(e) => io_error("IPAM", e),
    }
}
