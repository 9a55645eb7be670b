//! A node namespace with podnet-cni run in it exactly as a runtime runs it: CNI
//! environment variables, the config on stdin, the process inside the node's namespace.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use podnet_kernel::{NetNs, Netlink};
use podnet_testkit::{in_netns, Fixture};
use serde_json::{json, Value};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_podnet-cni");

/// The plugin's test-only variables (docs/cni.md).
pub const CRASH_AT: &str = "PODNET_CNI_TEST_CRASH_AT";
pub const LOCK_TIMEOUT_MS: &str = "PODNET_CNI_LOCK_TIMEOUT_MS";

pub struct Node {
    pub fx: Fixture,
    pub ns: NetNs,
    pub subnet: String,
}

#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    pub json: Value,
    pub stderr: String,
}

impl Out {
    pub fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }
    pub fn msg(&self) -> &str {
        self.json["msg"].as_str().unwrap_or("")
    }
}

impl Node {
    pub fn new(label: &str, subnet: &str) -> Node {
        let mut fx = Fixture::new(label);
        let ns = fx.netns("node");
        Node {
            fx,
            ns,
            subnet: subnet.to_string(),
        }
    }

    pub fn pod(&mut self, name: &str) -> NetNs {
        self.fx.netns(name)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.fx.dir().join("ipam")
    }

    pub fn node_file(&self) -> PathBuf {
        self.fx.dir().join("node.json")
    }

    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "podnet-test",
            "type": "podnet-cni",
            "bridge": "podnet0",
            "subnet": self.subnet,
            "mtu": 1450,
            "dataDir": self.data_dir(),
            "nodeConfig": self.node_file(),
        })
    }

    /// The plugin for `verb` with extra variables (the test-only ones), not started.
    pub fn command_with(
        &self,
        verb: &str,
        cid: &str,
        netns: Option<&Path>,
        extra: &[(&str, &str)],
    ) -> Command {
        let mut cmd = self.command(verb, cid, netns, "eth0");
        cmd.envs(extra.iter().copied());
        cmd
    }

    /// Runs the plugin with extra variables and `conf` on stdin.
    pub fn cni_with(
        &self,
        verb: &str,
        cid: &str,
        netns: Option<&Path>,
        conf: &Value,
        extra: &[(&str, &str)],
    ) -> Out {
        finish(
            &mut self.command_with(verb, cid, netns, extra),
            conf.to_string().as_bytes(),
        )
    }

    /// [`Node::cni_with`], killing the plugin if it has not answered within `limit`
    /// (then `None`).
    pub fn cni_within(
        &self,
        limit: std::time::Duration,
        verb: &str,
        cid: &str,
        netns: Option<&Path>,
        conf: &Value,
        extra: &[(&str, &str)],
    ) -> Option<Out> {
        let mut child = self
            .command_with(verb, cid, netns, extra)
            .spawn()
            .expect("start podnet-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write config");
        let deadline = std::time::Instant::now() + limit;
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Some(output(child.wait_with_output().expect("collect output")))
    }

    /// Runs the plugin with a crash point set ([`CRASH_AT`]); true if it died by SIGKILL.
    pub fn cni_crashing(
        &self,
        verb: &str,
        cid: &str,
        netns: Option<&Path>,
        conf: &Value,
        step: &str,
    ) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let mut child = self
            .command_with(verb, cid, netns, &[(CRASH_AT, step)])
            .spawn()
            .expect("start podnet-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write config");
        let status = child.wait().expect("wait");
        status.signal() == Some(9)
    }

    fn command(&self, verb: &str, cid: &str, netns: Option<&Path>, ifname: &str) -> Command {
        let mut cmd = Command::new(PLUGIN);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = netns {
            cmd.env("CNI_NETNS", n);
        }
        in_netns(&mut cmd, &self.ns);
        cmd
    }

    /// Starts the plugin without waiting for it.
    pub fn spawn(&self, verb: &str, cid: &str, netns: Option<&Path>, conf: &Value) -> Child {
        let mut child = self
            .command(verb, cid, netns, "eth0")
            .spawn()
            .expect("start podnet-cni");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(conf.to_string().as_bytes())
            .expect("write config");
        child
    }

    pub fn cni(&self, verb: &str, cid: &str, netns: Option<&Path>, conf: &Value) -> Out {
        self.cni_raw(verb, cid, netns, "eth0", conf.to_string().as_bytes())
    }

    pub fn cni_raw(
        &self,
        verb: &str,
        cid: &str,
        netns: Option<&Path>,
        ifname: &str,
        stdin: &[u8],
    ) -> Out {
        let mut cmd = self.command(verb, cid, netns, ifname);
        finish(&mut cmd, stdin)
    }

    /// Runs the plugin with exactly `env` (plus PATH) and `stdin`.
    pub fn cni_env(&self, env: &[(&str, &str)], stdin: &[u8]) -> Out {
        let mut cmd = Command::new(PLUGIN);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        in_netns(&mut cmd, &self.ns);
        finish(&mut cmd, stdin)
    }

    pub fn add(&self, cid: &str, pod: &NetNs) -> Value {
        let out = self.cni("ADD", cid, Some(pod.path()), &self.conf("1.1.0"));
        assert!(out.ok, "ADD {cid} failed: {out:?}");
        out.json
    }

    /// Names of the links in the node's namespace.
    pub fn node_links(&self) -> Vec<String> {
        let mut nl = Netlink::open_in(&self.ns).expect("netlink in node");
        nl.links()
            .expect("list links")
            .into_iter()
            .map(|l| l.name)
            .collect()
    }

    /// Host veths podnet made (name prefix `pn`).
    pub fn host_veths(&self) -> Vec<String> {
        self.node_links()
            .into_iter()
            .filter(|n| n.starts_with("pn"))
            .collect()
    }

    /// Waits until no podnet host veth is left (DEL finishes deleting the veth pair after
    /// it answered); fails the test if one is still there after two seconds.
    pub fn assert_host_veths_gone(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let left = self.host_veths();
            if left.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "host veths still present 2s after DEL: {left:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The addresses that answer on the bridge: every address of a pod interface that is
    /// up and whose host end is up and attached to the bridge, once per interface holding
    /// it. `pods` are the namespaces to look in.
    pub fn answering(&self, pods: &[&NetNs]) -> Vec<String> {
        let mut node = Netlink::open_in(&self.ns).expect("netlink in node");
        let Some(bridge) = node.link_by_name("podnet0").expect("lookup") else {
            return Vec::new();
        };
        let ports: Vec<u32> = node
            .links()
            .expect("links")
            .into_iter()
            .filter(|l| l.master == Some(bridge.index) && l.up)
            .map(|l| l.index)
            .collect();
        let mut ips = Vec::new();
        for pod in pods {
            let Ok(mut nl) = Netlink::open_in(pod) else {
                continue;
            };
            for link in nl.links().expect("pod links") {
                if !link.up || !link.peer.is_some_and(|p| ports.contains(&p)) {
                    continue;
                }
                for a in nl.addresses(link.index).expect("addresses") {
                    // IPv6 link-local addresses are the kernel's own, unique per link.
                    if a.addr().is_ipv4() {
                        ips.push(a.addr().to_string());
                    }
                }
            }
        }
        ips.sort();
        ips
    }

    /// Addresses that more than one answering interface holds.
    pub fn duplicates(&self, pods: &[&NetNs]) -> Vec<String> {
        let mut ips = self.answering(pods);
        let all = ips.clone();
        ips.dedup();
        ips.into_iter()
            .filter(|ip| all.iter().filter(|a| *a == ip).count() > 1)
            .collect()
    }

    pub fn pool_file(&self) -> PathBuf {
        self.data_dir().join("podnet-test").join("pool.json")
    }

    /// GC keeping exactly `live` (container IDs, interface eth0).
    pub fn gc_conf(&self, live: &[String]) -> Value {
        let mut gc = self.conf("1.1.0");
        gc["cni.dev/valid-attachments"] = live
            .iter()
            .map(|c| json!({"containerID": c, "ifname": "eth0"}))
            .collect();
        gc
    }

    /// Waits until exactly `n` podnet host veths are left (DEL deletes after answering).
    pub fn assert_host_veths_gone_but(&self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let left = self.host_veths();
            if left.len() == n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} host veths 2s after DEL and GC, want {n}: {left:?}",
                left.len()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The IPAM pool file's allocations (empty if the pool does not exist).
    pub fn allocations(&self) -> Vec<String> {
        let path = self.data_dir().join("podnet-test").join("pool.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let v: Value = serde_json::from_slice(&bytes).expect("pool.json is JSON");
                v["allocations"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default()
            }
            Err(_) => Vec::new(),
        }
    }
}

fn finish(cmd: &mut Command, stdin: &[u8]) -> Out {
    let mut child = cmd.spawn().expect("start podnet-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    output(child.wait_with_output().expect("wait for podnet-cni"))
}

fn output(out: std::process::Output) -> Out {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout:?}"))
    };
    Out {
        ok: out.status.success(),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The pod's address from an ADD result, without the prefix length.
pub fn pod_ip(result: &Value) -> String {
    let addr = result["ips"][0]["address"]
        .as_str()
        .expect("result has an IP");
    addr.split('/').next().expect("address").to_string()
}

/// Builds the libcni client (tests/libcni-client) with Debian's Go and libcni, once per
/// test process, and returns its path.
pub fn libcni_client() -> PathBuf {
    podnet_testkit::libcni_client(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// Where libcni looks for plugins: podnet-cni's build directory, then Debian's reference
/// plugins.
pub fn cni_path() -> String {
    let ours = Path::new(PLUGIN).parent().expect("plugin dir");
    format!("{}:/usr/lib/cni", ours.display())
}

/// The libcni client for `conflist`, with the plugin path and a cache directory `cache`
/// of its own in the node's state directory.
pub fn libcni_command(node: &Node, conflist: &Path, cache: &str) -> Command {
    let mut cmd = Command::new(libcni_client());
    cmd.arg("-cni-path")
        .arg(cni_path())
        .arg("-conflist")
        .arg(conflist)
        .arg("-cache-dir")
        .arg(node.fx.dir().join(cache));
    cmd
}

/// Runs the libcni client inside the node's namespace.
pub fn libcni(node: &Node, conflist: &Path, args: &[&str]) -> Out {
    let mut cmd = libcni_command(node, conflist, "libcni-cache");
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    in_netns(&mut cmd, &node.ns);
    finish(&mut cmd, b"")
}
