//! DEL: cut the pod off, free its address, and delete its veth pair, in that order, so
//! an address is free only once nothing that holds it can answer. Idempotent: an
//! attachment whose namespace, interfaces or allocation are already gone is deleted
//! successfully. Needs neither the pod's namespace (the host end is found by its derived
//! name, and deleting it removes the pod end) nor the node file, and works while the pool
//! is unreadable (the cut-off veth is no longer on the bridge, so the rebuild does not
//! count its address).
//!
//! Deleting a network device costs the kernel an RCU grace period (about 15 ms here),
//! most of a DEL. So DEL takes the host end down and off the bridge (the pod is cut off at
//! once), frees the address, and returns the deletion itself as [`super::Deferred`] for
//! the binary to finish after it has answered the runtime.

use podnet_kernel::Netlink;

use super::pool::{read_pool_for_update, store_error};
use super::{attachment, crash_point, host_veth_name, hostports, kernel_error, store, Deferred};
use crate::spec::{CniError, Env, NetConf};

pub fn del(env: &Env, conf: &NetConf) -> Result<Option<Deferred>, CniError> {
    let att = attachment(env);
    let cid = &env.container_id;
    let host_name = host_veth_name(&att);
    let mut host = Netlink::open().map_err(|e| kernel_error("open netlink on the node", e))?;
    let link = host
        .link_by_name(&host_name)
        .map_err(|e| kernel_error(format!("container {cid}: look up {host_name}"), e))?;
    if let Some(link) = &link {
        match host.cut_off(link.index) {
            Ok(()) => {}
            // Gone in the meantime (its namespace was deleted): nothing left to cut off.
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(kernel_error(
                    format!("container {cid}: take {host_name} down and off the bridge"),
                    e,
                ))
            }
        }
    }
    crash_point(env, "del-cut-off");
    // Its hostPorts go before its address can be handed to another pod.
    hostports::forget(conf, &att)?;
    let store = store(conf)?;
    if let Some((locked, mut pool)) = read_pool_for_update(&store, env)? {
        if pool.release(&att).is_some() {
            locked.save(&pool).map_err(store_error)?;
        }
    }
    crash_point(env, "del-freed");
    Ok(link.map(|l| Deferred::DeleteLink {
        netlink: host,
        index: l.index,
        name: host_name,
    }))
}
