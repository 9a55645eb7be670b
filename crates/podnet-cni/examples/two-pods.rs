//! Until the lab exists: podnet-cni on a node namespace and two pod namespaces, run the
//! way a container runtime runs it, then a TCP exchange between the pods showing the
//! source address the server saw. Everything it makes is removed at the end.

use std::io::Write;
use std::process::{Command, Stdio};

use podnet_testkit::{in_netns, tcp_ask_source, tcp_echo_source, Fixture};
use serde_json::{json, Value};

fn main() {
    let plugin = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("podnet-cni")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| {
            eprintln!("podnet-cni is not built next to this example; run `cargo build --release --bins --examples`");
            std::process::exit(1);
        });
    let mut fx = Fixture::new("demo");
    let node = fx.netns("node");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "podnet", "type": "podnet-cni", "bridge": "podnet0",
        "subnet": "10.244.1.0/24", "mtu": 1450,
        "dataDir": fx.dir().join("ipam"), "nodeConfig": fx.dir().join("node.json"),
    });
    let cni = |verb: &str, cid: &str, netns: &std::path::Path| -> Value {
        let mut cmd = Command::new(&plugin);
        cmd.env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = in_netns(&mut cmd, &node).spawn().expect("run podnet-cni");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.to_string().as_bytes())
                .expect("write config");
        }
        let out = child.wait_with_output().expect("wait for podnet-cni");
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            eprintln!("{verb} {cid} failed: {text}");
            std::process::exit(1);
        }
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };

    println!(
        "node namespace {}: bridge podnet0, pod subnet 10.244.1.0/24\n",
        node.path().display()
    );
    let pods: Vec<_> = ["web", "client"]
        .iter()
        .map(|n| (n.to_string(), fx.netns(n)))
        .collect();
    println!(
        "{:<8} {:<16} {:<18} {:<16} NAMESPACE",
        "POD", "IP", "MAC", "HOST VETH"
    );
    let mut ips = Vec::new();
    for (name, ns) in &pods {
        let r = cni("ADD", name, ns.path());
        let ip = r["ips"][0]["address"].as_str().unwrap_or("?").to_string();
        println!(
            "{:<8} {:<16} {:<18} {:<16} {}",
            name,
            ip,
            r["interfaces"][2]["mac"].as_str().unwrap_or("?"),
            r["interfaces"][1]["name"].as_str().unwrap_or("?"),
            ns.path().display()
        );
        ips.push(ip.split('/').next().unwrap_or_default().to_string());
    }
    let server = tcp_echo_source(
        &pods[0].1,
        format!("{}:8080", ips[0]).parse().expect("address"),
    );
    match tcp_ask_source(&pods[1].1, server) {
        Ok(seen) => println!(
            "\nclient ({}) -> web {server}: the server saw the connection come from {seen}{}",
            ips[1],
            if seen == ips[1] {
                " (its real pod IP: no NAT)"
            } else {
                " (NAT!)"
            }
        ),
        Err(e) => println!("\nclient -> web {server} failed: {e}"),
    }
    for (name, ns) in &pods {
        cni("DEL", name, ns.path());
    }
    println!("\nDEL done for both pods; removing the namespaces.");
}
