//! What kube-controller-manager, the scheduler and the kubelets' node status do, for the
//! lab: Deployments keep their pods, pods get nodes, Services get EndpointSlices, nodes
//! report Ready once their CNI config exists. Each step reads the store, decides with
//! podnet-model's pure functions, and writes back only what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use podnet_model::deployment::{self, owned_by};
use podnet_model::endpoints::{desired_slices, pod_is_ready, CONTROLLER};
use podnet_model::k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use podnet_model::k8s_openapi::api::core::v1::{NodeCondition, Pod, PodCondition, PodStatus};
use podnet_model::objects::MANAGED_BY_LABEL;
use podnet_model::schedule::{place, Placement};
use podnet_model::{Kind, Object, ObjectRef};

use crate::kubelet::{cni, Kubelet};
use crate::store::{now, Store};
use crate::supervisor::Shared;

/// One pass of every controller.
pub fn reconcile(shared: &Arc<Shared>, kubelet: &mut Kubelet) {
    shared.with_store(deployments);
    shared.with_store(schedule);
    let pods: Vec<Pod> = shared.with_store(|s| pods(s).into_iter().cloned().collect());
    kubelet.sync(shared, &pods);
    shared.with_store(endpoint_slices);
    let ready: BTreeSet<String> = shared
        .with_store(|s| {
            s.list(Kind::Node, None)
                .iter()
                .map(|n| n.name().to_string())
                .collect::<Vec<_>>()
        })
        .into_iter()
        .filter(|n| cni::read_conflist(&shared.layout.node_cni_dir(n)).is_some())
        .collect();
    shared.with_store(|s| node_readiness(s, &ready));
}

fn pods(s: &Store) -> Vec<&Pod> {
    s.list(Kind::Pod, None)
        .into_iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .collect()
}

/// Marks a pod for deletion: its kubelet stops it and then removes it.
pub fn mark_deleting(s: &mut Store, r: &ObjectRef) {
    if let Some(Object::Pod(p)) = s.get(r) {
        if p.metadata.deletion_timestamp.is_none() {
            let mut p = p.clone();
            p.metadata.deletion_timestamp = Some(now());
            s.put(Object::Pod(p));
        }
    }
}

fn deployments(s: &mut Store) {
    let deploys: Vec<_> = s
        .list(Kind::Deployment, None)
        .into_iter()
        .filter_map(|o| match o {
            Object::Deployment(d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    let mut create = Vec::new();
    let mut delete = Vec::new();
    let mut status = Vec::new();
    for d in &deploys {
        let name = d.metadata.name.clone().unwrap_or_default();
        let ns = d.metadata.namespace.clone();
        let owned: Vec<&Pod> = pods(s)
            .into_iter()
            .filter(|p| {
                p.metadata.namespace == ns
                    && owned_by(p, &name)
                    && p.metadata.deletion_timestamp.is_none()
            })
            .collect();
        let plan = deployment::plan(d, &owned);
        status.push((d.clone(), deployment_status(d, &owned)));
        for _ in 0..plan.create {
            let suffix: String = uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .chars()
                .take(5)
                .collect();
            create.push(deployment::new_pod(d, &suffix));
        }
        delete.extend(plan.delete.into_iter().map(|n| ObjectRef {
            kind: Kind::Pod,
            namespace: ns.clone(),
            name: n,
        }));
    }
    // Pods whose Deployment is gone.
    for p in pods(s) {
        let orphan = p.metadata.owner_references.iter().flatten().any(|o| {
            o.kind == "Deployment"
                && !deploys.iter().any(|d| {
                    d.metadata.name.as_deref() == Some(&o.name)
                        && d.metadata.namespace == p.metadata.namespace
                })
        });
        if orphan {
            delete.push(Object::Pod(p.clone()).reference());
        }
    }
    for pod in create {
        s.put(Object::Pod(pod));
    }
    for (mut d, st) in status {
        if d.status.as_ref() != Some(&st) {
            d.status = Some(st);
            s.put(Object::Deployment(d));
        }
    }
    for r in delete {
        mark_deleting(s, &r);
    }
}

fn deployment_status(d: &Deployment, owned: &[&Pod]) -> DeploymentStatus {
    let hash = d
        .spec
        .as_ref()
        .map(|s| deployment::template_hash(&s.template))
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| owned.iter().filter(|p| f(p)).count() as i32;
    let ready = count(&|p| pod_is_ready(p));
    DeploymentStatus {
        replicas: Some(owned.len() as i32),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        updated_replicas: Some(count(&|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(deployment::TEMPLATE_HASH_LABEL))
                == Some(&hash)
        })),
        observed_generation: d.metadata.generation,
        ..DeploymentStatus::default()
    }
}

fn schedule(s: &mut Store) {
    let ready: Vec<String> = s
        .list(Kind::Node, None)
        .into_iter()
        .filter_map(|o| match o {
            Object::Node(n)
                if node_is_ready(n)
                    && n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true) =>
            {
                n.metadata.name.clone()
            }
            _ => None,
        })
        .collect();
    let mut load: BTreeMap<String, usize> = ready.into_iter().map(|n| (n, 0)).collect();
    let mut pending = Vec::new();
    for p in pods(s) {
        match p.spec.as_ref().and_then(|sp| sp.node_name.as_ref()) {
            Some(n) => {
                if let Some(c) = load.get_mut(n) {
                    *c += 1;
                }
            }
            None if p.metadata.deletion_timestamp.is_none() => pending.push(p.clone()),
            None => {}
        }
    }
    for mut p in pending {
        let wanted = p.spec.as_ref().and_then(|sp| sp.node_name.clone());
        match place(wanted.as_deref(), &load) {
            Placement::Node(n) => {
                *load.entry(n.clone()).or_default() += 1;
                p.spec.get_or_insert_with(Default::default).node_name = Some(n);
                s.put(Object::Pod(p));
            }
            Placement::Unschedulable(why) => {
                let st = p.status.get_or_insert_with(PodStatus::default);
                st.phase = Some("Pending".into());
                st.conditions = Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some(why),
                    ..PodCondition::default()
                }]);
                s.put(Object::Pod(p));
            }
        }
    }
}

fn endpoint_slices(s: &mut Store) {
    let mut by_namespace: BTreeMap<Option<String>, Vec<&Pod>> = BTreeMap::new();
    for p in pods(s) {
        by_namespace
            .entry(p.metadata.namespace.clone())
            .or_default()
            .push(p);
    }
    let mut wanted = Vec::new();
    for o in s.list(Kind::Service, None) {
        let Object::Service(svc) = o else { continue };
        // Selectorless Services have hand-written slices.
        if svc
            .spec
            .as_ref()
            .and_then(|sp| sp.selector.as_ref())
            .is_none_or(|sel| sel.is_empty())
        {
            continue;
        }
        let ns_pods = by_namespace
            .get(&svc.metadata.namespace)
            .map(Vec::as_slice)
            .unwrap_or_default();
        wanted.extend(desired_slices(svc, ns_pods));
    }
    let wanted_refs: BTreeSet<ObjectRef> = wanted
        .iter()
        .map(|e| Object::EndpointSlice(e.clone()).reference())
        .collect();
    // podnet's own slices go with their Service; hand-written ones stay, as in Kubernetes.
    let stale: Vec<ObjectRef> = s
        .list(Kind::EndpointSlice, None)
        .into_iter()
        .filter(|o| {
            o.meta()
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .map(String::as_str)
                == Some(CONTROLLER)
                && !wanted_refs.contains(&o.reference())
        })
        .map(|o| o.reference())
        .collect();
    for e in wanted {
        s.put(Object::EndpointSlice(e));
    }
    for r in stale {
        s.remove(&r);
    }
}

fn node_is_ready(n: &podnet_model::k8s_openapi::api::core::v1::Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_readiness(s: &mut Store, ready: &BTreeSet<String>) {
    let nodes: Vec<_> = s
        .list(Kind::Node, None)
        .into_iter()
        .filter_map(|o| match o {
            Object::Node(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    for mut n in nodes {
        let is = ready.contains(n.metadata.name.as_deref().unwrap_or_default());
        if node_is_ready(&n) == is {
            continue;
        }
        let st = n.status.get_or_insert_with(Default::default);
        st.conditions = Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: if is { "True" } else { "False" }.into(),
            reason: Some(if is { "PodnetReady" } else { "NetworkNotReady" }.into()),
            message: Some(
                if is {
                    "the podnet agent wrote the node's CNI config"
                } else {
                    "waiting for the podnet agent to write the node's CNI config"
                }
                .into(),
            ),
            last_transition_time: Some(now()),
            ..NodeCondition::default()
        }]);
        s.put(Object::Node(n));
    }
}
