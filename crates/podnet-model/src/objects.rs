//! The object kinds of the lab, read from multi-document Kubernetes YAML and checked the
//! way the API server would check them, so a bad document is refused with its position
//! and field before anything is applied.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod, PodSpec, Probe, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::Value;

use crate::selector::{
    check_label_key, check_label_value, is_dns_label, is_dns_subdomain, label_selector_matches,
};

/// The namespace of objects that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The label that binds an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label saying which controller manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Deployment,
    Service,
    EndpointSlice,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Deployment,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Deployment => "Deployment",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Node | Kind::Pod | Kind::Service => "v1",
            Kind::Deployment => "apps/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }

    /// The plural lower-case name, as in `kubectl get pods`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Deployment => "deployments",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::NetworkPolicy => "networkpolicies",
        }
    }

    /// Parses what a user types: `pod`, `pods`, `po`, `Pod`, `svc`, `deploy`, ...
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s.to_ascii_lowercase().as_str() {
            "namespace" | "namespaces" | "ns" => Kind::Namespace,
            "node" | "nodes" | "no" => Kind::Node,
            "pod" | "pods" | "po" => Kind::Pod,
            "deployment" | "deployments" | "deploy" => Kind::Deployment,
            "service" | "services" | "svc" => Kind::Service,
            "endpointslice" | "endpointslices" => Kind::EndpointSlice,
            "networkpolicy" | "networkpolicies" | "netpol" => Kind::NetworkPolicy,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which object: kind, namespace (for namespaced kinds) and name.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Kind::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown kind {s:?}")))
    }
}

/// One object of a kind the lab knows.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    Deployment(Deployment),
    Service(Service),
    EndpointSlice(EndpointSlice),
    NetworkPolicy(NetworkPolicy),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
            Object::Deployment(_) => Kind::Deployment,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Deployment(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    pub fn reference(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind(),
            namespace: self.meta().namespace.clone(),
            name: self.name().to_string(),
        }
    }

    /// The object as Kubernetes JSON (with apiVersion and kind).
    pub fn to_json(&self) -> Value {
        let v = match self {
            Object::Namespace(o) => serde_json::to_value(o),
            Object::Node(o) => serde_json::to_value(o),
            Object::Pod(o) => serde_json::to_value(o),
            Object::Deployment(o) => serde_json::to_value(o),
            Object::Service(o) => serde_json::to_value(o),
            Object::EndpointSlice(o) => serde_json::to_value(o),
            Object::NetworkPolicy(o) => serde_json::to_value(o),
        };
        v.unwrap_or(Value::Null)
    }

    /// Reads an object from Kubernetes JSON; the error names the field.
    pub fn from_json(v: Value) -> Result<Object, String> {
        let kind = v
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        fn typed<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, String> {
            serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                if path == "." {
                    inner
                } else {
                    format!("{path}: {inner}")
                }
            })
        }
        Ok(match kind.as_str() {
            "Namespace" => Object::Namespace(typed(v)?),
            "Node" => Object::Node(typed(v)?),
            "Pod" => Object::Pod(typed(v)?),
            "Deployment" => Object::Deployment(typed(v)?),
            "Service" => Object::Service(typed(v)?),
            "EndpointSlice" => Object::EndpointSlice(typed(v)?),
            "NetworkPolicy" => Object::NetworkPolicy(typed(v)?),
            other => return Err(format!("unknown kind {other:?}")),
        })
    }
}

/// A document that cannot be applied: where it is, what it is, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {document}{}: {msg}", what.as_ref().map(|w| format!(" ({w})")).unwrap_or_default())]
pub struct DocumentError {
    /// 1-based position in the input.
    pub document: usize,
    /// `Kind namespace/name`, when the document got that far.
    pub what: Option<String>,
    pub msg: String,
}

/// Parses multi-document YAML (or JSON) into objects, fills in the default namespace, and
/// validates every document. Nothing is returned unless every document is valid.
pub fn parse_documents(text: &str) -> Result<Vec<Object>, DocumentError> {
    Ok(parse_numbered_documents(text)?
        .into_iter()
        .map(|(_, o)| o)
        .collect())
}

/// [`parse_documents`], each object with its 1-based position in the input, so that what
/// is refused later (at admission) can be named by its document too.
pub fn parse_numbered_documents(text: &str) -> Result<Vec<(usize, Object)>, DocumentError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let err = |what: Option<String>, msg: String| DocumentError {
            document,
            what,
            msg,
        };
        let value = Value::deserialize(doc).map_err(|e| err(None, format!("invalid YAML: {e}")))?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        if !value.is_object() {
            return Err(err(
                None,
                "a document must be a Kubernetes object (a mapping with apiVersion and kind)"
                    .into(),
            ));
        }
        let kind_s = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let api = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let Some(kind) = Kind::parse(kind_s).filter(|k| k.name() == kind_s) else {
            return Err(err(
                None,
                if kind_s.is_empty() {
                    "kind is missing".to_string()
                } else {
                    format!("unknown kind {kind_s:?}; the lab accepts Namespace, Pod, Deployment, Service, EndpointSlice and NetworkPolicy")
                },
            ));
        };
        let what = Some(format!("{kind} {name}"));
        if kind == Kind::Node {
            return Err(err(
                what,
                "nodes are made by `podnet lab up`, not applied".into(),
            ));
        }
        if api != kind.api_version() {
            return Err(err(
                what,
                format!(
                    "apiVersion {api:?} is not served for {kind}; use {:?}",
                    kind.api_version()
                ),
            ));
        }
        let mut obj = Object::from_json(value).map_err(|m| err(what.clone(), m))?;
        if kind.namespaced()
            && obj
                .meta()
                .namespace
                .as_deref()
                .unwrap_or_default()
                .is_empty()
        {
            obj.meta_mut().namespace = Some(DEFAULT_NAMESPACE.to_string());
        }
        let what = Some(obj.reference().to_string());
        validate(&obj).map_err(|m| err(what.clone(), m))?;
        if !seen.insert(obj.reference()) {
            return Err(err(
                what,
                "the same object appears twice in this input".into(),
            ));
        }
        out.push((document, obj));
    }
    Ok(out)
}

/// Checks an object as the API server would; the message starts with the field's path.
pub fn validate(obj: &Object) -> Result<(), String> {
    let meta = obj.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name is required".into());
    }
    let label_like = matches!(obj.kind(), Kind::Namespace | Kind::Service);
    if (label_like && !is_dns_label(name)) || (!label_like && !is_dns_subdomain(name)) {
        return Err(format!(
            "metadata.name {name:?} is invalid: use lower-case letters, digits and '-'{}",
            if label_like {
                ", at most 63 characters"
            } else {
                ""
            }
        ));
    }
    if let Some(ns) = &meta.namespace {
        if !is_dns_label(ns) {
            return Err(format!("metadata.namespace {ns:?} is invalid"));
        }
    }
    for (k, v) in meta.labels.iter().flatten() {
        check_label_key(k).map_err(|m| format!("metadata.labels: {m}"))?;
        check_label_value(k, v).map_err(|m| format!("metadata.labels: {m}"))?;
    }
    match obj {
        Object::Pod(p) => validate_pod_spec(p.spec.as_ref(), "spec"),
        Object::Deployment(d) => validate_deployment(d),
        Object::Service(s) => validate_service(s),
        Object::EndpointSlice(e) => validate_endpoint_slice(e),
        Object::NetworkPolicy(n) => {
            let spec = n.spec.as_ref().ok_or("spec is required")?;
            match &spec.pod_selector {
                Some(sel) => validate_selector(sel, "spec.podSelector"),
                None => Ok(()),
            }
        }
        Object::Namespace(_) | Object::Node(_) => Ok(()),
    }
}

fn validate_selector(sel: &LabelSelector, field: &str) -> Result<(), String> {
    for (k, v) in sel.match_labels.iter().flatten() {
        check_label_key(k).map_err(|m| format!("{field}.matchLabels: {m}"))?;
        check_label_value(k, v).map_err(|m| format!("{field}.matchLabels: {m}"))?;
    }
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        check_label_key(&e.key).map_err(|m| format!("{f}.key: {m}"))?;
        let has_values = e.values.as_ref().is_some_and(|v| !v.is_empty());
        match e.operator.as_str() {
            "In" | "NotIn" if !has_values => {
                return Err(format!(
                    "{f}.values: must be non-empty for operator {}",
                    e.operator
                ))
            }
            "Exists" | "DoesNotExist" if has_values => {
                return Err(format!(
                    "{f}.values: must be empty for operator {}",
                    e.operator
                ))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => {
                return Err(format!(
                    "{f}.operator: {op:?} is not one of In, NotIn, Exists, DoesNotExist"
                ))
            }
        }
    }
    Ok(())
}

fn validate_pod_spec(spec: Option<&PodSpec>, field: &str) -> Result<(), String> {
    let spec = spec.ok_or_else(|| format!("{field} is required"))?;
    if spec.containers.is_empty() {
        return Err(format!(
            "{field}.containers: at least one container is required"
        ));
    }
    let mut names = HashSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let f = format!("{field}.containers[{i}]");
        validate_container(c, &f)?;
        if !names.insert(c.name.as_str()) {
            return Err(format!("{f}.name: {:?} is used by two containers", c.name));
        }
    }
    if let Some(p) = &spec.restart_policy {
        if !matches!(p.as_str(), "Always" | "OnFailure" | "Never") {
            return Err(format!(
                "{field}.restartPolicy: {p:?} is not one of Always, OnFailure, Never"
            ));
        }
    }
    Ok(())
}

fn validate_container(c: &Container, f: &str) -> Result<(), String> {
    if !is_dns_label(&c.name) {
        return Err(format!(
            "{f}.name: {:?} is not a valid container name",
            c.name
        ));
    }
    if c.command.as_ref().is_none_or(|cmd| cmd.is_empty()) {
        return Err(format!(
            "{f}.command: required in the lab, which runs no images: give the process to run, e.g. [\"podnet\", \"probe\", \"serve\"]"
        ));
    }
    let mut port_names = HashSet::new();
    for (j, p) in c.ports.iter().flatten().enumerate() {
        if !(1..=65535).contains(&p.container_port) {
            return Err(format!(
                "{f}.ports[{j}].containerPort: {} is not in 1-65535",
                p.container_port
            ));
        }
        if let Some(n) = &p.name {
            if !port_names.insert(n.as_str()) {
                return Err(format!("{f}.ports[{j}].name: {n:?} is used twice"));
            }
        }
        check_protocol(p.protocol.as_deref(), &format!("{f}.ports[{j}].protocol"))?;
        if let Some(h) = p.host_port {
            if !(1..=65535).contains(&h) {
                return Err(format!("{f}.ports[{j}].hostPort: {h} is not in 1-65535"));
            }
        }
        if let Some(ip) = p.host_ip.as_deref().filter(|ip| !ip.is_empty()) {
            if ip.parse::<Ipv4Addr>().is_err() {
                return Err(format!(
                    "{f}.ports[{j}].hostIP: {ip:?} is not an IPv4 address"
                ));
            }
        }
    }
    if let Some(probe) = &c.readiness_probe {
        validate_probe(probe, &format!("{f}.readinessProbe"))?;
    }
    Ok(())
}

fn validate_probe(p: &Probe, f: &str) -> Result<(), String> {
    let handlers = [
        p.tcp_socket.is_some(),
        p.http_get.is_some(),
        p.exec.is_some(),
        p.grpc.is_some(),
    ];
    match handlers.iter().filter(|h| **h).count() {
        0 => Err(format!("{f}: give one of tcpSocket, httpGet or exec")),
        1 if p.grpc.is_some() => Err(format!(
            "{f}.grpc: not supported in the lab; use tcpSocket, httpGet or exec"
        )),
        1 => Ok(()),
        _ => Err(format!("{f}: give only one of tcpSocket, httpGet or exec")),
    }
}

fn check_protocol(p: Option<&str>, f: &str) -> Result<(), String> {
    match p {
        None | Some("TCP") | Some("UDP") | Some("SCTP") => Ok(()),
        Some(other) => Err(format!("{f}: {other:?} is not one of TCP, UDP, SCTP")),
    }
}

fn validate_deployment(d: &Deployment) -> Result<(), String> {
    let spec = d.spec.as_ref().ok_or("spec is required")?;
    if spec.replicas.is_some_and(|r| r < 0) {
        return Err("spec.replicas: must not be negative".into());
    }
    validate_selector(&spec.selector, "spec.selector")?;
    if spec
        .selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.is_empty())
        && spec
            .selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty())
    {
        return Err("spec.selector: must not be empty".into());
    }
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    for (k, v) in labels.into_iter().flatten() {
        check_label_key(k).map_err(|m| format!("spec.template.metadata.labels: {m}"))?;
        check_label_value(k, v).map_err(|m| format!("spec.template.metadata.labels: {m}"))?;
    }
    if !label_selector_matches(&spec.selector, labels) {
        return Err("spec.template.metadata.labels: do not match spec.selector".into());
    }
    validate_pod_spec(spec.template.spec.as_ref(), "spec.template.spec")
}

fn validate_service(s: &Service) -> Result<(), String> {
    let spec = s.spec.as_ref().ok_or("spec is required")?;
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(format!(
            "spec.type: {ty:?} is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"
        ));
    }
    // The lab has no cloud load balancer: a LoadBalancer Service gets its node ports
    // (and its health check node port with externalTrafficPolicy Local), as on a cluster
    // whose load balancer is not provisioned yet.
    if let Some(hc) = spec.health_check_node_port {
        if ty != "LoadBalancer" || spec.external_traffic_policy.as_deref() != Some("Local") {
            return Err("spec.healthCheckNodePort: only for type LoadBalancer with externalTrafficPolicy Local".into());
        }
        if !(30000..=32767).contains(&hc) {
            return Err(format!(
                "spec.healthCheckNodePort: {hc} is not in the node port range 30000-32767"
            ));
        }
    }
    if ty == "ExternalName" && spec.external_name.as_deref().unwrap_or_default().is_empty() {
        return Err("spec.externalName: required for type ExternalName".into());
    }
    for (k, v) in spec.selector.iter().flatten() {
        check_label_key(k).map_err(|m| format!("spec.selector: {m}"))?;
        check_label_value(k, v).map_err(|m| format!("spec.selector: {m}"))?;
    }
    if let Some(ip) = spec.cluster_ip.as_deref() {
        if !ip.is_empty() && ip != "None" && ip.parse::<Ipv4Addr>().is_err() {
            return Err(format!(
                "spec.clusterIP: {ip:?} is not an IPv4 address or \"None\""
            ));
        }
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && spec.cluster_ip.as_deref() != Some("None") {
        return Err("spec.ports: at least one port is required".into());
    }
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        if !(1..=65535).contains(&p.port) {
            return Err(format!("{f}.port: {} is not in 1-65535", p.port));
        }
        check_protocol(p.protocol.as_deref(), &format!("{f}.protocol"))?;
        let name = p.name.as_deref().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            return Err(format!(
                "{f}.name: required when a Service has more than one port"
            ));
        }
        if !names.insert(name) {
            return Err(format!("{f}.name: {name:?} is used twice"));
        }
        if !keys.insert((p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into()))) {
            return Err(format!(
                "{f}: port {} is listed twice for the same protocol",
                p.port
            ));
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) if !(1..=65535).contains(t) => {
                return Err(format!("{f}.targetPort: {t} is not in 1-65535"))
            }
            Some(IntOrString::String(t)) if !is_dns_label(t) || t.len() > 15 => {
                return Err(format!("{f}.targetPort: {t:?} is not a valid port name"))
            }
            _ => {}
        }
        if let Some(np) = p.node_port {
            if !matches!(ty, "NodePort" | "LoadBalancer") {
                return Err(format!(
                    "{f}.nodePort: only for type NodePort or LoadBalancer"
                ));
            }
            if !(30000..=32767).contains(&np) {
                return Err(format!(
                    "{f}.nodePort: {np} is not in the node port range 30000-32767"
                ));
            }
        }
    }
    for (field, policy) in [
        (
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        ),
        (
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        ),
    ] {
        if let Some(p) = policy {
            if !matches!(p, "Cluster" | "Local") {
                return Err(format!("{field}: {p:?} is not one of Cluster, Local"));
            }
        }
    }
    if let Some(a) = spec.session_affinity.as_deref() {
        if !matches!(a, "None" | "ClientIP") {
            return Err(format!(
                "spec.sessionAffinity: {a:?} is not one of None, ClientIP"
            ));
        }
    }
    Ok(())
}

fn validate_endpoint_slice(e: &EndpointSlice) -> Result<(), String> {
    if e.address_type != "IPv4" {
        return Err(format!(
            "addressType: {:?} is not supported in the lab; use IPv4",
            e.address_type
        ));
    }
    let labels: Option<&BTreeMap<String, String>> = e.metadata.labels.as_ref();
    if labels.and_then(|l| l.get(SERVICE_NAME_LABEL)).is_none() {
        return Err(format!(
            "metadata.labels: {SERVICE_NAME_LABEL} is required to bind the slice to its Service"
        ));
    }
    for (i, ep) in e.endpoints.iter().enumerate() {
        if ep.addresses.is_empty() {
            return Err(format!(
                "endpoints[{i}].addresses: at least one address is required"
            ));
        }
        for (j, a) in ep.addresses.iter().enumerate() {
            if a.parse::<Ipv4Addr>().is_err() {
                return Err(format!(
                    "endpoints[{i}].addresses[{j}]: {a:?} is not an IPv4 address"
                ));
            }
        }
    }
    for (i, p) in e.ports.iter().flatten().enumerate() {
        if p.port.is_some_and(|n| !(1..=65535).contains(&n)) {
            return Err(format!("ports[{i}].port: not in 1-65535"));
        }
        check_protocol(p.protocol.as_deref(), &format!("ports[{i}].protocol"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        command: [podnet, probe, serve, --http, "8080"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers: [{name: c, command: [sleep, infinity]}]
---
"#;

    #[test]
    fn parses_a_small_application() {
        let objs = parse_documents(APP).expect("valid");
        let refs: Vec<String> = objs.iter().map(|o| o.reference().to_string()).collect();
        assert_eq!(
            refs,
            [
                "Namespace shop",
                "Deployment shop/web",
                "Service shop/web",
                "Pod default/client"
            ]
        );
    }

    fn first_error(yaml: &str) -> String {
        parse_documents(yaml).expect_err("invalid").to_string()
    }

    #[test]
    fn errors_name_the_document_and_field() {
        assert_eq!(
            first_error("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\n"),
            "document 1 (Pod default/a): spec.containers[0].command: required in the lab, which runs no images: give the process to run, e.g. [\"podnet\", \"probe\", \"serve\"]"
        );
        let e = first_error(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 70000}]}\n",
        );
        assert_eq!(
            e,
            "document 2 (Service default/s): spec.ports[0].port: 70000 is not in 1-65535"
        );
        let e = first_error(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: \"x\"}]}\n",
        );
        assert!(
            e.starts_with("document 1 (Service s): spec.ports[0].port: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn unknown_kinds_bad_yaml_and_duplicates_are_refused() {
        assert!(
            first_error("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
                .contains("unknown kind \"ConfigMap\"")
        );
        assert!(first_error("a: [1, 2\n").starts_with("document 1: invalid YAML"));
        assert!(first_error("- 1\n- 2\n").contains("must be a Kubernetes object"));
        let dup = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
        assert_eq!(
            first_error(dup),
            "document 2 (Namespace a): the same object appears twice in this input"
        );
        assert!(
            first_error("apiVersion: apps/v1\nkind: Pod\nmetadata: {name: a}\n")
                .contains("apiVersion \"apps/v1\" is not served for Pod")
        );
    }

    #[test]
    fn invalid_selectors_are_refused() {
        let e = first_error("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {\"bad key!\": x}, ports: [{port: 80}]}\n");
        assert!(e.contains("spec.selector: label key \"bad key!\""), "{e}");
        let e = first_error(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: c, command: [x]}]}\n",
        );
        assert!(e.contains("do not match spec.selector"), "{e}");
        let e = first_error(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {matchExpressions: [{key: app, operator: In}]}}\n",
        );
        assert!(
            e.contains("spec.podSelector.matchExpressions[0].values: must be non-empty"),
            "{e}"
        );
    }

    #[test]
    fn kinds_parse_from_what_users_type() {
        for (s, k) in [
            ("po", Kind::Pod),
            ("svc", Kind::Service),
            ("deploy", Kind::Deployment),
            ("endpointslices", Kind::EndpointSlice),
            ("Node", Kind::Node),
        ] {
            assert_eq!(Kind::parse(s), Some(k), "{s}");
        }
        assert_eq!(Kind::parse("configmap"), None);
    }

    #[test]
    fn objects_round_trip_through_json() {
        for o in parse_documents(APP).expect("valid") {
            assert_eq!(Object::from_json(o.to_json()).expect("round trip"), o);
        }
    }
}
