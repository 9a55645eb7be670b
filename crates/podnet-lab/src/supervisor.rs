//! The lab supervisor: the background process behind `podnet lab up`. It builds the lab's
//! namespaces, keeps the object store and serves it on the lab's socket, runs the
//! controllers and the kubelets, keeps one `podnet agent` running on every node, and on
//! shutdown removes all of it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use podnet_kernel::NetNs;
use podnet_model::cidr::{self, NODE_PREFIX};
use podnet_model::k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus,
};
use podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use podnet_model::{Kind, Object, ObjectRef};

use crate::api::LabStatus;
use crate::controllers;
use crate::fabric;
use crate::kubelet::{cni, Kubelet};
use crate::layout::{self, LabConfig, Layout};
use crate::lock::LabLock;
use crate::store::Store;

/// State shared by the supervisor's threads.
pub struct Shared {
    pub layout: Layout,
    pub config: LabConfig,
    /// The podnet binary: agents and `podnet ...` container commands run it.
    pub exe: PathBuf,
    pub cni: cni::Runtime,
    store: Mutex<Store>,
    changed: Condvar,
    status: Mutex<LabStatus>,
    shutdown: AtomicBool,
    node_ops: Mutex<NodeOps>,
}

/// Nodes to add and to remove, done by the supervisor's main loop.
#[derive(Default)]
struct NodeOps {
    next_index: usize,
    add: Vec<usize>,
    remove: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked holder leaves consistent data here (every write is one call); go on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Runs `f` on the store; wakes watchers if it changed anything.
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut s = lock(&self.store);
        let before = s.resource_version();
        let r = f(&mut s);
        if s.resource_version() != before {
            self.changed.notify_all();
        }
        r
    }

    /// Waits until the store moves past `rv` or `timeout` passes; returns its version.
    pub fn wait_change(&self, rv: u64, timeout: Duration) -> u64 {
        let s = lock(&self.store);
        if s.resource_version() != rv {
            return s.resource_version();
        }
        let (s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| s.resource_version() == rv)
            .unwrap_or_else(|e| e.into_inner());
        s.resource_version()
    }

    pub fn status(&self) -> LabStatus {
        lock(&self.status).clone()
    }

    fn set_status(&self, phase: &str, message: impl Into<String>, done: u64) {
        let mut st = lock(&self.status);
        st.phase = phase.to_string();
        st.message = message.into();
        st.done = done;
    }

    /// Queues a new node; returns the name it will have.
    pub fn queue_add_node(&self) -> String {
        let mut ops = lock(&self.node_ops);
        let i = ops.next_index;
        ops.next_index += 1;
        ops.add.push(i);
        self.changed.notify_all();
        layout::node_name(i)
    }

    /// Cordons a node, deletes its pods and queues its removal.
    pub fn queue_remove_node(&self, node: &str) -> Result<(), String> {
        let r = ObjectRef {
            kind: Kind::Node,
            namespace: None,
            name: node.to_string(),
        };
        self.with_store(|s| {
            let Some(Object::Node(n)) = s.get(&r) else {
                return Err(format!("node {node} not found"));
            };
            if s.list(Kind::Node, None).len() == 1 {
                return Err(format!("node {node} is the lab's last node; use `podnet lab down` to remove the lab"));
            }
            let mut n = n.clone();
            n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
            s.put(Object::Node(n));
            let on_node: Vec<ObjectRef> = s
                .list(Kind::Pod, None)
                .into_iter()
                .filter(|o| matches!(o, Object::Pod(p) if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)))
                .map(|o| o.reference())
                .collect();
            for p in on_node {
                controllers::mark_deleting(s, &p);
            }
            Ok(())
        })?;
        lock(&self.node_ops).remove.push(node.to_string());
        Ok(())
    }

    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
        self.changed.notify_all();
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Deletes objects as the API server would: pods are stopped by their kubelet first;
    /// a Deployment takes its pods, a Namespace everything in it.
    pub fn delete(&self, refs: &[ObjectRef]) -> Result<Vec<ObjectRef>, String> {
        self.with_store(|s| {
            for r in refs {
                if s.get(r).is_none() {
                    return Err(format!("{r} not found"));
                }
                match r.kind {
                    Kind::Node => {
                        return Err("nodes are part of the lab; they cannot be deleted".into())
                    }
                    Kind::Namespace if r.name == podnet_model::objects::DEFAULT_NAMESPACE => {
                        return Err("namespace default cannot be deleted".into())
                    }
                    _ => {}
                }
            }
            for r in refs {
                match r.kind {
                    Kind::Pod => controllers::mark_deleting(s, r),
                    Kind::Namespace => {
                        for kind in Kind::ALL.iter().filter(|k| k.namespaced()) {
                            let inside: Vec<ObjectRef> = s
                                .list(*kind, Some(&r.name))
                                .iter()
                                .map(|o| o.reference())
                                .collect();
                            for o in inside {
                                if *kind == Kind::Pod {
                                    controllers::mark_deleting(s, &o);
                                } else {
                                    s.remove(&o);
                                }
                            }
                        }
                        s.remove(r);
                    }
                    _ => {
                        s.remove(r);
                    }
                }
            }
            Ok(refs.to_vec())
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{0}")]
    Setup(String),
}

/// Steps of building a lab, for progress: fabric, each node, each agent ready.
fn total_steps(nodes: usize) -> u64 {
    1 + 2 * nodes as u64
}

/// Runs the supervisor of lab `config.name` until it is told to shut down, holding the
/// lab's lock until everything of the lab is gone.
pub fn run(config: LabConfig, exe: PathBuf, lock: LabLock) -> Result<(), SupervisorError> {
    let layout = Layout::new(&config.name).map_err(SupervisorError::Setup)?;
    let setup = |what: &str, e: std::io::Error| SupervisorError::Setup(format!("{what}: {e}"));
    fs::create_dir_all(layout.dir()).map_err(|e| setup("create the lab's state directory", e))?;
    fs::write(layout.pid_file(), std::process::id().to_string())
        .map_err(|e| setup("write the pid file", e))?;
    let cfg =
        serde_json::to_vec_pretty(&config).map_err(|e| SupervisorError::Setup(e.to_string()))?;
    fs::write(layout.config_file(), cfg).map_err(|e| setup("write lab.json", e))?;
    let _ = fs::remove_file(layout.socket());
    let listener =
        UnixListener::bind(layout.socket()).map_err(|e| setup("listen on the lab socket", e))?;

    let cni_dirs = [
        exe.parent().map(PathBuf::from),
        Some(PathBuf::from("/opt/cni/bin")),
    ];
    let shared = Arc::new(Shared {
        layout: layout.clone(),
        config: config.clone(),
        exe: exe.clone(),
        cni: cni::Runtime {
            cni_path: cni_dirs.into_iter().flatten().collect(),
        },
        store: Mutex::new(Store::new(config.service_cidr)),
        changed: Condvar::new(),
        status: Mutex::new(LabStatus {
            config: config.clone(),
            phase: "building".into(),
            message: "creating the fabric".into(),
            done: 0,
            total: total_steps(config.nodes),
            supervisor_pid: std::process::id(),
        }),
        shutdown: AtomicBool::new(false),
        node_ops: Mutex::new(NodeOps {
            next_index: config.nodes + 1,
            ..NodeOps::default()
        }),
    });
    {
        let shared = shared.clone();
        std::thread::spawn(move || crate::server::serve(listener, shared));
    }

    let mut agents = Agents::default();
    let mut kubelet = Kubelet::default();
    match build(&shared, &mut agents) {
        Ok(()) => {}
        Err(e) => {
            tracing::error!("building the lab failed: {e}");
            shared.set_status("failed", e, 0);
            // Stay up so `lab up` can report why; `lab down` removes what was made.
            while !shared.shutting_down() {
                shared.wait_change(0, Duration::from_millis(200));
            }
        }
    }
    let mut rv = 0;
    while !shared.shutting_down() {
        controllers::reconcile(&shared, &mut kubelet);
        agents.keep_running(&shared);
        node_ops(&shared, &mut agents);
        let st = shared.status();
        if st.phase == "building" {
            let ready = shared.with_store(|s| {
                s.list(Kind::Node, None)
                    .iter()
                    .filter(|o| matches!(o, Object::Node(n) if n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))))
                    .count()
            });
            let done = 1 + config.nodes as u64 + ready as u64;
            if ready == config.nodes {
                shared.set_status("ready", "ready", done);
            } else {
                shared.set_status(
                    "building",
                    format!(
                        "waiting for agents: {ready} of {} nodes ready",
                        config.nodes
                    ),
                    done,
                );
            }
        }
        rv = shared.wait_change(rv, Duration::from_millis(200));
    }

    tracing::info!("shutting down");
    shared.set_status("stopping", "stopping pods", 0);
    kubelet.stop_all();
    agents.stop_all();
    let _ = fs::remove_file(layout.socket());
    let _ = crate::teardown::remove_namespaces(&layout);
    let _ = fs::remove_dir_all(layout.dir());
    drop(lock);
    Ok(())
}

fn build(shared: &Arc<Shared>, agents: &mut Agents) -> Result<(), String> {
    let layout = &shared.layout;
    let config = &shared.config;
    if config.nodes == 0 || config.nodes > layout::MAX_NODES {
        return Err(format!(
            "--nodes {} is out of range (1-{})",
            config.nodes,
            layout::MAX_NODES
        ));
    }
    // A pod CIDR too small for the nodes fails before anything is built.
    let mut cidrs = Vec::new();
    for i in 0..config.nodes {
        let next = cidr::next_free(config.pod_cidr, NODE_PREFIX, &cidrs, i + 1)
            .map_err(|e| e.to_string())?;
        cidrs.push(next);
    }
    fabric::build_fabric(layout).map_err(|e| e.to_string())?;
    shared.set_status("building", "adding nodes", 1);
    for i in 1..=config.nodes {
        add_node(shared, agents, i)?;
        shared.set_status(
            "building",
            format!("added {}", layout::node_name(i)),
            1 + i as u64,
        );
    }
    Ok(())
}

/// Adds queued nodes, and removes queued ones once their pods are gone.
fn node_ops(shared: &Arc<Shared>, agents: &mut Agents) {
    let (add, remove) = {
        let mut ops = lock(&shared.node_ops);
        (std::mem::take(&mut ops.add), ops.remove.clone())
    };
    for i in add {
        if let Err(e) = add_node(shared, agents, i) {
            tracing::error!("adding {}: {e}", layout::node_name(i));
        }
    }
    for node in remove {
        let busy = shared.with_store(|s| {
            s.list(Kind::Pod, None)
                .iter()
                .any(|o| matches!(o, Object::Pod(p) if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())))
        });
        if busy {
            continue;
        }
        agents.stop(&node);
        shared.with_store(|s| {
            s.remove(&ObjectRef {
                kind: Kind::Node,
                namespace: None,
                name: node.clone(),
            })
        });
        let _ = podnet_kernel::netns::delete_named(&shared.layout.node_netns(&node));
        let _ = fs::remove_dir_all(shared.layout.node_dir(&node));
        lock(&shared.node_ops).remove.retain(|n| *n != node);
        tracing::info!("removed {node}");
    }
}

fn add_node(shared: &Arc<Shared>, agents: &mut Agents, i: usize) -> Result<(), String> {
    let layout = &shared.layout;
    let config = &shared.config;
    let used: Vec<ipnet::Ipv4Net> = shared.with_store(|s| {
        s.list(Kind::Node, None)
            .iter()
            .filter_map(|o| match o {
                Object::Node(n) => n.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok(),
                _ => None,
            })
            .collect()
    });
    let podcidr = cidr::next_free(config.pod_cidr, NODE_PREFIX, &used, used.len() + 1)
        .map_err(|e| e.to_string())?;
    let fabric =
        NetNs::open_named(&layout.fabric_netns()).map_err(|e| format!("open the fabric: {e}"))?;
    let name = layout::node_name(i);
    fabric::add_node(layout, &fabric, i, config.routed()).map_err(|e| e.to_string())?;
    fs::create_dir_all(layout.node_cni_dir(&name))
        .map_err(|e| format!("create {name}'s directories: {e}"))?;
    shared.with_store(|s| {
        s.put(Object::Node(node_object(
            &name,
            i,
            config.routed(),
            podcidr,
        )))
    });
    agents
        .start(shared, &name)
        .map_err(|e| format!("start the agent of {name}: {e}"))?;
    tracing::info!("added {name} ({podcidr})");
    Ok(())
}

fn node_object(name: &str, i: usize, routed: bool, podcidr: ipnet::Ipv4Net) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_string(),
                name.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(podcidr.to_string()),
            pod_cidrs: Some(vec![podcidr.to_string()]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: layout::node_ip(i, routed).to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.to_string(),
                },
            ]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: Some("NetworkNotReady".into()),
                ..NodeCondition::default()
            }]),
            ..NodeStatus::default()
        }),
    }
}

/// One `podnet agent` per node, restarted when it exits (as a DaemonSet's pod would be).
#[derive(Default)]
struct Agents {
    running: BTreeMap<String, (Child, Instant)>,
    restart_at: BTreeMap<String, Instant>,
}

impl Agents {
    fn start(&mut self, shared: &Shared, node: &str) -> std::io::Result<()> {
        let layout = &shared.layout;
        let ns = NetNs::open_named(&layout.node_netns(node))?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(layout.node_dir(node).join("agent.log"))?;
        let mut cmd = Command::new(&shared.exe);
        let cluster_cidr = shared.config.pod_cidr.to_string();
        let service_cidr = shared.config.service_cidr.to_string();
        cmd.args(["agent", "--lab", &layout.name, "--node", node])
            .args([
                "--backend",
                &shared.config.backend,
                "--cluster-cidr",
                &cluster_cidr,
                "--service-cidr",
                &service_cidr,
            ]);
        if shared.config.direct_routing {
            cmd.arg("--direct-routing");
        }
        if shared.config.bridge_netfilter {
            cmd.arg("--bridge-netfilter");
        }
        if shared.config.untracked_pod_traffic {
            cmd.arg("--untracked-pod-traffic");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let fd = std::os::fd::AsFd::as_fd(&ns).try_clone_to_owned()?;
        // SAFETY: only setns runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                nix::sched::setns(
                    std::os::fd::AsFd::as_fd(&fd),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn()?;
        self.running
            .insert(node.to_string(), (child, Instant::now()));
        Ok(())
    }

    fn keep_running(&mut self, shared: &Shared) {
        let mut exited = Vec::new();
        for (node, (child, _)) in self.running.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                tracing::warn!(node, "agent exited ({status}); restarting it");
                exited.push(node.clone());
            }
        }
        for node in exited {
            self.running.remove(&node);
            self.restart_at
                .insert(node, Instant::now() + Duration::from_millis(500));
        }
        let due: Vec<String> = self
            .restart_at
            .iter()
            .filter(|(_, t)| Instant::now() >= **t)
            .map(|(n, _)| n.clone())
            .collect();
        for node in due {
            self.restart_at.remove(&node);
            if let Err(e) = self.start(shared, &node) {
                tracing::error!(node, "cannot restart the agent: {e}");
                self.restart_at
                    .insert(node, Instant::now() + Duration::from_secs(2));
            }
        }
    }

    fn stop(&mut self, node: &str) {
        self.restart_at.remove(node);
        if let Some((mut child, _)) = self.running.remove(node) {
            crate::kubelet::process::stop(&mut child, Duration::from_secs(2));
        }
    }

    fn stop_all(&mut self) {
        for (_, (mut child, _)) in std::mem::take(&mut self.running) {
            crate::kubelet::process::stop(&mut child, Duration::from_secs(2));
        }
    }
}
