//! The ADD result, rendered in the version the runtime asked for, and read back from
//! `prevResult` for CHECK.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde_json::{json, Map, Value};

use super::error::{code, CniError};
use super::version::Version;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    /// The namespace path, for interfaces inside the pod.
    pub sandbox: Option<String>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteEntry>,
}

impl AddResult {
    pub fn render(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if let Some(mac) = &i.mac {
                    o.insert("mac".into(), json!(mac));
                }
                // Interface MTU was added to results in 1.1.0.
                if let (Some(mtu), true) = (i.mtu, version >= Version::V1_1_0) {
                    o.insert("mtu".into(), json!(mtu));
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ips_carry_version() {
                    let v = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    o.insert("version".into(), json!(v));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": {},
        })
    }

    /// Reads a result of any supported version (as `prevResult`).
    pub fn parse(v: &Value) -> Result<AddResult, CniError> {
        let bad =
            |what: &str| CniError::new(code::DECODE, format!("cannot read prevResult: {what}"));
        let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
        let mut out = AddResult::default();
        for i in list(obj, "interfaces") {
            let name = i
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("an interface has no name"))?;
            out.interfaces.push(Interface {
                name: name.to_string(),
                mac: i.get("mac").and_then(Value::as_str).map(str::to_string),
                sandbox: i
                    .get("sandbox")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                mtu: i.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
            });
        }
        for ip in list(obj, "ips") {
            let address = ip
                .get("address")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<IpNet>().ok())
                .ok_or_else(|| bad("an IP has no valid \"address\""))?;
            out.ips.push(IpConfig {
                address,
                gateway: ip
                    .get("gateway")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok()),
                interface: ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|i| i as usize),
            });
        }
        for r in list(obj, "routes") {
            let dst = r
                .get("dst")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<IpNet>().ok())
                .ok_or_else(|| bad("a route has no valid \"dst\""))?;
            out.routes.push(RouteEntry {
                dst,
                gw: r
                    .get("gw")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok()),
            });
        }
        Ok(out)
    }

    /// The default route via `gateway` that ADD gives every pod.
    pub fn default_route(gateway: Ipv4Addr) -> RouteEntry {
        RouteEntry {
            dst: IpNet::V4(ipnet::Ipv4Net::default()),
            gw: Some(IpAddr::V4(gateway)),
        }
    }
}

fn list<'a>(obj: &'a Map<String, Value>, key: &str) -> impl Iterator<Item = &'a Value> {
    obj.get(key).and_then(Value::as_array).into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AddResult {
        AddResult {
            interfaces: vec![
                Interface {
                    name: "podnet0".into(),
                    mac: Some("0a:58:0a:f4:01:01".into()),
                    sandbox: None,
                    mtu: Some(1450),
                },
                Interface {
                    name: "pn0123456789ab".into(),
                    mac: Some("aa:bb:cc:dd:ee:ff".into()),
                    sandbox: None,
                    mtu: Some(1450),
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("0a:58:0a:f4:01:05".into()),
                    sandbox: Some("/run/netns/p".into()),
                    mtu: Some(1450),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.5/24".parse().expect("net"),
                gateway: Some("10.244.1.1".parse().expect("ip")),
                interface: Some(2),
            }],
            routes: vec![AddResult::default_route(Ipv4Addr::new(10, 244, 1, 1))],
        }
    }

    #[test]
    fn renders_1_1_0_golden() {
        let got = sample().render(Version::V1_1_0);
        let want = json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "podnet0", "mac": "0a:58:0a:f4:01:01", "mtu": 1450},
                {"name": "pn0123456789ab", "mac": "aa:bb:cc:dd:ee:ff", "mtu": 1450},
                {"name": "eth0", "mac": "0a:58:0a:f4:01:05", "mtu": 1450, "sandbox": "/run/netns/p"}
            ],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
            "dns": {}
        });
        assert_eq!(got, want);
    }

    #[test]
    fn renders_old_versions_with_ip_version_and_no_mtu() {
        for v in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0] {
            let got = sample().render(v);
            assert_eq!(got["cniVersion"], v.as_str());
            assert_eq!(got["ips"][0]["version"], "4");
            assert!(got["interfaces"][2].get("mtu").is_none());
        }
        let got = sample().render(Version::V1_0_0);
        assert!(got["ips"][0].get("version").is_none());
        assert!(got["interfaces"][2].get("mtu").is_none());
    }

    #[test]
    fn parses_what_it_renders_in_every_version() {
        for v in [
            Version::V0_3_0,
            Version::V0_3_1,
            Version::V0_4_0,
            Version::V1_0_0,
        ] {
            let mut want = sample();
            for i in &mut want.interfaces {
                i.mtu = None;
            }
            assert_eq!(AddResult::parse(&sample().render(v)).expect("parses"), want);
        }
        assert_eq!(
            AddResult::parse(&sample().render(Version::V1_1_0)).expect("parses"),
            sample()
        );
    }

    #[test]
    fn broken_prev_result_is_a_decode_error() {
        let err = AddResult::parse(&json!({"ips": [{"address": "nope"}]})).expect_err("bad");
        assert_eq!(err.code, code::DECODE);
        assert_eq!(
            AddResult::parse(&json!(3)).expect_err("bad").code,
            code::DECODE
        );
    }
}
