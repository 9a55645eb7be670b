//! `podnet agent --source kubernetes` against the HTTP a kube-apiserver sends (lists,
//! watches with bookmarks, `410 Gone`, dropped connections, an unreachable server),
//! replayed by podnet-testkit's fake API server with objects shaped as the Kubernetes
//! API reference shows them. The agent runs as the real binary inside a namespace the
//! test made (the node), with the fake server on that namespace's loopback; the test
//! checks the routes, VXLAN entries and Service rules it programs there, its health
//! endpoints and CNI config, its Node annotations, and that it calls nothing the
//! DaemonSet's ClusterRole does not grant.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podnet_agent::source::kubernetes::API_CALLS;
use podnet_kernel::netlink::Netlink;
use podnet_kernel::NetNs;
use podnet_testkit::apiserver::FakeApiServer;
use podnet_testkit::{in_netns, Fixture};
use serde_json::{json, Value};

const PODNET: &str = env!("CARGO_BIN_EXE_podnet");
const ROUTE_PROTOCOL: u8 = 112;

/// Kills the agent before the fixture removes its namespace.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How to start an agent: through `wrapper` (a command that ends by running its
/// arguments), with its kubeconfig naming `server` instead of the fake API server, and
/// extra `args`.
#[derive(Default)]
struct AgentOpts<'a> {
    wrapper: &'a [&'a str],
    server: Option<&'a str>,
    args: &'a [&'a str],
}

/// One node (a namespace with an underlay interface), its agent and the API server.
/// Fields drop in order: agent, then server, then the namespace.
struct Node {
    agent: Option<Agent>,
    api: FakeApiServer,
    ns: NetNs,
    dir: PathBuf,
    fx: Fixture,
}

fn run_in(ns: &NetNs, args: &[&str]) -> String {
    let out = in_netns(Command::new(args[0]).args(&args[1..]), ns)
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn node_object(name: &str, ip: &str, cidr: Option<&str>) -> Value {
    let mut spec = json!({"providerID": format!("kind://docker/kind/{name}")});
    if let Some(c) = cidr {
        spec["podCIDR"] = json!(c);
        spec["podCIDRs"] = json!([c]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock"}
        },
        "spec": spec,
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name}
            ],
            "capacity": {"cpu": "2", "memory": "24573604Ki", "pods": "110"},
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": "2026-11-26T10:00:00Z",
                "lastTransitionTime": "2026-11-26T09:00:00Z"
            }],
            "nodeInfo": {
                "architecture": "amd64", "bootID": "3e3a2c5e-0b6a-4f7b-9d7e-1c2b3a4d5e6f",
                "containerRuntimeVersion": "containerd://1.7.24", "kernelVersion": "6.18.0",
                "kubeProxyVersion": "", "kubeletVersion": "v1.34.1",
                "machineID": "0123456789abcdef0123456789abcdef", "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": "0123456789abcdef0123456789abcdef"
            }
        }
    })
}

fn service_object(name: &str, cluster_ip: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "None",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080}]
        },
        "status": {"loadBalancer": {}}
    })
}

fn slice_object(service: &str, endpoints: &[(&str, &str, bool)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, node, ready)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("{service}-{ip}")}
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-x7k2p"),
            "namespace": "default",
            "generateName": format!("{service}-"),
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            },
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service,
                "uid": "6b1f3d0e-2c4a-4e8b-9f1a-0a1b2c3d4e5f", "controller": true, "blockOwnerDeletion": true}]
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

impl Node {
    fn new(label: &str) -> Node {
        let mut fx = Fixture::new(label);
        let ns = fx.netns("node1");
        let dir = fx.dir().to_path_buf();
        run_in(&ns, &["ip", "link", "set", "lo", "up"]);
        run_in(
            &ns,
            &[
                "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "wire0",
            ],
        );
        run_in(&ns, &["ip", "addr", "add", "192.0.2.11/24", "dev", "eth0"]);
        run_in(&ns, &["ip", "link", "set", "eth0", "up"]);
        run_in(&ns, &["ip", "link", "set", "wire0", "up"]);
        let api = FakeApiServer::start_in(&ns);
        Node {
            agent: None,
            api,
            ns,
            dir,
            fx,
        }
    }

    fn start_agent(&mut self, backend: &str) {
        self.start_agent_with(backend, AgentOpts::default());
    }

    fn start_agent_with(&mut self, backend: &str, opts: AgentOpts<'_>) {
        let AgentOpts {
            wrapper,
            server,
            args,
        } = opts;
        if let Some(mut old) = self.agent.take() {
            let _ = old.0.kill();
            let _ = old.0.wait();
        }
        let kubeconfig = self.dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: podnet\n  user:\n    token: not-a-secret\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: podnet\ncurrent-context: fake\n",
                server.map_or_else(|| self.api.url(), str::to_string)
            ),
        )
        .expect("write kubeconfig");
        let config = self.dir.join("config.yaml");
        std::fs::write(
            &config,
            format!("backend: {backend}\nclusterCIDR: 10.244.0.0/16\nserviceCIDR: 10.96.0.0/12\nmtu:\nvni: 1\n"),
        )
        .expect("write config");
        let log = std::fs::File::create(self.dir.join("agent.log")).expect("agent log");
        let d = |p: &str| self.dir.join(p).display().to_string();
        let (program, before) = match wrapper.split_first() {
            Some((first, rest)) => (*first, [rest, &[PODNET]].concat()),
            None => (PODNET, vec![]),
        };
        let child = in_netns(
            Command::new(program)
                .args(before)
                .args([
                    "agent",
                    "--source",
                    "kubernetes",
                    "--kubeconfig",
                    &d("kubeconfig"),
                    "--node",
                    "node-1",
                    "--config",
                    &d("config.yaml"),
                    "--health-addr",
                    "127.0.0.1:9099",
                    "--cni-conf-dir",
                    &d("net.d"),
                    "--node-file",
                    &d("node.json"),
                    "--ipam-dir",
                    &d("ipam"),
                    "--state-dir",
                    &d(""),
                ])
                .args(args),
            &self.ns,
        )
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the agent");
        self.agent = Some(Agent(child));
    }

    /// How many LISTs the API server has answered (a watcher lists on start and after
    /// 410 Gone).
    fn lists(&self) -> usize {
        self.api
            .requests()
            .iter()
            .filter(|r| r.verb_and_resource().is_some_and(|v| v.2 == "list"))
            .count()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// GET on the agent's health server, from inside the node.
    fn health(&self, path: &str) -> Option<(u16, String)> {
        self.get_from("127.0.0.1:9099", path)
    }

    /// GET `path` on `addr`, from inside the node.
    fn get_from(&self, addr: &str, path: &str) -> Option<(u16, String)> {
        let path = path.to_string();
        let addr = addr.to_string();
        self.ns
            .run(move || -> std::io::Result<(u16, String)> {
                let addr = addr.parse().map_err(std::io::Error::other)?;
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
            .ok()?
            .ok()
    }

    /// podnet's routes in the node: destination -> gateway.
    fn routes(&self) -> Vec<(String, String)> {
        let mut nl = Netlink::open_in(&self.ns).expect("netlink in the node");
        let mut r: Vec<(String, String)> = nl
            .routes()
            .expect("routes")
            .into_iter()
            .filter(|r| r.protocol == ROUTE_PROTOCOL)
            .map(|r| {
                (
                    r.destination.to_string(),
                    r.gateway.map(|g: IpAddr| g.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        r.sort();
        r
    }

    fn nft_map(&self, map: &str) -> String {
        let out = in_netns(
            Command::new("nft").args(["list", "map", "inet", "podnet", map]),
            &self.ns,
        )
        .output()
        .expect("run nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `verb` of the libcni client (Debian's libcni, as containerd 1.7 vendors it)
    /// with the conflist the agent wrote, in the node, for `pod`; returns whether it
    /// succeeded and what it printed.
    fn libcni(&self, verb: &str, pod: &NetNs, id: &str) -> (bool, String) {
        common::ensure_plugin_built();
        let client =
            podnet_testkit::libcni_client(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")));
        let plugin_dir = std::path::Path::new(PODNET)
            .parent()
            .expect("podnet's directory")
            .display()
            .to_string();
        let out = in_netns(
            Command::new(&client)
                .args(["-cni-path", &plugin_dir, "-conflist"])
                .arg(self.dir.join("net.d/10-podnet.conflist"))
                .arg("-cache-dir")
                .arg(self.dir.join("libcni-cache"))
                .args([verb, "-netns"])
                .arg(pod.path())
                .args(["-id", id]),
            &self.ns,
        )
        .output()
        .expect("run the libcni client");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// The agent's process.
    fn agent_child(&mut self) -> &mut Child {
        &mut self.agent.as_mut().expect("the agent runs").0
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Node) -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out after {timeout:?} waiting for: {what}\nagent log:\n{}",
            self.log()
        );
    }
}

fn has_route(n: &Node, dst: &str, via: &str) -> bool {
    n.routes().contains(&(dst.to_string(), via.to_string()))
}

#[test]
fn agent_follows_the_api_server_through_watches_gone_and_outages() {
    let mut n = Node::new("k8s");
    // node-1 is registered but has no pod CIDR yet (no --allocate-node-cidrs).
    n.api
        .apply("nodes", node_object("node-1", "192.0.2.11", None));
    n.api.apply(
        "nodes",
        node_object("node-2", "192.0.2.12", Some("10.244.2.0/24")),
    );
    n.start_agent("host-gw");

    // Not ready, and it says why, on /readyz and in the log; no CNI config yet.
    n.wait_for(
        "/readyz naming the missing pod CIDR",
        Duration::from_secs(20),
        |n| {
            n.health("/readyz")
                .is_some_and(|(code, body)| code == 503 && body.contains("no pod CIDR"))
        },
    );
    assert_eq!(n.health("/healthz").map(|h| h.0), Some(200));
    assert!(!n.dir.join("net.d/10-podnet.conflist").exists());
    assert!(n.log().contains("spec.podCIDRs"), "{}", n.log());

    // The controller-manager allocates node-1's CIDR: the node becomes ready.
    n.api.apply(
        "nodes",
        node_object("node-1", "192.0.2.11", Some("10.244.1.0/24")),
    );
    n.wait_for("the CNI config", Duration::from_secs(10), |n| {
        n.dir.join("net.d/10-podnet.conflist").exists()
    });
    let node_file = std::fs::read_to_string(n.dir.join("node.json")).expect("node file");
    assert!(node_file.contains("10.244.1.0/24"), "{node_file}");
    assert_eq!(n.health("/readyz").map(|h| h.0), Some(200));
    assert!(
        has_route(&n, "10.244.2.0/24", "192.0.2.12"),
        "{:?}",
        n.routes()
    );
    // It published its address on its Node object (a merge patch).
    n.wait_for("the node-ip annotation", Duration::from_secs(5), |n| {
        n.api.get("nodes", None, "node-1").is_some_and(|o| {
            o["metadata"]["annotations"]["podnet.io/node-ip"] == "192.0.2.11"
                && o["metadata"]["annotations"]["kubeadm.alpha.kubernetes.io/cri-socket"]
                    .is_string()
        })
    });

    // A Service and its EndpointSlice become rules.
    n.api
        .apply("services", service_object("web", "10.96.0.20", 80));
    n.api.apply(
        "endpointslices",
        slice_object(
            "web",
            &[
                ("10.244.2.5", "node-2", true),
                ("10.244.2.6", "node-2", false),
            ],
        ),
    );
    n.wait_for(
        "web's ClusterIP in service-ips",
        Duration::from_secs(5),
        |n| n.nft_map("service-ips").contains("10.96.0.20 . tcp . 80"),
    );
    n.wait_for("web's ready endpoint", Duration::from_secs(5), |n| {
        n.nft_map("ep-1").contains("10.244.2.5 . 8080")
    });
    assert!(
        !n.nft_map("ep-1").contains("10.244.2.6"),
        "a not-ready endpoint gets no traffic"
    );

    // Bookmarks change nothing.
    n.api.bookmark();

    // A dropped connection: the watchers reconnect and carry on from where they were.
    n.api.drop_watches();
    n.api.apply(
        "nodes",
        node_object("node-3", "192.0.2.13", Some("10.244.3.0/24")),
    );
    n.wait_for(
        "node-3's route after a dropped watch",
        Duration::from_secs(10),
        |n| has_route(n, "10.244.3.0/24", "192.0.2.13"),
    );
    n.api.apply(
        "endpointslices",
        slice_object(
            "web",
            &[
                ("10.244.2.5", "node-2", true),
                ("10.244.3.7", "node-3", true),
            ],
        ),
    );
    n.wait_for(
        "the new endpoint (one change, within a second)",
        Duration::from_secs(1),
        |n| n.nft_map("ep-2").contains("10.244.3.7 . 8080"),
    );

    // The API server goes away: the dataplane stays as it is, the agent stays alive.
    n.api.set_down(true);
    std::thread::sleep(Duration::from_secs(3));
    assert!(has_route(&n, "10.244.3.0/24", "192.0.2.13"));
    assert!(n.nft_map("service-ips").contains("10.96.0.20 . tcp . 80"));
    assert_eq!(n.health("/healthz").map(|h| h.0), Some(200));
    // Meanwhile node-3 leaves and web loses its endpoints, and the history is compacted:
    // the watchers' resource versions are gone (410), so they must list again.
    n.api.delete("nodes", None, "node-3");
    n.api.delete("endpointslices", Some("default"), "web-x7k2p");
    n.api.compact();
    let lists_before = n.lists();
    n.api.set_down(false);
    n.wait_for(
        "node-3's route gone after the relist",
        Duration::from_secs(30),
        |n| !n.routes().iter().any(|r| r.0 == "10.244.3.0/24"),
    );
    n.wait_for(
        "web without endpoints: rejected at once",
        Duration::from_secs(5),
        |n| !n.nft_map("service-ips").contains("10.96.0.20 . tcp . 80"),
    );
    let lists_after = n.lists();
    assert!(
        lists_after > lists_before,
        "410 Gone made the watchers list again"
    );
    assert!(has_route(&n, "10.244.2.0/24", "192.0.2.12"));

    // A relist that finds nothing new changes nothing in the kernel: while the server is
    // down only node-2's heartbeat changes, which the agent does not read.
    std::thread::sleep(Duration::from_millis(500));
    let log_before = n.log().len();
    n.api.set_down(true);
    let mut beat = node_object("node-2", "192.0.2.12", Some("10.244.2.0/24"));
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = json!("2026-11-26T10:00:40Z");
    n.api.apply("nodes", beat);
    n.api.compact();
    n.api.set_down(false);
    n.wait_for("another relist", Duration::from_secs(30), |n| {
        n.lists() >= lists_after + 3
    });
    std::thread::sleep(Duration::from_millis(1500));
    let since = n.log()[log_before..].to_string();
    assert!(
        !since.contains("applied"),
        "an unchanged relist applied something:\n{since}"
    );

    // Every call the agent made is one the ClusterRole grants (deploy.rs checks that the
    // ClusterRole grants exactly API_CALLS).
    let requests = n.api.requests();
    assert!(requests.iter().any(|r| r.method == "PATCH"));
    for r in &requests {
        let (group, resource, verb) = r
            .verb_and_resource()
            .unwrap_or_else(|| panic!("a call outside the API's resources: {r:?}"));
        assert!(
            API_CALLS.iter().any(|(g, res, verbs)| *g == group
                && *res == resource
                && verbs.contains(&verb.as_str())),
            "the agent called {verb} {group}/{resource} ({} {}?{}), which API_CALLS (and so the ClusterRole) does not grant",
            r.method,
            r.path,
            r.query
        );
    }
}

#[test]
fn vxlan_agent_publishes_its_vtep_and_tunnels_to_annotated_peers() {
    let mut n = Node::new("k8svx");
    n.api.apply(
        "nodes",
        node_object("node-1", "192.0.2.11", Some("10.244.1.0/24")),
    );
    let mut peer = node_object("node-2", "192.0.2.12", Some("10.244.2.0/24"));
    peer["metadata"]["annotations"]["podnet.io/vtep-mac"] = json!("0e:58:c0:00:02:0c");
    n.api.apply("nodes", peer);
    n.start_agent("vxlan");
    n.wait_for(
        "node-1's VTEP MAC on its Node",
        Duration::from_secs(20),
        |n| {
            n.api.get("nodes", None, "node-1").is_some_and(|o| {
                o["metadata"]["annotations"]["podnet.io/vtep-mac"] == "0e:58:c0:00:02:0b"
            })
        },
    );
    // Flannel's order: neighbour and FDB entries, then the on-link route via the VTEP.
    n.wait_for(
        "the route to node-2's pods through the tunnel",
        Duration::from_secs(10),
        |n| has_route(n, "10.244.2.0/24", "10.244.2.0"),
    );
    let fdb = run_in(&n.ns, &["bridge", "fdb", "show", "dev", "podnet.vxlan"]);
    assert!(
        fdb.contains("0e:58:c0:00:02:0c dst 192.0.2.12"),
        "FDB entry for node-2: {fdb}"
    );
    // The agent reads its entries back as it wrote them: later rounds (one a second)
    // find nothing to repair.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !n.log().contains("repaired"),
        "the agent keeps rewriting what it made:\n{}",
        n.log()
    );
    let neigh = run_in(&n.ns, &["ip", "neigh", "show", "dev", "podnet.vxlan"]);
    assert!(
        neigh.contains("10.244.2.0 lladdr 0e:58:c0:00:02:0c PERMANENT"),
        "{neigh}"
    );
    // Written once the whole sync (routes, then rules) is in.
    n.wait_for("the node file", Duration::from_secs(10), |n| {
        n.dir.join("node.json").exists()
    });
    let conflist = std::fs::read_to_string(n.dir.join("node.json")).expect("node file");
    assert!(
        conflist.contains("\"mtu\":1450"),
        "vxlan pod MTU: {conflist}"
    );
}

#[test]
fn install_cni_replaces_the_plugin_atomically() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let fx = Fixture::new("instcni");
    let bin = fx.dir().join("opt/cni/bin");
    let install = |from: &str| {
        Command::new(PODNET)
            .args(["install-cni", "--from", from, "--to"])
            .arg(&bin)
            .output()
            .expect("run podnet install-cni")
    };
    // Any executable stands for the plugin here; podnet itself is one.
    let out = install(PODNET);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugin = bin.join("podnet-cni");
    let first = std::fs::metadata(&plugin).expect("installed");
    assert_eq!(first.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read(&plugin).expect("read"),
        std::fs::read(PODNET).expect("read")
    );
    // Again: a new file renamed over the old one (a running plugin keeps its inode).
    let out = install(PODNET);
    assert!(out.status.success());
    let second = std::fs::metadata(&plugin).expect("installed");
    assert_ne!(
        first.ino(),
        second.ino(),
        "replaced by rename, not rewritten in place"
    );
    let names: Vec<_> = std::fs::read_dir(&bin)
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("podnet-cni")],
        "no temporary file left"
    );
    // Not a binary: refused, and the installed plugin is untouched.
    let text = fx.dir().join("not-a-plugin");
    std::fs::write(&text, "#!/bin/sh\n").expect("write");
    let out = install(&text.display().to_string());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an executable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&plugin).expect("still there").ino(),
        second.ino()
    );
}

/// containerd 1.7 vendors libcni 1.1.2, as Debian does: it knows results up to 1.0.0 and
/// fails every sandbox of a 1.1.0 conflist ("unsupported CNI result version"). The
/// conflist the agent really writes works through it.
#[test]
fn the_conflist_the_agent_writes_works_with_debian_libcni() {
    let mut n = Node::new("k8scni");
    n.api.apply(
        "nodes",
        node_object("node-1", "192.0.2.11", Some("10.244.1.0/24")),
    );
    n.start_agent("host-gw");
    n.wait_for("the CNI config", Duration::from_secs(20), |n| {
        n.dir.join("net.d/10-podnet.conflist").exists()
    });
    let pod = n.fx.netns("pod");
    let libcni = |verb: &str| n.libcni(verb, &pod, "ctr-agent-conflist");
    let (ok, add) = libcni("add");
    assert!(ok, "ADD through libcni with the agent's conflist: {add}");
    let result: Value = serde_json::from_str(&add).expect("the ADD result is JSON");
    assert_eq!(result["cniVersion"], "1.0.0", "{add}");
    let ip = result["ips"][0]["address"].as_str().unwrap_or_default();
    assert!(
        ip.starts_with("10.244.1."),
        "an address of the node's pod CIDR: {add}"
    );
    let (ok, del) = libcni("del");
    assert!(ok, "DEL through libcni: {del}");
}

/// After a reboot the conflist (on disk) is there and the node file (on tmpfs) is not:
/// the agent removes the conflist at once, so the kubelet does not report the node Ready
/// while every ADD would fail, and writes it again once the node is synced.
#[test]
fn a_conflist_left_from_before_a_reboot_goes_until_the_node_is_synced() {
    let mut n = Node::new("k8sboot");
    n.api
        .apply("nodes", node_object("node-1", "192.0.2.11", None));
    let conflist = n.dir.join("net.d/10-podnet.conflist");
    std::fs::create_dir_all(n.dir.join("net.d")).expect("mkdir net.d");
    std::fs::write(&conflist, "{\"cniVersion\": \"1.0.0\", \"name\": \"podnet\", \"plugins\": [{\"type\": \"podnet-cni\"}]}")
        .expect("write a conflist");
    n.start_agent("host-gw");
    n.wait_for("the stale conflist removed", Duration::from_secs(10), |n| {
        !n.dir.join("net.d/10-podnet.conflist").exists()
    });
    n.api.apply(
        "nodes",
        node_object("node-1", "192.0.2.11", Some("10.244.1.0/24")),
    );
    n.wait_for("the conflist written again", Duration::from_secs(10), |n| {
        n.dir.join("net.d/10-podnet.conflist").exists() && n.dir.join("node.json").exists()
    });
}

/// The kubelet stops the agent with SIGTERM (PID 1 in its container): it exits within a
/// second, and leaves the dataplane in place.
#[test]
fn sigterm_ends_the_agent_within_a_second_and_leaves_the_dataplane() {
    let mut n = Node::new("k8sterm");
    n.api.apply(
        "nodes",
        node_object("node-1", "192.0.2.11", Some("10.244.1.0/24")),
    );
    n.api.apply(
        "nodes",
        node_object("node-2", "192.0.2.12", Some("10.244.2.0/24")),
    );
    n.start_agent("host-gw");
    n.wait_for("ready", Duration::from_secs(20), |n| {
        n.health("/readyz").is_some_and(|h| h.0 == 200)
    });
    let pid = nix::unistd::Pid::from_raw(n.agent_child().id() as i32);
    let sent = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
    let status = loop {
        if let Some(status) = n.agent_child().try_wait().expect("wait for the agent") {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "the agent still runs a second after SIGTERM\n{}",
            n.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(has_route(&n, "10.244.2.0/24", "192.0.2.12"), "routes stay");
    assert!(
        n.nft_map("service-ips").contains("map service-ips"),
        "the table stays"
    );
}

/// In a container that is not privileged /proc/sys is read-only. With br_netfilter
/// loaded (bridge-nf-call-* at 1, as kubeadm hosts have it) the agent cannot turn the
/// bridge hooks off: it says so on /readyz, and runs on, ready.
#[test]
fn a_read_only_proc_sys_is_a_warning_not_a_crash() {
    let mut n = Node::new("k8sro");
    if !std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        eprintln!("br_netfilter is not loaded on this machine: nothing to refuse");
        return;
    }
    // What the privileged init container does.
    run_in(&n.ns, &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables"]);
    n.api.apply(
        "nodes",
        node_object("node-1", "192.0.2.11", Some("10.244.1.0/24")),
    );
    n.start_agent_with(
        "host-gw",
        AgentOpts {
            wrapper: &[
                "unshare",
                "--mount",
                "sh",
                "-c",
                "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec \"$@\"",
                "sh",
            ],
            ..AgentOpts::default()
        },
    );
    n.wait_for(
        "ready, with the sysctl it could not set named",
        Duration::from_secs(20),
        |n| {
            n.health("/readyz").is_some_and(|(code, body)| {
                code == 200 && body.contains("warning: sysctl net.bridge.bridge-nf-call-iptables=0")
            })
        },
    );
    assert!(
        n.agent_child().try_wait().expect("wait").is_none(),
        "the agent keeps running"
    );
    let metrics = n.health("/metrics").map(|m| m.1).unwrap_or_default();
    assert!(
        metrics.contains("podnet_warnings 3"),
        "one warning per bridge-nf-call sysctl: {metrics}"
    );
}

/// With kube-proxy removed, the in-cluster address (the `kubernetes` Service's ClusterIP)
/// answers nothing until podnet proxies Services: the agent says what to set. With
/// apiServers, it finds the one that answers.
#[test]
fn without_kube_proxy_the_agent_finds_the_api_server_or_says_what_to_set() {
    let mut n = Node::new("k8sapi");
    n.api.apply(
        "nodes",
        node_object("node-1", "192.0.2.11", Some("10.244.1.0/24")),
    );
    // Nothing serves this address in the node, as with a ClusterIP and no proxy.
    let dead = "http://127.0.0.1:1";
    n.start_agent_with(
        "host-gw",
        AgentOpts {
            server: Some(dead),
            ..AgentOpts::default()
        },
    );
    n.wait_for(
        "/readyz saying to set apiServers",
        Duration::from_secs(20),
        |n| {
            n.health("/readyz").is_some_and(|(code, body)| {
                code == 503
                    && body.contains("http://127.0.0.1:1")
                    && body.contains("set apiServers")
            })
        },
    );
    // Two addresses, the first dead: the agent moves on to the second.
    let url = n.api.url();
    n.start_agent_with(
        "host-gw",
        AgentOpts {
            server: Some(dead),
            args: &["--api-server", dead, "--api-server", &url],
            ..AgentOpts::default()
        },
    );
    n.wait_for(
        "ready through the second API server",
        Duration::from_secs(20),
        |n| n.health("/readyz").is_some_and(|h| h.0 == 200),
    );
    assert!(n.log().contains("trying"), "{}", n.log());
}

/// `--no-service-proxy`: podnet runs beside kube-proxy, and leaves Services alone.
#[test]
fn beside_kube_proxy_the_agent_leaves_services_alone() {
    let mut n = Node::new("k8snosvc");
    n.api.apply(
        "nodes",
        node_object("node-1", "192.0.2.11", Some("10.244.1.0/24")),
    );
    n.api
        .apply("services", service_object("web", "10.96.0.20", 80));
    n.start_agent_with(
        "host-gw",
        AgentOpts {
            args: &["--no-service-proxy", "--metrics-addr", "192.0.2.11:9098"],
            ..AgentOpts::default()
        },
    );
    n.wait_for("ready", Duration::from_secs(20), |n| {
        n.health("/readyz").is_some_and(|h| h.0 == 200)
    });
    // Metrics where Prometheus scrapes them, on the node's own address.
    let metrics = n.get_from("192.0.2.11:9098", "/metrics");
    assert!(
        metrics.is_some_and(|(code, body)| code == 200 && body.contains("podnet_ready 1")),
        "metrics on --metrics-addr"
    );
    let table = run_in(&n.ns, &["nft", "list", "table", "inet", "podnet"]);
    assert!(
        table.contains("masquerade"),
        "egress masquerade stays: {table}"
    );
    assert!(
        !table.contains("jump services"),
        "no chain looks at Service traffic (hostPorts still DNAT): {table}"
    );
    assert!(!n.nft_map("service-ips").contains("10.96.0.20"));
    let watched: Vec<String> = n
        .api
        .requests()
        .iter()
        .filter_map(|r| r.verb_and_resource().map(|v| v.1))
        .filter(|r| r != "nodes")
        .collect();
    assert!(watched.is_empty(), "it called the API for {watched:?}");
}

/// `podnet uninstall` on a node that ran podnet with a pod, a Service and VXLAN: nothing of
/// podnet remains, and the sysctls it changed are back.
#[test]
fn uninstall_leaves_nothing_of_podnet_on_the_node() {
    let mut n = Node::new("k8sun");
    // The node as the agent found it: strict reverse-path checking, br_netfilter's hooks
    // on for bridged frames (the value a new namespace gets), forwarding on.
    run_in(
        &n.ns,
        &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/all/rp_filter && echo 1 > /proc/sys/net/ipv4/ip_forward"],
    );
    let bridge_nf = std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists();
    n.api.apply(
        "nodes",
        node_object("node-1", "192.0.2.11", Some("10.244.1.0/24")),
    );
    let mut peer = node_object("node-2", "192.0.2.12", Some("10.244.2.0/24"));
    peer["metadata"]["annotations"]["podnet.io/vtep-mac"] = json!("0e:58:c0:00:02:0c");
    n.api.apply("nodes", peer);
    n.api
        .apply("services", service_object("web", "10.96.0.20", 80));
    n.api.apply(
        "endpointslices",
        slice_object("web", &[("10.244.2.5", "node-2", true)]),
    );
    n.start_agent("vxlan");
    n.wait_for("ready with web's rules", Duration::from_secs(20), |n| {
        n.health("/readyz").is_some_and(|h| h.0 == 200)
            && n.nft_map("ep-1").contains("10.244.2.5")
            && n.api
                .get("nodes", None, "node-1")
                .is_some_and(|o| o["metadata"]["annotations"]["podnet.io/routing"] == "ok")
    });
    let pod = n.fx.netns("pod");
    let (ok, add) = n.libcni("add", &pod, "ctr-un");
    assert!(ok, "ADD: {add}");
    // A flow through the Service, so conntrack has an entry of podnet's.
    pod.run(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.send_to(b"x", "10.96.0.20:80").expect("send");
    })
    .expect("enter the pod");
    let pod_flows = |n: &Node| {
        n.ns.run(|| {
            podnet_kernel::conntrack::Conntrack::open()
                .expect("conntrack")
                .all_flows()
                .expect("flows")
                .into_iter()
                .filter(|f| f.original.src.octets()[..2] == [10, 244])
                .count()
        })
        .expect("enter the node")
    };
    n.wait_for("the pod's flow tracked", Duration::from_secs(3), |n| {
        pod_flows(n) > 0
    });
    // The DaemonSet is deleted: the agent is gone.
    if let Some(mut agent) = n.agent.take() {
        let _ = agent.0.kill();
        let _ = agent.0.wait();
    }

    let d = |p: &str| n.dir.join(p).display().to_string();
    let uninstall = |extra: &[&str]| {
        let files = [
            "--cni-conf-dir",
            &d("net.d"),
            "--node-file",
            &d("node.json"),
            "--ipam-dir",
            &d("ipam"),
            "--state-dir",
            &d(""),
        ];
        in_netns(
            Command::new(PODNET)
                .arg("uninstall")
                .args(files)
                .args(extra),
            &n.ns,
        )
        .output()
        .expect("run podnet uninstall")
    };
    let out = uninstall(&[
        "--node",
        "node-1",
        "--kubeconfig",
        &d("kubeconfig"),
        "--config",
        &d("config.yaml"),
    ]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "nftables table inet podnet",
        "device podnet.vxlan",
        "bridge podnet0",
        "route 10.244.2.0/24",
    ] {
        assert!(
            said.contains(&format!("removed: {want}")),
            "says it removed {want}:\n{said}"
        );
    }

    let tables = run_in(&n.ns, &["nft", "list", "tables"]);
    assert!(tables.trim().is_empty(), "no nftables table: {tables}");
    assert_eq!(
        n.routes(),
        Vec::<(String, String)>::new(),
        "no podnet route"
    );
    let links = run_in(&n.ns, &["ip", "-o", "link"]);
    for gone in ["podnet.vxlan", "podnet0", ": pn"] {
        assert!(!links.contains(gone), "{gone} is gone: {links}");
    }
    for file in [
        "net.d/10-podnet.conflist",
        "node.json",
        "ipam",
        "sysctl-originals",
    ] {
        assert!(!n.dir.join(file).exists(), "{file} is gone");
    }
    assert_eq!(pod_flows(&n), 0, "no conntrack entry of the pods");
    let sysctl = |key: &str| {
        run_in(&n.ns, &["cat", &format!("/proc/sys/{key}")])
            .trim()
            .to_string()
    };
    assert_eq!(
        sysctl("net/ipv4/conf/all/rp_filter"),
        "1",
        "rp_filter as it was"
    );
    if bridge_nf {
        assert_eq!(
            sysctl("net/bridge/bridge-nf-call-iptables"),
            "1",
            "br_netfilter as it was"
        );
    }
    let annotations = n
        .api
        .get("nodes", None, "node-1")
        .map(|o| o["metadata"]["annotations"].clone())
        .unwrap_or_default();
    for key in [
        "podnet.io/node-ip",
        "podnet.io/vtep-mac",
        "podnet.io/routing",
    ] {
        assert!(
            annotations.get(key).is_none(),
            "{key} is gone: {annotations}"
        );
    }
    assert!(
        annotations
            .get("kubeadm.alpha.kubernetes.io/cri-socket")
            .is_some(),
        "others stay"
    );

    // Again: nothing left, and it says so.
    let again = uninstall(&[]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing of podnet was left"));
}

/// Until dual-stack comes, an IPv6 Service is ignored, said once in the log and counted;
/// the IPv4 family of a dual-stack one is served.
#[test]
fn ipv6_services_are_ignored_with_one_log_line_and_a_metric() {
    let mut n = Node::new("k8sv6");
    n.api.apply(
        "nodes",
        node_object("node-1", "192.0.2.11", Some("10.244.1.0/24")),
    );
    let mut six = service_object("six", "fd00::10", 80);
    six["spec"]["ipFamilies"] = json!(["IPv6"]);
    n.api.apply("services", six);
    let mut dual = service_object("dual", "10.96.0.40", 80);
    dual["spec"]["clusterIPs"] = json!(["10.96.0.40", "fd00::40"]);
    dual["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    dual["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
    n.api.apply("services", dual);
    n.start_agent("host-gw");
    n.wait_for(
        "the ignored Services counted",
        Duration::from_secs(20),
        |n| {
            n.health("/metrics")
                .is_some_and(|(_, m)| m.contains("podnet_services_ignored 2"))
        },
    );
    // The dual-stack Service's IPv4 ClusterIP is served (it has no endpoints: refused).
    n.wait_for("dual's IPv4 ClusterIP", Duration::from_secs(5), |n| {
        run_in(
            &n.ns,
            &["nft", "list", "set", "inet", "podnet", "cluster-ips"],
        )
        .contains("10.96.0.40")
    });
    // Resyncs say nothing new.
    std::thread::sleep(Duration::from_millis(1500));
    let log = n.log();
    assert_eq!(log.matches("default/six: IPv6 only").count(), 1, "{log}");
    assert_eq!(
        log.matches("default/dual: its IPv6 ClusterIP").count(),
        1,
        "{log}"
    );
}
