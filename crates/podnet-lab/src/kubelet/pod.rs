//! One pod's life on its node: wait for the node's network, make the pod's namespace,
//! attach it through CNI, run its containers, keep readiness up to date, and on deletion
//! stop everything, detach (CNI DEL) and remove the namespace.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podnet_kernel::{netns, NetNs};
use podnet_model::k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podnet_model::{Object, ObjectRef};

use super::cni::{self, Attachment};
use super::{probe, process};
use crate::store::now;
use crate::supervisor::Shared;

/// The annotation carrying the path of a pod's network namespace (for `lab exec`).
pub const NETNS_ANNOTATION: &str = "podnet.io/netns";
const TICK: Duration = Duration::from_millis(100);
const STOP_GRACE: Duration = Duration::from_secs(2);

struct ContainerRun {
    spec: podnet_model::k8s_openapi::api::core::v1::Container,
    child: Option<Child>,
    started: Option<Time>,
    restarts: i32,
    last_exit: Option<(i32, Time)>,
    next_start: Option<Instant>,
    backoff: Duration,
    ready: bool,
    probe_passes: i32,
    probe_failures: i32,
    next_probe: Instant,
}

struct PodRun {
    shared: Arc<Shared>,
    pod: Pod,
    r: ObjectRef,
    uid: String,
    node: String,
    message: Option<(String, String)>,
}

pub fn run(shared: Arc<Shared>, pod: Pod, stop: Arc<AtomicBool>) {
    let r = Object::Pod(pod.clone()).reference();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let mut p = PodRun {
        shared,
        pod,
        r,
        uid,
        node,
        message: None,
    };
    let netns_name = p.shared.layout.pod_netns(&p.uid);
    let attached = p.start(&netns_name, &stop);
    if let Some((pod_ns, node_ns, conflist, ip, mut containers)) = attached {
        p.live(&pod_ns, &node_ns, ip, &mut containers, &stop);
        for c in containers.iter_mut() {
            if let Some(child) = c.child.as_mut() {
                process::stop(child, STOP_GRACE);
            }
        }
        let mappings = cni::port_mappings(&p.pod);
        let att = Attachment {
            container_id: &p.uid,
            netns: pod_ns.path(),
            ifname: "eth0",
            port_mappings: &mappings,
        };
        if let Err(e) = p.shared.cni.del(&node_ns, &conflist, &att) {
            tracing::warn!(pod = %p.r, "CNI DEL: {e}");
        }
    }
    let _ = netns::delete_named(&netns_name);
    let _ = std::fs::remove_dir_all(
        p.shared
            .layout
            .pod_dir(p.r.namespace.as_deref().unwrap_or_default(), &p.r.name),
    );
    // The pod object goes once everything of it is gone.
    let (r, uid) = (p.r.clone(), p.uid.clone());
    p.shared.with_store(|s| {
        if s.get(&r)
            .is_some_and(|o| o.meta().uid.as_deref() == Some(uid.as_str()))
        {
            s.remove(&r);
        }
    });
}

type Attached = (NetNs, NetNs, serde_json::Value, IpAddr, Vec<ContainerRun>);

impl PodRun {
    fn layout(&self) -> &crate::layout::Layout {
        &self.shared.layout
    }

    /// Waits for the node's network, creates and attaches the pod's namespace and starts
    /// its containers. `None` if stopped first.
    fn start(&mut self, netns_name: &str, stop: &AtomicBool) -> Option<Attached> {
        let node_ns = NetNs::open_named(&self.layout().node_netns(&self.node)).ok()?;
        let cni_dir = self.layout().node_cni_dir(&self.node);
        let conflist = loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(c) = cni::read_conflist(&cni_dir) {
                break c;
            }
            self.set_waiting(
                "ContainerCreating",
                format!(
                    "waiting for node {} to have a pod network (podnet agent)",
                    self.node
                ),
            );
            std::thread::sleep(TICK);
        };
        let pod_ns = match netns::create_named(netns_name) {
            Ok(ns) => ns,
            Err(e) => {
                self.set_waiting(
                    "CreatePodSandboxError",
                    format!("create network namespace {netns_name}: {e}"),
                );
                return None;
            }
        };
        let path = pod_ns.path().display().to_string();
        self.update(|pod| {
            pod.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(NETNS_ANNOTATION.into(), path.clone());
        });
        let uid = self.uid.clone();
        let mappings = cni::port_mappings(&self.pod);
        let att = Attachment {
            container_id: &uid,
            netns: pod_ns.path(),
            ifname: "eth0",
            port_mappings: &mappings,
        };
        let mut backoff = Duration::from_millis(200);
        let ip = loop {
            if stop.load(Ordering::Relaxed) {
                let _ = self.shared.cni.del(&node_ns, &conflist, &att);
                return Some((
                    pod_ns,
                    node_ns,
                    conflist,
                    IpAddr::from([0, 0, 0, 0]),
                    Vec::new(),
                ));
            }
            match self.shared.cni.add(&node_ns, &conflist, &att) {
                Ok(result) => match cni::result_ip(&result).and_then(|s| s.parse().ok()) {
                    Some(ip) => break ip,
                    None => self
                        .set_waiting("FailedCreatePodSandBox", "the CNI result has no IP".into()),
                },
                Err(e) => {
                    // A runtime cleans up a failed ADD before retrying.
                    let _ = self.shared.cni.del(&node_ns, &conflist, &att);
                    self.set_waiting("FailedCreatePodSandBox", e);
                }
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        };
        let containers = self
            .pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|spec| ContainerRun {
                spec,
                child: None,
                started: None,
                restarts: 0,
                last_exit: None,
                next_start: Some(Instant::now()),
                backoff: Duration::from_secs(1),
                ready: false,
                probe_passes: 0,
                probe_failures: 0,
                next_probe: Instant::now(),
            })
            .collect();
        self.message = None;
        Some((pod_ns, node_ns, conflist, ip, containers))
    }

    fn live(
        &mut self,
        pod_ns: &NetNs,
        node_ns: &NetNs,
        ip: IpAddr,
        containers: &mut [ContainerRun],
        stop: &AtomicBool,
    ) {
        let owned_by_deployment = self
            .pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "Deployment");
        let restart_policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let pod_dir = self.layout().pod_dir(
            self.r.namespace.as_deref().unwrap_or_default(),
            &self.r.name,
        );
        let env = self.env(ip);
        let mut failed = false;
        let mut last_status = None;
        while !stop.load(Ordering::Relaxed) {
            let now_i = Instant::now();
            for c in containers.iter_mut() {
                // Exits.
                if let Some(child) = c.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        let code = status.code().unwrap_or(128 + 9);
                        c.child = None;
                        c.ready = false;
                        c.last_exit = Some((code, now()));
                        tracing::info!(pod = %self.r, container = %c.spec.name, code, "container exited");
                        let restart = match restart_policy.as_str() {
                            _ if owned_by_deployment => false,
                            "Always" => true,
                            "OnFailure" => code != 0,
                            _ => false,
                        };
                        if owned_by_deployment {
                            // The Deployment replaces the pod.
                            failed = true;
                        } else if restart {
                            c.next_start = Some(now_i + c.backoff);
                            c.backoff = (c.backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
                // (Re)starts.
                if !failed && c.child.is_none() && c.next_start.is_some_and(|t| now_i >= t) {
                    c.next_start = None;
                    let spec = &c.spec;
                    let argv = process::argv(
                        &self.shared.exe,
                        spec.command.as_deref().unwrap_or_default(),
                        spec.args.as_deref().unwrap_or_default(),
                    );
                    let mut env = env.clone();
                    env.extend(
                        spec.env
                            .iter()
                            .flatten()
                            .filter_map(|e| Some((e.name.clone(), e.value.clone()?))),
                    );
                    let log = pod_dir.join(format!("{}.log", spec.name));
                    match process::spawn(&process::Spawn {
                        argv: &argv,
                        netns: pod_ns,
                        hostname: &self.r.name,
                        env: &env,
                        log: &log,
                    }) {
                        Ok(child) => {
                            if c.started.is_some() {
                                c.restarts += 1;
                            }
                            c.child = Some(child);
                            c.started = Some(now());
                            c.probe_passes = 0;
                            c.probe_failures = 0;
                            let delay = spec
                                .readiness_probe
                                .as_ref()
                                .and_then(|p| p.initial_delay_seconds)
                                .unwrap_or(0);
                            c.next_probe = now_i + Duration::from_secs(delay.max(0) as u64);
                        }
                        Err(e) => {
                            let _ = std::fs::write(
                                &log,
                                format!("podnet lab: cannot start {argv:?}: {e}\n"),
                            );
                            c.last_exit = Some((127, now()));
                            if owned_by_deployment {
                                failed = true;
                            } else {
                                c.next_start = Some(now_i + c.backoff);
                                c.backoff = (c.backoff * 2).min(Duration::from_secs(10));
                            }
                        }
                    }
                }
                // Readiness.
                if c.child.is_some() && now_i >= c.next_probe {
                    match &c.spec.readiness_probe {
                        None => c.ready = true,
                        Some(p) => {
                            let period =
                                Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
                            c.next_probe = now_i + period;
                            match probe::run(p, &c.spec, ip, node_ns, pod_ns, &self.shared.exe) {
                                Ok(()) => {
                                    c.probe_failures = 0;
                                    c.probe_passes += 1;
                                    if c.probe_passes >= p.success_threshold.unwrap_or(1).max(1) {
                                        c.ready = true;
                                    }
                                }
                                Err(why) => {
                                    c.probe_passes = 0;
                                    c.probe_failures += 1;
                                    if c.probe_failures >= p.failure_threshold.unwrap_or(3).max(1)
                                        || !c.ready
                                    {
                                        if c.ready {
                                            tracing::info!(pod = %self.r, container = %c.spec.name, "readiness probe failed: {why}");
                                        }
                                        c.ready = false;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            if failed {
                for c in containers.iter_mut() {
                    if let Some(child) = c.child.as_mut() {
                        process::stop(child, STOP_GRACE);
                        c.child = None;
                        c.ready = false;
                    }
                }
            }
            let status = self.status(ip, containers, failed, &restart_policy);
            if last_status.as_ref() != Some(&status) {
                last_status = Some(status.clone());
                self.update(|pod| pod.status = Some(status));
            }
            std::thread::sleep(TICK);
        }
    }

    fn env(&self, ip: IpAddr) -> Vec<(String, String)> {
        // `podnet` in a container's command line is the lab's own binary.
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        let path = match self.shared.exe.parent() {
            Some(dir) => format!("{}:{path}", dir.display()),
            None => path,
        };
        let mut env = vec![
            ("PATH".to_string(), path),
            ("HOSTNAME".to_string(), self.r.name.clone()),
            ("POD_NAME".to_string(), self.r.name.clone()),
            (
                "POD_NAMESPACE".to_string(),
                self.r.namespace.clone().unwrap_or_default(),
            ),
            ("POD_IP".to_string(), ip.to_string()),
            ("NODE_NAME".to_string(), self.node.clone()),
        ];
        if let Ok(rust_log) = std::env::var("RUST_LOG") {
            env.push(("RUST_LOG".into(), rust_log));
        }
        env
    }

    fn host_ip(&self) -> Option<String> {
        let node = ObjectRef {
            kind: podnet_model::Kind::Node,
            namespace: None,
            name: self.node.clone(),
        };
        self.shared.with_store(|s| match s.get(&node) {
            Some(Object::Node(n)) => n
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone()),
            _ => None,
        })
    }

    fn status(
        &self,
        ip: IpAddr,
        containers: &[ContainerRun],
        failed: bool,
        restart_policy: &str,
    ) -> PodStatus {
        let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
        let all_exited = containers
            .iter()
            .all(|c| c.child.is_none() && c.next_start.is_none());
        let all_ok = containers
            .iter()
            .all(|c| c.last_exit.as_ref().is_some_and(|(code, _)| *code == 0));
        let phase = if failed || (all_exited && restart_policy != "Always" && !all_ok) {
            "Failed"
        } else if all_exited && restart_policy != "Always" && all_ok {
            "Succeeded"
        } else {
            "Running"
        };
        let cond = |t: &str, ok: bool| PodCondition {
            type_: t.into(),
            status: if ok { "True" } else { "False" }.into(),
            ..PodCondition::default()
        };
        PodStatus {
            phase: Some(phase.into()),
            pod_ip: Some(ip.to_string()),
            pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
            host_ip: self.host_ip(),
            conditions: Some(vec![
                cond("PodScheduled", true),
                cond("Initialized", true),
                cond("ContainersReady", all_ready),
                cond("Ready", all_ready && phase == "Running"),
            ]),
            container_statuses: Some(
                containers
                    .iter()
                    .map(|c| ContainerStatus {
                        name: c.spec.name.clone(),
                        ready: c.ready,
                        restart_count: c.restarts,
                        started: Some(c.child.is_some()),
                        image: String::new(),
                        image_id: String::new(),
                        state: Some(match (&c.child, &c.last_exit) {
                            (Some(_), _) => ContainerState {
                                running: Some(ContainerStateRunning {
                                    started_at: c.started.clone(),
                                }),
                                ..ContainerState::default()
                            },
                            (None, Some((code, at))) => ContainerState {
                                terminated: Some(ContainerStateTerminated {
                                    exit_code: *code,
                                    finished_at: Some(at.clone()),
                                    ..ContainerStateTerminated::default()
                                }),
                                ..ContainerState::default()
                            },
                            (None, None) => ContainerState {
                                waiting: Some(ContainerStateWaiting {
                                    reason: Some("ContainerCreating".into()),
                                    ..ContainerStateWaiting::default()
                                }),
                                ..ContainerState::default()
                            },
                        }),
                        ..ContainerStatus::default()
                    })
                    .collect(),
            ),
            ..PodStatus::default()
        }
    }

    fn set_waiting(&mut self, reason: &str, message: String) {
        let m = (reason.to_string(), message);
        if self.message.as_ref() == Some(&m) {
            return;
        }
        tracing::info!(pod = %self.r, "{}: {}", m.0, m.1);
        self.message = Some(m.clone());
        let host_ip = self.host_ip();
        self.update(|pod| {
            let st = pod.status.get_or_insert_with(PodStatus::default);
            st.phase = Some("Pending".into());
            st.reason = Some(m.0.clone());
            st.message = Some(m.1.clone());
            st.host_ip = host_ip.clone();
            st.conditions = Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]);
        });
    }

    /// Changes the stored pod, if it is still this pod (same UID).
    fn update(&mut self, f: impl FnOnce(&mut Pod)) {
        let (r, uid) = (self.r.clone(), self.uid.clone());
        let updated = self.shared.with_store(|s| {
            let Some(Object::Pod(pod)) = s.get(&r) else {
                return None;
            };
            if pod.metadata.uid.as_deref() != Some(uid.as_str()) {
                return None;
            }
            let mut pod = pod.clone();
            f(&mut pod);
            s.put(Object::Pod(pod.clone()));
            Some(pod)
        });
        if let Some(p) = updated {
            self.pod = p;
        }
    }
}
