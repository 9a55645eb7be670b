//! Nothing lost, nothing hung: podnet-cni killed at any step, its pool file corrupted or
//! lost, its lock held by a stuck process, its ADD repeated. Against the real kernel, in
//! namespaces each test creates. Run as root.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{pod_ip, Node, Out, LOCK_TIMEOUT_MS};
use podnet_kernel::{NetNs, Netlink};
use serde_json::Value;

/// ADD as a runtime does it: retried while the plugin answers "try again later".
fn add_retrying(node: &Node, cid: &str, pod: &NetNs) -> Out {
    for _ in 0..50 {
        let out = node.cni("ADD", cid, Some(pod.path()), &node.conf("1.1.0"));
        if out.code() != 11 {
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("ADD {cid} kept answering 11");
}

/// Adds `cids` in parallel, `batch` at a time; returns each one's address.
fn add_all(node: &Node, cids: &[String], pods: &[NetNs], batch: usize) -> Vec<String> {
    let mut ips = Vec::new();
    for chunk in cids.iter().zip(pods).collect::<Vec<_>>().chunks(batch) {
        let outs: Vec<Out> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(cid, pod)| s.spawn(move || add_retrying(node, cid, pod)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        for (out, (cid, _)) in outs.iter().zip(chunk) {
            assert!(out.ok, "ADD {cid}: {out:?}");
            ips.push(pod_ip(&out.json));
        }
    }
    ips
}

fn corrupt_files(node: &Node) -> Vec<String> {
    let dir = node.pool_file().parent().expect("dir").to_path_buf();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read IPAM dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pool.json.corrupt-"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_corrupt_or_lost_pool_is_rebuilt_from_the_node_and_no_address_is_given_twice() {
    let mut node = Node::new("cni-rebuild", "10.244.30.0/24");
    let first: Vec<String> = (0..20).map(|i| format!("ctr-a{i}")).collect();
    let first_pods: Vec<NetNs> = (0..20).map(|i| node.pod(&format!("a{i}"))).collect();
    let first_ips = add_all(&node, &first, &first_pods, 10);

    // Five host veths as an earlier release left them: no alias. Their addresses are
    // read from their pod ends' MACs.
    let mut nl = Netlink::open_in(&node.ns).expect("netlink");
    for cid in &first[..5] {
        let name = podnet_cni::plugin::host_veth_name(&podnet_cni::spec::Attachment {
            container_id: cid.clone(),
            ifname: "eth0".into(),
        });
        let link = nl.link_by_name(&name).expect("lookup").expect("host veth");
        nl.set_alias(link.index, "").expect("clear alias");
    }

    // A torn pool, as a power cut used to leave it.
    let pool = node.pool_file();
    let bytes = std::fs::read(&pool).expect("read pool");
    std::fs::write(&pool, &bytes[..bytes.len() / 2]).expect("truncate pool");

    // CHECK, DEL and STATUS keep working while it is unreadable.
    let mut check = node.conf("1.1.0");
    let r0 = node.cni(
        "ADD",
        &first[0],
        Some(first_pods[0].path()),
        &node.conf("1.1.0"),
    );
    assert!(r0.ok, "the ADD that rebuilds: {r0:?}");
    assert_eq!(
        pod_ip(&r0.json),
        first_ips[0],
        "a repeated ADD keeps the address"
    );
    check["prevResult"] = r0.json;
    std::fs::write(&pool, &bytes[..bytes.len() / 2]).expect("truncate pool again");
    let out = node.cni("CHECK", &first[0], Some(first_pods[0].path()), &check);
    assert!(out.ok, "CHECK with an unreadable pool: {out:?}");
    assert!(node.cni("STATUS", "", None, &node.conf("1.1.0")).ok);
    let out = node.cni(
        "DEL",
        &first[19],
        Some(first_pods[19].path()),
        &node.conf("1.1.0"),
    );
    assert!(out.ok, "DEL with an unreadable pool: {out:?}");
    let live: Vec<String> = first[..19].to_vec();

    // What docs/cni.md says to do: nothing; the next ADD rebuilds the pool from the
    // node. Fifty more pods, ten at a time.
    let more: Vec<String> = (0..50).map(|i| format!("ctr-b{i}")).collect();
    let more_pods: Vec<NetNs> = (0..50).map(|i| node.pod(&format!("b{i}"))).collect();
    let more_ips = add_all(&node, &more, &more_pods, 10);
    let all_ips: HashSet<&String> = first_ips[..19].iter().chain(&more_ips).collect();
    assert_eq!(all_ips.len(), 69, "an address was handed out twice");
    let pods: Vec<&NetNs> = first_pods[..19].iter().chain(&more_pods).collect();
    assert_eq!(node.duplicates(&pods), Vec::<String>::new());
    assert_eq!(node.answering(&pods).len(), 69);
    assert_eq!(
        corrupt_files(&node).len(),
        2,
        "the torn pools are kept aside"
    );
    assert_eq!(node.allocations().len(), 69);

    // The runtime's GC agrees with the rebuilt pool: nothing of a live pod is removed.
    let live: Vec<String> = live.into_iter().chain(more.clone()).collect();
    let out = node.cni("GC", "", None, &node.gc_conf(&live));
    assert!(out.ok, "GC: {out:?}");
    assert_eq!(node.allocations().len(), 69);
    assert_eq!(node.answering(&pods).len(), 69);

    // A pool that is simply gone is rebuilt the same way.
    std::fs::remove_file(&pool).expect("remove pool");
    let last: Vec<String> = (0..5).map(|i| format!("ctr-c{i}")).collect();
    let last_pods: Vec<NetNs> = (0..5).map(|i| node.pod(&format!("c{i}"))).collect();
    add_all(&node, &last, &last_pods, 5);
    let pods: Vec<&NetNs> = pods.into_iter().chain(&last_pods).collect();
    assert_eq!(node.duplicates(&pods), Vec::<String>::new());
    assert_eq!(node.allocations().len(), 74);
}

#[test]
fn a_rebuild_waits_for_adds_in_flight() {
    let mut node = Node::new("cni-inflight", "10.244.31.0/24");
    let a = node.pod("a");
    let b = node.pod("b");
    node.add("ctr-a", &a);
    // An ADD stopped between taking its address and making its interface: the address is
    // known only to the pool. Holding its in-flight mark the way it does:
    let adds = node.pool_file().with_file_name("adds");
    let file = std::fs::File::create(&adds).expect("open adds");
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock)
        .expect("mark an ADD in flight");
    std::fs::write(node.pool_file(), b"{").expect("corrupt the pool");
    let out = node.cni("ADD", "ctr-b", Some(b.path()), &node.conf("1.1.0"));
    assert_eq!((out.ok, out.code()), (false, 11), "{out:?}");
    assert!(
        out.msg().contains("pool.json is unreadable"),
        "{}",
        out.msg()
    );
    assert!(
        out.json["details"]
            .as_str()
            .is_some_and(|d| d.contains("as soon as no other ADD is in flight")),
        "{out:?}"
    );
    drop(held);
    let out = node.cni("ADD", "ctr-b", Some(b.path()), &node.conf("1.1.0"));
    assert!(out.ok, "{out:?}");
    assert_eq!(node.duplicates(&[&a, &b]), Vec::<String>::new());
}

/// Sets up `n` pods, kills a GC that removes all but two of them at `step`, then adds as
/// many new pods as fit; no address may answer twice, and a complete GC afterwards
/// leaves exactly the live pods' allocations and veths.
fn gc_killed_at(step: &str) {
    let mut node = Node::new("cni-gckill", "10.244.32.0/28");
    let n = 8;
    let old: Vec<String> = (0..n).map(|i| format!("ctr-old{i}")).collect();
    let old_pods: Vec<NetNs> = (0..n).map(|i| node.pod(&format!("o{i}"))).collect();
    add_all(&node, &old, &old_pods, n);
    let kept = old[..2].to_vec();
    assert!(
        node.cni_crashing("GC", "", None, &node.gc_conf(&kept), step),
        "GC was not killed at {step}"
    );
    let new: Vec<String> = (0..n).map(|i| format!("ctr-new{i}")).collect();
    let new_pods: Vec<NetNs> = (0..n).map(|i| node.pod(&format!("n{i}"))).collect();
    let mut live = kept.clone();
    for (cid, pod) in new.iter().zip(&new_pods) {
        let out = add_retrying(&node, cid, pod);
        match out.code() {
            0 => live.push(cid.clone()),
            // The pool may be full of addresses the dead GC did not free yet.
            100 => {}
            _ => panic!("ADD {cid} after GC died at {step}: {out:?}"),
        }
    }
    let pods: Vec<&NetNs> = old_pods.iter().chain(&new_pods).collect();
    assert_eq!(node.duplicates(&pods), Vec::<String>::new(), "after {step}");

    let out = node.cni("GC", "", None, &node.gc_conf(&live));
    assert!(out.ok, "GC after {step}: {out:?}");
    assert_eq!(node.allocations().len(), live.len(), "leak after {step}");
    assert_eq!(node.host_veths().len(), live.len(), "veths after {step}");
    assert_eq!(node.answering(&pods).len(), live.len());
}

#[test]
fn gc_killed_at_any_step_never_leaves_an_address_on_two_answering_interfaces() {
    for step in [
        "gc-cut-off:1",
        "gc-cut-off:4",
        "gc-freed",
        "gc-deleted:1",
        "gc-deleted:5",
    ] {
        gc_killed_at(step);
    }
}

#[test]
fn gc_and_del_killed_from_outside_never_leave_an_address_answering_twice() {
    // SIGKILL at spread-out moments, as a runtime's timeout would.
    for delay_ms in [2u64, 5, 9, 14, 20, 30, 45] {
        let mut node = Node::new("cni-gcsig", "10.244.33.0/28");
        let n = 8;
        let old: Vec<String> = (0..n).map(|i| format!("ctr-old{i}")).collect();
        let old_pods: Vec<NetNs> = (0..n).map(|i| node.pod(&format!("o{i}"))).collect();
        add_all(&node, &old, &old_pods, n);
        let kept = old[..2].to_vec();
        let mut gc = node.spawn("GC", "", None, &node.gc_conf(&kept));
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = gc.kill();
        let _ = gc.wait();
        let new: Vec<String> = (0..n).map(|i| format!("ctr-new{i}")).collect();
        let new_pods: Vec<NetNs> = (0..n).map(|i| node.pod(&format!("n{i}"))).collect();
        let mut live = kept.clone();
        for (cid, pod) in new.iter().zip(&new_pods) {
            let out = add_retrying(&node, cid, pod);
            if out.ok {
                live.push(cid.clone());
            }
        }
        let pods: Vec<&NetNs> = old_pods.iter().chain(&new_pods).collect();
        assert_eq!(
            node.duplicates(&pods),
            Vec::<String>::new(),
            "GC killed after {delay_ms} ms"
        );
        let out = node.cni("GC", "", None, &node.gc_conf(&live));
        assert!(out.ok, "{out:?}");
        assert_eq!(node.allocations().len(), live.len());
        assert_eq!(node.host_veths().len(), live.len());
    }
}

#[test]
fn del_killed_at_any_step_never_leaves_an_address_answering_twice() {
    for step in ["del-cut-off", "del-freed"] {
        let mut node = Node::new("cni-delkill", "10.244.34.0/29");
        // A /29 has five pod addresses: fill it, so the next pod reuses the freed one.
        let cids: Vec<String> = (0..5).map(|i| format!("ctr-{i}")).collect();
        let pods: Vec<NetNs> = (0..5).map(|i| node.pod(&format!("p{i}"))).collect();
        add_all(&node, &cids, &pods, 5);
        assert!(
            node.cni_crashing(
                "DEL",
                &cids[0],
                Some(pods[0].path()),
                &node.conf("1.1.0"),
                step
            ),
            "DEL was not killed at {step}"
        );
        let extra = node.pod("extra");
        let out = add_retrying(&node, "ctr-extra", &extra);
        assert!(out.ok || out.code() == 100, "{out:?}");
        let all: Vec<&NetNs> = pods.iter().chain([&extra]).collect();
        assert_eq!(node.duplicates(&all), Vec::<String>::new(), "after {step}");
        // The runtime retries the DEL; it finishes.
        let out = node.cni("DEL", &cids[0], Some(pods[0].path()), &node.conf("1.1.0"));
        assert!(out.ok, "{out:?}");
        assert_eq!(node.duplicates(&all), Vec::<String>::new(), "after {step}");
    }
}

#[test]
fn a_repeated_add_returns_the_same_result_and_changes_nothing() {
    let mut node = Node::new("cni-again", "10.244.35.0/24");
    let a = node.pod("a");
    let b = node.pod("b");
    let first = node.add("ctr-r", &a);
    let ifindex = |ns: &NetNs, name: &str| {
        Netlink::open_in(ns)
            .expect("netlink")
            .link_by_name(name)
            .expect("lookup")
            .map(|l| l.index)
    };
    let host_name = first["interfaces"][1]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let before = (ifindex(&a, "eth0"), ifindex(&node.ns, &host_name));
    assert!(before.0.is_some() && before.1.is_some());

    let again = node.add("ctr-r", &a);
    assert_eq!(again, first);
    assert_eq!((ifindex(&a, "eth0"), ifindex(&node.ns, &host_name)), before);
    // In the version asked for.
    let old = node.cni("ADD", "ctr-r", Some(a.path()), &node.conf("0.4.0"));
    assert!(old.ok, "{old:?}");
    assert_eq!(old.json["ips"][0]["version"], "4");
    assert_eq!(old.json["ips"][0]["address"], first["ips"][0]["address"]);

    let moved = node.cni("ADD", "ctr-r", Some(b.path()), &node.conf("1.1.0"));
    assert_eq!((moved.ok, moved.code()), (false, 4), "{moved:?}");
    assert!(moved.msg().contains("already attached"), "{}", moved.msg());
    assert_eq!(
        ifindex(&b, "eth0"),
        None,
        "nothing was made in the other namespace"
    );
    assert_eq!((ifindex(&a, "eth0"), ifindex(&node.ns, &host_name)), before);

    // A pool written by the previous release (no namespace recorded) behaves the same:
    // the pod end in the namespace given must be the host veth's peer.
    let pool = node.pool_file();
    let mut v: Value = serde_json::from_slice(&std::fs::read(&pool).expect("read")).expect("json");
    for (_, alloc) in v["allocations"].as_object_mut().expect("allocations") {
        alloc.as_object_mut().expect("object").remove("netns");
    }
    std::fs::write(&pool, v.to_string()).expect("write");
    assert_eq!(node.add("ctr-r", &a), first);
    let moved = node.cni("ADD", "ctr-r", Some(b.path()), &node.conf("1.1.0"));
    assert_eq!(moved.code(), 4, "{moved:?}");
    assert_eq!((ifindex(&a, "eth0"), ifindex(&node.ns, &host_name)), before);

    // After DEL the container may be added anywhere.
    assert!(
        node.cni("DEL", "ctr-r", Some(a.path()), &node.conf("1.1.0"))
            .ok
    );
    let out = node.cni("ADD", "ctr-r", Some(b.path()), &node.conf("1.1.0"));
    assert!(out.ok, "{out:?}");
}

#[test]
fn a_stuck_lock_holder_gets_try_again_later_not_a_hang() {
    let mut node = Node::new("cni-stuck", "10.244.36.0/24");
    let pod = node.pod("p");
    let result = node.add("ctr-s", &pod);
    let lock = node.pool_file().with_file_name("lock");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock)
        .expect("open lock");
    let _held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .expect("hold the IPAM lock");

    let mut check = node.conf("1.1.0");
    check["prevResult"] = result;
    let fast = [(LOCK_TIMEOUT_MS, "300")];
    let other = node.pod("q");
    let mut longest = Duration::ZERO;
    // DEL last: it cuts the pod off before it waits for the lock.
    for (verb, cid, netns, conf, code) in [
        ("ADD", "ctr-new", Some(other.path()), node.conf("1.1.0"), 11),
        ("CHECK", "ctr-s", Some(pod.path()), check, 11),
        ("GC", "", None, node.gc_conf(&["ctr-s".into()]), 11),
        ("STATUS", "", None, node.conf("1.1.0"), 50),
        ("DEL", "ctr-s", Some(pod.path()), node.conf("1.1.0"), 11),
    ] {
        let started = Instant::now();
        let out = node
            .cni_within(Duration::from_secs(5), verb, cid, netns, &conf, &fast)
            .unwrap_or_else(|| panic!("{verb} hung on the held lock (killed after 5 s)"));
        longest = longest.max(started.elapsed());
        assert_eq!((out.ok, out.code()), (false, code), "{verb}: {out:?}");
        assert!(
            out.msg().contains(&lock.display().to_string())
                && out.msg().contains(&format!("pid {}", std::process::id())),
            "{verb}: {}",
            out.msg()
        );
    }
    assert!(
        longest < Duration::from_secs(2),
        "a call waited {longest:?}"
    );
    eprintln!("longest wait on a held lock (bound 300 ms): {longest:?}");
}

/// A small deterministic generator, so a failing storm can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn a_storm_of_adds_dels_and_gcs_with_kills_gives_nothing_twice_and_leaks_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let mut node = Node::new("cni-storm", "10.244.37.0/27");
    let conf = node.conf("1.1.0");
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    // The runtime's view.
    let mut live: Vec<(String, NetNs)> = Vec::new();
    let mut deleting: Vec<(String, NetNs)> = Vec::new();
    let mut retired: Vec<NetNs> = Vec::new();
    let (mut calls, mut kills, mut gc_kills, mut next_id) = (0, 0, 0, 0);
    let mut longest = Duration::ZERO;
    for round in 0..30 {
        // A batch in flight at once: ADDs and DELs, or a GC with DELs (a runtime does not
        // run GC while it adds pods GC does not know of yet).
        let gc_round = round % 3 == 2;
        let mut batch = Vec::new();
        if gc_round {
            let mut valid: Vec<String> = live.iter().map(|(c, _)| c.clone()).collect();
            valid.extend(deleting.iter().map(|(c, _)| c.clone()));
            batch.push(("GC".to_string(), None, node.gc_conf(&valid)));
        }
        for _ in 0..if gc_round { 2 } else { 6 } {
            let del = gc_round || (!live.is_empty() && rng.below(3) == 0);
            if del && !(live.is_empty() && deleting.is_empty()) {
                let pick = if !deleting.is_empty() && rng.below(2) == 0 {
                    deleting.remove(rng.below(deleting.len() as u64) as usize)
                } else if !live.is_empty() {
                    live.remove(rng.below(live.len() as u64) as usize)
                } else {
                    continue;
                };
                batch.push(("DEL".to_string(), Some(pick), conf.clone()));
            } else if !gc_round {
                let cid = format!("ctr-{next_id}");
                let ns = node.pod(&format!("s{next_id}"));
                next_id += 1;
                batch.push(("ADD".to_string(), Some((cid, ns)), conf.clone()));
            }
        }
        let children: Vec<_> = batch
            .iter()
            .map(|(verb, pod, conf)| {
                let (cid, path) = pod
                    .as_ref()
                    .map(|(c, ns)| (c.as_str(), Some(ns.path())))
                    .unwrap_or(("", None));
                // GC is killed more often: its passes are what is being tested.
                let (odds, within) = if verb == "GC" { (7, 8) } else { (3, 25) };
                let kill_after = (rng.below(10) < odds).then(|| rng.below(within));
                (
                    node.spawn(verb, cid, path, conf),
                    Instant::now(),
                    kill_after,
                )
            })
            .collect();
        for ((verb, pod, _), (mut child, started, kill_after)) in batch.into_iter().zip(children) {
            calls += 1;
            if let Some(ms) = kill_after {
                let left = Duration::from_millis(ms).saturating_sub(started.elapsed());
                std::thread::sleep(left);
                let _ = child.kill();
            }
            let out = child.wait_with_output().expect("wait");
            let killed = out.status.signal() == Some(9);
            if killed {
                kills += 1;
                gc_kills += usize::from(verb == "GC");
            } else {
                longest = longest.max(started.elapsed());
            }
            let ok = out.status.success();
            match (verb.as_str(), pod) {
                ("ADD", Some(p)) if ok => live.push(p),
                // A failed or killed ADD: the runtime gives the sandbox up; GC cleans it.
                ("ADD", Some((_, ns))) => retired.push(ns),
                ("DEL", Some((_, ns))) if ok => retired.push(ns),
                // Retried later.
                ("DEL", Some(p)) => deleting.push(p),
                _ => {}
            }
        }
        let pods: Vec<&NetNs> = live
            .iter()
            .chain(&deleting)
            .map(|(_, ns)| ns)
            .chain(&retired)
            .collect();
        assert_eq!(
            node.duplicates(&pods),
            Vec::<String>::new(),
            "round {round}"
        );
    }
    // The runtime finishes its DELs and runs GC once more.
    for (cid, ns) in deleting.drain(..) {
        let out = node.cni("DEL", &cid, Some(ns.path()), &conf);
        assert!(out.ok, "{out:?}");
        retired.push(ns);
    }
    let valid: Vec<String> = live.iter().map(|(c, _)| c.clone()).collect();
    let out = node.cni("GC", "", None, &node.gc_conf(&valid));
    assert!(out.ok, "{out:?}");
    let pods: Vec<&NetNs> = live.iter().map(|(_, ns)| ns).chain(&retired).collect();
    let dups = node.duplicates(&pods);
    let leaked = node.allocations().len() as i64 - live.len() as i64;
    node.assert_host_veths_gone_but(live.len());
    assert_eq!(dups, Vec::<String>::new());
    assert_eq!(leaked, 0, "allocations beyond the live pods");
    assert_eq!(
        node.answering(&pods).len(),
        live.len(),
        "a live pod lost its address"
    );
    eprintln!(
        "storm: {calls} calls, {kills} killed ({gc_kills} GC), {} duplicates, {leaked} leaked, {} live at the end, longest call (start to reaped, an upper bound) {longest:?}",
        dups.len(),
        live.len()
    );
}
