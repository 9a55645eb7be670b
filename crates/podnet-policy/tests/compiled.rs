//! The compiled form itself: what each verdict map, policy set and rule holds, and the
//! deltas that changes produce (small, and replaying to the same state).

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use common::{labels, namespace, np, pod, replay, Cluster};
use podnet_policy::{
    decide, Compiled, CompiledRule, Delta, Direction, Element, Key, NamedPort, PeerMatch,
    PolicyIndex, PortMatch, Protocol, RuleId, Scope, Source,
};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

fn range(first: &str, last: &str) -> podnet_policy::ranges::AddrRange {
    podnet_policy::ranges::AddrRange {
        first: ip(first),
        last: ip(last),
    }
}

const W1: &str = "10.0.1.1";
const W2: &str = "10.0.1.2";
const C1: &str = "10.0.2.1";
const P1: &str = "10.0.2.9";

const ALLOW_WEB: &str = "podSelector: {matchLabels: {app: web}}
ingress:
- from:
  - podSelector: {matchLabels: {app: client}}
  - namespaceSelector: {matchLabels: {team: monitoring}}
    podSelector: {matchLabels: {app: prom}}
  - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}
  ports: [{port: http}, {port: 443}, {port: 53, endPort: 54, protocol: UDP}]";

/// web: w1, w2 (app=web, "http" on 8080 and 9090), c1 (app=client); mon: p1 (app=prom).
/// web/default-deny isolates everything in web both ways; web/allow-web admits clients,
/// prometheus and a block to the web pods.
fn world() -> Cluster {
    let mut c = Cluster::new(&["node-1", "node-2"]);
    c.apply_namespace(namespace("web", labels(&[])));
    c.apply_namespace(namespace("mon", labels(&[("team", "monitoring")])));
    let http = |n| [("http", Protocol::Tcp, n)];
    c.apply_pod(pod(
        "web",
        "w1",
        labels(&[("app", "web")]),
        Some(ip(W1)),
        "node-1",
        &http(8080),
    ));
    c.apply_pod(pod(
        "web",
        "w2",
        labels(&[("app", "web")]),
        Some(ip(W2)),
        "node-1",
        &http(9090),
    ));
    c.apply_pod(pod(
        "web",
        "c1",
        labels(&[("app", "client")]),
        Some(ip(C1)),
        "node-2",
        &[],
    ));
    c.apply_pod(pod(
        "mon",
        "p1",
        labels(&[("app", "prom")]),
        Some(ip(P1)),
        "node-2",
        &[],
    ));
    c.apply_policy(np(
        "web",
        "default-deny",
        "podSelector: {}\npolicyTypes: [Ingress, Egress]",
    ));
    c.apply_policy(np("web", "allow-web", ALLOW_WEB));
    c
}

fn rule_id(ix: &PolicyIndex, name: &str, direction: Direction, index: u32) -> RuleId {
    RuleId {
        policy: ix.policy_id("web", name).expect("policy known"),
        direction,
        index,
    }
}

#[test]
fn compiled_structure() {
    let c = world();
    let compiled = c.index.compiled();
    common::assert_consistent(&compiled);
    // Ingress: w1 and w2 share one policy set; c1 has another. Egress: one set for all.
    let (w1, w2, c1) = (
        compiled.ingress[&ip(W1)],
        compiled.ingress[&ip(W2)],
        compiled.ingress[&ip(C1)],
    );
    assert_eq!(w1, w2);
    assert_ne!(w1, c1);
    assert!(
        !compiled.ingress.contains_key(&ip(P1)),
        "p1 is not isolated"
    );
    assert_eq!(compiled.egress.len(), 3);
    assert_eq!(compiled.egress.values().collect::<BTreeSet<_>>().len(), 1);
    assert_eq!(compiled.sets.len(), 3);
    let web_set = &compiled.sets[&w1];
    assert_eq!(
        web_set.policies,
        vec![
            Key::new("web", "default-deny"),
            Key::new("web", "allow-web")
        ]
    );
    let rid = rule_id(&c.index, "allow-web", Direction::Ingress, 0);
    assert_eq!(web_set.rules, vec![rid], "default-deny brings no rule");
    assert!(compiled.sets[&c1].rules.is_empty());
    // The one rule: peers by address (pods) and by interval (blocks); ports by interval,
    // and named ports per destination pod (only the pods the policy selects).
    let want = CompiledRule {
        policy: Key::new("web", "allow-web"),
        peers: PeerMatch::Only {
            pods: Some([ip(C1), ip(P1)].into()),
            blocks: Some(vec![
                range("192.168.0.0", "192.168.0.255"),
                range("192.168.2.0", "192.168.255.255"),
            ]),
        },
        ports: PortMatch::Only {
            ranges: Some(vec![
                podnet_policy::ranges::PortRange {
                    protocol: Protocol::Tcp,
                    first: 443,
                    last: 443,
                },
                podnet_policy::ranges::PortRange {
                    protocol: Protocol::Udp,
                    first: 53,
                    last: 54,
                },
            ]),
            named: Some(
                [
                    NamedPort {
                        ip: ip(W1),
                        protocol: Protocol::Tcp,
                        port: 8080,
                    },
                    NamedPort {
                        ip: ip(W2),
                        protocol: Protocol::Tcp,
                        port: 9090,
                    },
                ]
                .into(),
            ),
        },
    };
    assert_eq!(compiled.rules.len(), 1);
    assert_eq!(compiled.rules[&rid], want);
    assert_eq!(compiled.elements(), 8);

    let allowed = |src: &str, dst: &str, proto, port| {
        decide(&c.index, Source::Addr(ip(src)), ip(dst), proto, port).allowed
    };
    assert!(allowed(P1, W1, Protocol::Tcp, 8080));
    assert!(!allowed(P1, W1, Protocol::Tcp, 9090), "w1's http is 8080");
    assert!(allowed(P1, W2, Protocol::Tcp, 9090));
    assert!(allowed("192.168.3.4", W2, Protocol::Udp, 54));
    assert!(!allowed("192.168.1.4", W2, Protocol::Udp, 54), "except");
    assert!(
        !allowed(C1, W1, Protocol::Tcp, 443),
        "c1's egress is denied"
    );
    let v = decide(&c.index, Source::Addr(ip(P1)), ip(W1), Protocol::Tcp, 443);
    assert_eq!(
        v.to_string(),
        "allowed; egress: not isolated; ingress: allowed by web/allow-web"
    );
}

#[test]
fn a_node_compiles_its_own_pods_against_peers_everywhere() {
    let c = world();
    let n1 = c.nodes["node-1"].compiled();
    let n2 = c.nodes["node-2"].compiled();
    assert_eq!(
        n1.ingress.keys().copied().collect::<Vec<_>>(),
        vec![ip(W1), ip(W2)]
    );
    assert_eq!(n2.ingress.keys().copied().collect::<Vec<_>>(), vec![ip(C1)]);
    // node-1 holds allow-web with its peers on node-2; node-2 has no pod it selects.
    assert_eq!(n1.rules.len(), 1);
    assert!(n2.rules.is_empty());
    let rule = n1.rules.values().next().expect("one rule");
    assert!(matches!(&rule.peers, PeerMatch::Only { pods: Some(p), .. } if p.len() == 2));
}

/// Takes a delta, checks it replays the previous snapshot into the current one, and
/// returns it.
fn step(ix: &mut PolicyIndex, before: &mut Compiled) -> Delta {
    let delta = ix.take_delta();
    let now = ix.compiled();
    assert_eq!(replay(before, &delta, ix), now, "delta {delta:?}");
    *before = now;
    delta
}

#[test]
fn changes_are_small_deltas() {
    let mut c = world();
    let mut ix = std::mem::replace(&mut c.index, PolicyIndex::new(Scope::All));
    let mut snap = Compiled::default();
    let first = step(&mut ix, &mut snap);
    assert_eq!(first.sets_added.len(), 3);
    assert_eq!(first.rules_added.len(), 1);
    assert_eq!(first.verdicts.len(), 6);
    let rid = rule_id(&ix, "allow-web", Direction::Ingress, 0);

    // Nothing changed: nothing to do.
    for p in c.pod_infos() {
        ix.apply_pod(p);
    }
    assert!(step(&mut ix, &mut snap).is_empty());

    // A peer's label changes: one element.
    let relabel = |c: &mut Cluster, ns: &str, name: &str, l: &[(&str, &str)]| {
        let mut p = c.pods[&(ns.to_string(), name.to_string())].clone();
        p.metadata.labels = Some(labels(l));
        podnet_policy::PodInfo::from_pod(&p).expect("valid")
    };
    ix.apply_pod(relabel(&mut c, "web", "c1", &[("app", "other")]));
    let d = step(&mut ix, &mut snap);
    assert_eq!(
        d,
        Delta {
            elements_removed: [(rid, Element::Pod(ip(C1)))].into(),
            ..Delta::default()
        }
    );

    // A selected pod leaves allow-web: its verdict moves to the existing {default-deny}
    // set, and its named port leaves the rule.
    ix.apply_pod(relabel(&mut c, "web", "w2", &[("app", "other")]));
    let d = step(&mut ix, &mut snap);
    let deny_only = snap.ingress[&ip(C1)];
    assert_eq!(
        d,
        Delta {
            elements_removed: [(
                rid,
                Element::Named(NamedPort {
                    ip: ip(W2),
                    protocol: Protocol::Tcp,
                    port: 9090
                })
            )]
            .into(),
            verdicts: [((Direction::Ingress, ip(W2)), Some(deny_only))].into(),
            ..Delta::default()
        }
    );

    // A namespace's labels change: prometheus stops being a peer.
    ix.apply_namespace(podnet_policy::NamespaceInfo::new("mon", labels(&[])));
    let d = step(&mut ix, &mut snap);
    assert_eq!(d.elements_removed, [(rid, Element::Pod(ip(P1)))].into());
    assert_eq!(d.size(), 1);

    // The policy's spec changes: its rule is replaced, and the set holding it.
    let old_set = snap.ingress[&ip(W1)];
    let changed = podnet_policy::PolicyInfo::from_policy(&np(
        "web",
        "allow-web",
        &ALLOW_WEB.replace("{port: 443}", "{port: 8443}"),
    ))
    .expect("valid");
    ix.apply_policy(changed);
    let d = step(&mut ix, &mut snap);
    let new_rid = rule_id(&ix, "allow-web", Direction::Ingress, 0);
    assert_ne!(new_rid, rid);
    assert_eq!(d.rules_removed, [rid].into());
    assert_eq!(d.rules_added, [new_rid].into());
    assert_eq!(d.sets_removed, [old_set].into());
    assert_eq!(d.sets_added.len(), 1);
    assert_eq!(d.verdicts.len(), 1, "only w1 is in that set now");

    // The deny-all policy goes: every pod leaves the maps but w1.
    ix.delete_policy("web", "default-deny");
    let d = step(&mut ix, &mut snap);
    assert_eq!(
        snap.ingress.keys().copied().collect::<Vec<_>>(),
        vec![ip(W1)]
    );
    assert!(snap.egress.is_empty());
    assert!(d.rules_added.is_empty() && d.rules_removed.is_empty());

    // Pods go.
    ix.delete_pod("web", "w1");
    step(&mut ix, &mut snap);
    assert_eq!(snap, Compiled::default());
}

#[test]
fn two_pods_sharing_an_address_do_not_corrupt_the_sets() {
    let mut c = world();
    // A new pod takes c1's address before c1 is gone (the API can show both briefly).
    c.apply_pod(pod(
        "web",
        "c0",
        labels(&[("app", "client")]),
        Some(ip(C1)),
        "node-2",
        &[],
    ));
    c.delete_pod("web", "c1");
    let rid = rule_id(&c.index, "allow-web", Direction::Ingress, 0);
    let compiled = c.index.compiled();
    assert!(
        matches!(&compiled.rules[&rid].peers, PeerMatch::Only { pods: Some(p), .. } if p.contains(&ip(C1)))
    );
    c.delete_pod("web", "c0");
    let compiled = c.index.compiled();
    assert!(
        matches!(&compiled.rules[&rid].peers, PeerMatch::Only { pods: Some(p), .. } if !p.contains(&ip(C1)))
    );
    assert!(!compiled.ingress.contains_key(&ip(C1)));
    c.assert_incremental_equals_scratch();
}

#[test]
fn pods_without_an_address_or_namespace_object_still_count() {
    let mut c = world();
    // A pod scheduled but without an address yet: selected, but nothing to enforce.
    c.apply_pod(pod(
        "web",
        "w3",
        labels(&[("app", "web")]),
        None,
        "node-1",
        &[],
    ));
    c.assert_incremental_equals_scratch();
    // It gets its address.
    c.apply_pod(pod(
        "web",
        "w3",
        labels(&[("app", "web")]),
        Some(ip("10.0.1.3")),
        "node-1",
        &[],
    ));
    assert_eq!(
        c.index.compiled().ingress[&ip("10.0.1.3")],
        c.index.compiled().ingress[&ip(W1)]
    );
    // A pod in a namespace whose object the index has not seen: its name label counts.
    c.apply_policy(np(
        "web",
        "from-ghost",
        "podSelector: {matchLabels: {app: web}}
ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ghost}}}]}]",
    ));
    c.apply_pod(pod(
        "ghost",
        "g",
        labels(&[]),
        Some(ip("10.0.3.1")),
        "node-2",
        &[],
    ));
    assert!(
        decide(
            &c.index,
            Source::Addr(ip("10.0.3.1")),
            ip(W1),
            Protocol::Tcp,
            1
        )
        .allowed
    );
    c.assert_incremental_equals_scratch();
    c.apply_namespace(namespace("ghost", labels(&[])));
    c.delete_namespace("ghost");
    assert!(
        decide(
            &c.index,
            Source::Addr(ip("10.0.3.1")),
            ip(W1),
            Protocol::Tcp,
            1
        )
        .allowed
    );
    c.assert_incremental_equals_scratch();
}
