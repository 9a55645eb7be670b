//! The upstream e2e suite (kubernetes test/e2e/network/netpol) on its model: namespaces
//! x, y, z × pods a, b, c, each serving TCP, UDP and SCTP on 80 and 81 (named
//! serve-<port>-<proto>). Each case asserts the full 9×9 reachability matrix for its
//! port/protocol, four ways (see `Cluster::check`). Upstream runs some cases on a subset of
//! the pods; here every case has all nine, with the expectations extended accordingly.

mod common;

use common::{np, upstream_model, Reachability};
use podnet_policy::{decide, Protocol, Source};

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const SCTP: Protocol = Protocol::Sctp;

fn all() -> Reachability {
    Reachability::new(true)
}

#[test]
fn default_deny_ingress() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "deny-ingress",
        "podSelector: {}\npolicyTypes: [Ingress]",
    ));
    c.check(TCP, 80, all().expect_peer("*", "x", false));
}

#[test]
fn default_deny_all() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "deny-all",
        "podSelector: {}\npolicyTypes: [Ingress, Egress]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_peer("*", "x", false)
            .expect_peer("x", "*", false),
    );
}

#[test]
fn allow_from_pods_within_namespace_by_pod_selector() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "x-a-allows-x-b",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_all_ingress("x/a", false)
            .expect("x/b", "x/a", true),
    );
}

#[test]
fn allow_ingress_for_a_target_under_default_deny() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "deny-all",
        "podSelector: {}\npolicyTypes: [Ingress]",
    ));
    c.apply_policy(np(
        "x",
        "allow-all-to-a",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress: [{from: [{podSelector: {}, namespaceSelector: {}}]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_peer("*", "x", false)
            .expect_all_ingress("x/a", true),
    );
}

#[test]
fn allow_ingress_from_all_namespaces() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-from-another-ns",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress: [{from: [{namespaceSelector: {matchLabels: {}}}]}]",
    ));
    c.check(TCP, 80, &all());
}

#[test]
fn allow_only_from_another_namespace_by_namespace_selector() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-client-a-via-ns-selector",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_peer("x", "x/a", false)
            .expect_peer("z", "x/a", false),
    );
}

#[test]
fn pod_selector_with_match_expressions() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "x-a-allows-x-b",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_all_ingress("x/a", false)
            .expect("x/b", "x/a", true),
    );
}

#[test]
fn namespace_selector_with_match_expressions() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-ns-y-match-selector",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_peer("x", "x/a", false)
            .expect_peer("z", "x/a", false),
    );
}

#[test]
fn pod_selector_or_namespace_selector() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-ns-y-match-selector",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
  - podSelector: {matchLabels: {pod: b}}",
    ));
    c.check(TCP, 80, all().expect("x/c", "x/a", false));
}

#[test]
fn pod_selector_and_namespace_selector() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-ns-y-podselector-and-nsselector",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
    podSelector: {matchLabels: {pod: b}}",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_all_ingress("x/a", false)
            .expect("y/b", "x/a", true)
            .expect("z/b", "x/a", true),
    );
}

#[test]
fn multiple_pod_selectors_and_namespace_selectors() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-ns-y-z-pod-b-c",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
    podSelector:
      matchExpressions: [{key: pod, operator: In, values: [b, c]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_all_ingress("x/a", false)
            .expect_peer("y/b", "x/a", true)
            .expect_peer("y/c", "x/a", true)
            .expect_peer("z/b", "x/a", true)
            .expect_peer("z/c", "x/a", true),
    );
}

#[test]
fn any_of_several_pod_selectors() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-ns-x-pod-b-c",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {podSelector: {matchLabels: {pod: c}}}]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_all_ingress("x/a", false)
            .expect("x/b", "x/a", true)
            .expect("x/c", "x/a", true),
    );
}

#[test]
fn only_from_one_pod_of_another_namespace() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-ns-y-pod-a-via-namespace-pod-selector",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_all_ingress("x/a", false)
            .expect("y/a", "x/a", true),
    );
}

const ALLOW_81_FROM_Y: &str = "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
  ports: [{port: 81, protocol: TCP}]";

fn from_y_only() -> Reachability {
    all()
        .expect_peer("x", "x/a", false)
        .expect_peer("y", "x/a", true)
        .expect_peer("z", "x/a", false)
        .clone()
}

#[test]
fn ports() {
    let mut c = upstream_model();
    c.apply_policy(np("x", "allow-client-a-via-ns-selector", ALLOW_81_FROM_Y));
    c.check(TCP, 81, &from_y_only());
    c.check(TCP, 80, all().expect_all_ingress("x/a", false));
}

#[test]
fn multiple_stacked_policies_with_overlapping_pod_selectors() {
    let mut c = upstream_model();
    c.apply_policy(np("x", "allow-client-a-via-ns-selector", ALLOW_81_FROM_Y));
    c.check(TCP, 81, &from_y_only());
    c.check(TCP, 80, all().expect_all_ingress("x/a", false));
    c.apply_policy(np(
        "x",
        "allow-client-a-via-ns-selector-80",
        &ALLOW_81_FROM_Y.replace("port: 81", "port: 80"),
    ));
    c.check(TCP, 80, &from_y_only());
    c.check(TCP, 81, &from_y_only());
}

#[test]
fn allow_all() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-all",
        "podSelector: {}\npolicyTypes: [Ingress]\ningress: [{}]",
    ));
    c.check(TCP, 80, &all());
    c.check(TCP, 81, &all());
}

#[test]
fn ingress_on_one_named_port() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-all",
        "podSelector: {}\npolicyTypes: [Ingress]\ningress: [{ports: [{port: serve-81-tcp}]}]",
    ));
    c.check(TCP, 81, &all());
    c.check(TCP, 80, all().expect_peer("*", "x", false));
    // The name is serve-81-tcp: UDP 81 is another port.
    c.check(UDP, 81, all().expect_peer("*", "x", false));
}

#[test]
fn ingress_from_namespace_on_one_named_port() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-client-a-via-ns-selector-80",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]
  ports: [{port: serve-80-tcp, protocol: TCP}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_peer("x", "x/a", false)
            .expect_peer("z", "x/a", false),
    );
    c.check(TCP, 81, all().expect_all_ingress("x/a", false));
}

#[test]
fn egress_on_one_named_port() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-egress",
        "podSelector: {}\npolicyTypes: [Egress]\negress: [{ports: [{port: serve-80-tcp}]}]",
    ));
    c.check(TCP, 80, &all());
    c.check(TCP, 81, all().expect_peer("x", "*", false));
}

#[test]
fn updated_policy_is_enforced() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-all-mutate-to-deny-all",
        "podSelector: {}\npolicyTypes: [Ingress]\ningress: [{}]",
    ));
    c.check(TCP, 81, &all());
    c.apply_policy(np(
        "x",
        "allow-all-mutate-to-deny-all",
        "podSelector: {}\npolicyTypes: [Ingress]\ningress: []",
    ));
    c.check(TCP, 81, all().expect_peer("*", "x", false));
}

#[test]
fn ingress_from_updated_namespace() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-client-a-via-ns-selector",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress: [{from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]}]",
    ));
    c.check(TCP, 80, all().expect_all_ingress("x/a", false));
    c.label_namespace("y", &[("ns2", "updated")]);
    c.check(
        TCP,
        80,
        all()
            .expect_all_ingress("x/a", false)
            .expect_peer("y", "*", true),
    );
}

#[test]
fn ingress_from_updated_pod() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-client-a-via-pod-selector",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress: [{from: [{podSelector: {matchLabels: {pod: b, pod2: updated}}}]}]",
    ));
    c.check(TCP, 80, all().expect_all_ingress("x/a", false));
    c.label_pod("x", "b", &[("pod2", "updated")]);
    c.check(
        TCP,
        80,
        all()
            .expect_all_ingress("x/a", false)
            .expect("x/b", "x/a", true),
    );
}

#[test]
fn deny_ingress_from_other_namespaces() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "deny-empty-policy",
        "podSelector: {}\npolicyTypes: [Ingress]\ningress: [{from: [{podSelector: {matchLabels: {}}}]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_peer("y", "x", false)
            .expect_peer("z", "x", false),
    );
}

#[test]
fn deny_ingress_to_updated_pod() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "deny-ingress-via-label-selector",
        "podSelector: {matchLabels: {target: isolated}}\npolicyTypes: [Ingress]",
    ));
    c.check(TCP, 80, &all());
    c.label_pod("x", "a", &[("target", "isolated")]);
    c.check(TCP, 80, all().expect_all_ingress("x/a", false));
}

#[test]
fn deny_egress_by_pod_selector() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "deny-egress-pod-a",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]",
    ));
    c.check(TCP, 80, all().expect_all_egress("x/a", false));
}

#[test]
fn deny_egress_from_all_pods_of_a_namespace() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "deny-egress-ns-x",
        "podSelector: {}\npolicyTypes: [Egress]",
    ));
    c.check(TCP, 80, all().expect_peer("x", "*", false));
}

#[test]
fn ingress_and_egress_together() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-client-a-via-pod-selector",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress, Ingress]
ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
egress: [{ports: [{port: 80}]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_all_ingress("x/a", false)
            .expect("x/b", "x/a", true),
    );
    c.check(
        TCP,
        81,
        all()
            .expect_all_ingress("x/a", false)
            .expect_all_egress("x/a", false)
            .expect("x/b", "x/a", true),
    );
}

#[test]
fn egress_denied_on_the_client_even_if_the_server_allows() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-to-ns-y-pod-a",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}",
    ));
    let from_xa = "podSelector: {matchLabels: {pod: POD}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
    podSelector: {matchLabels: {pod: a}}";
    c.apply_policy(np(
        "y",
        "allow-from-xa-on-ya-match-selector",
        &from_xa.replace("POD", "a"),
    ));
    c.apply_policy(np(
        "y",
        "allow-from-xa-on-yb-match-selector",
        &from_xa.replace("POD", "b"),
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_peer("x/a", "*", false)
            .expect_peer("*", "y/a", false)
            .expect("x/a", "y/a", true)
            .expect_peer("*", "y/b", false),
    );
}

#[test]
fn egress_to_a_server_in_another_namespace_by_pod_and_namespace_selector() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-to-ns-y-pod-a",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_all_egress("x/a", false)
            .expect("x/a", "y/a", true),
    );
}

#[test]
fn ingress_any_port_of_one_protocol() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-ingress-by-proto",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]\ningress: [{ports: [{protocol: TCP}]}]",
    ));
    c.check(TCP, 80, &all());
    c.check(TCP, 81, &all());
    c.check(UDP, 80, all().expect_peer("*", "x/a", false));
}

#[test]
fn ingress_allow_all_takes_precedence() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-ingress-port-80",
        "podSelector: {}\npolicyTypes: [Ingress]\ningress: [{ports: [{port: 80}]}]",
    ));
    c.check(TCP, 81, all().expect_peer("*", "x", false));
    c.apply_policy(np(
        "x",
        "allow-ingress",
        "podSelector: {}\npolicyTypes: [Ingress]\ningress: [{}]",
    ));
    c.check(TCP, 81, &all());
}

#[test]
fn egress_allow_all_takes_precedence() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-egress-port-80",
        "podSelector: {}\npolicyTypes: [Egress]\negress: [{ports: [{port: 80}]}]",
    ));
    c.check(TCP, 81, all().expect_peer("x", "*", false));
    c.apply_policy(np(
        "x",
        "allow-egress",
        "podSelector: {}\npolicyTypes: [Egress]\negress: [{}]",
    ));
    c.check(TCP, 81, &all());
}

#[test]
fn policies_stop_after_deletion() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "deny-all",
        "podSelector: {}\npolicyTypes: [Ingress, Egress]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_peer("x", "*", false)
            .expect_peer("*", "x", false),
    );
    c.delete_policy("x", "deny-all");
    c.check(TCP, 80, &all());
}

fn cidr_of(c: &common::Cluster, ns: &str, pod: &str) -> String {
    format!("{}/32", c.pod_ip(ns, pod))
}

#[test]
fn egress_to_a_server_in_a_cidr_block() {
    let mut c = upstream_model();
    let yb = cidr_of(&c, "y", "b");
    c.apply_policy(np(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        &format!(
            "podSelector: {{matchLabels: {{pod: a}}}}\npolicyTypes: [Egress]\negress: [{{to: [{{ipBlock: {{cidr: {yb}}}}}]}}]"
        ),
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_all_egress("x/a", false)
            .expect("x/a", "y/b", true),
    );
}

fn except_policy(c: &common::Cluster) -> String {
    // A large block around x/b, without x/b (upstream's makeLargeCIDRForIP: a /4).
    format!(
        "podSelector: {{matchLabels: {{pod: a}}}}
policyTypes: [Egress]
egress: [{{to: [{{ipBlock: {{cidr: 0.0.0.0/4, except: [{}]}}}}]}}]",
        cidr_of(c, "x", "b")
    )
}

#[test]
fn except_clause_of_a_cidr_block() {
    let mut c = upstream_model();
    let p = except_policy(&c);
    c.apply_policy(np("x", "allow-client-a-via-cidr-egress-rule", &p));
    c.check(TCP, 80, all().expect("x/a", "x/b", false));
}

#[test]
fn address_in_both_cidr_and_except_allowed_by_another_block() {
    let mut c = upstream_model();
    let p = except_policy(&c);
    c.apply_policy(np("x", "allow-client-a-via-cidr-egress-rule", &p));
    c.check(TCP, 80, all().expect("x/a", "x/b", false));
    // Upstream updates the same policy to allow x/b alone.
    let xb = cidr_of(&c, "x", "b");
    c.apply_policy(np(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        &format!(
            "podSelector: {{matchLabels: {{pod: a}}}}\npolicyTypes: [Egress]\negress: [{{to: [{{ipBlock: {{cidr: {xb}}}}}]}}]"
        ),
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_all_egress("x/a", false)
            .expect("x/a", "x/b", true),
    );
}

#[test]
fn ingress_and_egress_controlled_independently() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-egress-for-target",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress: [{}]",
    ));
    c.check(TCP, 80, &all());
    c.apply_policy(np(
        "x",
        "deny-ingress-via-label-selector",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]",
    ));
    c.check(TCP, 80, all().expect_all_ingress("x/a", false));
}

#[test]
fn sctp_is_not_mistaken_for_tcp() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "deny-ingress",
        "podSelector: {}\npolicyTypes: [Ingress]",
    ));
    c.apply_policy(np(
        "x",
        "allow-only-sctp-ingress-on-port-81",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]\ningress: [{ports: [{port: 81, protocol: SCTP}]}]",
    ));
    c.check(TCP, 81, all().expect_peer("*", "x", false));
    c.check(
        SCTP,
        81,
        all()
            .expect_peer("*", "x", false)
            .expect_all_ingress("x/a", true),
    );
}

#[test]
fn sctp_only_policy_isolates() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-only-sctp-ingress-on-port-80",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]\ningress: [{ports: [{port: 80, protocol: SCTP}]}]",
    ));
    c.check(TCP, 81, all().expect_all_ingress("x/a", false));
}

#[test]
fn udp_only_policy_does_not_allow_tcp() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-only-udp-ingress-on-port-81",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]\ningress: [{ports: [{port: 81, protocol: UDP}]}]",
    ));
    c.check(TCP, 81, all().expect_all_ingress("x/a", false));
    c.check(UDP, 81, &all());
}

#[test]
fn namespace_selector_match_labels_on_default_namespace_label() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-client-a-via-ns-selector-for-immutable-ns-label",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_peer("x", "x/a", false)
            .expect_peer("z", "x/a", false),
    );
}

#[test]
fn namespace_selector_match_expressions_on_default_namespace_label() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-ns-y-match-selector-for-immutable-ns-label",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress:
- to:
  - namespaceSelector:
      matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]",
    ));
    c.check(TCP, 80, all().expect_peer("x/a", "y", false));
}

// ---- The UDP and SCTP variants upstream runs ----

#[test]
fn udp_and_sctp_default_deny_ingress() {
    for proto in [UDP, SCTP] {
        let mut c = upstream_model();
        c.apply_policy(np(
            "x",
            "deny-all",
            "podSelector: {}\npolicyTypes: [Ingress]",
        ));
        c.check(proto, 80, all().expect_peer("*", "x", false));
    }
}

#[test]
fn udp_and_sctp_ports() {
    for (proto, name) in [(UDP, "UDP"), (SCTP, "SCTP")] {
        let mut c = upstream_model();
        c.apply_policy(np(
            "x",
            "allow-ingress-on-port-81-ns-x",
            &ALLOW_81_FROM_Y.replace("TCP", name),
        ));
        c.check(proto, 81, &from_y_only());
        c.check(proto, 80, all().expect_all_ingress("x/a", false));
        c.check(TCP, 81, all().expect_all_ingress("x/a", false));
    }
}

#[test]
fn udp_and_sctp_pod_and_namespace_selector() {
    for proto in [UDP, SCTP] {
        let mut c = upstream_model();
        c.apply_policy(np(
            "x",
            "allow-ns-y-pod-a-via-namespace-pod-selector",
            "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    podSelector: {matchLabels: {pod: a}}",
        ));
        c.check(
            proto,
            80,
            all()
                .expect_all_ingress("x/a", false)
                .expect("y/a", "x/a", true),
        );
    }
}

// ---- endPort (upstream's NetworkPolicyEndPort cases) ----

#[test]
fn ingress_port_range() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-80-81-from-y",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress]
ingress:
- from: [{namespaceSelector: {matchLabels: {ns: y}}}]
  ports: [{port: 80, endPort: 81, protocol: TCP}]",
    ));
    c.check(TCP, 80, &from_y_only());
    c.check(TCP, 81, &from_y_only());
    c.check(UDP, 80, all().expect_all_ingress("x/a", false));
}

#[test]
fn egress_port_range_of_one_protocol() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "allow-udp-81-90",
        "podSelector: {}\npolicyTypes: [Egress]\negress: [{to: [], ports: [{port: 81, endPort: 90, protocol: UDP}]}]",
    ));
    c.check(UDP, 81, &all());
    c.check(UDP, 80, all().expect_peer("x", "*", false));
    c.check(TCP, 81, all().expect_peer("x", "*", false));
}

#[test]
fn multiple_ports_and_ranges_in_one_rule() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "y",
        "allow-some",
        "podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}
policyTypes: [Ingress]
ingress:
- from: [{podSelector: {}, namespaceSelector: {matchExpressions: [{key: ns, operator: Exists}]}}]
  ports: [{port: 79, endPort: 80}, {port: 81, protocol: SCTP}, {port: serve-81-udp, protocol: UDP}]",
    ));
    let isolated = || {
        all()
            .expect_all_ingress("y/a", false)
            .expect_all_ingress("y/b", false)
            .clone()
    };
    c.check(TCP, 80, &all());
    c.check(TCP, 81, &isolated());
    c.check(SCTP, 81, &all());
    c.check(SCTP, 80, &isolated());
    c.check(UDP, 81, &all());
    c.check(UDP, 80, &isolated());
}

// ---- policyTypes, empty fields, policies that select no pod ----

#[test]
fn policy_types_default_to_ingress_and_to_egress_when_egress_rules_exist() {
    let mut c = upstream_model();
    // No policyTypes and egress rules: the policy affects ingress (with no ingress rule:
    // deny all) and egress (to x only).
    c.apply_policy(np(
        "x",
        "implicit-types",
        "podSelector: {matchLabels: {pod: a}}\negress: [{to: [{podSelector: {}}]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_all_ingress("x/a", false)
            .expect_peer("x/a", "y", false)
            .expect_peer("x/a", "z", false),
    );
}

#[test]
fn no_policy_types_and_empty_egress_is_ingress_only() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "ingress-only",
        "podSelector: {matchLabels: {pod: a}}\ningress: [{from: [{podSelector: {}}]}]\negress: []",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_peer("y", "x/a", false)
            .expect_peer("z", "x/a", false),
    );
}

#[test]
fn egress_only_policy_ignores_its_ingress_rules() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "egress-only",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_peer("x/a", "x", false)
            .expect_peer("x/a", "y", false),
    );
}

#[test]
fn empty_from_to_and_ports_allow_everything() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "z",
        "everything",
        "podSelector: {}\npolicyTypes: [Ingress, Egress]\ningress: [{from: [], ports: []}]\negress: [{to: [], ports: []}]",
    ));
    for proto in [TCP, UDP, SCTP] {
        c.check(proto, 80, &all());
    }
}

#[test]
fn policy_selecting_no_pod_changes_nothing() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "selects-nothing",
        "podSelector: {matchLabels: {pod: d}}\npolicyTypes: [Ingress, Egress]",
    ));
    c.apply_policy(np(
        "y",
        "selects-nothing-either",
        "podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}\npolicyTypes: [Ingress]",
    ));
    c.check(TCP, 80, &all());
    assert!(c.index.compiled().sets.is_empty());
}

// ---- Named ports resolved per destination pod ----

#[test]
fn named_ports_resolve_on_each_destination_pod() {
    let mut c = upstream_model();
    // "web" is 80 on y's pods and 81 on z's pods (and UDP 80 on x/c): an egress rule
    // naming it lets x/a reach each pod on that pod's own port.
    for (ns, port) in [("y", 80), ("z", 81)] {
        for p in ["a", "b", "c"] {
            let mut pod = c.pods[&(ns.to_string(), p.to_string())].clone();
            let spec = pod.spec.as_mut().expect("spec");
            spec.containers[0].ports.get_or_insert_with(Vec::new).push(
                podnet_model::k8s_openapi::api::core::v1::ContainerPort {
                    name: Some("web".into()),
                    container_port: port,
                    ..Default::default()
                },
            );
            c.apply_pod(pod);
        }
    }
    c.apply_policy(np(
        "x",
        "egress-web",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress: [{ports: [{port: web}]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_peer("x/a", "x", false)
            .expect_peer("x/a", "z", false),
    );
    c.check(
        TCP,
        81,
        all()
            .expect_peer("x/a", "x", false)
            .expect_peer("x/a", "y", false),
    );
    // And ingress: z's pods admit "web" from anywhere, each on its own port (81).
    c.apply_policy(np(
        "z",
        "ingress-web",
        "podSelector: {}\npolicyTypes: [Ingress]\ningress: [{ports: [{port: web}]}]",
    ));
    c.check(
        TCP,
        80,
        all()
            .expect_peer("x/a", "x", false)
            .expect_peer("*", "z", false),
    );
    c.check(
        TCP,
        81,
        all()
            .expect_peer("x/a", "x", false)
            .expect_peer("x/a", "y", false),
    );
    // A pod whose port moves: x/a then reaches z/b on the new number only.
    let mut zb = c.pods[&("z".to_string(), "b".to_string())].clone();
    let ports = zb.spec.as_mut().expect("spec").containers[0]
        .ports
        .as_mut()
        .expect("ports");
    for p in ports.iter_mut() {
        if p.name.as_deref() == Some("web") {
            p.container_port = 80;
        }
    }
    c.apply_pod(zb);
    c.check(
        TCP,
        80,
        all()
            .expect_peer("x/a", "x", false)
            .expect_peer("*", "z", false)
            .expect_all_ingress("z/b", true),
    );
    c.check(
        TCP,
        81,
        all()
            .expect_peer("x/a", "x", false)
            .expect_peer("x/a", "y", false)
            .expect_all_ingress("z/b", false),
    );
}

// ---- What is always allowed, and traffic from outside the model ----

#[test]
fn self_and_node_are_always_allowed() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "deny-all",
        "podSelector: {}\npolicyTypes: [Ingress, Egress]",
    ));
    let xa = c.pod_ip("x", "a");
    let v = decide(&c.index, Source::Addr(xa), xa, TCP, 80);
    assert!(v.allowed, "{v}");
    let v = decide(&c.index, Source::Node, xa, TCP, 80);
    assert!(v.allowed, "{v}");
    let v = decide(&c.index, Source::Addr(c.pod_ip("x", "b")), xa, TCP, 80);
    assert!(!v.allowed);
    assert_eq!(
        v.to_string(),
        "denied; egress: isolated by x/deny-all and no rule allows it; ingress: isolated by x/deny-all and no rule allows it"
    );
}

#[test]
fn ip_blocks_judge_addresses_outside_the_cluster() {
    let mut c = upstream_model();
    c.apply_policy(np(
        "x",
        "outside",
        "podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress, Egress]
ingress: [{from: [{ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}]}]
egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}], ports: [{port: 443}]}]",
    ));
    let xa = c.pod_ip("x", "a");
    let outside: std::net::Ipv4Addr = "198.51.100.1".parse().expect("ip");
    let far: std::net::Ipv4Addr = "198.51.100.200".parse().expect("ip");
    let cases = [
        (Source::Addr(outside), xa, 80, true),
        (Source::Addr(far), xa, 80, false),
        (Source::Addr(xa), outside, 443, true),
        (Source::Addr(xa), outside, 80, false),
        (Source::Addr(xa), c.pod_ip("y", "a"), 443, false),
    ];
    for (src, dst, port, want) in cases {
        let v = decide(&c.index, src, dst, TCP, port);
        assert_eq!(v.allowed, want, "{src:?} → {dst}:{port}: {v}");
        assert_eq!(
            c.oracle(src, dst, TCP, port),
            want,
            "oracle {src:?} → {dst}:{port}"
        );
        assert_eq!(c.decide_by_nodes(src, dst, TCP, port), want);
    }
    c.check(
        TCP,
        80,
        all()
            .expect_all_ingress("x/a", false)
            .expect_all_egress("x/a", false),
    );
}
