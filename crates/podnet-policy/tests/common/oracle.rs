//! The reference decision, written straight from the API reference over the API objects,
//! sharing no code with the compiler but the slim views of pods and namespaces (and
//! podnet-model's label selector, not the crate's own).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use podnet_model::k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use podnet_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podnet_model::selector::label_selector_matches;
use podnet_policy::{NamespaceInfo, PodInfo, Protocol, Source};

struct Conn {
    peer: Ipv4Addr,
    dst: Ipv4Addr,
    proto: Protocol,
    port: u16,
}

pub struct World<'a> {
    pub namespaces: &'a [NamespaceInfo],
    pub pods: &'a [PodInfo],
    pub policies: &'a [NetworkPolicy],
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

impl World<'_> {
    fn pod_at(&self, ip: Ipv4Addr) -> Option<&PodInfo> {
        self.pods
            .iter()
            .filter(|p| p.ip == Some(ip))
            .min_by_key(|p| p.key())
    }

    fn ns_labels(&self, ns: &str) -> podnet_policy::Labels {
        self.namespaces
            .iter()
            .find(|n| n.name == ns)
            .map(|n| n.labels.clone())
            .unwrap_or_else(|| NamespaceInfo::default_labels(ns))
    }

    /// The policies whose podSelector selects `pod` and whose types include `ingress` or
    /// egress.
    fn isolating(&self, pod: &PodInfo, ingress: bool) -> Vec<&NetworkPolicy> {
        self.policies
            .iter()
            .filter(|np| np.metadata.namespace.as_deref() == Some(pod.namespace.as_str()))
            .filter(|np| {
                let spec = np.spec.as_ref().expect("spec");
                let selected = spec
                    .pod_selector
                    .as_ref()
                    .is_none_or(|s| label_selector_matches(s, Some(&pod.labels)));
                let types = spec.policy_types.clone().unwrap_or_default();
                let affects = if types.is_empty() {
                    ingress || spec.egress.as_ref().is_some_and(|e| !e.is_empty())
                } else {
                    types
                        .iter()
                        .any(|t| t == if ingress { "Ingress" } else { "Egress" })
                };
                selected && affects
            })
            .collect()
    }

    fn peer_matches(&self, np: &NetworkPolicy, peer: &NetworkPolicyPeer, ip: Ipv4Addr) -> bool {
        if let Some(b) = &peer.ip_block {
            let cidr: IpNet = b.cidr.parse().expect("cidr");
            let inside = |n: &IpNet| n.contains(&IpAddr::V4(ip));
            return inside(&cidr)
                && !b
                    .except
                    .iter()
                    .flatten()
                    .any(|e| inside(&e.parse().expect("except")));
        }
        let Some(pod) = self.pod_at(ip) else {
            return false;
        };
        let ns_ok = match &peer.namespace_selector {
            None => np.metadata.namespace.as_deref() == Some(pod.namespace.as_str()),
            Some(s) => label_selector_matches(s, Some(&self.ns_labels(&pod.namespace))),
        };
        ns_ok
            && peer
                .pod_selector
                .as_ref()
                .is_none_or(|s| label_selector_matches(s, Some(&pod.labels)))
    }

    fn port_matches(
        &self,
        p: &NetworkPolicyPort,
        dst: Ipv4Addr,
        proto: Protocol,
        port: u16,
    ) -> bool {
        if p.protocol.as_deref().unwrap_or("TCP") != proto_name(proto) {
            return false;
        }
        match &p.port {
            None => true,
            Some(IntOrString::Int(n)) => match p.end_port {
                Some(e) => *n <= i32::from(port) && i32::from(port) <= e,
                None => *n == i32::from(port),
            },
            Some(IntOrString::String(name)) => self.pod_at(dst).is_some_and(|pod| {
                pod.named_ports
                    .get(name)
                    .is_some_and(|v| v.contains(&(proto, port)))
            }),
        }
    }

    /// Whether a rule admits a connection; `peer` is its source for ingress, its
    /// destination for egress.
    fn rule_allows(
        &self,
        np: &NetworkPolicy,
        peers: Option<&Vec<NetworkPolicyPeer>>,
        ports: Option<&Vec<NetworkPolicyPort>>,
        c: &Conn,
    ) -> bool {
        let peer_ok = match peers {
            None => true,
            Some(v) if v.is_empty() => true,
            Some(v) => v.iter().any(|p| self.peer_matches(np, p, c.peer)),
        };
        let port_ok = match ports {
            None => true,
            Some(v) if v.is_empty() => true,
            Some(v) => v
                .iter()
                .any(|p| self.port_matches(p, c.dst, c.proto, c.port)),
        };
        peer_ok && port_ok
    }

    pub fn egress_allows(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: Protocol, port: u16) -> bool {
        let Some(pod) = self.pod_at(src) else {
            return true;
        };
        let isolating = self.isolating(pod, false);
        isolating.is_empty()
            || isolating.iter().any(|np| {
                np.spec
                    .as_ref()
                    .and_then(|s| s.egress.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|r| {
                        let c = Conn {
                            peer: dst,
                            dst,
                            proto,
                            port,
                        };
                        self.rule_allows(np, r.to.as_ref(), r.ports.as_ref(), &c)
                    })
            })
    }

    pub fn ingress_allows(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: Protocol, port: u16) -> bool {
        let Some(pod) = self.pod_at(dst) else {
            return true;
        };
        let isolating = self.isolating(pod, true);
        isolating.is_empty()
            || isolating.iter().any(|np| {
                np.spec
                    .as_ref()
                    .and_then(|s| s.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|r| {
                        let c = Conn {
                            peer: src,
                            dst,
                            proto,
                            port,
                        };
                        self.rule_allows(np, r.from.as_ref(), r.ports.as_ref(), &c)
                    })
            })
    }

    pub fn allows(&self, src: Source, dst: Ipv4Addr, proto: Protocol, port: u16) -> bool {
        match src {
            Source::Node => true,
            Source::Addr(s) if s == dst => true,
            Source::Addr(s) => {
                self.egress_allows(s, dst, proto, port) && self.ingress_allows(s, dst, proto, port)
            }
        }
    }
}
