//! podnet-cni side by side with the reference `bridge` + `host-local` plugins, both driven
//! through libcni in the same run: 200 pods added one after another and then deleted, and
//! the same with 16 operations in flight. Prints p50 and p99 per verb and podnet's ratio to
//! the reference. Run as root: `cargo bench -p podnet-cni --bench cni`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Stdio;

use common::{libcni_command, Node};
use podnet_testkit::in_netns;
use serde_json::{json, Value};

const PODS: usize = 200;

struct Run {
    add: Vec<f64>,
    del: Vec<f64>,
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

fn bench(node: &Node, conflist: &Path, netns_file: &Path, parallel: usize, tag: &str) -> Run {
    let mut cmd = libcni_command(node, conflist, &format!("cache-{tag}"));
    cmd.arg("bench")
        .arg("-netns-file")
        .arg(netns_file)
        .arg("-parallel")
        .arg(parallel.to_string())
        .arg("-id-prefix")
        .arg(tag)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let out = in_netns(&mut cmd, &node.ns)
        .output()
        .expect("run the libcni client");
    let v: Value = serde_json::from_slice(&out.stdout).expect("bench output is JSON");
    let errors = v["errors"].as_array().map(Vec::len).unwrap_or(0);
    assert!(
        out.status.success() && errors == 0,
        "{tag}: {}",
        v["errors"]
    );
    let ms = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .expect("durations")
            .iter()
            .filter_map(Value::as_f64)
            .collect()
    };
    Run {
        add: ms("add_ms"),
        del: ms("del_ms"),
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let mut podnet_node = Node::new("bench-podnet", "10.251.0.0/24");
    let ref_node = Node::new("bench-ref", "10.250.0.0/24");
    eprintln!("creating {PODS} pod namespaces...");
    let pods: Vec<_> = (0..PODS)
        .map(|i| podnet_node.pod(&format!("p{i}")))
        .collect();
    let netns_file = podnet_node.fx.dir().join("netns.txt");
    let list: Vec<String> = pods
        .iter()
        .map(|p| p.path().display().to_string())
        .collect();
    std::fs::write(&netns_file, list.join("\n")).expect("write netns list");

    let dir = podnet_node.fx.dir().to_path_buf();
    let podnet = dir.join("podnet.conflist");
    std::fs::write(
        &podnet,
        json!({"cniVersion": "1.0.0", "name": "podnet-bench", "plugins": [{
            "type": "podnet-cni", "bridge": "podnet0", "subnet": "10.251.0.0/24", "mtu": 1450,
            "dataDir": dir.join("podnet-ipam"), "nodeConfig": dir.join("node.json")}]})
        .to_string(),
    )
    .expect("write conflist");
    let reference = dir.join("reference.conflist");
    std::fs::write(
        &reference,
        json!({"cniVersion": "1.0.0", "name": "ref-bench", "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": true, "hairpinMode": true, "mtu": 1450,
            "ipam": {"type": "host-local", "subnet": "10.250.0.0/24", "dataDir": dir.join("ref-ipam")}}]})
        .to_string(),
    )
    .expect("write conflist");

    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>9}",
        "plugin (in flight)", "ADD p50", "ADD p99", "DEL p50", "DEL p99"
    );
    let mut ratios = Vec::new();
    for parallel in [1, 16] {
        // Warm both (page cache, first bridge creation) before measuring.
        bench(&ref_node, &reference, &netns_file, parallel, "warm-ref");
        bench(&podnet_node, &podnet, &netns_file, parallel, "warm-podnet");
        let r = bench(&ref_node, &reference, &netns_file, parallel, "ref");
        let p = bench(&podnet_node, &podnet, &netns_file, parallel, "podnet");
        for (name, run) in [("bridge+host-local", &r), ("podnet-cni", &p)] {
            println!(
                "{:<26} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>7.2}ms",
                format!("{name} ({parallel})"),
                percentile(&run.add, 50.0),
                percentile(&run.add, 99.0),
                percentile(&run.del, 50.0),
                percentile(&run.del, 99.0)
            );
        }
        let ratio = |f: fn(&Run) -> &Vec<f64>, q: f64| percentile(f(&p), q) / percentile(f(&r), q);
        let row = [
            ratio(|r| &r.add, 50.0),
            ratio(|r| &r.add, 99.0),
            ratio(|r| &r.del, 50.0),
            ratio(|r| &r.del, 99.0),
        ];
        println!(
            "{:<26} {:>8.2}x {:>8.2}x {:>8.2}x {:>8.2}x",
            format!("ratio podnet/ref ({parallel})"),
            row[0],
            row[1],
            row[2],
            row[3]
        );
        ratios.push((parallel, row));
    }
    println!("\ntargets: p50 <= 0.5x, p99 <= 1.0x the reference, for ADD and DEL");
    for (parallel, row) in ratios {
        let ok = row[0] <= 0.5 && row[1] <= 1.0 && row[2] <= 0.5 && row[3] <= 1.0;
        println!(
            "  {parallel:>2} in flight: {}",
            if ok { "met" } else { "NOT met" }
        );
    }
}
