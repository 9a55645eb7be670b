//! How long the agent takes to decide the Service rules (pure part, no kernel): the full
//! table for N Services × 10 endpoints, and the transaction after one endpoint changes.
//! `cargo bench -p podnet-agent --bench decide`

mod world;

use std::time::Instant;

use podnet_agent::ruleset::TableConfig;
use podnet_agent::services::{contribution, ServiceProxy, SliceInfo};
use world::world;

/// This process's resident memory, as /proc reports it.
fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|st| {
            st.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn main() {
    for n in [100usize, 10_000] {
        let (svcs, raw) = world(n);
        // As the agent keeps them.
        let mut slices: Vec<SliceInfo> = raw.iter().filter_map(SliceInfo::from_slice).collect();
        drop(raw);
        let rss0 = rss();
        println!("{n:>6} services: with the objects alone, {rss0}");
        let cidr = "10.244.0.0/16".parse().expect("net");
        let nodes = ["172.18.0.11".parse().expect("ip")];
        let key = |i: usize| ("default".to_string(), format!("s{i}"));
        let mut proxy = ServiceProxy::new(&TableConfig {
            cluster_cidr: cidr,
            service_cidr: None,
            vxlan_port: None,
            underlay: None,
            local_pods: None,
            untracked_pods: false,
            service_proxy: true,
        });
        proxy.set_nodes(&nodes);
        let t = Instant::now();
        for (i, svc) in svcs.iter().enumerate() {
            proxy.set_service(key(i), Some(contribution(svc, &[&slices[i]], "node-1")));
        }
        let decide_full = t.elapsed();
        let rss = rss();
        println!("{n:>6} services: after deciding all, this process's {rss}");
        let t = Instant::now();
        let script = proxy.table.transaction().unwrap_or_default();
        proxy.table.committed();
        let render_full = t.elapsed();
        // The first changes after a full sync pay for the allocator tidying up after it;
        // measure the steady state, as the agent lives it.
        for j in 0..4 {
            slices[j].endpoints[1].0 = "10.250.0.2".parse().expect("ip");
            let c = contribution(&svcs[j], &[&slices[j]], "node-1");
            proxy.set_service(key(j), Some(c));
            proxy.table.committed();
        }
        let i = n / 2;
        slices[i].endpoints[3].0 = "10.250.0.1".parse().expect("ip");
        let t = Instant::now();
        proxy.set_service(
            key(i),
            Some(contribution(&svcs[i], &[&slices[i]], "node-1")),
        );
        let delta = proxy.table.transaction().unwrap_or_default();
        let one_change = t.elapsed();
        println!(
            "{n:>6} services: decide {decide_full:?}, render full sync {render_full:?} ({} lines); one endpoint change decided in {one_change:?} ({} lines)",
            script.lines().count(),
            delta.lines().count()
        );
    }
}
