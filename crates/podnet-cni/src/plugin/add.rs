//! ADD: an address from the pool, a veth pair with its pod end created directly in the
//! pod's namespace, the host end on the node bridge in hairpin mode, `lo` up, a default
//! route via the bridge's gateway address, and last the host end's alias, which marks
//! the attachment complete. A repeated ADD of a complete attachment returns its result
//! and changes nothing.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;

use ipnet::{IpNet, Ipv4Net};
use podnet_kernel::netlink::{mac_for_ipv4, BridgePort, Link, PROTO_BOOT};
use podnet_kernel::{NetNs, Netlink, Route, VethSpec};
use serde_json::Value;

use super::names::host_veth_alias;
use super::pool::{open_pool, store_error};
use super::{attachment, crash_point, hostports, kernel_error, open_netns, resolve};
use crate::ipam::{Allocation, NetnsRef, Store};
use crate::spec::{
    code, AddResult, Attachment, CniError, Env, Interface, IpConfig, NetConf, Resolved, Version,
};

pub fn add(env: &Env, conf: &NetConf, version: Version) -> Result<Value, CniError> {
    let resolved = resolve(conf)?;
    let mappings = conf.port_mappings()?;
    let pod_ns = open_netns(env)?;
    let cid = &env.container_id;
    let netns = pod_ns
        .id()
        .map(|id| NetnsRef {
            path: pod_ns.path().display().to_string(),
            dev: id.dev,
            ino: id.ino,
        })
        .map_err(|e| super::io_error(format!("container {cid}: identify its namespace"), e))?;
    let att = attachment(env);
    let store = Store::new(&resolved.ipam_dir);
    let (locked, mut pool) = open_pool(&store, env, &resolved.bridge)?;
    let known = pool.find(&att).map(|(ip, a)| (ip, a.clone()));
    if let Some((ip, allocation)) = &known {
        if let Some(result) = completed(&resolved, env, &pod_ns, &netns, *ip, allocation)? {
            hostports::record(conf, &att, *ip, &mappings)?;
            return Ok(result.render(version));
        }
    }
    let before = pool.clone();
    let ip = pool
        .allocate(resolved.subnet, resolved.gateway, &att, Some(netns))
        .map_err(|ex| {
            CniError::new(
                code::POOL_EXHAUSTED,
                format!(
                    "container {cid}: no free address in {} ({} in use); delete pods or widen the node's pod CIDR",
                    ex.subnet, ex.in_use
                ),
            )
        })?;
    if pool != before {
        locked.save(&pool).map_err(store_error)?;
    }
    // Until this ADD returns, its address may be on no interface yet: a rebuild of the
    // pool from the node would miss it.
    let _in_flight = locked.add_in_flight().map_err(store_error)?;
    drop(locked);
    crash_point(env, "add-allocated");
    let done = setup(&resolved, &pod_ns, env, &att, ip)
        .and_then(|result| hostports::record(conf, &att, ip, &mappings).map(|()| result));
    match done {
        Ok(result) => Ok(result.render(version)),
        Err(e) => {
            // Leave nothing half-applied: the veth pair (taking the pod end with it) and,
            // if this call made it, the allocation. The interface goes before the address.
            if let Ok(mut host) = Netlink::open() {
                let _ = host.delete_link_by_name(&super::host_veth_name(&att));
            }
            if known.is_none() {
                if let Ok((locked, mut pool)) = open_pool(&store, env, &resolved.bridge) {
                    if pool.release(&att).is_some() {
                        let _ = locked.save(&pool);
                    }
                }
            }
            Err(e)
        }
    }
}

/// The result of an earlier ADD of this attachment that completed (its host veth is on
/// the bridge with the alias ADD sets last), rendered from the node without changing
/// anything; `None` if that ADD never completed. The same container in another
/// namespace is refused.
fn completed(
    r: &Resolved,
    env: &Env,
    pod_ns: &NetNs,
    netns: &NetnsRef,
    ip: Ipv4Addr,
    allocation: &Allocation,
) -> Result<Option<AddResult>, CniError> {
    let cid = &env.container_id;
    let att = attachment(env);
    let host_name = super::host_veth_name(&att);
    let mut host = Netlink::open().map_err(|e| kernel_error("open netlink on the node", e))?;
    let (Some(bridge), Some(host_link)) = (
        host.link_by_name(&r.bridge)
            .map_err(|e| kernel_error(format!("look up bridge {}", r.bridge), e))?,
        host.link_by_name(&host_name)
            .map_err(|e| kernel_error(format!("container {cid}: look up {host_name}"), e))?,
    ) else {
        return Ok(None);
    };
    if host_link.master != Some(bridge.index)
        || host_link.alias.as_deref() != Some(host_veth_alias(ip, &att).as_str())
    {
        return Ok(None);
    }
    let same_netns = match &allocation.netns {
        Some(n) => (n.dev, n.ino) == (netns.dev, netns.ino),
        // Allocated by an earlier release or rebuilt: the pod end in this namespace must
        // be the host veth's peer.
        None => {
            let mut pod = Netlink::open_in(pod_ns).map_err(|e| {
                kernel_error(format!("container {cid}: open netlink in the pod"), e)
            })?;
            pod.link_by_name(&env.ifname)
                .map_err(|e| kernel_error(format!("container {cid}: look up {}", env.ifname), e))?
                .is_some_and(|l| l.peer == Some(host_link.index) && l.mac == Some(mac_for_ipv4(ip)))
        }
    };
    if !same_netns {
        let was = allocation
            .netns
            .as_ref()
            .map(|n| n.path.as_str())
            .unwrap_or("another namespace");
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "container {cid}: {} is already attached in {was} with {ip}; refusing to move it to {}",
                env.ifname, netns.path
            ),
        )
        .with_details("DEL the attachment first, or use another container ID"));
    }
    Ok(Some(add_result(r, env, pod_ns, &bridge, &host_link, ip)?))
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
    // A host end under this attachment's name is left over from an ADD that died: start
    // over with it gone (its pod end goes too).
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
    crash_point(env, "add-veth");
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
    crash_point(env, "add-configured");
    // Last: the alias marks the attachment complete (a repeated ADD returns its result
    // and touches nothing) and tells a rebuild who holds the address.
    host.set_alias(host_link.index, &host_veth_alias(ip, att))
        .map_err(|e| kernel_error(format!("container {cid}: mark {host_name}"), e))?;
    add_result(r, env, pod_ns, &bridge, &host_link, ip)
}

/// The result of a completed ADD.
fn add_result(
    r: &Resolved,
    env: &Env,
    pod_ns: &NetNs,
    bridge: &Link,
    host_link: &Link,
    ip: Ipv4Addr,
) -> Result<AddResult, CniError> {
    let address = Ipv4Net::new(ip, r.subnet.prefix_len())
        .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
    Ok(AddResult {
        interfaces: vec![
            Interface {
                name: r.bridge.clone(),
                mac: bridge.mac_string(),
                sandbox: None,
                mtu: Some(bridge.mtu),
            },
            Interface {
                name: host_link.name.clone(),
                mac: host_link.mac_string(),
                sandbox: None,
                mtu: Some(r.mtu),
            },
            Interface {
                name: env.ifname.clone(),
                mac: Some(podnet_kernel::netlink::format_mac(&mac_for_ipv4(ip))),
                sandbox: Some(pod_ns.path().display().to_string()),
                mtu: Some(r.mtu),
            },
        ],
        ips: vec![IpConfig {
            address: IpNet::V4(address),
            gateway: Some(IpAddr::V4(r.gateway)),
            interface: Some(2),
        }],
        routes: vec![AddResult::default_route(r.gateway)],
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
