//! CHECK: the pod's interface, address and routes, the host end on the bridge and the
//! allocation are all still what ADD made (as `prevResult` records it).

use std::net::IpAddr;

use ipnet::IpNet;
use podnet_kernel::Netlink;

use super::pool::read_pool;
use super::{attachment, host_veth_name, kernel_error, open_netns, resolve, Store};
use crate::spec::{code, AddResult, CniError, Env, NetConf, Version};

pub fn check(env: &Env, conf: &NetConf, version: Version) -> Result<(), CniError> {
    if !version.has_check() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK needs cniVersion 0.4.0 or later; the config says {version}"),
        ));
    }
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult (the result of ADD)",
        )
    })?;
    let prev = AddResult::parse(prev)?;
    let r = resolve(conf)?;
    let pod_ns = open_netns(env)?;
    let cid = &env.container_id;
    let failed = |what: String| {
        Err(
            CniError::new(code::CHECK_FAILED, format!("container {cid}: {what}")).with_details(
                "the pod's network was changed after ADD; delete and recreate the pod",
            ),
        )
    };

    let pod_if = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("prevResult has no interface {} inside the pod", env.ifname),
            )
        })?;
    let ips: Vec<IpNet> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == pod_if))
        .map(|ip| ip.address)
        .collect();

    let mut pod = Netlink::open_in(&pod_ns)
        .map_err(|e| kernel_error("open netlink in the pod's namespace", e))?;
    let Some(link) = pod
        .link_by_name(&env.ifname)
        .map_err(|e| kernel_error("look up the pod interface", e))?
    else {
        return failed(format!(
            "interface {} is missing from {}",
            env.ifname,
            pod_ns.path().display()
        ));
    };
    if !link.up {
        return failed(format!("interface {} is down", env.ifname));
    }
    if let (Some(want), Some(have)) = (&prev.interfaces[pod_if].mac, link.mac_string()) {
        if !want.eq_ignore_ascii_case(&have) {
            return failed(format!(
                "interface {} has MAC {have}, ADD gave it {want}",
                env.ifname
            ));
        }
    }
    let addrs = pod
        .addresses(link.index)
        .map_err(|e| kernel_error("list the pod's addresses", e))?;
    for ip in &ips {
        if !addrs.contains(ip) {
            return failed(format!("address {ip} is missing from {}", env.ifname));
        }
    }
    let routes = pod
        .routes()
        .map_err(|e| kernel_error("list the pod's routes", e))?;
    for want in &prev.routes {
        let present = routes.iter().any(|have| {
            have.destination == want.dst && (want.gw.is_none() || have.gateway == want.gw)
        });
        if !present {
            let via = want.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return failed(format!("route {}{via} is missing from the pod", want.dst));
        }
    }

    let mut host = Netlink::open().map_err(|e| kernel_error("open netlink on the node", e))?;
    let host_name = host_veth_name(&attachment(env));
    let bridge = host
        .link_by_name(&r.bridge)
        .map_err(|e| kernel_error("look up the bridge", e))?;
    let host_end = host
        .link_by_name(&host_name)
        .map_err(|e| kernel_error("look up the host veth", e))?;
    match (bridge, host_end) {
        (None, _) => return failed(format!("bridge {} is missing from the node", r.bridge)),
        (_, None) => return failed(format!("host veth {host_name} is missing from the node")),
        (Some(b), Some(h)) if h.master != Some(b.index) => {
            return failed(format!(
                "host veth {host_name} is not attached to {}",
                r.bridge
            ))
        }
        (_, Some(h)) if !h.up => return failed(format!("host veth {host_name} is down")),
        _ => {}
    }

    // An unreadable pool is rebuilt by the next ADD or GC; CHECK goes by the node then.
    if let Some(pool) = read_pool(&Store::new(&r.ipam_dir), env)? {
        let allocated = pool.find(&attachment(env)).map(|(ip, _)| IpAddr::V4(ip));
        for ip in &ips {
            if allocated != Some(ip.addr()) {
                return failed(format!(
                    "address {} is not allocated to this attachment in IPAM",
                    ip.addr()
                ));
            }
        }
    }
    Ok(())
}
