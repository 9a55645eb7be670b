//! DEL: remove the veth pair and free the address. Idempotent: an attachment whose
//! namespace, interfaces or allocation are already gone is deleted successfully. Needs
//! neither the pod's namespace (the host end is found by its derived name, and deleting it
//! removes the pod end) nor the node file.

use podnet_kernel::Netlink;

use super::{attachment, host_veth_name, io_error, kernel_error, store};
use crate::spec::{CniError, Env, NetConf};

pub fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let att = attachment(env);
    let cid = &env.container_id;
    let host_name = host_veth_name(&att);
    let mut host = Netlink::open().map_err(|e| kernel_error("open netlink on the node", e))?;
    host.delete_link_by_name(&host_name)
        .map_err(|e| kernel_error(format!("container {cid}: delete {host_name}"), e))?;
    store(conf)?
        .update(|pool| pool.release(&att))
        .map_err(|e| io_error(format!("container {cid}: release address"), e))?;
    Ok(())
}
