//! The agent's config file (`podnet agent --config FILE`, the DaemonSet's ConfigMap).
//! Its keys are a contract: `backend`, `clusterCIDR`, `serviceCIDR`, `mtu`, `vni`, and
//! also `vxlanPort`, `directRouting` and `untrackedPodTraffic`; each has a flag of the
//! same meaning, and a flag given on the command line wins over the file. `apiServers`
//! and `serviceProxy` extend them.

use std::path::Path;

use ipnet::Ipv4Net;
use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    /// `vxlan` or `host-gw`.
    pub backend: Option<BackendName>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<Ipv4Net>,
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: Option<Ipv4Net>,
    /// Empty: the underlay's MTU minus the encapsulation overhead.
    pub mtu: Option<u32>,
    pub vni: Option<u32>,
    pub vxlan_port: Option<u16>,
    pub direct_routing: Option<bool>,
    /// Pod-to-pod flows that no Service translates skip conntrack.
    pub untracked_pod_traffic: Option<bool>,
    /// The API servers' own addresses (`https://192.168.1.10:6443`), tried in turn: with
    /// kube-proxy removed, the `kubernetes` Service's ClusterIP works only once podnet
    /// proxies Services, which needs the API first.
    pub api_servers: Option<Vec<String>>,
    /// `false`: podnet leaves Services to kube-proxy (no Service rules, no Service watches).
    pub service_proxy: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BackendName {
    #[serde(rename = "vxlan")]
    Vxlan,
    #[serde(rename = "host-gw")]
    HostGw,
}

impl std::str::FromStr for BackendName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vxlan" => Ok(BackendName::Vxlan),
            "host-gw" => Ok(BackendName::HostGw),
            other => Err(format!("unknown backend {other:?}: use vxlan or host-gw")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("agent config {path}: {source}; fix the file (or the ConfigMap it comes from)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("agent config {path}: {message}; the keys are backend, clusterCIDR, serviceCIDR, mtu, vni, vxlanPort, directRouting, untrackedPodTraffic, apiServers and serviceProxy")]
    Parse { path: String, message: String },
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        FileConfig::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses YAML (or JSON); an empty file is all defaults.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            if at == "." {
                e.inner().to_string()
            } else {
                format!("{at}: {}", e.inner())
            }
        })
    }

    /// Each key given in `flags` replaces this file's.
    pub fn overridden_by(self, flags: FileConfig) -> FileConfig {
        FileConfig {
            backend: flags.backend.or(self.backend),
            cluster_cidr: flags.cluster_cidr.or(self.cluster_cidr),
            service_cidr: flags.service_cidr.or(self.service_cidr),
            mtu: flags.mtu.or(self.mtu),
            vni: flags.vni.or(self.vni),
            vxlan_port: flags.vxlan_port.or(self.vxlan_port),
            direct_routing: flags.direct_routing.or(self.direct_routing),
            untracked_pod_traffic: flags.untracked_pod_traffic.or(self.untracked_pod_traffic),
            api_servers: flags.api_servers.or(self.api_servers),
            service_proxy: flags.service_proxy.or(self.service_proxy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ConfigMap's config.yaml in deploy/podnet.yaml, as shipped.
    const SHIPPED: &str = "backend: vxlan\nclusterCIDR: 10.244.0.0/16\nserviceCIDR: 10.96.0.0/12\n# auto\nmtu:\nvni: 1\n";

    #[test]
    fn the_shipped_config_parses() {
        let c = FileConfig::parse(SHIPPED).expect("parse");
        assert_eq!(c.backend, Some(BackendName::Vxlan));
        assert_eq!(c.cluster_cidr, "10.244.0.0/16".parse().ok());
        assert_eq!(c.service_cidr, "10.96.0.0/12".parse().ok());
        assert_eq!(c.mtu, None);
        assert_eq!(c.vni, Some(1));
    }

    #[test]
    fn errors_name_the_key() {
        let e = FileConfig::parse("backend: geneve\n").expect_err("bad backend");
        assert!(e.contains("backend") && e.contains("geneve"), "{e}");
        let e = FileConfig::parse("clusterCIDR: 10.244.0.0/33\n").expect_err("bad cidr");
        assert!(e.starts_with("clusterCIDR"), "{e}");
        let e = FileConfig::parse("clusterCidr: 10.244.0.0/16\n").expect_err("unknown key");
        assert!(e.contains("clusterCidr"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = FileConfig::parse(SHIPPED).expect("parse");
        let flags = FileConfig {
            backend: Some(BackendName::HostGw),
            mtu: Some(1400),
            ..FileConfig::default()
        };
        let c = file.overridden_by(flags);
        assert_eq!(c.backend, Some(BackendName::HostGw));
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.vni, Some(1));
        assert_eq!(c.cluster_cidr, "10.244.0.0/16".parse().ok());
        assert_eq!(FileConfig::parse("").expect("empty"), FileConfig::default());
        let untracked = FileConfig::parse("untrackedPodTraffic: true\n").expect("parse");
        assert_eq!(untracked.untracked_pod_traffic, Some(true));
        let k = FileConfig::parse(
            "apiServers: [https://192.168.1.10:6443, https://192.168.1.11:6443]\nserviceProxy: false\n",
        )
        .expect("parse");
        assert_eq!(
            k.api_servers.as_deref(),
            Some(
                &[
                    "https://192.168.1.10:6443".to_string(),
                    "https://192.168.1.11:6443".to_string()
                ][..]
            )
        );
        assert_eq!(k.service_proxy, Some(false));
    }
}
