//! Changes made to podnet's nftables table behind the agent's back (as a person or
//! another program would make them, with `nft` in the node) are repaired within a
//! second, the agent says what it repaired, counts it, and the Service works again;
//! while it cannot repair them, `/readyz` says what differs. On a lab; run as root.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, Lab};
use podnet_kernel::NetNs;
use serde_json::Value;

/// Two probe servers behind Service `web` and a client pod, all on node-1.
const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        command: [podnet, probe, serve, --http, "8080"]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-1
  containers: [{name: c, command: [sleep, infinity]}]
"#;

/// A repair must be done within this; the agent is told at once by the kernel.
const REPAIR: Duration = Duration::from_secs(1);

struct Node {
    ns: NetNs,
}

impl Node {
    fn open(lab: &Lab) -> Node {
        let ns = NetNs::open_named(&format!("pnlab_{}_node-1", lab.name)).expect("node-1");
        Node { ns }
    }

    /// `nft ARGS` in the node, as a person would run it there.
    fn nft(&self, args: &[&str]) -> String {
        let out = podnet_testkit::in_netns(Command::new("nft").args(args), &self.ns)
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The handle of the rule of `chain` whose text contains `text`.
    fn handle(&self, chain: &str, text: &str) -> String {
        let listing = self.nft(&["-a", "list", "chain", "inet", "podnet", chain]);
        listing
            .lines()
            .find(|l| l.contains(text))
            .and_then(|l| l.split("# handle ").nth(1))
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|| panic!("no rule with {text:?} in {chain}:\n{listing}"))
    }

    /// The table as `nft list` shows it: rules (without handles, and anonymous sets
    /// written out, whatever the kernel named them) and elements.
    fn table(&self) -> String {
        self.nft(&["list", "table", "inet", "podnet"])
    }

    /// GET on the agent's health server, in the node: (status, body).
    fn health(&self, path: &str) -> (u16, String) {
        let path = path.to_string();
        self.ns
            .run(move || -> std::io::Result<(u16, String)> {
                let addr = "127.0.0.1:9099".parse().map_err(std::io::Error::other)?;
                let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                write!(
                    c,
                    "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )?;
                let mut out = String::new();
                c.read_to_string(&mut out)?;
                let code = out
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
                Ok((code, body))
            })
            .expect("enter node-1")
            .expect("the agent's health server")
    }

    fn repairs(&self, kind: &str) -> u64 {
        let (_, metrics) = self.health("/metrics");
        let line = format!("podnet_nftables_repairs_total{{kind=\"{kind}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in the agent's metrics:\n{metrics}"))
    }
}

/// Whether 10 GETs from the client through the Service all succeed.
fn service_works(lab: &Lab, ip: &str) -> bool {
    let out = lab.exec(
        "client",
        &[
            "podnet",
            "probe",
            "get",
            &format!("http://{ip}/hostname"),
            "-c",
            "10",
            "--timeout",
            "1s",
            "-o",
            "json",
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["failed"].as_u64() == Some(0) && v["answered"].as_u64() == Some(10)
}

fn log(lab: &Lab) -> String {
    std::fs::read_to_string(lab.dir().join("nodes/node-1/agent.log")).unwrap_or_default()
}

#[test]
fn drift_is_repaired_within_a_second_and_unready_while_it_cannot_be() {
    let lab = Lab::up(1, &[]);
    lab.apply(APP);
    lab.wait_ready("deployment/web", "30s");
    lab.wait_ready("pod/client", "30s");
    let ip = lab.cluster_ip("web");
    assert!(
        eventually(Duration::from_secs(5), || service_works(&lab, &ip)
            .then_some(()))
        .is_some(),
        "the Service does not work to begin with"
    );
    let node = Node::open(&lab);
    // The agent's own changes (the table, the Service's elements and load-balancing
    // chain) are not drift.
    for kind in ["table", "chain", "rule", "set", "element"] {
        assert_eq!(node.repairs(kind), 0, "{kind} repairs before any drift");
    }
    let good = node.table();
    assert!(
        good.contains(&format!("{ip} . tcp . 80 : goto lb-2")),
        "{good}"
    );

    let element = format!("{{ {ip} . tcp . 80 }}");
    let vmap = "vmap @service-ips";
    let cases: [(&str, &str, Vec<String>, &str); 4] = [
        (
            "a flushed chain",
            "rule",
            ["flush", "chain", "inet", "podnet", "services"]
                .map(String::from)
                .to_vec(),
            "chain services: 0 rules where podnet wrote 3",
        ),
        (
            "a deleted map element",
            "element",
            [
                "delete",
                "element",
                "inet",
                "podnet",
                "service-ips",
                &element,
            ]
            .map(String::from)
            .to_vec(),
            &format!("service-ips: 1 element missing ({ip} . tcp . 80 : goto lb-2)"),
        ),
        (
            "a deleted rule",
            "rule",
            Vec::new(),
            "chain services: 2 rules where podnet wrote 3",
        ),
        (
            "a changed rule",
            "rule",
            Vec::new(),
            "chain services: rule 1",
        ),
    ];
    let mut times = Vec::new();
    for (what, kind, args, said) in cases {
        let args = match what {
            "a deleted rule" => {
                let h = node.handle("services", vmap);
                ["delete", "rule", "inet", "podnet", "services", "handle", &h]
                    .map(String::from)
                    .to_vec()
            }
            // Service traffic is accepted before it is translated: every Service is dead.
            "a changed rule" => {
                let h = node.handle("services", vmap);
                [
                    "replace", "rule", "inet", "podnet", "services", "handle", &h, "meta",
                    "l4proto", "tcp", "accept",
                ]
                .map(String::from)
                .to_vec()
            }
            _ => args,
        };
        let repairs = node.repairs(kind);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        node.nft(&args);
        let changed = Instant::now();
        // What the change did is there until the agent repairs it.
        let broken = node.table() != good;
        assert!(broken, "{what}: nft changed nothing");
        // Polled finely: this is the figure the test reports.
        let mut repaired = None;
        while repaired.is_none() && changed.elapsed() < 2 * REPAIR {
            if node.table() == good {
                repaired = Some(changed.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let took = repaired.unwrap_or_else(|| {
            panic!(
                "{what}: not repaired within {:?}; node-1's agent log:\n{}",
                2 * REPAIR,
                log(&lab)
            )
        });
        times.push((what, took));
        assert!(
            took < REPAIR,
            "{what}: repaired in {took:?}, more than {REPAIR:?}"
        );
        assert!(
            eventually(Duration::from_secs(2), || service_works(&lab, &ip)
                .then_some(()))
            .is_some(),
            "{what}: the Service does not work after the repair"
        );
        assert_eq!(node.repairs(kind), repairs + 1, "{what}: {kind} repairs");
        let log = log(&lab);
        assert!(
            log.lines()
                .any(|l| l.contains("differs from what podnet wrote") && l.contains(said)),
            "{what}: the agent did not say {said:?}:\n{log}"
        );
        assert_eq!(
            node.health("/readyz"),
            (200, "ok\n".into()),
            "{what}: ready"
        );
    }

    // Someone takes the table over: an owned table only the process that made it may
    // change, gone when that process ends. Repairing fails, and /readyz says what differs,
    // until they let go.
    let mut holder = podnet_testkit::in_netns(Command::new("nft").arg("-i"), &node.ns)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run nft -i");
    let mut stdin = holder.stdin.take().expect("nft's stdin");
    writeln!(
        stdin,
        "delete table inet podnet; add table inet podnet {{ flags owner; }}"
    )
    .expect("take the table over");
    let table_repairs = node.repairs("chain");
    let unready = eventually(Duration::from_secs(3), || {
        let (code, why) = node.health("/readyz");
        (code == 503).then_some(why)
    });
    let why = unready.unwrap_or_else(|| panic!("still ready; agent log:\n{}", log(&lab)));
    assert!(
        why.contains("podnet's nftables table differs from what podnet wrote: chains of podnet's nftables table are gone (")
            && why.contains("repairing it failed"),
        "/readyz: {why}"
    );
    assert!(
        !service_works(&lab, &ip),
        "the Service works without its rules"
    );
    drop(stdin);
    let _ = holder.wait();
    let ready = eventually(Duration::from_secs(3), || {
        (node.health("/readyz").0 == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "not ready after the table was let go: {:?}; agent log:\n{}",
        node.health("/readyz"),
        log(&lab)
    );
    assert_eq!(node.table(), good, "the table is podnet's again");
    assert!(service_works(&lab, &ip), "the Service works again");
    assert_eq!(
        node.repairs("chain"),
        table_repairs + 1,
        "counted once repaired"
    );

    for (what, took) in times {
        eprintln!("{what}: repaired in {took:?}");
    }
    for line in log(&lab).lines().filter(|l| l.contains("differs from")) {
        eprintln!("{line}");
    }
}
