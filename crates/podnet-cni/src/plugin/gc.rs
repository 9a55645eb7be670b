//! GC: remove every podnet host veth, and free every allocation, whose attachment is not
//! in `cni.dev/valid-attachments`. In three passes, so that an address is free only once
//! nothing holding it can answer, wherever GC dies: first every stale veth is cut off
//! (down and off the bridge), then their addresses are freed, then the veths are deleted.
//! A GC that died is finished by the next one: a cut-off veth (off any bridge, down) is
//! stale too.

use std::collections::HashSet;

use podnet_kernel::{Link, Netlink};

use super::names::is_host_veth_name;
use super::pool::{is_pod_port, open_pool, store_error};
use super::{crash_point, host_veth_name, hostports, kernel_error, store};
use crate::spec::{code, CniError, Env, NetConf, Version};

pub fn gc(env: &Env, conf: &NetConf, version: Version) -> Result<(), CniError> {
    if !version.has_status_and_gc() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("GC needs cniVersion 1.1.0 or later; the config says {version}"),
        ));
    }
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs \"cni.dev/valid-attachments\" (the list of attachments to keep)",
        )
    })?;
    let keep: HashSet<_> = valid.iter().collect();
    let keep_names: HashSet<String> = valid.iter().map(host_veth_name).collect();
    let bridge_name = conf.bridge()?;
    let store = store(conf)?;

    let mut host = Netlink::open().map_err(|e| kernel_error("open netlink on the node", e))?;
    let links = host
        .links()
        .map_err(|e| kernel_error("GC: list links", e))?;
    let bridge = links
        .iter()
        .find(|l| l.name == bridge_name)
        .map(|b| b.index);
    let stale: Vec<&Link> = links
        .iter()
        .filter(|l| !keep_names.contains(&l.name) && is_stale_shape(l, bridge))
        .collect();

    // 1. Cut off. A veth that cannot be cut off keeps its address.
    let mut errors = Vec::new();
    let mut uncut = HashSet::new();
    let mut cut = Vec::new();
    for link in stale {
        if link.master.is_some() || link.up {
            match host.cut_off(link.index) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => continue,
                Err(e) => {
                    errors.push(format!("cut off {}: {e}", link.name));
                    uncut.insert(link.name.clone());
                    continue;
                }
            }
            crash_point(env, "gc-cut-off");
        }
        cut.push(link);
    }

    // The hostPorts of what goes, before their addresses are freed.
    errors.extend(hostports::forget_unless(conf, valid));

    // 2. Free (rebuilding the pool from the node first if it was lost: the veths just cut
    // off are no longer on the bridge and are not counted).
    let (locked, mut pool) = open_pool(&store, env, &bridge_name)?;
    let freed = pool.release_unless(|a| {
        let veth = a.host_veth();
        uncut.contains(&veth)
            || if a.container_id.is_empty() {
                keep_names.contains(&veth)
            } else {
                keep.contains(&a.attachment())
            }
    });
    if !freed.is_empty() {
        locked.save(&pool).map_err(store_error)?;
    }
    drop(locked);
    crash_point(env, "gc-freed");

    // 3. Delete. By index: a link made later under the same name is never touched.
    for link in cut {
        match host.delete_link_by_index(link.index) {
            Ok(_) => crash_point(env, "gc-deleted"),
            Err(e) => errors.push(format!("delete {}: {e}", link.name)),
        }
    }
    // Keep going past a failure and report all of them.
    if !errors.is_empty() {
        return Err(
            CniError::new(code::KERNEL, "GC: could not remove some stale host veths")
                .with_details(errors.join("; ")),
        );
    }
    Ok(())
}

/// A podnet host veth on the bridge, or one a DEL or GC already cut off (on no bridge,
/// down): an ADD attaches its veth to the bridge when it creates it, so no other podnet
/// veth is ever off a bridge.
fn is_stale_shape(link: &Link, bridge: Option<u32>) -> bool {
    let on_bridge = bridge.is_some_and(|b| is_pod_port(link, b));
    let cut_off = link.master.is_none()
        && !link.up
        && link.kind.as_deref() == Some("veth")
        && is_host_veth_name(&link.name);
    on_bridge || cut_off
}
