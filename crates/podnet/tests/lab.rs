//! The lab as a user drives it: `podnet lab ...` against real namespaces. Run as root.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{eventually, stdout, Lab, PODNET};

#[test]
fn containers_of_a_pod_talk_over_localhost() {
    let lab = Lab::up(1, &[]);
    lab.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: duo}
spec:
  containers:
  - {name: server, command: [podnet, probe, serve, --http, "9000", --udp-echo, "9001"]}
  - name: client
    command: [sh, -c, "while true; do podnet probe get http://127.0.0.1:9000/hostname; podnet probe udp 127.0.0.1:9001 -m ping; sleep 0.2; done"]
"#,
    );
    lab.wait_ready("pod/duo", "30s");
    // The client container's own output shows the server container's answers.
    let logs = eventually(Duration::from_secs(10), || {
        let l = lab.ok(&["logs", "duo", "-c", "client"]);
        (l.lines().any(|x| x.trim() == "duo") && l.contains("duo 127.0.0.1:")).then_some(l)
    });
    assert!(
        logs.is_some(),
        "the client never got an answer over localhost: {:?}",
        lab.ok(&["logs", "duo", "-c", "client"])
    );
}

#[test]
fn two_pods_on_one_node_reach_each_other_with_their_real_addresses() {
    let lab = Lab::up(2, &[]);
    lab.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  nodeName: node-1
  containers: [{name: s, command: [podnet, probe, serve, --http, "8080", --udp-echo, "5353"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec:
  nodeName: node-1
  containers: [{name: s, command: [podnet, probe, serve, --http, "8080"]}]
"#,
    );
    lab.wait_ready("pod/a", "30s");
    lab.wait_ready("pod/b", "30s");
    let (ip_a, ip_b) = (lab.pod_ip("a"), lab.pod_ip("b"));
    assert_eq!(lab.pod("a")["spec"]["nodeName"], "node-1");
    let seen = stdout(&lab.exec(
        "b",
        &[
            "podnet",
            "probe",
            "get",
            &format!("http://{ip_a}:8080/clientip"),
        ],
    ));
    assert!(
        seen.starts_with(&format!("{ip_b}:")),
        "a saw {seen:?}, b is {ip_b}"
    );
    let seen = stdout(&lab.exec(
        "a",
        &[
            "podnet",
            "probe",
            "get",
            &format!("http://{ip_b}:8080/clientip"),
        ],
    ));
    assert!(
        seen.starts_with(&format!("{ip_a}:")),
        "b saw {seen:?}, a is {ip_a}"
    );
    let udp = stdout(&lab.exec(
        "b",
        &[
            "podnet",
            "probe",
            "udp",
            &format!("{ip_a}:5353"),
            "-m",
            "hi",
        ],
    ));
    assert!(udp.starts_with(&format!("a {ip_b}:")), "UDP answer {udp:?}");
    // The pod's hostname is its name.
    assert_eq!(stdout(&lab.exec("a", &["hostname"])), "a");
}

fn deployment(replicas: usize) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        command: [podnet, probe, serve, --http, "8080"]
        ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    )
}

#[test]
fn a_deployment_scaled_1_5_2_keeps_its_endpointslice_equal_to_its_ready_pods() {
    let lab = Lab::up(2, &[]);
    for replicas in [1usize, 5, 2] {
        lab.apply(&deployment(replicas));
        let changed = Instant::now();
        // The slice may lag the ready pods by at most a second, at every moment.
        let mut mismatch_since: Option<Instant> = None;
        let settled = eventually(Duration::from_secs(30), || {
            let ready = lab.ready_ips("web");
            let slice = lab.slice_ips("web");
            if ready == slice {
                mismatch_since = None;
                return (ready.len() == replicas).then_some(());
            }
            let since = *mismatch_since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < Duration::from_secs(1),
                "replicas {replicas}: slice {slice:?} differs from ready pods {ready:?} for over a second"
            );
            None
        });
        assert!(
            settled.is_some(),
            "replicas {replicas}: never settled (ready {:?})",
            lab.ready_ips("web")
        );
        eprintln!("replicas {replicas}: settled in {:?}", changed.elapsed());
    }
    let out = lab.ok(&["get", "deployments"]);
    assert!(out.contains("2/2"), "{out}");
}

#[test]
fn a_pod_failing_its_readiness_probe_leaves_the_slice_and_rejoins() {
    let lab = Lab::up(1, &[]);
    let flag = std::env::temp_dir().join(format!("{}-ready", lab.name));
    std::fs::write(&flag, b"").expect("create flag");
    let flag_s = flag.to_str().expect("path").to_string();
    lab.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: flaky, labels: {{app: flaky}}}}
spec:
  containers:
  - name: s
    command: [podnet, probe, serve]
    readinessProbe:
      exec: {{command: [test, -e, "{flag_s}"]}}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: steady, labels: {{app: flaky}}}}
spec:
  containers: [{{name: s, command: [podnet, probe, serve]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: flaky}}
spec:
  selector: {{app: flaky}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    ));
    lab.wait_ready("pod/flaky", "30s");
    lab.wait_ready("pod/steady", "30s");
    let both: BTreeSet<String> = [lab.pod_ip("flaky"), lab.pod_ip("steady")].into();
    let only_steady: BTreeSet<String> = [lab.pod_ip("steady")].into();
    assert!(
        eventually(Duration::from_secs(5), || (lab.slice_ips("flaky") == both)
            .then_some(()))
        .is_some()
    );
    std::fs::remove_file(&flag).expect("remove flag");
    assert!(
        eventually(Duration::from_secs(5), || (lab.slice_ips("flaky")
            == only_steady)
            .then_some(()))
        .is_some(),
        "the not-ready pod stayed in the slice: {:?}",
        lab.slice_ips("flaky")
    );
    std::fs::write(&flag, b"").expect("create flag");
    assert!(
        eventually(Duration::from_secs(5), || (lab.slice_ips("flaky") == both)
            .then_some(()))
        .is_some(),
        "the pod did not rejoin: {:?}",
        lab.slice_ips("flaky")
    );
    let _ = std::fs::remove_file(&flag);
}

fn lab_processes(name: &str) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("--lab {name} ")) || l.contains(&format!("--name {name} ")))
        .map(str::to_string)
        .collect()
}

fn lab_namespaces(name: &str) -> Vec<String> {
    podnet_testkit::netns::list_named(&format!("pnlab_{name}_")).expect("list namespaces")
}

#[test]
fn down_after_kill_9_of_the_supervisor_leaves_nothing_behind() {
    let lab = Lab::up(2, &[]);
    lab.apply(&deployment(3));
    assert!(
        eventually(Duration::from_secs(20), || (lab.ready_ips("web").len()
            == 3)
            .then_some(()))
        .is_some()
    );
    let pid = std::fs::read_to_string(lab.dir().join("supervisor.pid")).expect("pid file");
    let killed = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert!(!lab_namespaces(&lab.name).is_empty());
    // Pods and agents outlive their supervisor until `down`.
    let pod_pids: Vec<String> = lab_namespaces(&lab.name)
        .iter()
        .filter(|n| n.contains("_pod-"))
        .flat_map(|n| {
            let out = Command::new("ip")
                .args(["netns", "pids", n])
                .output()
                .expect("ip netns pids");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!pod_pids.is_empty(), "the pods' processes should still run");

    let out = lab.ok(&["down"]);
    assert!(
        out.starts_with(&format!(
            "lab {}: no supervisor was running, killed ",
            lab.name
        )) && out.contains(" processes left in its namespaces, removed ")
            && out
                .trim_end()
                .ends_with(&format!(" namespaces and /run/podnet/labs/{}", lab.name)),
        "{out}"
    );
    assert!(
        lab_namespaces(&lab.name).is_empty(),
        "namespaces left: {:?}",
        lab_namespaces(&lab.name)
    );
    assert!(
        lab_processes(&lab.name).is_empty(),
        "processes left: {:?}",
        lab_processes(&lab.name)
    );
    for pid in pod_pids {
        // Gone, or a zombie waiting for init to reap it.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'));
        assert!(!running, "pod process {pid} survived: {state}");
    }
    assert!(!lab.dir().exists());
    // And a second down is harmless.
    let again = Command::new(PODNET)
        .args(["lab", "down", "--name", &lab.name])
        .output()
        .expect("down");
    assert!(again.status.success());
}

#[test]
fn bad_input_is_refused_whole_with_the_document_and_field() {
    let lab = Lab::up(1, &[]);
    let file = std::env::temp_dir().join(format!("{}-bad.yaml", lab.name));
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec: {containers: [{name: c, command: [sleep, '60']}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 99999}]}\n",
    )
    .expect("write");
    let out = lab.podnet(&["apply", "-f", file.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document 2 (Service default/s): spec.ports[0].port: 99999 is not in 1-65535"),
        "{err}"
    );
    assert!(lab.items("pods").is_empty(), "nothing is half-applied");
    let _ = std::fs::remove_file(file);

    let dup = lab.podnet(&["up"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let small = Command::new(PODNET)
        .args([
            "lab",
            "up",
            "--name",
            &format!("{}s", lab.name),
            "--nodes",
            "3",
            "--pod-cidr",
            "10.250.0.0/23",
        ])
        .output()
        .expect("up");
    assert!(!small.status.success());
    assert!(
        String::from_utf8_lossy(&small.stderr).contains("3 nodes need a /22 or larger"),
        "{}",
        String::from_utf8_lossy(&small.stderr)
    );
}

#[test]
fn a_pod_on_a_node_that_does_not_exist_is_refused_and_down_says_what_it_removed() {
    let lab = Lab::up(1, &[]);
    let file = std::env::temp_dir().join(format!("{}-nodename.yaml", lab.name));
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: lost}\nspec: {nodeName: node-9, containers: [{name: c, command: [sleep, '60']}]}\n",
    )
    .expect("write");
    let out = lab.podnet(&["apply", "-f", file.to_str().expect("path")]);
    let _ = std::fs::remove_file(file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "applied: {}", stdout(&out));
    assert!(
        err.contains("document 1 (Pod default/lost): spec.nodeName \"node-9\" names no node of this lab; its node is node-1"),
        "{err}"
    );
    assert!(lab.items("pods").is_empty());

    let pid = std::fs::read_to_string(lab.dir().join("supervisor.pid")).expect("pid file");
    assert_eq!(
        lab.ok(&["down"]).trim(),
        format!(
            "lab {}: stopped the supervisor (pid {}), removed 3 namespaces and /run/podnet/labs/{}",
            lab.name,
            pid.trim(),
            lab.name
        )
    );
    assert_eq!(
        lab.ok(&["down"]).trim(),
        format!("lab {} does not exist; nothing to remove", lab.name)
    );
}

/// SIGKILLs a process on drop: a failing test must not leave a stopped supervisor behind.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// Runs `podnet lab --name LAB ARGS...`, killed if it is not done within `limit`: today's
/// hang must fail the test, not hang it. Returns its output and how long it took.
fn bounded(lab: &Lab, args: &[&str], limit: Duration) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(PODNET)
        .args(["lab", "--name", &lab.name])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run podnet");
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "podnet lab {args:?} hung for {limit:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().expect("output"), started.elapsed())
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

#[test]
fn a_stopped_supervisor_fails_requests_in_time_and_down_removes_it() {
    let lab = Lab::up(1, &[]);
    let pid: i32 = std::fs::read_to_string(lab.dir().join("supervisor.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    let _kill = KillOnDrop(pid);
    assert!(Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .expect("kill")
        .success());

    let (out, took) = bounded(&lab, &["get", "pods"], Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(15), "get gave up after {took:?}");
    assert!(
        err.contains(&format!(
            "lab {:?} did not answer `get` within 10s: its supervisor (pid {pid}) is stopped; resume it with `kill -CONT {pid}`, or remove the lab with `podnet lab down --name {}`",
            lab.name, lab.name
        )),
        "{err}"
    );

    let (out, _) = bounded(&lab, &["list"], Duration::from_secs(30));
    let list = stdout(&out);
    let row = list
        .lines()
        .find(|l| l.starts_with(&lab.name))
        .unwrap_or_else(|| panic!("lab list does not show the lab: {list}"));
    assert!(row.contains("not answering"), "{row}");

    let (out, took) = bounded(&lab, &["up", "--nodes", "1"], Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(1), "a second up took {took:?}");
    assert!(
        err.contains(&format!(
            "lab {:?} is being created or already exists (its supervisor, pid {pid}, holds",
            lab.name
        )),
        "{err}"
    );

    let (out, took) = bounded(&lab, &["down"], Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(8), "down took {took:?}");
    let said = stdout(&out);
    let expected = format!(
        "lab {}: killed the supervisor (pid {pid}), which was stopped (SIGSTOP), ",
        lab.name
    );
    assert!(said.starts_with(&expected), "{said}");
    assert!(
        said.contains(" namespaces and /run/podnet/labs/") && !said.contains(" 0 namespaces"),
        "{said}"
    );
    assert!(!alive(pid), "the supervisor survived down");
    assert!(lab_namespaces(&lab.name).is_empty());
    assert!(!lab.dir().exists());
}

/// Supervisors of lab `name` that run (not zombies).
fn supervisors(name: &str) -> Vec<String> {
    lab_processes(name)
        .into_iter()
        .filter(|l| l.contains(" supervise "))
        .filter(|l| {
            l.split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .is_some_and(alive)
        })
        .collect()
}

fn assert_nothing_left(lab: &Lab) {
    assert!(
        supervisors(&lab.name).is_empty(),
        "supervisors left: {:?}",
        supervisors(&lab.name)
    );
    assert!(
        lab_namespaces(&lab.name).is_empty(),
        "namespaces left: {:?}",
        lab_namespaces(&lab.name)
    );
    assert!(!lab.dir().exists(), "{} is left", lab.dir().display());
}

#[test]
fn two_concurrent_ups_of_one_name_make_one_lab_and_the_other_fails_at_once() {
    let lab = Lab::unstarted();
    let started = Instant::now();
    let spawn = || {
        Command::new(PODNET)
            .args(["lab", "--name", &lab.name, "up", "--nodes", "1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start podnet lab up")
    };
    let mut ups = vec![spawn(), spawn()];
    let mut done: Vec<(std::process::Output, Duration)> = Vec::new();
    while !ups.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "up hung");
        let mut i = 0;
        while i < ups.len() {
            if ups[i].try_wait().expect("wait").is_some() {
                let out = ups.remove(i).wait_with_output().expect("output");
                done.push((out, started.elapsed()));
            } else {
                i += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, failed): (Vec<_>, Vec<_>) = done.iter().partition(|(o, _)| o.status.success());
    let show = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        (ok.len(), failed.len()),
        (1, 1),
        "{:?}",
        done.iter().map(|(o, _)| show(o)).collect::<Vec<_>>()
    );
    let (loser, took) = &failed[0];
    let err = show(loser);
    assert!(
        err.contains(&format!(
            "lab {:?} is being created or already exists",
            lab.name
        )),
        "{err}"
    );
    assert!(
        *took < Duration::from_secs(3),
        "the second up took {took:?} to fail"
    );
    assert_eq!(
        supervisors(&lab.name).len(),
        1,
        "{:?}",
        lab_processes(&lab.name)
    );
    let list = lab.ok(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&lab.name) && l.contains("ready")),
        "{list}"
    );
    let said = lab.ok(&["down"]);
    assert!(
        said.starts_with(&format!("lab {}: stopped the supervisor (pid ", lab.name)),
        "{said}"
    );
    assert_nothing_left(&lab);
}

#[test]
fn a_failed_or_interrupted_up_leaves_nothing_running() {
    let lab = Lab::unstarted();
    let out = lab.podnet(&["up", "--nodes", "1", "--timeout", "1ms"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "lab {:?} was not ready after 1ms, so it was removed again:\nlab {}: ",
            lab.name, lab.name
        )),
        "{err}"
    );
    assert_nothing_left(&lab);

    // Ctrl-C once the supervisor is building.
    let mut up = Command::new(PODNET)
        .args(["lab", "--name", &lab.name, "up", "--nodes", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start podnet lab up");
    assert!(
        eventually(Duration::from_secs(10), || {
            (!lab_namespaces(&lab.name).is_empty()).then_some(())
        })
        .is_some(),
        "the lab never started building"
    );
    assert!(Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .expect("kill")
        .success());
    let started = Instant::now();
    while up.try_wait().expect("wait").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "up did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = up.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("was interrupted, so it was removed again"),
        "{err}"
    );
    assert_nothing_left(&lab);
}
