//! Slim views of the Pods and Namespaces that policy needs, built from the API objects.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use podnet_model::k8s_openapi::api::core::v1::{Container, Namespace, Pod};

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// The label the API server sets on every namespace, its value the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespaced object's reference: a pod's or a policy's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

pub type PodKey = Key;
pub type PolicyKey = Key;

/// The transport protocols a NetworkPolicy port names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The API's spelling (`TCP`, `UDP`, `SCTP`).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

/// An API object that policy cannot use, with the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {field}: {message}")]
pub struct InvalidObject {
    /// `networkpolicy`, `pod` or `namespace`.
    pub kind: &'static str,
    /// `namespace/name`, or the name of a namespace.
    pub object: String,
    /// The field's path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// What policy needs of a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// The pod's IPv4 address. `None` until it has one, for pods on the host's network (their
    /// address is the node's, which policy neither isolates nor selects as a pod), and for
    /// pods that have finished (Succeeded/Failed), whose address may already be another pod's.
    pub ip: Option<Ipv4Addr>,
    pub node: Option<String>,
    /// Named container ports: name → (protocol, number), one entry per protocol. A policy's
    /// named port matches the destination pod's port of that name and of the rule's protocol.
    pub named_ports: BTreeMap<String, Vec<(Protocol, u16)>>,
}

impl PodInfo {
    pub fn key(&self) -> PodKey {
        Key::new(&self.namespace, &self.name)
    }

    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .get(name)?
            .iter()
            .find(|(p, _)| *p == protocol)
            .map(|(_, n)| *n)
    }

    /// The slim view of an API Pod.
    pub fn from_pod(pod: &Pod) -> Result<PodInfo, InvalidObject> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let invalid = |field: &str, message: String| InvalidObject {
            kind: "pod",
            object: format!("{namespace}/{name}"),
            field: field.into(),
            message,
        };
        if name.is_empty() {
            return Err(invalid(
                "metadata.name",
                "a pod needs a name; give it one".into(),
            ));
        }
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let finished = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let mut ip = None;
        if !host_network && !finished {
            // The first IPv4 address of status.podIPs (status.podIP is podIPs[0]).
            let listed = status
                .and_then(|s| s.pod_ips.as_ref())
                .map(|ips| ips.iter().map(|p| p.ip.as_str()).collect::<Vec<_>>())
                .filter(|ips| !ips.is_empty())
                .or_else(|| status.and_then(|s| s.pod_ip.as_deref()).map(|ip| vec![ip]))
                .unwrap_or_default();
            for (i, text) in listed.iter().enumerate() {
                match text.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(v4)) => {
                        ip = Some(v4);
                        break;
                    }
                    Ok(std::net::IpAddr::V6(_)) => {}
                    Err(_) => {
                        return Err(invalid(
                            &format!("status.podIPs[{i}].ip"),
                            format!("{text:?} is not an IP address"),
                        ))
                    }
                }
            }
        }
        let mut named_ports = BTreeMap::new();
        if let Some(spec) = spec {
            // Regular containers and sidecars (init containers that keep running) serve.
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            for c in spec.containers.iter().chain(sidecars) {
                add_named_ports(c, &mut named_ports);
            }
        }
        Ok(PodInfo {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip,
            node: spec.and_then(|s| s.node_name.clone()),
            named_ports,
            namespace,
            name,
        })
    }
}

fn add_named_ports(c: &Container, out: &mut BTreeMap<String, Vec<(Protocol, u16)>>) {
    for p in c.ports.iter().flatten() {
        let Some(name) = p.name.as_ref() else {
            continue;
        };
        // The API server admits only TCP/UDP/SCTP and 1..=65535; anything else could never
        // match a policy port, so it is left out rather than failing the whole pod.
        let protocol = match p.protocol.as_deref() {
            None => Some(Protocol::Tcp),
            Some(s) => Protocol::parse(s),
        };
        if let (Some(protocol), Ok(port)) = (protocol, u16::try_from(p.container_port)) {
            if port > 0 {
                // The first container declaring a name for a protocol wins.
                let entries = out.entry(name.clone()).or_default();
                if !entries.iter().any(|(p, _)| *p == protocol) {
                    entries.push((protocol, port));
                }
            }
        }
    }
}

/// What policy needs of a Namespace: its name and labels, which always carry
/// `kubernetes.io/metadata.name` (the API server sets it; it is added here when missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
}

impl NamespaceInfo {
    pub fn new(name: impl Into<String>, mut labels: Labels) -> NamespaceInfo {
        let name = name.into();
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
        NamespaceInfo { name, labels }
    }

    /// The labels a namespace has when only its name is known (its object not seen yet).
    pub fn default_labels(name: &str) -> Labels {
        Labels::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())])
    }

    pub fn from_namespace(ns: &Namespace) -> Result<NamespaceInfo, InvalidObject> {
        match ns.metadata.name.as_deref() {
            Some(name) if !name.is_empty() => Ok(NamespaceInfo::new(
                name,
                ns.metadata.labels.clone().unwrap_or_default(),
            )),
            _ => Err(InvalidObject {
                kind: "namespace",
                object: String::new(),
                field: "metadata.name".into(),
                message: "a namespace needs a name; give it one".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_model::k8s_openapi::api::core::v1::{ContainerPort, PodIP, PodSpec, PodStatus};
    use podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(status: PodStatus, spec: PodSpec) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("x".into()),
                labels: Some(Labels::from([("app".into(), "web".into())])),
                ..Default::default()
            },
            spec: Some(spec),
            status: Some(status),
        }
    }

    fn port(name: &str, protocol: Option<&str>, number: i32) -> ContainerPort {
        ContainerPort {
            name: Some(name.into()),
            protocol: protocol.map(Into::into),
            container_port: number,
            ..Default::default()
        }
    }

    #[test]
    fn pod_view_keeps_labels_ipv4_node_and_named_ports() {
        let p = pod(
            PodStatus {
                pod_ips: Some(vec![
                    PodIP {
                        ip: "fd00::5".into(),
                    },
                    PodIP {
                        ip: "10.244.1.5".into(),
                    },
                ]),
                ..Default::default()
            },
            PodSpec {
                node_name: Some("node-1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![
                        port("http", None, 8080),
                        port("dns", Some("UDP"), 53),
                        port("http", Some("TCP"), 9090),
                    ]),
                    ..Default::default()
                }],
                init_containers: Some(vec![Container {
                    name: "sidecar".into(),
                    restart_policy: Some("Always".into()),
                    ports: Some(vec![port("metrics", None, 9100)]),
                    ..Default::default()
                }]),
                ..Default::default()
            },
        );
        let info = PodInfo::from_pod(&p).expect("valid pod");
        assert_eq!(info.key(), Key::new("x", "web"));
        assert_eq!(info.ip, Some(Ipv4Addr::new(10, 244, 1, 5)));
        assert_eq!(info.node.as_deref(), Some("node-1"));
        assert_eq!(info.named_port("http", Protocol::Tcp), Some(8080));
        assert_eq!(info.named_port("http", Protocol::Udp), None);
        assert_eq!(info.named_port("dns", Protocol::Udp), Some(53));
        assert_eq!(info.named_port("metrics", Protocol::Tcp), Some(9100));
    }

    #[test]
    fn host_network_and_finished_pods_have_no_policy_address() {
        let status = PodStatus {
            pod_ip: Some("10.244.1.5".into()),
            ..Default::default()
        };
        let host = pod(
            status.clone(),
            PodSpec {
                host_network: Some(true),
                ..Default::default()
            },
        );
        assert_eq!(PodInfo::from_pod(&host).expect("valid").ip, None);
        let done = pod(
            PodStatus {
                phase: Some("Succeeded".into()),
                ..status.clone()
            },
            PodSpec::default(),
        );
        assert_eq!(PodInfo::from_pod(&done).expect("valid").ip, None);
        let running = pod(status, PodSpec::default());
        assert!(PodInfo::from_pod(&running).expect("valid").ip.is_some());
    }

    #[test]
    fn bad_pod_address_is_reported_with_the_pod() {
        let p = pod(
            PodStatus {
                pod_ip: Some("10.244.1".into()),
                ..Default::default()
            },
            PodSpec::default(),
        );
        let err = PodInfo::from_pod(&p).expect_err("bad address");
        assert_eq!(err.object, "x/web");
        assert!(err.to_string().contains("status.podIPs[0].ip"), "{err}");
    }

    #[test]
    fn namespaces_always_carry_their_name_label() {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("y".into()),
                labels: Some(Labels::from([("team".into(), "blue".into())])),
                ..Default::default()
            },
            ..Default::default()
        };
        let info = NamespaceInfo::from_namespace(&ns).expect("valid");
        assert_eq!(
            info.labels.get(NAMESPACE_NAME_LABEL).map(|s| s.as_str()),
            Some("y")
        );
        assert_eq!(info.labels.get("team").map(|s| s.as_str()), Some("blue"));
        assert!(NamespaceInfo::from_namespace(&Namespace::default()).is_err());
    }
}
