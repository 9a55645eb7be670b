//! hostPort: the CNI `portMappings` capability, as the reference `portmap` plugin gives
//! it. The runtime hands podnet-cni each pod's mappings at ADD; the plugin records them,
//! one file per attachment, in the `hostports` directory beside the node file, and
//! removes the file at DEL and GC. The agent turns the files into elements of two maps of
//! its table, which DNAT a connection to a node address and host port to the pod (any
//! address of the node, or the one `hostIP` names).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The directory of mapping files beside the node file `node_file`.
pub fn dir(node_file: &Path) -> PathBuf {
    node_file
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("hostports")
}

/// One attachment's mappings, as podnet-cni writes them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub container_id: String,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub port_mappings: Vec<Mapping>,
}

/// A CNI port mapping (`runtimeConfig.portMappings[]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

fn tcp() -> String {
    "tcp".into()
}

/// A DNAT a mapping asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPort {
    /// `None`: every address of the node.
    pub host_ip: Option<Ipv4Addr>,
    pub protocol: String,
    pub host_port: u16,
    pub pod_ip: Ipv4Addr,
    pub pod_port: u16,
}

impl HostPort {
    /// The map and element (key, value) in podnet's table.
    pub fn element(&self) -> (&'static str, String, String) {
        let value = format!("{} . {}", self.pod_ip, self.pod_port);
        match self.host_ip {
            None => (
                "hostports",
                format!("{} . {}", self.protocol, self.host_port),
                value,
            ),
            Some(ip) => (
                "hostport-ips",
                format!("{ip} . {} . {}", self.protocol, self.host_port),
                value,
            ),
        }
    }
}

/// The DNATs the attachments ask for; mappings it cannot serve (an IPv6 hostIP, an
/// unknown protocol) are reported, not dropped silently. Two pods asking for one host
/// port: the first (by container ID) keeps it.
pub fn decide(attachments: &[Attachment]) -> (Vec<HostPort>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut taken = BTreeSet::new();
    let mut sorted: Vec<&Attachment> = attachments.iter().collect();
    sorted.sort_by(|a, b| a.container_id.cmp(&b.container_id));
    for a in sorted {
        for m in &a.port_mappings {
            let protocol = m.protocol.to_ascii_lowercase();
            if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
                errors.push(format!(
                    "container {}: hostPort {}: protocol {:?} is not tcp, udp or sctp",
                    a.container_id, m.host_port, m.protocol
                ));
                continue;
            }
            let host_ip = match m.host_ip.as_str() {
                "" | "0.0.0.0" => None,
                ip => match ip.parse::<Ipv4Addr>() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        errors.push(format!(
                            "container {}: hostPort {} on hostIP {ip}: podnet maps IPv4 addresses only",
                            a.container_id, m.host_port
                        ));
                        continue;
                    }
                },
            };
            if !taken.insert((host_ip, protocol.clone(), m.host_port)) {
                errors.push(format!(
                    "container {}: hostPort {}/{protocol} is already taken by another pod on this node",
                    a.container_id, m.host_port
                ));
                continue;
            }
            out.push(HostPort {
                host_ip,
                protocol,
                host_port: m.host_port,
                pod_ip: a.ip,
                pod_port: m.container_port,
            });
        }
    }
    out.sort();
    (out, errors)
}

/// Reads every mapping file in `dir` (none yet: no mapping).
pub fn read(dir: &Path) -> io::Result<(Vec<Attachment>, Vec<String>)> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("read {}: {e}", dir.display()),
            ))
        }
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match fs::read(&path).map(|b| serde_json::from_slice::<Attachment>(&b)) {
            Ok(Ok(a)) => out.push(a),
            Ok(Err(e)) => errors.push(format!("{}: {e}", path.display())),
            // Removed by a DEL since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    Ok((out, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(id: &str, ip: &str, json: &str) -> Attachment {
        let mappings: Vec<Mapping> = serde_json::from_str(json).expect("mappings");
        Attachment {
            container_id: id.into(),
            ip: ip.parse().expect("ip"),
            port_mappings: mappings,
        }
    }

    #[test]
    fn mappings_become_elements_and_conflicts_are_said() {
        let (hp, errors) = decide(&[
            att(
                "b",
                "10.244.1.3",
                r#"[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]"#,
            ),
            att(
                "a",
                "10.244.1.2",
                r#"[{"hostPort": 8080, "containerPort": 80},
                    {"hostPort": 5353, "containerPort": 53, "protocol": "UDP", "hostIP": "172.18.0.11"},
                    {"hostPort": 9000, "containerPort": 90, "hostIP": "fd00::1"}]"#,
            ),
        ]);
        let elements: Vec<_> = hp.iter().map(HostPort::element).collect();
        assert_eq!(
            elements,
            vec![
                (
                    "hostports",
                    "tcp . 8080".to_string(),
                    "10.244.1.2 . 80".to_string()
                ),
                (
                    "hostport-ips",
                    "172.18.0.11 . udp . 5353".to_string(),
                    "10.244.1.2 . 53".to_string()
                ),
            ]
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors
            .iter()
            .any(|e| e.contains("container b") && e.contains("already taken")));
        assert!(errors.iter().any(|e| e.contains("IPv4 addresses only")));
    }
}
