//! ADD: an address from the pool, a veth pair with its pod end created directly in the
//! pod's namespace, the host end on the node bridge in hairpin mode, `lo` up, and a
//! default route via the bridge's gateway address.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;

use ipnet::{IpNet, Ipv4Net};
use podnet_kernel::netlink::{mac_for_ipv4, BridgePort, Link, PROTO_BOOT};
use podnet_kernel::{NetNs, Netlink, Route, VethSpec};
use serde_json::Value;

use super::{attachment, kernel_error, open_netns, resolve, Store};
use crate::spec::{
    code, AddResult, Attachment, CniError, Env, Interface, IpConfig, NetConf, Resolved, Version,
};

pub fn add(env: &Env, conf: &NetConf, version: Version) -> Result<Value, CniError> {
    let resolved = resolve(conf)?;
    let pod_ns = open_netns(env)?;
    let att = attachment(env);
    let store = Store::new(&resolved.ipam_dir);
    let (ip, fresh) = store
        .update(|pool| {
            let fresh = pool.find(&att).is_none();
            pool.allocate(resolved.subnet, resolved.gateway, &att)
                .map(|ip| (ip, fresh))
        })
        .map_err(|e| super::io_error(format!("container {}: IPAM", env.container_id), e))?
        .map_err(|ex| {
            CniError::new(
                code::POOL_EXHAUSTED,
                format!(
                    "container {}: no free address in {} ({} in use); delete pods or widen the node's pod CIDR",
                    env.container_id, ex.subnet, ex.in_use
                ),
            )
        })?;
    match setup(&resolved, &pod_ns, env, &att, ip) {
        Ok(result) => Ok(result.render(version)),
        Err(e) => {
            // Leave nothing half-applied: the veth pair (taking the pod end with it) and,
            // if this call made it, the allocation.
            if let Ok(mut host) = Netlink::open() {
                let _ = host.delete_link_by_name(&super::host_veth_name(&att));
            }
            if fresh {
                let _ = store.update(|pool| pool.release(&att));
            }
            Err(e)
        }
    }
}

fn setup(
    r: &Resolved,
    pod_ns: &NetNs,
    env: &Env,
    att: &Attachment,
    ip: Ipv4Addr,
) -> Result<AddResult, CniError> {
    let cid = &env.container_id;
    let mut host = Netlink::open().map_err(|e| kernel_error("open netlink on the node", e))?;
    let mut pod = Netlink::open_in(pod_ns).map_err(|e| {
        kernel_error(
            format!("container {cid}: open netlink in the pod's namespace"),
            e,
        )
    })?;
    let bridge = ensure_bridge(&mut host, r)?;

    let host_name = super::host_veth_name(att);
    // A host end under this attachment's name is left over from an ADD that died, or
    // from an ADD repeated without DEL: start over with it gone (its pod end goes too).
    host.delete_link_by_name(&host_name)
        .map_err(|e| kernel_error(format!("container {cid}: remove stale {host_name}"), e))?;
    let pod_mac = mac_for_ipv4(ip);
    host.create_veth(&VethSpec {
        name: &host_name,
        mtu: r.mtu,
        master: Some(bridge.index),
        peer_name: &env.ifname,
        peer_netns: Some(pod_ns.as_fd()),
        peer_mac: Some(pod_mac),
    })
    .map_err(|e| {
        if e.is_exists() {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!(
                    "container {cid}: interface {} already exists in {}; DEL the attachment or pick another CNI_IFNAME",
                    env.ifname,
                    pod_ns.path().display()
                ),
            )
        } else {
            kernel_error(format!("container {cid}: create veth pair {host_name}/{}", env.ifname), e)
        }
    })?;
    let host_link = must_find(&mut host, &host_name, "the node")?;
    // Hairpin: a pod reaching itself through a Service comes back out its own port.
    host.set_bridge_port_up(
        host_link.index,
        BridgePort {
            hairpin: true,
            isolated: false,
        },
    )
    .map_err(|e| {
        kernel_error(
            format!("container {cid}: attach {host_name} to {}", r.bridge),
            e,
        )
    })?;

    let lo = must_find(&mut pod, "lo", "the pod")?;
    pod.set_up(lo.index)
        .map_err(|e| kernel_error(format!("container {cid}: bring lo up"), e))?;
    let pod_link = must_find(&mut pod, &env.ifname, "the pod")?;
    let address = Ipv4Net::new(ip, r.subnet.prefix_len())
        .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
    pod.add_address(pod_link.index, IpNet::V4(address))
        .map_err(|e| {
            kernel_error(
                format!("container {cid}: add {address} to {}", env.ifname),
                e,
            )
        })?;
    pod.set_up(pod_link.index)
        .map_err(|e| kernel_error(format!("container {cid}: bring {} up", env.ifname), e))?;
    let default = AddResult::default_route(r.gateway);
    pod.replace_route(&Route {
        destination: default.dst,
        gateway: default.gw,
        oif: Some(pod_link.index),
        protocol: PROTO_BOOT,
        onlink: false,
        link_scope: false,
        prefsrc: None,
    })
    .map_err(|e| {
        kernel_error(
            format!("container {cid}: add default route via {}", r.gateway),
            e,
        )
    })?;

    Ok(AddResult {
        interfaces: vec![
            Interface {
                name: r.bridge.clone(),
                mac: bridge.mac_string(),
                sandbox: None,
                mtu: Some(bridge.mtu),
            },
            Interface {
                name: host_name,
                mac: host_link.mac_string(),
                sandbox: None,
                mtu: Some(r.mtu),
            },
            Interface {
                name: env.ifname.clone(),
                mac: Some(podnet_kernel::netlink::format_mac(&pod_mac)),
                sandbox: Some(pod_ns.path().display().to_string()),
                mtu: Some(r.mtu),
            },
        ],
        ips: vec![IpConfig {
            address: IpNet::V4(address),
            gateway: Some(IpAddr::V4(r.gateway)),
            interface: Some(2),
        }],
        routes: vec![default],
    })
}

fn must_find(nl: &mut Netlink, name: &str, place: &str) -> Result<Link, CniError> {
    nl.link_by_name(name)
        .map_err(|e| kernel_error(format!("look up {name} in {place}"), e))?
        .ok_or_else(|| {
            CniError::new(
                code::KERNEL,
                format!("{name} vanished from {place} while it was being configured"),
            )
        })
}

/// The node bridge, created on first use with a fixed MAC and the gateway address.
fn ensure_bridge(host: &mut Netlink, r: &Resolved) -> Result<Link, CniError> {
    let bridge = match host
        .link_by_name(&r.bridge)
        .map_err(|e| kernel_error(format!("look up bridge {}", r.bridge), e))?
    {
        Some(link) => link,
        None => {
            match host.create_bridge(&r.bridge, r.mtu, mac_for_ipv4(r.gateway)) {
                // Another ADD running at the same time made it first.
                Err(e) if !e.is_exists() => {
                    return Err(kernel_error(format!("create bridge {}", r.bridge), e))
                }
                _ => {}
            }
            must_find(host, &r.bridge, "the node")?
        }
    };
    if bridge.kind.as_deref() != Some("bridge") {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "{} exists on the node and is not a bridge (it is a {}); set \"bridge\" to another name",
                r.bridge,
                bridge.kind.as_deref().unwrap_or("plain device")
            ),
        ));
    }
    let gateway = IpNet::V4(
        Ipv4Net::new(r.gateway, r.subnet.prefix_len())
            .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?,
    );
    host.add_address(bridge.index, gateway)
        .map_err(|e| kernel_error(format!("add gateway {gateway} to {}", r.bridge), e))?;
    if !bridge.up {
        host.set_up(bridge.index)
            .map_err(|e| kernel_error(format!("bring {} up", r.bridge), e))?;
    }
    bridge_sysctls(&r.bridge)?;
    Ok(bridge)
}

/// The node forwards for its pods, and sends no ICMP redirects: Service traffic between
/// two pods of one node leaves through the bridge it came in on, and must keep passing
/// the node (where it is NATed) rather than be redirected to go direct. Each sysctl is
/// written only when it differs.
pub fn bridge_sysctls(bridge: &str) -> Result<(), CniError> {
    for (key, value) in [
        ("net.ipv4.ip_forward".to_string(), "1"),
        ("net.ipv4.conf.all.send_redirects".to_string(), "0"),
        (format!("net.ipv4.conf.{bridge}.send_redirects"), "0"),
    ] {
        podnet_kernel::sysctl::set(&key, value)
            .map_err(|e| CniError::new(code::IO, format!("set {key}={value}: {e}")))?;
    }
    Ok(())
}
