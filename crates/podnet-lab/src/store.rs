//! The lab's object store: what the API server and etcd are in a cluster. In memory,
//! versioned (every change gets the next resourceVersion) and watchable (a bounded log of
//! events; a watcher too far behind is told to list again, as with 410 Gone).
//!
//! Admission happens here too, atomically per apply: namespaces must exist, ClusterIPs and
//! NodePorts are allocated or checked for conflicts, immutable fields stay.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use podnet_model::k8s_openapi::api::core::v1::{PodSpec, Service};
use podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podnet_model::k8s_openapi::jiff::Timestamp;
use podnet_model::objects::{DocumentError, DEFAULT_NAMESPACE};
use podnet_model::{Kind, Object, ObjectRef};
use serde::{Deserialize, Serialize};

/// How many events the store keeps for watchers.
const EVENT_LOG: usize = 100_000;
/// NodePorts are allocated from this range, as in Kubernetes.
pub const NODE_PORTS: std::ops::RangeInclusive<i32> = 30000..=32767;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub resource_version: u64,
    pub kind: EventType,
    pub object: Object,
}

/// A watcher asked for events older than the log holds: it must list again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// What an apply did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

pub struct Store {
    objects: BTreeMap<ObjectRef, Object>,
    resource_version: u64,
    events: VecDeque<Event>,
    service_cidr: Ipv4Net,
}

/// The current time as Kubernetes timestamps carry it.
pub fn now() -> Time {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time(
        Timestamp::new(d.as_secs() as i64, d.subsec_nanos() as i32)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

impl Store {
    /// A store holding the `default` namespace.
    pub fn new(service_cidr: Ipv4Net) -> Store {
        let mut s = Store {
            objects: BTreeMap::new(),
            resource_version: 0,
            events: VecDeque::new(),
            service_cidr,
        };
        let ns = podnet_model::k8s_openapi::api::core::v1::Namespace {
            metadata: podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(DEFAULT_NAMESPACE.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        s.put(Object::Namespace(ns));
        s
    }

    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub fn get(&self, r: &ObjectRef) -> Option<&Object> {
        self.objects.get(r)
    }

    /// Objects of `kind`, in `namespace` if given, ordered by namespace and name.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<&Object> {
        // Keys order by kind, then namespace, then name: a range, not a scan of everything.
        let start = ObjectRef {
            kind,
            namespace: namespace.map(str::to_string),
            name: String::new(),
        };
        self.objects
            .range(start..)
            .take_while(|(r, _)| {
                r.kind == kind && namespace.is_none_or(|ns| r.namespace.as_deref() == Some(ns))
            })
            .map(|(_, o)| o)
            .collect()
    }

    /// Creates or replaces `obj` as it is (controllers' and kubelets' writes). Fills in
    /// uid and creationTimestamp on creation; an unchanged object is not rewritten.
    pub fn put(&mut self, mut obj: Object) -> Applied {
        let r = obj.reference();
        let existing = self.objects.get(&r);
        if let Some(old) = existing {
            let meta = obj.meta_mut();
            meta.uid = old.meta().uid.clone();
            meta.creation_timestamp = old.meta().creation_timestamp.clone();
            meta.resource_version = old.meta().resource_version.clone();
            if *old == obj {
                return Applied::Unchanged;
            }
        } else {
            let meta = obj.meta_mut();
            if meta.uid.is_none() {
                meta.uid = Some(uuid::Uuid::new_v4().to_string());
            }
            meta.creation_timestamp.get_or_insert_with(now);
        }
        let kind = if existing.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.resource_version += 1;
        obj.meta_mut().resource_version = Some(self.resource_version.to_string());
        self.objects.insert(r, obj.clone());
        self.record(kind, obj);
        if kind == EventType::Added {
            Applied::Created
        } else {
            Applied::Configured
        }
    }

    /// Removes an object now; returns it.
    pub fn remove(&mut self, r: &ObjectRef) -> Option<Object> {
        let mut obj = self.objects.remove(r)?;
        self.resource_version += 1;
        obj.meta_mut().resource_version = Some(self.resource_version.to_string());
        self.record(EventType::Deleted, obj.clone());
        Some(obj)
    }

    fn record(&mut self, kind: EventType, object: Object) {
        if self.events.len() == EVENT_LOG {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            resource_version: self.resource_version,
            kind,
            object,
        });
    }

    /// Events after `resource_version` for `kinds`, or [`Gone`] if the log no longer
    /// reaches back that far.
    pub fn events_since(
        &self,
        resource_version: u64,
        kinds: &BTreeSet<Kind>,
    ) -> Result<Vec<Event>, Gone> {
        if let Some(first) = self.events.front() {
            if resource_version + 1 < first.resource_version {
                return Err(Gone);
            }
        }
        let start = self
            .events
            .partition_point(|e| e.resource_version <= resource_version);
        Ok(self
            .events
            .range(start..)
            .filter(|e| kinds.contains(&e.object.kind()))
            .cloned()
            .collect())
    }

    /// Applies user objects (`lab apply`), each with its position in the input: all of them
    /// or none; a refusal names the document and the object.
    pub fn apply(
        &mut self,
        docs: Vec<(usize, Object)>,
    ) -> Result<Vec<(ObjectRef, Applied)>, DocumentError> {
        let batch_namespaces: BTreeSet<String> = docs
            .iter()
            .filter(|(_, o)| o.kind() == Kind::Namespace)
            .map(|(_, o)| o.name().to_string())
            .collect();
        // Admission of the whole batch first, against a scratch copy of the allocations
        // (made only when the batch has a Service: with 10,000 of them it is not free).
        let mut admitted = Vec::with_capacity(docs.len());
        let services = docs.iter().any(|(_, o)| o.kind() == Kind::Service);
        let mut taken_ips = if services {
            self.allocated_cluster_ips()
        } else {
            BTreeMap::new()
        };
        let mut taken_ports = if services {
            self.allocated_node_ports()
        } else {
            BTreeMap::new()
        };
        for (document, obj) in docs {
            let r = obj.reference();
            let refuse = |msg: String| DocumentError {
                document,
                what: Some(r.to_string()),
                msg,
            };
            if let Some(ns) = &r.namespace {
                let exists = self
                    .get(&ObjectRef {
                        kind: Kind::Namespace,
                        namespace: None,
                        name: ns.clone(),
                    })
                    .is_some();
                if !exists && !batch_namespaces.contains(ns) {
                    return Err(refuse(format!(
                        "namespace {ns:?} does not exist; create it first"
                    )));
                }
            }
            let obj = self
                .admit(obj, &mut taken_ips, &mut taken_ports)
                .map_err(refuse)?;
            admitted.push(obj);
        }
        Ok(admitted
            .into_iter()
            .map(|o| {
                let r = o.reference();
                (r, self.put(o))
            })
            .collect())
    }

    /// Refuses a `nodeName` that names no node: the pod could never run, and would go
    /// as soon as its kubelet found no node for it.
    fn check_node_name(&self, spec: Option<&PodSpec>, field: &str) -> Result<(), String> {
        let Some(name) = spec.and_then(|s| s.node_name.as_deref()) else {
            return Ok(());
        };
        if name.is_empty() {
            return Ok(());
        }
        let nodes: Vec<&str> = self
            .list(Kind::Node, None)
            .into_iter()
            .map(Object::name)
            .collect();
        if nodes.contains(&name) {
            return Ok(());
        }
        Err(match nodes.as_slice() {
            [] => format!("{field}.nodeName {name:?} names no node: the lab has none"),
            [one] => format!(
                "{field}.nodeName {name:?} names no node of this lab; its node is {one} (or leave nodeName out to let the scheduler choose)"
            ),
            [init @ .., last] => format!(
                "{field}.nodeName {name:?} names no node of this lab; its nodes are {} and {last} (or leave nodeName out to let the scheduler choose)",
                init.join(", ")
            ),
        })
    }

    fn admit(
        &self,
        obj: Object,
        ips: &mut BTreeMap<Ipv4Addr, ObjectRef>,
        ports: &mut BTreeMap<i32, ObjectRef>,
    ) -> Result<Object, String> {
        let r = obj.reference();
        let old = self.get(&r);
        match (obj, old) {
            (Object::Pod(mut new), Some(Object::Pod(old))) => {
                // A pod's spec is fixed once created (the scheduler's nodeName aside).
                let mut spec = new.spec.clone();
                if let (Some(s), Some(o)) = (spec.as_mut(), old.spec.as_ref()) {
                    if s.node_name.is_none() {
                        s.node_name = o.node_name.clone();
                    }
                }
                if spec != old.spec {
                    return Err(
                        "a pod's spec cannot be changed; delete the pod and apply it again".into(),
                    );
                }
                new.spec = spec;
                new.status = old.status.clone();
                let mut meta = old.metadata.clone();
                meta.labels = new.metadata.labels.take();
                meta.annotations =
                    merge_annotations(&old.metadata.annotations, new.metadata.annotations.take());
                new.metadata = meta;
                Ok(Object::Pod(new))
            }
            (Object::Pod(mut new), None) => {
                self.check_node_name(new.spec.as_ref(), "spec")?;
                new.status = None;
                new.metadata.deletion_timestamp = None;
                Ok(Object::Pod(new))
            }
            (Object::Service(new), old) => {
                let old = match old {
                    Some(Object::Service(s)) => Some(s),
                    _ => None,
                };
                self.admit_service(new, old, ips, ports)
                    .map(Object::Service)
            }
            (Object::Deployment(d), _) => {
                let template = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
                self.check_node_name(template, "spec.template.spec")?;
                Ok(Object::Deployment(d))
            }
            (other, _) => Ok(other),
        }
    }

    fn admit_service(
        &self,
        mut svc: Service,
        old: Option<&Service>,
        ips: &mut BTreeMap<Ipv4Addr, ObjectRef>,
        ports: &mut BTreeMap<i32, ObjectRef>,
    ) -> Result<Service, String> {
        let r = ObjectRef {
            kind: Kind::Service,
            namespace: svc.metadata.namespace.clone(),
            name: svc.metadata.name.clone().unwrap_or_default(),
        };
        let old_spec = old.and_then(|o| o.spec.as_ref());
        let spec = svc.spec.get_or_insert_with(Default::default);
        let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        spec.type_ = Some(ty.clone());
        // Release what this Service held, so an update may keep it.
        ips.retain(|_, owner| *owner != r);
        ports.retain(|_, owner| *owner != r);
        if ty != "ExternalName" {
            let old_ip = old_spec.and_then(|s| s.cluster_ip.clone());
            let want = spec.cluster_ip.clone().filter(|s| !s.is_empty());
            let ip = match (want, old_ip) {
                (Some(w), Some(o)) if w != o => {
                    return Err(format!(
                        "spec.clusterIP is immutable (it is {o}); delete the Service to change it"
                    ))
                }
                (Some(w), _) => w,
                (None, Some(o)) => o,
                (None, None) => self.free_cluster_ip(ips)?.to_string(),
            };
            if ip != "None" {
                let addr: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| format!("spec.clusterIP {ip:?} is not an IPv4 address"))?;
                if !self.service_cidr.contains(&addr)
                    || addr == self.service_cidr.network()
                    || addr == self.service_cidr.broadcast()
                {
                    return Err(format!(
                        "spec.clusterIP {addr} is not a usable address of the service CIDR {}",
                        self.service_cidr
                    ));
                }
                if let Some(owner) = ips.get(&addr) {
                    return Err(format!(
                        "spec.clusterIP {addr} is already allocated to {owner}"
                    ));
                }
                ips.insert(addr, r.clone());
            }
            spec.cluster_ips = Some(vec![ip.clone()]);
            spec.cluster_ip = Some(ip);
        }
        if ty == "NodePort" || ty == "LoadBalancer" {
            let old_ports = old_spec.and_then(|s| s.ports.clone()).unwrap_or_default();
            for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
                let keep = old_ports
                    .iter()
                    .find(|o| o.port == p.port && o.protocol == p.protocol)
                    .and_then(|o| o.node_port);
                let np = match p.node_port.or(keep) {
                    Some(np) => np,
                    None => NODE_PORTS
                        .clone()
                        .find(|n| !ports.contains_key(n))
                        .ok_or("no free NodePort in 30000-32767")?,
                };
                if let Some(owner) = ports.get(&np) {
                    return Err(format!(
                        "spec.ports[{i}].nodePort {np} is already allocated to {owner}"
                    ));
                }
                ports.insert(np, r.clone());
                p.node_port = Some(np);
            }
        }
        if ty == "LoadBalancer" && spec.external_traffic_policy.as_deref() == Some("Local") {
            let keep = old_spec.and_then(|s| s.health_check_node_port);
            let hc = match spec.health_check_node_port.or(keep) {
                Some(hc) => hc,
                None => NODE_PORTS
                    .clone()
                    .find(|n| !ports.contains_key(n))
                    .ok_or("no free NodePort in 30000-32767 for spec.healthCheckNodePort")?,
            };
            if let Some(owner) = ports.get(&hc) {
                return Err(format!(
                    "spec.healthCheckNodePort {hc} is already allocated to {owner}"
                ));
            }
            ports.insert(hc, r.clone());
            spec.health_check_node_port = Some(hc);
        }
        Ok(svc)
    }

    fn allocated_cluster_ips(&self) -> BTreeMap<Ipv4Addr, ObjectRef> {
        self.list(Kind::Service, None)
            .into_iter()
            .filter_map(|o| {
                let Object::Service(s) = o else { return None };
                let ip = s.spec.as_ref()?.cluster_ip.as_ref()?.parse().ok()?;
                Some((ip, o.reference()))
            })
            .collect()
    }

    fn allocated_node_ports(&self) -> BTreeMap<i32, ObjectRef> {
        let mut out = BTreeMap::new();
        for o in self.list(Kind::Service, None) {
            let Object::Service(s) = o else { continue };
            for p in s.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                if let Some(np) = p.node_port {
                    out.insert(np, o.reference());
                }
            }
            if let Some(hc) = s.spec.as_ref().and_then(|s| s.health_check_node_port) {
                out.insert(hc, o.reference());
            }
        }
        out
    }

    /// The first free address of the service CIDR from its tenth on (the first few are
    /// left for well-known Services, as `kubernetes` is .1 in a cluster).
    fn free_cluster_ip(&self, taken: &BTreeMap<Ipv4Addr, ObjectRef>) -> Result<Ipv4Addr, String> {
        let first = u32::from(self.service_cidr.network()) + 10;
        let last = u32::from(self.service_cidr.broadcast()).saturating_sub(1);
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|ip| !taken.contains_key(ip))
            .ok_or_else(|| {
                format!(
                    "no free ClusterIP in {}; delete Services or widen the service CIDR",
                    self.service_cidr
                )
            })
    }
}

fn merge_annotations(
    old: &Option<BTreeMap<String, String>>,
    new: Option<BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    // podnet's own annotations (the pod's namespace path, ...) survive a re-apply.
    let mut out: BTreeMap<String, String> = old
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("podnet.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(new.unwrap_or_default());
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_model::objects::parse_numbered_documents;

    fn store() -> Store {
        Store::new("10.96.0.0/16".parse().expect("cidr"))
    }

    fn apply(s: &mut Store, yaml: &str) -> Result<Vec<(ObjectRef, Applied)>, String> {
        s.apply(parse_numbered_documents(yaml).expect("valid yaml"))
            .map_err(|e| e.to_string())
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n";

    #[test]
    fn apply_creates_then_reports_unchanged_then_configured() {
        let mut s = store();
        let r = apply(&mut s, SVC).expect("ok");
        assert_eq!(r[0].1, Applied::Created);
        assert_eq!(apply(&mut s, SVC).expect("ok")[0].1, Applied::Unchanged);
        let changed = SVC.replace("port: 80", "port: 81");
        assert_eq!(
            apply(&mut s, &changed).expect("ok")[0].1,
            Applied::Configured
        );
    }

    #[test]
    fn cluster_ips_are_allocated_kept_and_conflicts_refused() {
        let mut s = store();
        apply(&mut s, SVC).expect("ok");
        let ip = |s: &Store, name: &str| -> String {
            let r = ObjectRef {
                kind: Kind::Service,
                namespace: Some("default".into()),
                name: name.into(),
            };
            match s.get(&r) {
                Some(Object::Service(svc)) => svc
                    .spec
                    .as_ref()
                    .and_then(|x| x.cluster_ip.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            }
        };
        assert_eq!(ip(&s, "web"), "10.96.0.10");
        apply(&mut s, SVC).expect("re-apply keeps the address");
        assert_eq!(ip(&s, "web"), "10.96.0.10");
        let other = SVC
            .replace("name: web", "name: api")
            .replace("spec: {", "spec: {clusterIP: 10.96.0.10, ");
        let err = apply(&mut s, &other).expect_err("conflict");
        assert_eq!(err, "document 1 (Service default/api): spec.clusterIP 10.96.0.10 is already allocated to Service default/web");
        let outside = SVC
            .replace("name: web", "name: x")
            .replace("spec: {", "spec: {clusterIP: 10.1.0.5, ");
        assert!(apply(&mut s, &outside)
            .expect_err("outside")
            .contains("not a usable address of the service CIDR 10.96.0.0/16"));
        let change = SVC.replace("spec: {", "spec: {clusterIP: 10.96.0.99, ");
        assert!(apply(&mut s, &change)
            .expect_err("immutable")
            .contains("immutable"));
    }

    #[test]
    fn node_ports_are_allocated_in_range_without_conflicts() {
        let mut s = store();
        let np = |name: &str, port: Option<i32>| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{type: NodePort, selector: {{app: x}}, ports: [{{port: 80{}}}]}}\n",
                port.map(|p| format!(", nodePort: {p}")).unwrap_or_default()
            )
        };
        apply(&mut s, &np("a", None)).expect("ok");
        apply(&mut s, &np("b", None)).expect("ok");
        let ports: Vec<i32> = s
            .list(Kind::Service, None)
            .iter()
            .filter_map(|o| match o {
                Object::Service(svc) => svc.spec.as_ref()?.ports.as_ref()?[0].node_port,
                _ => None,
            })
            .collect();
        assert_eq!(ports, vec![30000, 30001]);
        let err = apply(&mut s, &np("c", Some(30001))).expect_err("taken");
        assert!(
            err.contains("nodePort 30001 is already allocated to Service default/b"),
            "{err}"
        );
    }

    #[test]
    fn missing_namespaces_refuse_the_whole_batch() {
        let mut s = store();
        let yaml = format!("{SVC}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: nope}}\nspec: {{ports: [{{port: 80}}]}}\n");
        let err = apply(&mut s, &yaml).expect_err("no namespace");
        assert!(err.contains("namespace \"nope\" does not exist"), "{err}");
        assert!(
            s.list(Kind::Service, None).is_empty(),
            "nothing half-applied"
        );
        let with_ns =
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: nope}}\n---\n{yaml}");
        apply(&mut s, &with_ns).expect("namespace in the same batch");
    }

    #[test]
    fn pod_specs_are_immutable_but_labels_change() {
        let mut s = store();
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {a: b}}\nspec: {containers: [{name: c, command: [x]}]}\n";
        apply(&mut s, pod).expect("ok");
        let relabel = pod.replace("a: b", "a: c");
        assert_eq!(
            apply(&mut s, &relabel).expect("ok")[0].1,
            Applied::Configured
        );
        let respec = pod.replace("command: [x]", "command: [y]");
        assert!(apply(&mut s, &respec)
            .expect_err("immutable")
            .contains("spec cannot be changed"));
    }

    #[test]
    fn watchers_get_events_in_order_or_gone() {
        let mut s = store();
        let rv = s.resource_version();
        apply(&mut s, SVC).expect("ok");
        let kinds = BTreeSet::from([Kind::Service]);
        let ev = s.events_since(rv, &kinds).expect("in the log");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, EventType::Added);
        assert!(s
            .events_since(s.resource_version(), &kinds)
            .expect("none")
            .is_empty());
        let r = ev[0].object.reference();
        s.remove(&r);
        let ev = s.events_since(rv, &kinds).expect("in the log");
        assert_eq!(ev.last().map(|e| e.kind), Some(EventType::Deleted));
    }

    fn with_nodes(names: &[&str]) -> Store {
        let mut s = store();
        for n in names {
            let node = podnet_model::k8s_openapi::api::core::v1::Node {
                metadata:
                    podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                        name: Some(n.to_string()),
                        ..Default::default()
                    },
                ..Default::default()
            };
            s.put(Object::Node(node));
        }
        s
    }

    #[test]
    fn a_node_name_that_names_no_node_is_refused_with_the_nodes_there_are() {
        let mut s = with_nodes(&["node-1", "node-2"]);
        let pod = |node: &str| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: a}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: a}}\nspec: {{nodeName: {node}, containers: [{{name: c, command: [x]}}]}}\n")
        };
        let before = s.resource_version();
        assert_eq!(
            apply(&mut s, &pod("node-9")).expect_err("no such node"),
            "document 2 (Pod a/p): spec.nodeName \"node-9\" names no node of this lab; its nodes are node-1 and node-2 (or leave nodeName out to let the scheduler choose)"
        );
        assert_eq!(
            s.resource_version(),
            before,
            "nothing of the batch was applied"
        );
        apply(&mut s, &pod("node-2")).expect("an existing node");

        let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec: {nodeName: nope, containers: [{name: c, command: [x]}]}\n";
        let mut one = with_nodes(&["node-1"]);
        assert_eq!(
            apply(&mut one, deploy).expect_err("no such node"),
            "document 1 (Deployment default/d): spec.template.spec.nodeName \"nope\" names no node of this lab; its node is node-1 (or leave nodeName out to let the scheduler choose)"
        );
    }
}
