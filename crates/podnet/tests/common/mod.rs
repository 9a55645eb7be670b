//! A lab per test, driven through the `podnet` command exactly as a user drives it, and
//! removed (`podnet lab down`) when the test ends, passes or panics. Lab names carry the
//! test process's pid, so a later run removes labs a killed run left behind.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PODNET: &str = env!("CARGO_BIN_EXE_podnet");

/// An iperf3 server `srv` on node-2 behind Service `iperf` (port 5201), and a client pod
/// `cli` on node-1.
pub const IPERF_BEHIND_A_SERVICE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: srv, labels: {app: iperf}}
spec:
  nodeName: node-2
  containers: [{name: s, command: [iperf3, -s]}]
---
apiVersion: v1
kind: Service
metadata: {name: iperf}
spec: {selector: {app: iperf}, ports: [{port: 5201}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cli}
spec:
  nodeName: node-1
  containers: [{name: c, command: [sleep, infinity]}]
"#;

/// The plugin binary must sit next to `podnet` (the lab finds it there).
pub fn ensure_plugin_built() {
    static BUILT: Once = Once::new();
    BUILT.call_once(|| {
        let plugin = Path::new(PODNET).with_file_name("podnet-cni");
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let profile_release =
            Path::new(PODNET).parent().and_then(Path::file_name) == Some("release".as_ref());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "podnet-cni", "--bin", "podnet-cni"]);
        if profile_release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo to build podnet-cni");
        assert!(
            status.success() && plugin.exists(),
            "podnet-cni must be built next to podnet"
        );
    });
}

/// Removes labs of earlier test processes that no longer run.
fn sweep_stale() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/run/podnet/labs") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("pt").and_then(|r| r.split('x').next()) else {
                continue;
            };
            if pid
                .parse::<u32>()
                .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
            {
                let _ = Command::new(PODNET)
                    .args(["lab", "down", "--name", &name])
                    .output();
            }
        }
    });
}

pub struct Lab {
    pub name: String,
}

impl Lab {
    /// A unique lab name, not built yet (the test runs `up` itself); removed on drop.
    pub fn unstarted() -> Lab {
        podnet_testkit::require_root();
        ensure_plugin_built();
        sweep_stale();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "pt{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Lab { name }
    }

    pub fn up(nodes: usize, extra: &[&str]) -> Lab {
        let lab = Lab::unstarted();
        let nodes = nodes.to_string();
        let mut args = vec!["up", "--nodes", nodes.as_str()];
        args.extend_from_slice(extra);
        let out = lab.podnet(&args);
        assert!(
            out.status.success(),
            "lab up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    /// `podnet lab --name <lab> ARGS...`
    pub fn podnet(&self, args: &[&str]) -> Output {
        Command::new(PODNET)
            .args(["lab", "--name", &self.name])
            .args(args)
            .output()
            .expect("run podnet")
    }

    /// Runs a lab command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.podnet(args);
        assert!(
            out.status.success(),
            "podnet lab {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) -> String {
        let file = std::env::temp_dir().join(format!("{}-{}.yaml", self.name, fastrand_suffix()));
        std::fs::write(&file, yaml).expect("write yaml");
        let out = self.ok(&["apply", "-f", file.to_str().expect("path")]);
        let _ = std::fs::remove_file(file);
        out
    }

    pub fn exec(&self, target: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", target, "--"];
        args.extend_from_slice(cmd);
        self.podnet(&args)
    }

    /// `get KIND -o json` items.
    pub fn items(&self, kind: &str) -> Vec<Value> {
        let out = self.ok(&["get", kind, "-A", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).expect("get -o json is JSON");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    pub fn wait_ready(&self, target: &str, timeout: &str) {
        self.ok(&["wait", "--for", "ready", target, "--timeout", timeout]);
    }

    pub fn pod(&self, name: &str) -> Value {
        let out = self.ok(&["get", "pods", name, "-o", "json"]);
        serde_json::from_str(&out).expect("json")
    }

    /// A Service's ClusterIP.
    pub fn cluster_ip(&self, service: &str) -> String {
        let out = self.ok(&["get", "services", service, "-o", "json"]);
        let v: Value = serde_json::from_str(&out).expect("get -o json is JSON");
        v["spec"]["clusterIP"]
            .as_str()
            .unwrap_or_else(|| panic!("service {service} has no cluster IP"))
            .to_string()
    }

    /// An iperf3 transfer from pod `from` to `to` (`seconds` long, at `rate`), under a
    /// 20 s timeout: a broken connection can leave iperf3 waiting for ever.
    pub fn spawn_transfer(
        &self,
        from: &str,
        to: &str,
        seconds: &str,
        rate: &str,
    ) -> std::process::Child {
        self.spawn_exec(
            from,
            &[
                "timeout", "20", "iperf3", "-c", to, "-t", seconds, "-b", rate,
            ],
        )
    }

    /// An HTTP GET from `from` (a pod, or node/NAME) with the built-in client; its output.
    pub fn get(&self, from: &str, url: &str) -> String {
        stdout(&self.exec(from, &["podnet", "probe", "get", "--timeout", "2s", url]))
    }

    /// A node's conntrack flows of L4 `protocol`.
    pub fn flows(&self, node: &str, protocol: u8) -> Vec<podnet_kernel::conntrack::Flow> {
        let ns = podnet_kernel::NetNs::open_named(&format!("pnlab_{}_{node}", self.name))
            .unwrap_or_else(|e| panic!("{node}'s namespace: {e}"));
        ns.run(|| podnet_kernel::Conntrack::open().and_then(|mut c| c.flows(protocol)))
            .unwrap_or_else(|e| panic!("enter {node}: {e}"))
            .unwrap_or_else(|e| panic!("list {node}'s flows: {e}"))
    }

    pub fn pod_ip(&self, name: &str) -> String {
        self.pod(name)["status"]["podIP"]
            .as_str()
            .expect("pod has an IP")
            .to_string()
    }

    /// IPs of ready pods whose `app` label is `app`.
    pub fn ready_ips(&self, app: &str) -> BTreeSet<String> {
        self.items("pods")
            .iter()
            .filter(|p| {
                p["metadata"]["labels"]["app"] == app
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
            .collect()
    }

    /// Ready endpoint addresses of a Service's slices.
    pub fn slice_ips(&self, service: &str) -> BTreeSet<String> {
        self.items("endpointslices")
            .iter()
            .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == service)
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] != false)
            .filter_map(|e| e["addresses"][0].as_str().map(str::to_string))
            .collect()
    }

    /// The pid of `node`'s agent, if it runs.
    pub fn agent_pid(&self, node: &str) -> Option<String> {
        let out = Command::new("ps")
            .args(["-eo", "pid,args"])
            .output()
            .expect("ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains(&format!("agent --lab {} --node {node} ", self.name)))
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
    }

    /// Starts `podnet lab exec TARGET -- CMD...` in the background, output captured.
    pub fn spawn_exec(&self, target: &str, cmd: &[&str]) -> std::process::Child {
        Command::new(PODNET)
            .args(["lab", "--name", &self.name, "exec", target, "--"])
            .args(cmd)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start podnet lab exec")
    }

    pub fn dir(&self) -> PathBuf {
        PathBuf::from("/run/podnet/labs").join(&self.name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(PODNET)
            .args(["lab", "down", "--name", &self.name])
            .output();
    }
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
