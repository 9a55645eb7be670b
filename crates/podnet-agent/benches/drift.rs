//! Drift repair at scale: the agent's table for 10,000 Services × 10 endpoints, written
//! by the agent's own code into a namespace of its own, then changed with `nft` behind
//! its back. Measures, in one run:
//! - the full write, with podnet listening to nftables notifications (it stops
//!   listening while it commits) and with a listener that does not;
//! - listing every element of the table over netlink, and encoding what the agent
//!   wants for the comparison;
//! - from the agent noticing a change to the end of its repair (comparison included):
//!   one deleted `service-ips` element, one element someone added, a flushed chain;
//! - a periodic full comparison that finds nothing.
//!
//! Needs root: `sudo cargo bench -p podnet-agent --bench drift`

mod world;

use std::process::Command;
use std::time::{Duration, Instant};

use podnet_agent::dataplane::Dataplane;
use podnet_agent::health::Health;
use podnet_agent::ruleset::{self, TableConfig};
use podnet_agent::services::{contribution, ServiceProxy, SliceInfo};
use podnet_kernel::nftables::{Monitor, NfTables};
use podnet_kernel::NetNs;
use podnet_testkit::{in_netns, on_thread_in, Fixture};
use world::world;

const SERVICES: usize = 10_000;

fn nft(ns: &NetNs, args: &[&str]) {
    let out = in_netns(Command::new("nft").args(args), ns)
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    podnet_testkit::require_root();
    let mut fx = Fixture::new("drift-bench");
    let ns = fx.netns("node");
    let (svcs, raw) = world(SERVICES);
    let slices: Vec<SliceInfo> = raw.iter().filter_map(SliceInfo::from_slice).collect();
    let mut proxy = ServiceProxy::new(&TableConfig {
        cluster_cidr: "10.244.0.0/16".parse().expect("net"),
        service_cidr: None,
        vxlan_port: None,
        underlay: None,
        local_pods: None,
        untracked_pods: false,
        service_proxy: true,
    });
    proxy.set_nodes(&["172.18.0.11".parse().expect("ip")]);
    for (i, svc) in svcs.iter().enumerate() {
        let key = ("default".to_string(), format!("s{i}"));
        proxy.set_service(key, Some(contribution(svc, &[&slices[i]], "node-1")));
    }
    let elements: usize = proxy.table.want().elements.values().map(|e| e.len()).sum();
    println!("{SERVICES} Services × 10 endpoints: {elements} elements");

    // Encoding what the agent wants, as a comparison does (pure).
    let t = Instant::now();
    let wanted = proxy.table.want().wanted(|_| true).expect("encodable");
    let encoded: usize = wanted.values().map(|w| w.len()).sum();
    println!("encode the wanted elements ({encoded}): {:?}", t.elapsed());
    drop(wanted);

    let bench_ns = NetNs::open(ns.path()).expect("reopen the namespace");
    let agent = on_thread_in(&ns, move || {
        let health = Health::default();
        let mut dp = Dataplane::new().expect("the dataplane");
        let t = Instant::now();
        let sent = dp.sync_nft(&mut proxy.table, &health).expect("full write");
        println!(
            "full write ({sent} commands) by the agent, listening: {:?}",
            t.elapsed()
        );

        // A listener that stays: what anyone listening costs every commit.
        let monitor = Monitor::open().expect("a listener");
        proxy.table.failed();
        let t = Instant::now();
        dp.sync_nft(&mut proxy.table, &health).expect("full write");
        println!(
            "full write with another process listening throughout: {:?}",
            t.elapsed()
        );
        drop(monitor);

        let mut nftnl = NfTables::open().expect("nf_tables socket");
        let sets = proxy.table.want().sets();
        for _ in 0..3 {
            let t = Instant::now();
            let mut n = 0;
            for set in &sets {
                n += nftnl
                    .list_elements(ruleset::TABLE, set)
                    .expect("list")
                    .map_or(0, |e| e.len());
            }
            println!("list {n} elements over netlink: {:?}", t.elapsed());
        }

        let cases: [(&str, Vec<&str>); 3] = [
            (
                "a deleted service-ips element",
                vec![
                    "delete",
                    "element",
                    "inet",
                    "podnet",
                    "service-ips",
                    "{ 10.96.20.1 . tcp . 80 }",
                ],
            ),
            (
                "an element someone added",
                vec![
                    "add",
                    "element",
                    "inet",
                    "podnet",
                    "service-ips",
                    "{ 10.97.0.1 . tcp . 80 : accept }",
                ],
            ),
            (
                "a flushed chain",
                vec!["flush", "chain", "inet", "podnet", "services"],
            ),
        ];
        for (what, args) in cases {
            nft(&bench_ns, &args);
            // The agent's loop looks every 100 ms; here at once.
            let noticed = Instant::now();
            while !dp.drift_suspected() {
                assert!(
                    noticed.elapsed() < Duration::from_secs(5),
                    "{what}: not noticed"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let t = Instant::now();
            dp.sync_nft(&mut proxy.table, &health).expect("repair");
            println!("{what}: compared and repaired in {:?}", t.elapsed());
        }
        // Nothing changed: the periodic full comparison, due within 10 s.
        let since = Instant::now();
        while !dp.drift_suspected() {
            assert!(
                since.elapsed() < Duration::from_secs(15),
                "no periodic check"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let t = Instant::now();
        let sent = dp.sync_nft(&mut proxy.table, &health).expect("check");
        assert_eq!(sent, 0, "nothing to repair");
        println!(
            "periodic full comparison (nothing differs): {:?}",
            t.elapsed()
        );
    });
    agent.join().expect("the agent thread");
}
