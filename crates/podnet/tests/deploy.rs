//! deploy/podnet.yaml: every document parses into its Kubernetes type, the DaemonSet has
//! what a node agent needs, and the ClusterRole grants exactly what the agent calls.
//! No root, no network.

use std::collections::BTreeSet;
use std::path::PathBuf;

use podnet_model::k8s_openapi::api::apps::v1::DaemonSet;
use podnet_model::k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use podnet_model::k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use podnet_model::k8s_openapi::serde;
use serde::Deserialize as _;

/// Every (API group, resource, verb) the agent calls: its watchers and the PATCH of its own
/// Node's annotations. tests/kubernetes.rs checks that the agent calls nothing else.
use podnet_agent::source::kubernetes::API_CALLS as AGENT_CALLS;

/// The host paths the agent container must mount.
const AGENT_MOUNTS: &[&str] = &[
    "/etc/cni/net.d",
    "/opt/cni/bin",
    "/var/lib/podnet",
    "/run/podnet",
    "/lib/modules",
];

const NAMESPACE: &str = "podnet-system";

#[derive(Default)]
struct Manifest {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

fn manifest_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/podnet.yaml")
}

fn typed<T: serde::de::DeserializeOwned>(doc: serde_json::Value, what: &str) -> T {
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("deploy/podnet.yaml: {what}: {e}"))
}

fn load() -> Manifest {
    let path = manifest_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut m = Manifest::default();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let doc = serde_json::Value::deserialize(de)
            .unwrap_or_else(|e| panic!("deploy/podnet.yaml: document {i}: not YAML: {e}"));
        if doc.is_null() {
            continue; // an empty document (e.g. before the first `---`)
        }
        let kind = doc["kind"].as_str().unwrap_or("").to_string();
        let name = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
        let what = format!("document {i} ({kind} {name:?})");
        match kind.as_str() {
            "Namespace" => m.namespaces.push(typed(doc, &what)),
            "ServiceAccount" => m.service_accounts.push(typed(doc, &what)),
            "ClusterRole" => m.cluster_roles.push(typed(doc, &what)),
            "ClusterRoleBinding" => m.cluster_role_bindings.push(typed(doc, &what)),
            "ConfigMap" => m.config_maps.push(typed(doc, &what)),
            "DaemonSet" => m.daemon_sets.push(typed(doc, &what)),
            other => panic!("deploy/podnet.yaml: {what}: unexpected kind {other:?}"),
        }
    }
    m
}

fn one<'a, T>(items: &'a [T], kind: &str) -> &'a T {
    assert_eq!(
        items.len(),
        1,
        "deploy/podnet.yaml: expected exactly one {kind}"
    );
    &items[0]
}

#[test]
fn every_document_parses_and_names_its_namespace() {
    let m = load();
    let ns = one(&m.namespaces, "Namespace");
    assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
    let sa = one(&m.service_accounts, "ServiceAccount");
    assert_eq!(sa.metadata.name.as_deref(), Some("podnet"));
    assert_eq!(sa.metadata.namespace.as_deref(), Some(NAMESPACE));
    one(&m.cluster_roles, "ClusterRole");
    one(&m.cluster_role_bindings, "ClusterRoleBinding");
    let ds = one(&m.daemon_sets, "DaemonSet");
    assert_eq!(ds.metadata.name.as_deref(), Some("podnet"));
    assert_eq!(ds.metadata.namespace.as_deref(), Some(NAMESPACE));
    let cm = one(&m.config_maps, "ConfigMap");
    assert_eq!(cm.metadata.name.as_deref(), Some("podnet-config"));
    assert_eq!(cm.metadata.namespace.as_deref(), Some(NAMESPACE));
}

#[test]
fn config_map_holds_the_agent_config() {
    let m = load();
    let cm = one(&m.config_maps, "ConfigMap");
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("config.yaml"))
        .expect("podnet-config has a config.yaml key");
    let config: serde_json::Value = serde_yaml_ng::from_str(text).expect("config.yaml is YAML");
    assert_eq!(config["backend"], "vxlan");
    assert_eq!(config["clusterCIDR"], "10.244.0.0/16");
    assert_eq!(config["serviceCIDR"], "10.96.0.0/12");
    assert_eq!(config["vni"], 1);
    assert!(
        config.get("mtu").is_some_and(|v| v.is_null()),
        "mtu is present and empty (auto): {config}"
    );
    let keys: BTreeSet<&str> = config
        .as_object()
        .expect("config.yaml is a mapping")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "backend",
            "clusterCIDR",
            "serviceCIDR",
            "mtu",
            "vni",
            "apiServers",
            "serviceProxy"
        ])
    );
    // And the agent reads it as given (`podnet agent --config`).
    let parsed = podnet_agent::config::FileConfig::parse(text).expect("the agent reads it");
    assert_eq!(parsed.cluster_cidr, "10.244.0.0/16".parse().ok());
    assert_eq!(parsed.service_cidr, "10.96.0.0/12".parse().ok());
    assert_eq!(parsed.mtu, None);
    assert_eq!(parsed.service_proxy, Some(true));
}

/// Every image is the release the manifest belongs to, never a moving tag.
#[test]
fn images_are_pinned_to_this_release() {
    let text = std::fs::read_to_string(manifest_path()).expect("read the manifest");
    let want = format!("ghcr.io/podnet/podnet:{}", env!("CARGO_PKG_VERSION"));
    let images: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    assert!(
        images.len() >= 3,
        "install-cni, sysctls and agent: {images:?}"
    );
    for image in images {
        assert_eq!(image, want, "images are pinned to the crate's version");
    }
}

/// br_netfilter's bridge-nf-call-* sysctls are set where /proc/sys is writable: in the
/// privileged init container, not by the unprivileged agent.
#[test]
fn the_privileged_init_container_sets_the_bridge_sysctls() {
    let m = load();
    let ds = one(&m.daemon_sets, "DaemonSet");
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let sysctls = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "sysctls")
        .expect("a sysctls init container");
    assert_eq!(
        sysctls.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    let script = sysctls
        .command
        .iter()
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    for want in [
        "net/ipv4/ip_forward",
        "bridge-nf-call-iptables",
        "bridge-nf-call-ip6tables",
        "bridge-nf-call-arptables",
    ] {
        assert!(
            script.contains(want),
            "the init container sets {want}: {script}"
        );
    }
}

#[test]
fn daemon_set_runs_an_agent_on_every_node() {
    let m = load();
    let ds = one(&m.daemon_sets, "DaemonSet");
    let spec = ds.spec.as_ref().expect("DaemonSet spec");
    let pod = spec.template.spec.as_ref().expect("pod template spec");

    // Scheduling: every node, whatever its taints, before anything else.
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists")
            && t.key.is_none()
            && t.effect.is_none()),
        "the DaemonSet tolerates every taint (operator: Exists, no key, no effect): {tolerations:?}"
    );
    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.clone()),
        Some(podnet_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    // Identity: the ServiceAccount the binding grants the ClusterRole to.
    let sa = one(&m.service_accounts, "ServiceAccount");
    let role = one(&m.cluster_roles, "ClusterRole");
    let binding = one(&m.cluster_role_bindings, "ClusterRoleBinding");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == sa.metadata.name.as_ref()
            && s.namespace == sa.metadata.namespace),
        "the ClusterRoleBinding binds the DaemonSet's ServiceAccount: {subjects:?}"
    );

    // The CNI plugin is installed by an init container.
    let inits = pod.init_containers.as_deref().unwrap_or_default();
    let install = inits
        .iter()
        .find(|c| {
            let words: Vec<&str> = c
                .command
                .iter()
                .chain(c.args.iter())
                .flatten()
                .map(String::as_str)
                .collect();
            words.contains(&"install-cni")
        })
        .expect("an init container runs `podnet install-cni`");
    assert!(
        install
            .volume_mounts
            .iter()
            .flatten()
            .any(|v| v.mount_path == "/opt/cni/bin"),
        "install-cni mounts /opt/cni/bin"
    );

    // The agent.
    let agent = pod
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .expect("an `agent` container");
    let args: Vec<&str> = agent.args.iter().flatten().map(String::as_str).collect();
    for want in [
        "agent",
        "--source",
        "kubernetes",
        "--node",
        "$(NODE_NAME)",
        "--health-addr",
    ] {
        assert!(args.contains(&want), "agent args include {want}: {args:?}");
    }
    let node_name = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(
        node_name,
        Some("spec.nodeName"),
        "NODE_NAME from spec.nodeName"
    );

    let security = agent.security_context.as_ref().expect("securityContext");
    assert_ne!(
        security.privileged,
        Some(true),
        "the agent is not privileged"
    );
    let caps: BTreeSet<&str> = security
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    // Only what it uses: it enters no other namespace and opens no raw socket.
    assert_eq!(caps, BTreeSet::from(["NET_ADMIN"]));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert!(
        agent
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some(),
        "the agent has resource requests"
    );

    // Host paths: each mounted by the agent, backed by a hostPath volume of that path.
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mounts = agent.volume_mounts.as_deref().unwrap_or_default();
    for path in AGENT_MOUNTS {
        let mount = mounts
            .iter()
            .find(|v| v.mount_path == *path)
            .unwrap_or_else(|| panic!("the agent mounts {path}"));
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("volume {} (for {path}) exists", mount.name));
        let host = volume
            .host_path
            .as_ref()
            .unwrap_or_else(|| panic!("volume {} is a hostPath", volume.name));
        assert_eq!(
            host.path, *path,
            "volume {} is the host's {path}",
            volume.name
        );
        if *path == "/lib/modules" {
            assert_eq!(mount.read_only, Some(true), "/lib/modules read-only");
        }
    }
    assert!(
        !mounts.iter().any(|v| v.mount_path == "/run/xtables.lock"),
        "nftables only: no xtables lock"
    );
    assert!(
        mounts.iter().any(|v| v.mount_path == "/etc/podnet"
            && volumes.iter().any(|vol| vol.name == v.name
                && vol.config_map.as_ref().map(|c| c.name.as_str()) == Some("podnet-config"))),
        "the agent mounts the podnet-config ConfigMap at /etc/podnet"
    );

    // Probes: the health server on the host's loopback (hostNetwork: the kubelet reaches it).
    for (probe, path) in [
        (agent.liveness_probe.as_ref(), "/healthz"),
        (agent.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an httpGet probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"), "{path} probe host");
        assert_eq!(
            get.port,
            podnet_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9099),
            "{path} probe port"
        );
    }
    assert!(
        args.contains(&"127.0.0.1:9099"),
        "the agent serves health where the probes look: {args:?}"
    );
}

#[test]
fn cluster_role_grants_exactly_what_the_agent_calls() {
    let m = load();
    let role = one(&m.cluster_roles, "ClusterRole");
    assert!(
        role.aggregation_rule.is_none(),
        "no aggregation: its rules could grow"
    );
    let rules = role.rules.as_deref().unwrap_or_default();

    let mut granted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.non_resource_urls
                .as_deref()
                .unwrap_or_default()
                .is_empty(),
            "no non-resource URLs: {rule:?}"
        );
        assert!(
            rule.resource_names.as_deref().unwrap_or_default().is_empty(),
            "resourceNames are not used (the agent patches its own Node by name at run time): {rule:?}"
        );
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        assert!(
            !groups.is_empty() && !resources.is_empty() && !rule.verbs.is_empty(),
            "every rule names groups, resources and verbs: {rule:?}"
        );
        for g in groups {
            for r in resources {
                for v in &rule.verbs {
                    for word in [g, r, v] {
                        assert!(!word.contains('*'), "no wildcards: {rule:?}");
                    }
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }

    let needed: BTreeSet<(String, String, String)> = AGENT_CALLS
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();

    let missing: Vec<_> = needed.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "the agent calls these but the ClusterRole does not allow them: {missing:?}"
    );
    let extra: Vec<_> = granted.difference(&needed).collect();
    assert!(
        extra.is_empty(),
        "the ClusterRole grants more than the agent calls: {extra:?}"
    );

    // Belt and braces on the table itself: reads everywhere, patch on nodes only, and
    // never a write verb or a secret.
    for (g, r, v) in &granted {
        assert!(
            ["get", "list", "watch"].contains(&v.as_str())
                || (v == "patch" && g.is_empty() && r == "nodes"),
            "only reads, and patch on nodes: ({g:?}, {r}, {v})"
        );
        assert!(
            ![
                "create",
                "update",
                "delete",
                "deletecollection",
                "escalate",
                "bind",
                "impersonate"
            ]
            .contains(&v.as_str()),
            "no write verbs: ({g:?}, {r}, {v})"
        );
        assert!(
            r != "secrets" && !r.contains('/'),
            "no secrets, no subresources: {r}"
        );
    }
}
