//! How much the pure policy part costs an agent: compiling 10,000 pods in 1,000 namespaces
//! under 2,000 policies (time and peak memory), and one change with 1,000 or 2,000 policies
//! present. `cargo bench -p podnet-policy --bench compile`
//!
//! The cluster: namespace ns-0 runs DNS (app=dns), ns-1 monitoring (team=monitoring,
//! app=prom); every namespace has 10 pods (web, api, db, client; named ports http, grpc,
//! metrics) over 20 nodes, an ingress policy (web and api from the namespace's clients and
//! from prometheus on named ports, and HTTPS from outside the cluster) and an egress policy
//! (DNS, the own namespace, HTTPS outside; every 10th namespace also reaches the metrics
//! port of a group of 100 namespaces).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use podnet_model::k8s_openapi::api::networking::v1::NetworkPolicy;
use podnet_policy::{NamespaceInfo, PodInfo, PolicyIndex, PolicyInfo, Protocol, Scope};

const NAMESPACES: usize = 1000;
const PODS_PER_NS: usize = 10;
const NODES: usize = 20;
/// A namespace with a pod on node-0 (its pod 0).
const LOCAL_NS: usize = 42;

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn namespaces() -> Vec<NamespaceInfo> {
    (0..NAMESPACES)
        .map(|i| {
            let team = if i == 1 {
                "monitoring".to_string()
            } else {
                format!("t{}", i % 10)
            };
            NamespaceInfo::new(format!("ns-{i}"), labels(&[("team", team)]))
        })
        .collect()
}

fn pods() -> Vec<PodInfo> {
    let apps = [
        "web", "web", "web", "api", "api", "api", "db", "db", "client", "client",
    ];
    let mut out = Vec::new();
    for n in 0..NAMESPACES {
        for (p, default_app) in apps.iter().enumerate() {
            let i = n * PODS_PER_NS + p;
            let app = match (n, p) {
                (0, 0..=1) => "dns",
                (1, 0..=1) => "prom",
                _ => default_app,
            };
            let mut named_ports = BTreeMap::new();
            named_ports.insert("metrics".to_string(), vec![(Protocol::Tcp, 9100)]);
            match app {
                "web" => {
                    named_ports.insert(
                        "http".to_string(),
                        vec![(Protocol::Tcp, 8080 + (p as u16 % 2))],
                    );
                }
                "api" => {
                    named_ports.insert("grpc".to_string(), vec![(Protocol::Tcp, 9000)]);
                }
                _ => {}
            }
            out.push(PodInfo {
                namespace: format!("ns-{n}"),
                name: format!("{app}-{p}"),
                labels: labels(&[
                    ("app", app.to_string()),
                    ("pod-template-hash", format!("h{}", p % 3)),
                ]),
                ip: Some(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(10, 244, 0, 0)) + i as u32 + 1,
                )),
                node: Some(format!("node-{}", i % NODES)),
                named_ports,
            });
        }
    }
    out
}

fn policy(ns: &str, name: &str, spec: &str) -> PolicyInfo {
    let np: NetworkPolicy = serde_yaml_ng::from_str(&format!(
        "metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    ))
    .expect("bench policy YAML");
    PolicyInfo::from_policy(&np).expect("valid bench policy")
}

fn ingress_policy(i: usize, https: u16) -> PolicyInfo {
    policy(
        &format!("ns-{i}"),
        "web-in",
        &format!(
            "  podSelector: {{matchExpressions: [{{key: app, operator: In, values: [web, api]}}]}}
  ingress:
  - from:
    - podSelector: {{matchLabels: {{app: client}}}}
    - namespaceSelector: {{matchLabels: {{team: monitoring}}}}
      podSelector: {{matchLabels: {{app: prom}}}}
    ports: [{{port: http}}, {{port: grpc}}, {{port: metrics}}]
  - from: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}}}]
    ports: [{{port: {https}}}]
"
        ),
    )
}

fn egress_policy(i: usize) -> PolicyInfo {
    let metrics = if i.is_multiple_of(10) {
        format!(
            "  - to: [{{namespaceSelector: {{matchLabels: {{team: t{}}}}}}}]\n    ports: [{{port: metrics}}]\n",
            (i / 10) % 10
        )
    } else {
        String::new()
    };
    policy(
        &format!("ns-{i}"),
        "egress",
        &format!(
            "  podSelector: {{}}
  policyTypes: [Egress]
  egress:
  - to: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: ns-0}}}}, podSelector: {{matchLabels: {{app: dns}}}}}}]
    ports: [{{port: 53, protocol: UDP}}, {{port: 53, protocol: TCP}}]
  - to: [{{podSelector: {{}}}}]
  - to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}}}]
    ports: [{{port: 443}}, {{port: 8000, endPort: 8100}}]
{metrics}"
        ),
    )
}

fn policies(egress: bool) -> Vec<PolicyInfo> {
    let mut v: Vec<PolicyInfo> = (0..NAMESPACES).map(|i| ingress_policy(i, 443)).collect();
    if egress {
        v.extend((0..NAMESPACES).map(egress_policy));
    }
    v
}

/// Resident memory now and at its peak since the last reset, in KiB.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn build(
    scope: Scope,
    nss: &[NamespaceInfo],
    pods: &[PodInfo],
    pols: &[PolicyInfo],
) -> PolicyIndex {
    let mut ix = PolicyIndex::new(scope);
    for n in nss {
        ix.apply_namespace(n.clone());
    }
    for p in pods {
        ix.apply_pod(p.clone());
    }
    for p in pols {
        ix.apply_policy(p.clone());
    }
    ix
}

/// Runs in a process of its own (see `main`), so that its peak RSS is its own.
fn cold(scope: Scope, nss: &[NamespaceInfo], pods: &[PodInfo], pols: &[PolicyInfo]) {
    let (rss0, _) = rss();
    let t = Instant::now();
    let mut ix = PolicyIndex::new(scope.clone());
    for n in nss {
        ix.apply_namespace(n.clone());
    }
    let t_ns = t.elapsed();
    for p in pods {
        ix.apply_pod(p.clone());
    }
    let t_pods = t.elapsed();
    for p in pols {
        ix.apply_policy(p.clone());
    }
    let built = t.elapsed();
    let delta = ix.take_delta();
    let compiled = ix.compiled();
    let total = t.elapsed();
    let (rss1, peak) = rss();
    println!(
        "  phases: namespaces {:.1} ms, pods {:.1} ms, policies {:.1} ms",
        t_ns.as_secs_f64() * 1e3,
        (t_pods - t_ns).as_secs_f64() * 1e3,
        (built - t_pods).as_secs_f64() * 1e3
    );
    println!(
        "cold {:<12} {:>8.1} ms (index {:>7.1} ms)  RSS +{:>6.1} MiB (peak +{:>6.1} MiB; process peak {:.1} MiB)  \
         isolated in/out {}/{}  policy sets {}  rules {}  set elements {}  first delta {} objects",
        match &scope {
            Scope::All => "all pods".to_string(),
            Scope::Node(n) => n.clone(),
        },
        total.as_secs_f64() * 1e3,
        built.as_secs_f64() * 1e3,
        mib(rss1.saturating_sub(rss0)),
        mib(peak.saturating_sub(rss0)),
        mib(peak),
        compiled.ingress.len(),
        compiled.egress.len(),
        compiled.sets.len(),
        compiled.rules.len(),
        compiled.elements(),
        delta.size(),
    );
}

struct Stats {
    median: Duration,
    max: Duration,
    size: usize,
}

/// Runs `change` n times (each followed by take_delta) and reports the times.
fn measure(
    ix: &mut PolicyIndex,
    n: usize,
    mut change: impl FnMut(&mut PolicyIndex, usize),
) -> Stats {
    ix.take_delta();
    let mut times = Vec::with_capacity(n);
    let mut size = 0;
    for i in 0..n {
        let t = Instant::now();
        change(ix, i);
        let d = ix.take_delta();
        times.push(t.elapsed());
        size = size.max(d.size());
    }
    times.sort();
    Stats {
        median: times[n / 2],
        max: times[n - 1],
        size,
    }
}

fn changes(
    label: &str,
    scope: Scope,
    nss: &[NamespaceInfo],
    pods: &[PodInfo],
    pols: &[PolicyInfo],
) {
    let mut ix = build(scope, nss, pods, pols);
    let n = 41;
    let report = |what: &str, s: Stats| {
        println!(
            "  {label:<28} {what:<44} median {:>7.3} ms  max {:>7.3} ms  delta ≤ {} objects",
            s.median.as_secs_f64() * 1e3,
            s.max.as_secs_f64() * 1e3,
            s.size
        );
    };
    report(
        "policy spec change (port 443 ↔ 8443)",
        measure(&mut ix, n, |ix, i| {
            ix.apply_policy(ingress_policy(
                LOCAL_NS,
                if i % 2 == 0 { 8443 } else { 443 },
            ))
        }),
    );
    report(
        "policy added, then deleted",
        measure(&mut ix, n, |ix, i| {
            if i % 2 == 0 {
                ix.apply_policy(policy(&format!("ns-{LOCAL_NS}"), "extra", "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}]}]\n"));
            } else {
                ix.delete_policy(&format!("ns-{LOCAL_NS}"), "extra");
            }
        }),
    );
    report(
        "broad policy change (namespaceSelector {})",
        measure(&mut ix, n, |ix, i| {
            let app = if i % 2 == 0 { "client" } else { "web" };
            ix.apply_policy(policy(
                &format!("ns-{LOCAL_NS}"),
                "broad",
                &format!("  podSelector: {{}}\n  ingress: [{{from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: {app}}}}}}}]}}]\n"),
            ));
        }),
    );
    // Pod 0 of an even namespace runs on node-0.
    let web = pods[LOCAL_NS * PODS_PER_NS].clone();
    report(
        "pod label change (leaves its policies)",
        measure(&mut ix, n, |ix, i| {
            let mut p = web.clone();
            if i % 2 == 0 {
                p.labels.insert("app".into(), "batch".into());
            }
            ix.apply_pod(p);
        }),
    );
    let client = pods[LOCAL_NS * PODS_PER_NS + 8].clone();
    report(
        "peer pod added, then deleted",
        measure(&mut ix, n, |ix, i| {
            if i % 2 == 0 {
                let mut p = client.clone();
                p.name = "client-new".into();
                p.ip = Some(Ipv4Addr::new(10, 250, 0, 1));
                ix.apply_pod(p);
            } else {
                ix.delete_pod(&client.namespace, "client-new");
            }
        }),
    );
    let ns = nss[23].clone();
    report(
        "namespace label change (team t3 ↔ t4)",
        measure(&mut ix, n, |ix, i| {
            let mut n = ns.clone();
            if i % 2 == 0 {
                n.labels.insert("team".into(), "t4".into());
            }
            ix.apply_namespace(n);
        }),
    );
}

fn main() {
    let nss = namespaces();
    let pods = pods();
    let all = policies(true);
    let half = policies(false);
    if let Ok(which) = std::env::var("PODNET_POLICY_BENCH_COLD") {
        let scope = if which == "all" {
            Scope::All
        } else {
            Scope::Node(which)
        };
        cold(scope, &nss, &pods, &all);
        return;
    }
    println!(
        "podnet-policy: {} namespaces, {} pods on {NODES} nodes",
        nss.len(),
        pods.len()
    );
    println!(
        "\n{} policies, compiled from nothing (apply every object, take the first delta, snapshot), each in a process of its own:",
        all.len()
    );
    for which in ["all", "node-0"] {
        let exe = std::env::current_exe().expect("the bench's own path");
        let status = std::process::Command::new(exe)
            .env("PODNET_POLICY_BENCH_COLD", which)
            .status()
            .expect("run the bench again");
        assert!(status.success(), "cold run {which}: {status}");
    }
    println!("\none change, then take_delta (the agent's pure work per event):");
    for (label, pols) in [
        ("1,000 policies, node-0", &half),
        ("2,000 policies, node-0", &all),
    ] {
        changes(label, Scope::Node("node-0".into()), &nss, &pods, pols);
    }
    changes("2,000 policies, all pods", Scope::All, &nss, &pods, &all);
}
