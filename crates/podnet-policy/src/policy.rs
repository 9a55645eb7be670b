//! A NetworkPolicy with every default and shorthand of the API resolved when it is parsed.

use std::collections::BTreeSet;

use ipnet::IpNet;
use podnet_model::k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use podnet_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::objects::{InvalidObject, Key, PolicyKey, Protocol};
use crate::ranges::{cidr_except, merge_addrs, merge_ports, AddrRange, PortRange};
use crate::selector::Selector;

/// A NetworkPolicy as enforcement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInfo {
    pub namespace: String,
    pub name: String,
    /// Selects the pods, in the policy's namespace, that the policy isolates.
    pub pod_selector: Selector,
    /// `Some` if the policy affects ingress (policyTypes, or their default: always): the
    /// rules, any of which admits a connection. `Some(vec![])` admits nothing.
    pub ingress: Option<Vec<Rule>>,
    /// `Some` if the policy affects egress (policyTypes, or their default: when `egress`
    /// has rules).
    pub egress: Option<Vec<Rule>>,
}

/// One ingress or egress rule: a connection matches if its peer matches and its port does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub peers: Peers,
    pub ports: Ports,
}

/// The other end of a connection: the source for ingress, the destination for egress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    /// `from`/`to` empty or absent: every source or destination, in or outside the cluster.
    Any,
    /// Any of these.
    Only {
        /// Peers given by podSelector and/or namespaceSelector (empty: none).
        pods: Vec<PodPeer>,
        /// The union of the ipBlock peers, excepts removed, as disjoint ranges; `None` if the
        /// rule has no ipBlock peer. (An IPv6 block matches nothing on this IPv4 network.)
        blocks: Option<Vec<AddrRange>>,
    },
}

/// Pods selected by labels in selected namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPeer {
    pub namespaces: Namespaces,
    /// `podSelector`, or every pod when only namespaceSelector was given.
    pub pods: Selector,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// No namespaceSelector: the policy's own namespace.
    Policy,
    /// namespaceSelector (`{}`: every namespace).
    Matching(Selector),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    /// `ports` empty or absent: all traffic, any protocol.
    Any,
    Only {
        /// Numbers, endPort ranges and protocol-only ports (all of that protocol's ports),
        /// merged; empty if the rule names every port.
        ranges: Vec<PortRange>,
        /// Named ports and their protocol, resolved on the destination pod; empty if none.
        named: Vec<(String, Protocol)>,
    },
}

impl PolicyInfo {
    pub fn key(&self) -> PolicyKey {
        Key::new(&self.namespace, &self.name)
    }

    /// The rules for a direction, `None` if the policy does not affect it.
    pub fn rules(&self, direction: crate::Direction) -> Option<&[Rule]> {
        match direction {
            crate::Direction::Ingress => self.ingress.as_deref(),
            crate::Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Parses an API NetworkPolicy, checking what the API server checks.
    pub fn from_policy(np: &NetworkPolicy) -> Result<PolicyInfo, InvalidObject> {
        let name = np.metadata.name.clone().unwrap_or_default();
        let namespace = np
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let err = |field: String, message: String| InvalidObject {
            kind: "networkpolicy",
            object: format!("{namespace}/{name}"),
            field,
            message: format!("{message}; correct the policy"),
        };
        if name.is_empty() {
            return Err(err("metadata.name".into(), "the policy has no name".into()));
        }
        let Some(spec) = np.spec.as_ref() else {
            return Err(err("spec".into(), "the policy has no spec".into()));
        };
        let pod_selector = match &spec.pod_selector {
            None => Selector::everything(),
            Some(s) => {
                Selector::parse(s).map_err(|(f, m)| err(format!("spec.podSelector.{f}"), m))?
            }
        };
        let (mut affects_ingress, mut affects_egress) = (false, false);
        match spec.policy_types.as_deref() {
            // The API's default: ingress always, egress when there are egress rules.
            None | Some([]) => {
                affects_ingress = true;
                affects_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
            Some(types) => {
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => affects_ingress = true,
                        "Egress" => affects_egress = true,
                        other => {
                            return Err(err(
                                format!("spec.policyTypes[{i}]"),
                                format!("unknown policy type {other:?}; use Ingress or Egress"),
                            ))
                        }
                    }
                }
            }
        }
        let mut ingress = None;
        if affects_ingress {
            let mut rules = Vec::new();
            for (i, r) in spec.ingress.iter().flatten().enumerate() {
                let base = format!("spec.ingress[{i}]");
                rules.push(Rule {
                    peers: parse_peers(r.from.as_deref(), &format!("{base}.from"))
                        .map_err(|(f, m)| err(f, m))?,
                    ports: parse_ports(r.ports.as_deref(), &base).map_err(|(f, m)| err(f, m))?,
                });
            }
            ingress = Some(rules);
        }
        let mut egress = None;
        if affects_egress {
            let mut rules = Vec::new();
            for (i, r) in spec.egress.iter().flatten().enumerate() {
                let base = format!("spec.egress[{i}]");
                rules.push(Rule {
                    peers: parse_peers(r.to.as_deref(), &format!("{base}.to"))
                        .map_err(|(f, m)| err(f, m))?,
                    ports: parse_ports(r.ports.as_deref(), &base).map_err(|(f, m)| err(f, m))?,
                });
            }
            egress = Some(rules);
        }
        Ok(PolicyInfo {
            namespace: namespace.clone(),
            name: name.clone(),
            pod_selector,
            ingress,
            egress,
        })
    }
}

type FieldError = (String, String);

fn parse_peers(peers: Option<&[NetworkPolicyPeer]>, base: &str) -> Result<Peers, FieldError> {
    let peers = peers.unwrap_or_default();
    if peers.is_empty() {
        return Ok(Peers::Any);
    }
    let mut pods = Vec::new();
    let mut blocks: Option<Vec<AddrRange>> = None;
    for (i, p) in peers.iter().enumerate() {
        let field = format!("{base}[{i}]");
        let selector = |s: &Option<_>, what: &str| -> Result<Option<Selector>, FieldError> {
            s.as_ref()
                .map(|s| Selector::parse(s).map_err(|(f, m)| (format!("{field}.{what}.{f}"), m)))
                .transpose()
        };
        match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
            (Some(block), None, None) => {
                let ranges = parse_block(&block.cidr, block.except.as_deref().unwrap_or_default(), &format!("{field}.ipBlock"))?;
                blocks.get_or_insert_with(Vec::new).extend(ranges);
            }
            (Some(_), _, _) => {
                return Err((
                    field,
                    "a peer with ipBlock may not also have podSelector or namespaceSelector; split it into two peers".into(),
                ))
            }
            (None, None, None) => {
                return Err((
                    field,
                    "a peer needs podSelector, namespaceSelector or ipBlock".into(),
                ))
            }
            (None, ps, ns) => {
                let pod_sel = selector(ps, "podSelector")?.unwrap_or_default();
                let namespaces = match selector(ns, "namespaceSelector")? {
                    None => Namespaces::Policy,
                    Some(s) => Namespaces::Matching(s),
                };
                pods.push(PodPeer {
                    namespaces,
                    pods: pod_sel,
                });
            }
        }
    }
    Ok(Peers::Only {
        pods,
        blocks: blocks.map(merge_addrs),
    })
}

/// An ipBlock's ranges: IPv4 gives the CIDR without its excepts, IPv6 nothing.
fn parse_block(cidr: &str, except: &[String], field: &str) -> Result<Vec<AddrRange>, FieldError> {
    let net: IpNet = cidr.parse().map_err(|_| {
        (
            format!("{field}.cidr"),
            format!("{cidr:?} is not a CIDR (want a.b.c.d/len)"),
        )
    })?;
    let mut excepts = Vec::new();
    for (i, e) in except.iter().enumerate() {
        let f = format!("{field}.except[{i}]");
        let enet: IpNet = e
            .parse()
            .map_err(|_| (f.clone(), format!("{e:?} is not a CIDR (want a.b.c.d/len)")))?;
        // As the API server checks: a strict subset of cidr.
        if !net.contains(&enet.network()) || enet.prefix_len() <= net.prefix_len() {
            return Err((f, format!("{e} is not a strict subset of cidr {cidr}")));
        }
        excepts.push(enet);
    }
    match net {
        IpNet::V4(v4) => Ok(cidr_except(
            v4.trunc(),
            &excepts
                .iter()
                .filter_map(|e| match e {
                    IpNet::V4(e) => Some(e.trunc()),
                    IpNet::V6(_) => None,
                })
                .collect::<Vec<_>>(),
        )),
        IpNet::V6(_) => Ok(Vec::new()),
    }
}

fn parse_ports(ports: Option<&[NetworkPolicyPort]>, base: &str) -> Result<Ports, FieldError> {
    let ports = ports.unwrap_or_default();
    if ports.is_empty() {
        return Ok(Ports::Any);
    }
    let mut ranges = Vec::new();
    let mut named = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("{base}.ports[{i}]");
        let protocol = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(s) => Protocol::parse(s).ok_or_else(|| {
                (
                    format!("{field}.protocol"),
                    format!("unknown protocol {s:?}; use TCP, UDP or SCTP"),
                )
            })?,
        };
        match (&p.port, p.end_port) {
            (None, None) => ranges.push(PortRange {
                protocol,
                first: 0,
                last: u16::MAX,
            }),
            (None, Some(_)) => {
                return Err((
                    format!("{field}.endPort"),
                    "endPort needs a numeric port".into(),
                ))
            }
            (Some(IntOrString::Int(n)), end) => {
                let first = port_number(*n).ok_or_else(|| {
                    (
                        format!("{field}.port"),
                        format!("port {n} is not in 1-65535"),
                    )
                })?;
                let last = match end {
                    None => first,
                    Some(e) => {
                        let last = port_number(e).ok_or_else(|| {
                            (
                                format!("{field}.endPort"),
                                format!("endPort {e} is not in 1-65535"),
                            )
                        })?;
                        if last < first {
                            return Err((
                                format!("{field}.endPort"),
                                format!("endPort {last} is below port {first}"),
                            ));
                        }
                        last
                    }
                };
                ranges.push(PortRange {
                    protocol,
                    first,
                    last,
                });
            }
            (Some(IntOrString::String(_)), Some(_)) => {
                return Err((
                    format!("{field}.endPort"),
                    "endPort needs a numeric port, not a named one".into(),
                ))
            }
            (Some(IntOrString::String(name)), None) => {
                if let Err(m) = check_port_name(name) {
                    return Err((format!("{field}.port"), m));
                }
                named.insert((name.clone(), protocol));
            }
        }
    }
    Ok(Ports::Only {
        ranges: merge_ports(ranges),
        named: named.into_iter().collect(),
    })
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p > 0)
}

/// IANA_SVC_NAME, as the API server checks named ports.
fn check_port_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a port name (1-15 lowercase letters, digits and '-', with a letter)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Direction;

    fn parse(yaml: &str) -> Result<PolicyInfo, InvalidObject> {
        let np: NetworkPolicy = serde_yaml_ng::from_str(yaml).expect("test YAML");
        PolicyInfo::from_policy(&np)
    }

    fn spec(spec: &str) -> String {
        format!("metadata: {{name: p, namespace: x}}\nspec:\n{spec}")
    }

    #[test]
    fn policy_types_default_as_the_api_says() {
        let p = parse(&spec("  podSelector: {}\n")).expect("valid");
        assert_eq!(p.ingress, Some(vec![]), "ingress always");
        assert_eq!(p.egress, None);
        let p = parse(&spec("  podSelector: {}\n  egress: [{}]\n")).expect("valid");
        assert!(p.ingress.is_some() && p.egress.is_some());
        // An empty egress list is no egress section.
        let p = parse(&spec("  podSelector: {}\n  egress: []\n")).expect("valid");
        assert_eq!(p.egress, None);
        let p = parse(&spec(
            "  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]\n",
        ))
        .expect("valid");
        assert_eq!(
            p.ingress, None,
            "ingress rules ignored without the Ingress type"
        );
        assert_eq!(p.egress, Some(vec![]));
        assert_eq!(p.rules(Direction::Egress), Some(&[][..]));
    }

    #[test]
    fn empty_from_and_ports_mean_everything() {
        let p = parse(&spec(
            "  podSelector: {}\n  ingress: [{from: [], ports: []}]\n",
        ))
        .expect("valid");
        let r = &p.ingress.expect("ingress")[0];
        assert_eq!(r.peers, Peers::Any);
        assert_eq!(r.ports, Ports::Any);
    }

    #[test]
    fn peers_and_ports_resolve() {
        let p = parse(&spec(
            r#"  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
    - namespaceSelector: {}
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {}
    - ipBlock: {cidr: 10.0.0.1/24, except: [10.0.0.128/25]}
    - ipBlock: {cidr: "fd00::/64"}
    ports:
    - port: 80
    - {port: 81, endPort: 90}
    - {protocol: UDP}
    - {port: serve-80-tcp}
    - {port: dns, protocol: UDP}
"#,
        ))
        .expect("valid");
        let r = &p.ingress.expect("ingress")[0];
        let Peers::Only { pods, blocks } = &r.peers else {
            panic!("peers {:?}", r.peers)
        };
        assert_eq!(pods.len(), 3);
        assert_eq!(pods[0].namespaces, Namespaces::Policy);
        assert_eq!(
            pods[1].namespaces,
            Namespaces::Matching(Selector::everything())
        );
        assert!(pods[1].pods.selects_everything());
        assert!(
            matches!(pods[2].namespaces, Namespaces::Matching(ref s) if !s.selects_everything())
        );
        assert_eq!(
            blocks.as_deref(),
            Some(
                &[AddrRange {
                    first: "10.0.0.0".parse().expect("ip"),
                    last: "10.0.0.127".parse().expect("ip"),
                }][..]
            )
        );
        let Ports::Only { ranges, named } = &r.ports else {
            panic!("ports {:?}", r.ports)
        };
        assert_eq!(
            ranges,
            &vec![
                PortRange {
                    protocol: Protocol::Tcp,
                    first: 80,
                    last: 90
                },
                PortRange {
                    protocol: Protocol::Udp,
                    first: 0,
                    last: 65535
                },
            ]
        );
        assert_eq!(
            named,
            &vec![
                ("dns".to_string(), Protocol::Udp),
                ("serve-80-tcp".to_string(), Protocol::Tcp)
            ]
        );
    }

    #[test]
    fn invalid_policies_name_policy_and_field() {
        let cases = [
            (
                "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n",
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (
                "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.1.0/28]}}]}]\n",
                "spec.ingress[0].from[0].ipBlock.except[0]",
            ),
            (
                "  egress: [{ports: [{port: 90, endPort: 80}]}]\n",
                "spec.egress[0].ports[0].endPort",
            ),
            (
                "  egress: [{ports: [{port: http, endPort: 80}]}]\n",
                "spec.egress[0].ports[0].endPort",
            ),
            (
                "  ingress: [{ports: [{port: 0}]}]\n",
                "spec.ingress[0].ports[0].port",
            ),
            (
                "  ingress: [{ports: [{port: \"80\"}]}]\n",
                "spec.ingress[0].ports[0].port",
            ),
            (
                "  ingress: [{ports: [{protocol: ICMP}]}]\n",
                "spec.ingress[0].ports[0].protocol",
            ),
            ("  ingress: [{from: [{}]}]\n", "spec.ingress[0].from[0]"),
            (
                "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n",
                "spec.ingress[0].from[0]",
            ),
            ("  policyTypes: [Sideways]\n", "spec.policyTypes[0]"),
            (
                "  podSelector: {matchExpressions: [{key: a, operator: In}]}\n",
                "spec.podSelector.matchExpressions[0].values",
            ),
        ];
        for (body, field) in cases {
            let e = parse(&spec(body)).expect_err(body);
            assert_eq!(e.field, field, "{body}");
            assert_eq!(e.object, "x/p");
            assert!(e.to_string().starts_with("networkpolicy x/p: "), "{e}");
        }
    }
}
