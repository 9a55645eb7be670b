//! GC: free every allocation, and delete every podnet host veth on the bridge, whose
//! attachment is not in `cni.dev/valid-attachments`.

use std::collections::HashSet;

use podnet_kernel::Netlink;

use super::names::is_host_veth_name;
use super::{host_veth_name, io_error, kernel_error, store};
use crate::spec::{code, CniError, NetConf, Version};

pub fn gc(conf: &NetConf, version: Version) -> Result<(), CniError> {
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
    store(conf)?
        .update(|pool| pool.release_unless(|a| keep.contains(a)))
        .map_err(|e| io_error("GC: release addresses", e))?;

    // Host ends left by an ADD that died before its pod was deleted.
    let bridge_name = conf.bridge()?;
    let keep_names: HashSet<String> = valid.iter().map(host_veth_name).collect();
    let mut host = Netlink::open().map_err(|e| kernel_error("open netlink on the node", e))?;
    let links = host
        .links()
        .map_err(|e| kernel_error("GC: list links", e))?;
    let Some(bridge) = links.iter().find(|l| l.name == bridge_name) else {
        return Ok(());
    };
    let mut errors = Vec::new();
    for link in &links {
        let ours = link.master == Some(bridge.index)
            && link.kind.as_deref() == Some("veth")
            && is_host_veth_name(&link.name);
        if ours && !keep_names.contains(&link.name) {
            if let Err(e) = host.delete_link_by_name(&link.name) {
                errors.push(format!("{}: {e}", link.name));
            }
        }
    }
    // Keep going past a failed delete and report all of them.
    if !errors.is_empty() {
        return Err(
            CniError::new(code::KERNEL, "GC: could not delete some stale host veths")
                .with_details(errors.join("; ")),
        );
    }
    Ok(())
}
