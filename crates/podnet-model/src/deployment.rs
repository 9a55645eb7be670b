//! The pods a Deployment should have: `replicas` pods from its template, replaced when the
//! template changes or a pod has exited (the lab's ReplicaSet, folded into one step).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::endpoints::pod_is_ready;

/// The label carrying the hash of the template a pod was made from.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// A short stable hash of a pod template (FNV-1a over its JSON).
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(t).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", h >> 32)
}

/// What to do to reach the desired pods.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaPlan {
    pub create: usize,
    /// Names of pods to delete.
    pub delete: Vec<String>,
}

/// Plans `deploy`'s pods given the pods it owns now (terminating ones excluded by the
/// caller). Exited pods and pods of an older template are replaced; surplus pods go,
/// not-ready and newest first.
pub fn plan(deploy: &Deployment, owned: &[&Pod]) -> ReplicaPlan {
    let Some(spec) = &deploy.spec else {
        return ReplicaPlan::default();
    };
    let desired = spec.replicas.unwrap_or(1).max(0) as usize;
    let hash = template_hash(&spec.template);
    let mut out = ReplicaPlan::default();
    let mut current: Vec<&Pod> = Vec::new();
    for pod in owned {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let exited = matches!(phase, Some("Failed") | Some("Succeeded"));
        let same_template = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(TEMPLATE_HASH_LABEL))
            == Some(&hash);
        if exited || !same_template {
            out.delete
                .push(pod.metadata.name.clone().unwrap_or_default());
        } else {
            current.push(pod);
        }
    }
    if current.len() > desired {
        // Keep ready and older pods: sort the keepers first.
        current.sort_by_key(|p| {
            (
                !pod_is_ready(p),
                std::cmp::Reverse(
                    p.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.as_second())
                        .unwrap_or_default(),
                ),
                std::cmp::Reverse(p.metadata.name.clone()),
            )
        });
        for p in current.split_off(desired) {
            out.delete.push(p.metadata.name.clone().unwrap_or_default());
        }
    }
    out.create = desired.saturating_sub(current.len());
    out
}

/// A new pod of `deploy`, named `<deployment>-<template hash>-<suffix>`.
pub fn new_pod(deploy: &Deployment, suffix: &str) -> Pod {
    let spec = deploy.spec.clone().unwrap_or_default();
    let hash = template_hash(&spec.template);
    let name = deploy.metadata.name.clone().unwrap_or_default();
    let tmeta = spec.template.metadata.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = tmeta.labels.unwrap_or_default();
    labels.insert(TEMPLATE_HASH_LABEL.into(), hash.clone());
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{hash}-{suffix}")),
            namespace: deploy.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: name.clone(),
                uid: deploy.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: spec.template.spec,
        status: None,
    }
}

/// Whether `pod` is owned by the Deployment `name` (through its controller reference).
pub fn owned_by(pod: &Pod, name: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Deployment" && o.name == name && o.controller == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{parse_documents, Object};
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn deploy(replicas: i32, cmd: &str) -> Deployment {
        let yaml = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: default, uid: u1}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: c, command: [{cmd}]}}]}}\n"
        );
        match parse_documents(&yaml).expect("valid").remove(0) {
            Object::Deployment(d) => d,
            _ => unreachable!("a deployment"),
        }
    }

    fn with_state(mut p: Pod, ready: bool, phase: &str) -> Pod {
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        p
    }

    #[test]
    fn scales_up_and_down_keeping_ready_pods() {
        let d = deploy(3, "x");
        assert_eq!(plan(&d, &[]).create, 3);
        let a = with_state(new_pod(&d, "aaaaa"), true, "Running");
        let b = with_state(new_pod(&d, "bbbbb"), false, "Running");
        let c = with_state(new_pod(&d, "ccccc"), true, "Running");
        let d1 = deploy(1, "x");
        let p = plan(&d1, &[&a, &b, &c]);
        assert_eq!(p.create, 0);
        assert_eq!(p.delete.len(), 2);
        assert!(
            p.delete.iter().any(|n| n.ends_with("bbbbb")),
            "the not-ready pod goes first: {p:?}"
        );
        assert!(owned_by(&a, "web"));
        assert_eq!(
            a.metadata.name.as_deref().map(|n| n.starts_with("web-")),
            Some(true)
        );
    }

    #[test]
    fn exited_pods_and_old_templates_are_replaced() {
        let d = deploy(2, "x");
        let dead = with_state(new_pod(&d, "aaaaa"), false, "Failed");
        let old = with_state(new_pod(&deploy(2, "y"), "bbbbb"), true, "Running");
        let p = plan(&d, &[&dead, &old]);
        assert_eq!(p.create, 2);
        assert_eq!(p.delete.len(), 2);
    }
}
