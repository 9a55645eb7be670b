//! `podnet lab test [-o json] [--only GROUP]`: checks a running lab's network end to end.
//!
//! It deploys its own workload in namespace `podnet-test`, runs every check of
//! [`super::check::plan`] (each a `podnet lab exec ... -- podnet probe ...` with a time
//! limit, several at once), shows a row per check, removes its namespace, and exits 1 when
//! a check failed. What to check and how to judge it is pure ([`super::check`]); this file
//! only runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use podnet_lab::{layout, Client, Layout};
use podnet_model::endpoints::pod_is_ready;
use podnet_model::objects::SERVICE_NAME_LABEL;
use podnet_model::{Kind, Object, ObjectRef};

use super::check::eval::{self, Expect, Followed, Output};
use super::check::plan::{self, Check, Follow, Node, Svc, World, NAMESPACE};
use super::check::report::{self, Row};
use super::check::{self, Group};

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
}

#[derive(Args, Default)]
pub struct TestArgs {
    /// Print the results as JSON (`{"checks": [...], "summary": {...}}`) instead of a table.
    #[arg(short = 'o', long, value_enum)]
    output: Option<Format>,
    /// Run only this group of checks (repeat it, or separate with commas, for several).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "GROUP")]
    only: Vec<Group>,
}

/// How long the workload may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(40);
/// How long removing the namespace may take.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Checks run at once.
const WORKERS: usize = 6;
/// Right after the workload is ready, a failing check is tried again for this long: the
/// agents may still be programming what the API already shows.
const SETTLE: Duration = Duration::from_secs(3);
/// How long each step of the endpoints-follow scenario may take.
const FOLLOW_BASELINE: Duration = Duration::from_secs(5);
const FOLLOW_REMOVED: Duration = Duration::from_secs(10);
const FOLLOW_ADDED: Duration = Duration::from_secs(15);

pub fn run(layout: &Layout, a: TestArgs) -> anyhow::Result<u8> {
    if !nix::unistd::geteuid().is_root() {
        bail!("lab test runs commands in the lab's namespaces: run as root");
    }
    let client = super::client(layout);
    let status = client.status()?;
    if status.phase != "ready" {
        bail!(
            "lab {} is {} ({}); test it once it is ready",
            layout.name,
            status.phase,
            status.message
        );
    }
    let started = Instant::now();
    interrupt::install();
    let groups = check::selected(&a.only);
    let nodes = nodes(&client)?;
    if nodes.is_empty() {
        bail!("lab {} has no nodes", layout.name);
    }
    let ctx = Ctx {
        layout,
        client: &client,
        exe: std::env::current_exe().context("find the podnet binary")?,
    };

    if let Some(d) = remove_namespace(&client)? {
        eprintln!(
            "lab test: removed namespace {NAMESPACE} left by an earlier run ({:.1}s)",
            d.as_secs_f64()
        );
    }
    let workload = plan::workload(&nodes, &groups);
    eprintln!(
        "lab test: lab {} ({} node{}, {}): deploying {} in namespace {NAMESPACE}",
        layout.name,
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" },
        status.config.backend,
        plan::describe(&workload)
    );
    let cleanup = Cleanup(&ctx);
    client.apply(&workload.yaml)?;
    let mut external = plan::needs_external_server(&groups)
        .then(|| ExternalServer::start(&ctx))
        .transpose()?;
    wait_ready(&client, &workload)?;
    eprintln!(
        "lab test: workload ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if let Some(ext) = &mut external {
        if let Err(e) = ext.wait_answering(&ctx) {
            eprintln!("lab test: {e}; the egress checks will fail");
        }
    }

    let mut world = world(&client, nodes, &ctx.exe)?;
    let first = plan::own_address_checks(&world, &groups);
    let bar = progress(first.len() as u64);
    let settle_until = Instant::now() + SETTLE;
    let first_done = run_checks(&ctx, &first, &bar, settle_until);
    for (row, out) in &first_done {
        if let Some(ip) = eval::eth0_address(&out.stdout) {
            world.eth0.insert(row.from.clone(), ip);
        }
    }
    let rest = plan::checks(&world, &groups);
    let follow = plan::follow(&world, &groups);
    bar.set_length(plan::row_count(&first, &rest, follow.as_ref()));
    let (rest_done, follow_rows) = std::thread::scope(|s| {
        let f = s.spawn(|| {
            follow
                .as_ref()
                .map(|f| run_follow(&ctx, f, &world.nodes, &bar))
                .unwrap_or_default()
        });
        let r = run_checks(&ctx, &rest, &bar, settle_until);
        (r, f.join().unwrap_or_default())
    });
    bar.finish_and_clear();
    drop(external);
    drop(cleanup);
    if interrupt::happened() {
        bail!("interrupted");
    }

    let mut rows: Vec<Row> = first_done
        .into_iter()
        .chain(rest_done)
        .map(|(row, _)| row)
        .chain(follow_rows)
        .collect();
    rows.sort_by_key(|r| r.group);
    let elapsed = started.elapsed();
    match a.output {
        Some(Format::Json) => println!(
            "{}",
            serde_json::to_string_pretty(&report::render_json(&layout.name, &rows, elapsed))?
        ),
        None => {
            print!("{}", report::render_table(&rows));
            println!("\n{}", report::summary(&rows, elapsed));
        }
    }
    Ok(u8::from(rows.iter().any(|r| !r.ok)))
}

/// What running a check needs.
struct Ctx<'a> {
    layout: &'a Layout,
    client: &'a Client,
    exe: PathBuf,
}

/// The lab's nodes, in order (node-2 before node-10).
fn nodes(client: &Client) -> anyhow::Result<Vec<Node>> {
    let mut nodes: Vec<Node> = client
        .get(Kind::Node, None, None)?
        .into_iter()
        .filter_map(|o| {
            let Object::Node(n) = o else { return None };
            // Read as the agent reads a node.
            let ip = podnet_agent::plan::internal_ip(&n)?;
            let bridge_ip = podnet_agent::cni_config::pod_cidr(&n)
                .map(|c| Ipv4Addr::from(u32::from(c.network()) + 1));
            Some(Node {
                name: n.metadata.name.clone()?,
                ip,
                bridge_ip,
            })
        })
        .collect();
    nodes.sort_by_key(|n| (layout::node_index(&n.name), n.name.clone()));
    Ok(nodes)
}

/// The pods' and Services' addresses once the workload runs.
fn world(client: &Client, nodes: Vec<Node>, exe: &std::path::Path) -> anyhow::Result<World> {
    let mut pods = BTreeMap::new();
    for o in client.get(Kind::Pod, Some(NAMESPACE), None)? {
        let Object::Pod(p) = &o else { continue };
        if let Some(ip) = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|s| s.parse().ok())
        {
            pods.insert(o.name().to_string(), ip);
        }
    }
    let mut services = BTreeMap::new();
    for o in client.get(Kind::Service, Some(NAMESPACE), None)? {
        let Object::Service(s) = &o else { continue };
        let Some(spec) = &s.spec else { continue };
        let Some(ip) = spec.cluster_ip.as_deref().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let node_port = spec
            .ports
            .iter()
            .flatten()
            .next()
            .and_then(|p| p.node_port)
            .and_then(|p| u16::try_from(p).ok());
        services.insert(o.name().to_string(), Svc { ip, node_port });
    }
    Ok(World {
        nodes,
        pods,
        services,
        eth0: BTreeMap::new(),
        exe: exe.display().to_string(),
    })
}

/// Ready endpoint addresses of a Service, over its slices.
fn ready_endpoints(slices: &[Object], service: &str) -> usize {
    slices
        .iter()
        .filter_map(|o| match o {
            Object::EndpointSlice(e)
                if e.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str)
                    == Some(service) =>
            {
                Some(e)
            }
            _ => None,
        })
        .flat_map(|e| &e.endpoints)
        .filter(|ep| ep.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .map(|ep| ep.addresses.len())
        .sum()
}

/// Waits until every pod of the workload is ready and every Service has its endpoints.
fn wait_ready(client: &Client, w: &plan::Workload) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let pods = client.get(Kind::Pod, Some(NAMESPACE), None)?;
        let slices = client.get(Kind::EndpointSlice, Some(NAMESPACE), None)?;
        let waiting: Vec<String> = w
            .pods
            .iter()
            .filter_map(|name| {
                let pod = pods.iter().find_map(|o| match o {
                    Object::Pod(p) if o.name() == name => Some(p),
                    _ => None,
                });
                match pod {
                    Some(p) if pod_is_ready(p) => None,
                    Some(p) => Some(format!("{name} ({})", super::get::pod_status(p))),
                    None => Some(format!("{name} (missing)")),
                }
            })
            .chain(w.endpoints.iter().filter_map(|(svc, want)| {
                let have = ready_endpoints(&slices, svc);
                (have < *want).then(|| format!("svc/{svc} ({have}/{want} endpoints)"))
            }))
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if interrupt::happened() {
            bail!("interrupted");
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!(
                "the test workload was not ready after {}s: {}",
                READY_TIMEOUT.as_secs(),
                waiting.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deletes the test namespace if it exists and waits until its pods are gone; returns
/// how long that took, or `None` when there was nothing to remove.
fn remove_namespace(client: &Client) -> anyhow::Result<Option<Duration>> {
    let start = Instant::now();
    let exists = client
        .get(Kind::Namespace, None, None)?
        .iter()
        .any(|o| o.name() == NAMESPACE);
    if exists {
        client.delete(vec![ObjectRef {
            kind: Kind::Namespace,
            namespace: None,
            name: NAMESPACE.into(),
        }])?;
    }
    let mut had_pods = false;
    loop {
        let left = client.get(Kind::Pod, Some(NAMESPACE), None)?;
        if left.is_empty() {
            break;
        }
        had_pods = true;
        if start.elapsed() > REMOVE_TIMEOUT {
            bail!(
                "{} pods of namespace {NAMESPACE} still terminating after {}s",
                left.len(),
                REMOVE_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((exists || had_pods).then(|| start.elapsed()))
}

/// Removes the test namespace when the run ends, however it ends.
struct Cleanup<'a>(&'a Ctx<'a>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        match remove_namespace(self.0.client) {
            Ok(Some(d)) => eprintln!(
                "lab test: removed namespace {NAMESPACE} ({:.1}s)",
                d.as_secs_f64()
            ),
            Ok(None) => {}
            Err(e) => eprintln!(
                "lab test: could not remove namespace {NAMESPACE}: {e:#}; remove it with `podnet lab --name {} delete namespace/{NAMESPACE}`",
                self.0.layout.name
            ),
        }
    }
}

/// `podnet lab --name N exec TARGET -n podnet-test -- COMMAND`, stopped after `timeout`.
fn exec(ctx: &Ctx, target: &str, command: &[String], timeout: Duration) -> Output {
    let mut cmd = Command::new(&ctx.exe);
    cmd.args(["lab", "--name", &ctx.layout.name, "exec", target])
        .args(["-n", NAMESPACE, "--"])
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Output {
                stderr: format!("run {}: {e}", ctx.exe.display()),
                ..Output::default()
            }
        }
    };
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = collect(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = collect(child.stderr.take().map(|p| Box::new(p) as _));
    let start = Instant::now();
    let killed_after = loop {
        match child.try_wait() {
            Ok(Some(_)) => break None,
            Ok(None) if start.elapsed() < timeout && !interrupt::happened() => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break Some(start.elapsed());
            }
        }
    };
    Output {
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        killed_after,
    }
}

fn progress(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} lab test: [{bar:24}] {pos}/{len} {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Runs `checks` on a few threads; their rows and outputs, in the checks' order.
fn run_checks(
    ctx: &Ctx,
    checks: &[Check],
    bar: &ProgressBar,
    settle_until: Instant,
) -> Vec<(Row, Output)> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Option<(Row, Output)>>> = Mutex::new(vec![None; checks.len()]);
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(checks.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(c) = checks.get(i) else { break };
                if interrupt::happened() {
                    break;
                }
                bar.set_message(format!("{} {}", c.group.name(), c.name));
                let r = run_check(ctx, c, settle_until);
                bar.inc(1);
                if let Ok(mut d) = done.lock() {
                    d[i] = Some(r);
                }
            });
        }
    });
    done.into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

/// Runs one check; a failure is tried again until `settle_until`.
fn run_check(ctx: &Ctx, c: &Check, settle_until: Instant) -> (Row, Output) {
    let mut tries = 0;
    loop {
        tries += 1;
        let start = Instant::now();
        let out = exec(ctx, &c.target, &c.command, c.timeout);
        let mut v = eval::evaluate(&c.expect, &out);
        // Affinity is judged on one try: retrying until ten requests happen to land on
        // one pod would pass a proxy without affinity.
        let retry = !matches!(c.expect, Expect::Sticky { .. });
        if v.ok || !retry || Instant::now() >= settle_until || interrupt::happened() {
            if v.ok && tries > 1 {
                v.evidence.push_str(&format!(" (try {tries})"));
            }
            let row = Row {
                group: c.group,
                check: c.name.to_string(),
                from: c.from.clone(),
                to: c.to.clone(),
                ok: v.ok,
                evidence: v.evidence,
                millis: start.elapsed().as_millis() as u64,
            };
            return (row, out);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The endpoints-follow scenario (see [`plan::Follow`]): its two rows per client.
fn run_follow(ctx: &Ctx, f: &Follow, nodes: &[Node], bar: &ProgressBar) -> Vec<Row> {
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };
    let [one, two, three] = plan::FOLLOW;
    let (before, removed, added) = (set(&[one, two]), set(&[two]), set(&[two, three]));
    let baseline = poll_follow(ctx, f, &f.clients, &before, Instant::now(), FOLLOW_BASELINE);
    // Only clients that saw both first pods can tell whether answers follow a change.
    let good: Vec<String> = f
        .clients
        .iter()
        .filter(|c| matches!(baseline.get(*c), Some(Ok(_))))
        .cloned()
        .collect();
    let step = |change: Result<(), String>, want: &BTreeSet<String>, limit: Duration| {
        let results: BTreeMap<String, Followed> = match change {
            Ok(()) => poll_follow(ctx, f, &good, want, Instant::now(), limit)
                .into_iter()
                .map(|(c, r)| (c, r.map_or_else(Followed::Never, Followed::Within)))
                .collect(),
            Err(e) => good
                .iter()
                .map(|c| (c.clone(), Followed::NotMade(e.clone())))
                .collect(),
        };
        bar.inc(f.clients.len() as u64);
        results
    };
    let delete = ctx.client.delete(vec![ObjectRef {
        kind: Kind::Pod,
        namespace: Some(NAMESPACE.into()),
        name: one.into(),
    }]);
    let after_remove = step(
        delete.map(drop).map_err(|e| e.to_string()),
        &removed,
        FOLLOW_REMOVED,
    );
    let create = ctx.client.apply(&plan::added_follow_pod(nodes));
    let after_add = step(
        create.map(drop).map_err(|e| e.to_string()),
        &added,
        FOLLOW_ADDED,
    );

    let rows = |check: &str,
                change: String,
                now: &BTreeSet<String>,
                results: &BTreeMap<String, Followed>| {
        f.clients
            .iter()
            .map(|c| {
                let r = match (baseline.get(c), results.get(c)) {
                    (Some(Err(e)), _) => Followed::BadStart(e.clone()),
                    (_, Some(r)) => r.clone(),
                    (_, None) => Followed::Never("no probe ran".into()),
                };
                let v = eval::follow_verdict(&change, &before, now, &r);
                Row {
                    group: Group::PodToService,
                    check: check.into(),
                    from: c.clone(),
                    to: f.to.clone(),
                    ok: v.ok,
                    evidence: v.evidence,
                    millis: match r {
                        Followed::Within(d) => d.as_millis() as u64,
                        _ => 0,
                    },
                }
            })
            .collect::<Vec<_>>()
    };
    let mut out = rows(
        "endpoint-removed",
        format!("deleting {one}"),
        &removed,
        &after_remove,
    );
    out.extend(rows(
        "endpoint-added",
        format!("creating {three}"),
        &added,
        &after_add,
    ));
    out
}

/// Probes the `follow` Service from `clients` until each gets answers from exactly
/// `want`; per client, the time from `since` to the end of the first matching probe (an
/// upper bound), or the evidence of its last probe.
fn poll_follow(
    ctx: &Ctx,
    f: &Follow,
    clients: &[String],
    want: &BTreeSet<String>,
    since: Instant,
    limit: Duration,
) -> BTreeMap<String, Result<Duration, String>> {
    let expect = Expect::Spread {
        endpoints: want.clone(),
    };
    let mut results = BTreeMap::new();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let pending: Vec<&String> = clients
            .iter()
            .filter(|c| !results.contains_key(*c))
            .collect();
        if pending.is_empty() {
            return results;
        }
        if since.elapsed() > limit || interrupt::happened() {
            for c in pending {
                let why = last.remove(c).unwrap_or_else(|| "no probe ran".into());
                results.insert(c.clone(), Err(why));
            }
            return results;
        }
        let round: Vec<(String, Duration, eval::Verdict)> = std::thread::scope(|s| {
            let handles: Vec<_> = pending
                .iter()
                .map(|c| {
                    let expect = &expect;
                    s.spawn(move || {
                        let out = exec(ctx, c, &f.command, f.timeout);
                        (c.to_string(), since.elapsed(), eval::evaluate(expect, &out))
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (c, at, v) in round {
            if v.ok {
                results.insert(c, Ok(at));
            } else {
                last.insert(c, v.evidence);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `podnet probe serve --http 8090` on the external host, for the egress checks; stopped
/// when dropped.
struct ExternalServer(Child);

impl ExternalServer {
    fn start(ctx: &Ctx) -> anyhow::Result<ExternalServer> {
        let port = plan::EXTERNAL_PORT.to_string();
        let child = Command::new(&ctx.exe)
            .args(["lab", "--name", &ctx.layout.name, "exec", "external", "--"])
            .args(["podnet", "probe", "serve", "--http", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start a server on the external host")?;
        Ok(ExternalServer(child))
    }

    /// Waits until the server answers on the external host itself.
    fn wait_answering(&mut self, ctx: &Ctx) -> Result<(), String> {
        let url = format!("http://127.0.0.1:{}/healthz", plan::EXTERNAL_PORT);
        let cmd: Vec<String> = [
            "podnet",
            "probe",
            "get",
            &url,
            "--timeout",
            "500ms",
            "-o",
            "json",
        ]
        .map(str::to_string)
        .to_vec();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Err(format!(
                    "the server on the external host exited ({status}); is port {} taken?",
                    plan::EXTERNAL_PORT
                ));
            }
            let out = exec(ctx, "external", &cmd, Duration::from_secs(3));
            if eval::ProbeRun::parse(&out.stdout).is_some_and(|r| r.errors.is_empty()) {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(5) || interrupt::happened() {
                return Err("the server on the external host did not answer within 5s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ExternalServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ctrl-C: the first stops the checks (the commands running get it too) and lets the
/// namespace be removed; a second one exits at once.
mod interrupt {
    use super::{AtomicBool, Ordering};
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_sigint(_: nix::libc::c_int) {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { nix::libc::_exit(130) };
        }
    }

    pub fn install() {
        let action = SigAction::new(
            SigHandler::Handler(on_sigint),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler only touches an atomic and calls _exit.
        let _ = unsafe { sigaction(Signal::SIGINT, &action) };
    }

    pub fn happened() -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }
}
