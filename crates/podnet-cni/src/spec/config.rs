//! The network configuration podnet-cni reads on stdin, and the node file the agent writes.
//!
//! ```json
//! {"cniVersion": "1.1.0", "name": "podnet", "type": "podnet-cni", "bridge": "podnet0",
//!  "subnet": "10.244.1.0/24", "mtu": 1450, "dataDir": "/var/lib/podnet/ipam",
//!  "nodeConfig": "/run/podnet/node.json"}
//! ```
//! These keys are a contract; extend, never rename.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::env::validate_ifname;
use super::error::{code, CniError};
use super::version::{Version, SUPPORTED};

pub const DEFAULT_BRIDGE: &str = "podnet0";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/podnet/ipam";
pub const DEFAULT_NODE_CONFIG: &str = "/run/podnet/node.json";
pub const DEFAULT_MTU: u32 = 1500;

/// One attachment of a container to the network: what IPAM keys allocations by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network config as given, before defaults and the node file are applied.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: Option<String>,
    pub name: Option<String>,
    pub bridge: Option<String>,
    pub subnet: Option<String>,
    pub mtu: Option<u32>,
    pub data_dir: Option<PathBuf>,
    pub node_config: Option<PathBuf>,
    pub prev_result: Option<Value>,
    /// podnet-cni allocates addresses itself; a delegated IPAM plugin is not supported.
    pub ipam: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// What the runtime passes for the capabilities the conflist declares.
    pub runtime_config: Option<RuntimeConfig>,
}

/// `runtimeConfig`: podnet-cni takes `portMappings` (hostPorts).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

/// One hostPort, as the CNI `portMappings` capability describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

fn default_protocol() -> String {
    "tcp".into()
}

impl NetConf {
    /// Parses stdin: invalid JSON is a decode error (6), valid JSON with a wrongly typed
    /// field an invalid config (7).
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                "cannot decode the network config on stdin as JSON",
            )
            .with_details(e.to_string())
        })?;
        if !value.is_object() {
            return Err(CniError::new(
                code::DECODE,
                "the network config on stdin must be a JSON object",
            ));
        }
        serde_json::from_value(value).map_err(|e| {
            CniError::new(code::INVALID_CONFIG, "invalid network config")
                .with_details(e.to_string())
        })
    }

    /// The cniVersion the runtime asked for, or the best answer for reporting an error
    /// when it is missing or unknown.
    pub fn version_for_errors(&self) -> &str {
        match self.cni_version.as_deref() {
            Some(v) if Version::parse(v).is_some() => v,
            _ => Version::LATEST.as_str(),
        }
    }

    /// The negotiated version: the config's, if this plugin speaks it.
    pub fn version(&self) -> Result<Version, CniError> {
        let Some(v) = self.cni_version.as_deref() else {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "the network config has no cniVersion",
            )
            .with_details(format!("podnet-cni supports {}", SUPPORTED.join(", "))));
        };
        Version::parse(v).ok_or_else(|| {
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("incompatible CNI version {v:?}"),
            )
            .with_details(format!("podnet-cni supports {}", SUPPORTED.join(", ")))
        })
    }

    /// The network's name, checked: it names the IPAM directory.
    pub fn network_name(&self) -> Result<&str, CniError> {
        match self.name.as_deref() {
            None | Some("") => Err(CniError::new(
                code::INVALID_CONFIG,
                "the network config has no \"name\"",
            )),
            Some(n) if n.contains('/') || n == "." || n == ".." => Err(CniError::new(
                code::INVALID_CONFIG,
                format!("network name {n:?} is invalid: it must not contain '/' or be '.' or '..'"),
            )),
            Some(n) => Ok(n),
        }
    }

    /// The hostPorts the runtime asked for, checked (code 7 for one podnet cannot map).
    pub fn port_mappings(&self) -> Result<Vec<PortMapping>, CniError> {
        let given = self
            .runtime_config
            .as_ref()
            .map(|r| r.port_mappings.as_slice())
            .unwrap_or_default();
        given
            .iter()
            .map(|m| {
                let bad = |why: String| {
                    CniError::new(
                        code::INVALID_CONFIG,
                        format!(
                            "runtimeConfig.portMappings: hostPort {}: {why}",
                            m.host_port
                        ),
                    )
                };
                if m.host_port == 0 || m.container_port == 0 {
                    return Err(bad("hostPort and containerPort must be 1-65535".into()));
                }
                let protocol = m.protocol.to_ascii_lowercase();
                if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
                    return Err(bad(format!(
                        "protocol {:?} is not tcp, udp or sctp",
                        m.protocol
                    )));
                }
                if !m.host_ip.is_empty() && m.host_ip.parse::<Ipv4Addr>().is_err() {
                    return Err(bad(format!(
                        "hostIP {:?}: podnet maps IPv4 addresses only",
                        m.host_ip
                    )));
                }
                Ok(PortMapping {
                    protocol,
                    ..m.clone()
                })
            })
            .collect()
    }

    pub fn node_config_path(&self) -> PathBuf {
        self.node_config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_NODE_CONFIG))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    pub fn bridge(&self) -> Result<String, CniError> {
        let b = self.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE);
        validate_ifname(b).map_err(|_| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("bridge {b:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"),
            )
        })?;
        Ok(b.to_string())
    }

    /// Applies defaults and the node file. `load_node` is called only when the config
    /// lacks `subnet` or `mtu`; it returns `Ok(None)` when the file does not exist.
    pub fn resolve(
        &self,
        load_node: impl FnOnce(&Path) -> Result<Option<NodeConfig>, CniError>,
    ) -> Result<Resolved, CniError> {
        let network = self.network_name()?.to_string();
        if let Some(ipam) = &self.ipam {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("unsupported field \"ipam\": {ipam}"),
            )
            .with_details("podnet-cni allocates pod addresses itself from \"subnet\"; remove the ipam section"));
        }
        let bridge = self.bridge()?;
        let node_path = self.node_config_path();
        let node = if self.subnet.is_none() || self.mtu.is_none() {
            load_node(&node_path)?
        } else {
            None
        };
        let subnet_text = match (&self.subnet, node.as_ref().and_then(|n| n.subnet.as_ref())) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => s.clone(),
            (None, None) => {
                let why = if node.is_some() {
                    format!("{} has no \"subnet\"", node_path.display())
                } else {
                    format!("{} does not exist", node_path.display())
                };
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("no pod subnet for this node: the network config has no \"subnet\" and {why}"),
                )
                .with_details("the podnet agent writes the node file once the node has a pod CIDR; retry later or set \"subnet\""));
            }
        };
        let subnet = parse_subnet(&subnet_text)?;
        let mtu = self
            .mtu
            .or(node.as_ref().and_then(|n| n.mtu))
            .unwrap_or(DEFAULT_MTU);
        if !(68..=65535).contains(&mtu) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("mtu {mtu} is out of range (68-65535)"),
            ));
        }
        let gateway = subnet.hosts().next().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("subnet {subnet} has no host addresses"),
            )
        })?;
        Ok(Resolved {
            ipam_dir: self.data_dir().join(&network),
            network,
            bridge,
            subnet,
            gateway,
            mtu,
        })
    }
}

/// Ranges no pod address may come from: the kernel treats them specially (they would
/// fail only later, in netlink, after the bridge was made).
const NOT_UNICAST: [(Ipv4Net, &str); 5] = [
    (
        Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
        "\"this network\"",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
        "loopback",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
        "link-local",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
        "multicast",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4),
        "reserved and broadcast",
    ),
];

fn parse_subnet(text: &str) -> Result<Ipv4Net, CniError> {
    let net: Ipv4Net = text.parse().map_err(|_| {
        if text.contains(':') {
            CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "subnet {text:?}: IPv6 pod subnets are not supported yet; use an IPv4 CIDR"
                ),
            )
        } else {
            CniError::new(
                code::INVALID_CONFIG,
                format!("subnet {text:?} is not an IPv4 CIDR such as 10.244.1.0/24"),
            )
        }
    })?;
    if net.network() != net.addr() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "subnet {net} is not a network address; did you mean {}?",
                net.trunc()
            ),
        ));
    }
    if let Some((range, what)) = NOT_UNICAST
        .iter()
        .find(|(range, _)| range.contains(&net.network()) || net.contains(&range.network()))
    {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "subnet {net} overlaps {range} ({what}): pods need ordinary unicast addresses; use a private range such as 10.244.0.0/16"
            ),
        ));
    }
    if net.prefix_len() > 30 {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("subnet {net} is too small: it needs room for the gateway and at least one pod (use /30 or larger)"),
        ));
    }
    Ok(net)
}

/// The node file the agent writes: the node's pod CIDR and the pod MTU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl NodeConfig {
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<NodeConfig, CniError> {
        serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("cannot read node config {}", path.display()),
            )
            .with_details(e.to_string())
        })
    }
}

/// The config with every default applied: what ADD, CHECK and STATUS act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub network: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// The first address of the subnet, held by the bridge.
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// `dataDir/<network name>`.
    pub ipam_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> NetConf {
        NetConf::parse(json.as_bytes()).expect("parses")
    }

    fn no_node(_: &Path) -> Result<Option<NodeConfig>, CniError> {
        Ok(None)
    }

    #[test]
    fn the_documented_example_resolves() {
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"podnet","type":"podnet-cni","bridge":"podnet0",
                "subnet":"10.244.1.0/24","mtu":1450,"dataDir":"/var/lib/podnet/ipam",
                "nodeConfig":"/run/podnet/node.json"}"#,
        );
        let r = c
            .resolve(|_| panic!("the node file is not needed"))
            .expect("resolves");
        assert_eq!(r.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(r.gateway, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(r.mtu, 1450);
        assert_eq!(r.bridge, "podnet0");
        assert_eq!(r.ipam_dir, PathBuf::from("/var/lib/podnet/ipam/podnet"));
    }

    #[test]
    fn defaults_apply() {
        let c =
            conf(r#"{"cniVersion":"1.0.0","name":"n","type":"podnet-cni","subnet":"10.1.0.0/16"}"#);
        let r = c.resolve(no_node).expect("resolves");
        assert_eq!(r.bridge, DEFAULT_BRIDGE);
        assert_eq!(r.mtu, DEFAULT_MTU);
        assert_eq!(r.ipam_dir, Path::new(DEFAULT_DATA_DIR).join("n"));
        assert_eq!(c.node_config_path(), PathBuf::from(DEFAULT_NODE_CONFIG));
    }

    #[test]
    fn subnet_and_mtu_come_from_the_node_file() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","type":"podnet-cni","nodeConfig":"/x/node.json"}"#,
        );
        let r = c
            .resolve(|p| {
                assert_eq!(p, Path::new("/x/node.json"));
                Ok(Some(NodeConfig {
                    subnet: Some("10.244.7.0/24".into()),
                    mtu: Some(1450),
                }))
            })
            .expect("resolves");
        assert_eq!(r.subnet.to_string(), "10.244.7.0/24");
        assert_eq!(r.mtu, 1450);
        // The config wins over the node file.
        let c =
            conf(r#"{"cniVersion":"1.0.0","name":"n","type":"podnet-cni","subnet":"10.9.0.0/24"}"#);
        let r = c
            .resolve(|_| {
                Ok(Some(NodeConfig {
                    subnet: Some("10.244.7.0/24".into()),
                    mtu: Some(1400),
                }))
            })
            .expect("resolves");
        assert_eq!(r.subnet.to_string(), "10.9.0.0/24");
        assert_eq!(r.mtu, 1400);
    }

    #[test]
    fn no_subnet_anywhere_is_try_again_later() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"podnet-cni"}"#);
        let err = c.resolve(no_node).expect_err("no subnet");
        assert_eq!(err.code, code::TRY_AGAIN_LATER);
        assert!(
            err.msg.contains("/run/podnet/node.json does not exist"),
            "{}",
            err.msg
        );
    }

    #[test]
    fn bad_values_are_invalid_config() {
        for (json, needle) in [
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.1.0.5/24"}"#,
                "did you mean 10.1.0.0/24",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.1.0.0/31"}"#,
                "too small",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"banana"}"#,
                "not an IPv4 CIDR",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"fd00::/64"}"#,
                "IPv6",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"0.0.0.0/0"}"#,
                "overlaps 0.0.0.0/8",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"224.1.0.0/24"}"#,
                "multicast",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"192.0.0.0/2"}"#,
                "multicast",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"240.0.0.0/30"}"#,
                "reserved",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"127.0.0.0/24"}"#,
                "loopback",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"169.254.3.0/24"}"#,
                "link-local",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"0.1.0.0/16"}"#,
                "this network",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.1.0.0/24","mtu":20}"#,
                "out of range",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.1.0.0/24","bridge":"a/b"}"#,
                "bridge",
            ),
            (
                r#"{"cniVersion":"1.0.0","subnet":"10.1.0.0/24"}"#,
                "no \"name\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"../x","subnet":"10.1.0.0/24"}"#,
                "invalid",
            ),
        ] {
            let err = conf(json).resolve(no_node).expect_err(json);
            assert_eq!(err.code, code::INVALID_CONFIG, "{json}");
            assert!(err.msg.contains(needle), "{json}: {}", err.msg);
        }
        let err = NetConf::parse(br#"{"cniVersion":"1.0.0","mtu":"big"}"#).expect_err("typed");
        assert_eq!(err.code, code::INVALID_CONFIG);
    }

    #[test]
    fn a_delegated_ipam_is_an_unsupported_field() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.1.0.0/24","ipam":{"type":"host-local"}}"#,
        );
        let err = c.resolve(no_node).expect_err("ipam");
        assert_eq!(err.code, code::UNSUPPORTED_FIELD);
        assert!(
            err.msg.contains("\"ipam\"") && err.msg.contains("host-local"),
            "{}",
            err.msg
        );
    }

    #[test]
    fn invalid_json_is_a_decode_error() {
        for bad in [&b"{"[..], b"", b"[1,2]", b"nonsense"] {
            assert_eq!(NetConf::parse(bad).expect_err("bad").code, code::DECODE);
        }
    }

    #[test]
    fn version_negotiation() {
        assert_eq!(
            conf(r#"{"cniVersion":"0.3.1"}"#).version(),
            Ok(Version::V0_3_1)
        );
        let err = conf(r#"{"cniVersion":"9.9.9"}"#)
            .version()
            .expect_err("unknown");
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        assert!(err.details.contains("1.1.0"));
        assert_eq!(
            conf(r#"{"cniVersion":"9.9.9"}"#).version_for_errors(),
            "1.1.0"
        );
        assert_eq!(
            conf("{}").version().expect_err("missing").code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn gc_attachments_parse() {
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        );
        assert_eq!(
            c.valid_attachments,
            Some(vec![Attachment {
                container_id: "a".into(),
                ifname: "eth0".into()
            }])
        );
    }
}
