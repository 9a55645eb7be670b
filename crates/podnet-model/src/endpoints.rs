//! The EndpointSlices of a Service with a selector: its ready pods, with each Service
//! port's target resolved per pod (a named targetPort may map to different numbers on
//! different pods, so pods are grouped by their resolved ports, as Kubernetes does).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::objects::{MANAGED_BY_LABEL, SERVICE_NAME_LABEL};
use crate::selector::service_selects;

/// The `endpointslice.kubernetes.io/managed-by` value of slices the lab's controller owns.
pub const CONTROLLER: &str = "podnet.io/lab-controller";
/// At most this many endpoints per slice, as Kubernetes' default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// Whether the pod's Ready condition is True.
pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn resolve_port(pod: &Pod, target: &IntOrString, protocol: &str) -> Option<i32> {
    match target {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => pod.spec.as_ref()?.containers.iter().find_map(|c| {
            c.ports.iter().flatten().find_map(|p| {
                let proto = p.protocol.as_deref().unwrap_or("TCP");
                (p.name.as_deref() == Some(name) && proto == protocol).then_some(p.container_port)
            })
        }),
    }
}

/// The slices the controller wants for `svc`, given all pods of its namespace. Empty for
/// a Service without a selector (its slices are written by hand).
pub fn desired_slices(svc: &Service, pods: &[&Pod]) -> Vec<EndpointSlice> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let ports = spec.ports.as_deref().unwrap_or_default();
    // Group ready pods by their resolved ports.
    let mut groups: BTreeMap<Vec<(String, String, i32)>, Vec<Endpoint>> = BTreeMap::new();
    let mut selected: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| service_selects(selector, p.metadata.labels.as_ref()))
        .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_is_ready(p))
        .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pod in selected {
        let resolved: Vec<(String, String, i32)> = ports
            .iter()
            .filter_map(|p| {
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
                let n = resolve_port(pod, &target, &proto)?;
                Some((p.name.clone().unwrap_or_default(), proto, n))
            })
            .collect();
        let status = pod.status.as_ref();
        groups.entry(resolved).or_default().push(Endpoint {
            addresses: vec![status.and_then(|s| s.pod_ip.clone()).unwrap_or_default()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        });
    }
    // A Service with no ready pod still gets one empty slice carrying its ports, so
    // consumers can tell "no endpoints" from "not yet computed".
    if groups.is_empty() {
        let ports = ports
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    0,
                )
            })
            .collect();
        groups.insert(ports, Vec::new());
    }
    let mut out = Vec::new();
    for (ports, endpoints) in groups {
        let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() {
            vec![Vec::new()]
        } else {
            endpoints
                .chunks(MAX_ENDPOINTS_PER_SLICE)
                .map(<[Endpoint]>::to_vec)
                .collect()
        };
        for chunk in chunks {
            let idx = out.len();
            out.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{svc_name}-pn{idx}")),
                    namespace: svc.metadata.namespace.clone(),
                    labels: Some(BTreeMap::from([
                        (SERVICE_NAME_LABEL.to_string(), svc_name.clone()),
                        (MANAGED_BY_LABEL.to_string(), CONTROLLER.to_string()),
                    ])),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Service".into(),
                        name: svc_name.clone(),
                        uid: svc.metadata.uid.clone().unwrap_or_default(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]),
                    ..ObjectMeta::default()
                },
                address_type: "IPv4".into(),
                endpoints: chunk,
                ports: Some(
                    ports
                        .iter()
                        .map(|(name, proto, port)| EndpointPort {
                            name: Some(name.clone()),
                            protocol: Some(proto.clone()),
                            port: (*port != 0).then_some(*port),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{parse_documents, Object};
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn objects(yaml: &str) -> Vec<Object> {
        parse_documents(yaml).expect("valid")
    }

    fn running(mut pod: Pod, ip: &str, ready: bool) -> Pod {
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        pod
    }

    const YAML: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: metrics, port: 9090, targetPort: 9091}
---
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: web}}
spec: {containers: [{name: c, command: [x], ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: web}}
spec: {containers: [{name: c, command: [x], ports: [{name: http, containerPort: 8081}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, labels: {app: web}}
spec: {containers: [{name: c, command: [x], ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, labels: {app: db}}
spec: {containers: [{name: c, command: [x]}]}
"#;

    fn setup() -> (Service, Vec<Pod>) {
        let mut svc = None;
        let mut pods = Vec::new();
        for (i, o) in objects(YAML).into_iter().enumerate() {
            match o {
                Object::Service(s) => svc = Some(s),
                Object::Pod(p) => pods.push(running(p, &format!("10.244.0.{}", 10 + i), true)),
                _ => {}
            }
        }
        (svc.expect("service"), pods)
    }

    #[test]
    fn ready_selected_pods_grouped_by_resolved_ports() {
        let (svc, pods) = setup();
        let refs: Vec<&Pod> = pods.iter().collect();
        let slices = desired_slices(&svc, &refs);
        assert_eq!(slices.len(), 2, "8080 and 8081 are different port mappings");
        let summary: Vec<(Vec<String>, Vec<Option<i32>>)> = slices
            .iter()
            .map(|s| {
                (
                    s.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
                    s.ports.iter().flatten().map(|p| p.port).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    vec!["10.244.0.11".into(), "10.244.0.13".into()],
                    vec![Some(8080), Some(9091)]
                ),
                (vec!["10.244.0.12".into()], vec![Some(8081), Some(9091)]),
            ]
        );
        let labels = slices[0].metadata.labels.as_ref().expect("labels");
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], CONTROLLER);
    }

    #[test]
    fn not_ready_and_terminating_pods_leave_the_slice() {
        let (svc, mut pods) = setup();
        pods[0] = running(pods[0].clone(), "10.244.0.11", false);
        pods[2].metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let refs: Vec<&Pod> = pods.iter().collect();
        let slices = desired_slices(&svc, &refs);
        let addrs: Vec<&String> = slices
            .iter()
            .flat_map(|s| &s.endpoints)
            .map(|e| &e.addresses[0])
            .collect();
        assert_eq!(addrs, vec!["10.244.0.12"]);
    }

    #[test]
    fn no_ready_pods_gives_one_empty_slice_and_no_selector_gives_none() {
        let (mut svc, _) = setup();
        let slices = desired_slices(&svc, &[]);
        assert_eq!(slices.len(), 1);
        assert!(slices[0].endpoints.is_empty());
        svc.spec.as_mut().expect("spec").selector = None;
        assert!(desired_slices(&svc, &[]).is_empty());
    }
}
