//! `podnet lab demo [--backend vxlan|host-gw] [--rm]`: podnet at work in under a minute.
//!
//! Builds (or reuses) a 3-node lab named `demo` with `lab up`, deploys
//! `examples/web.yaml` (a Deployment of three web pods behind a Service, and a client
//! pod), shows the pods, the Service and its endpoints as `lab get` does, sends requests
//! from the client to the Service, runs `lab test`, and says what to try next.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser};
use indicatif::{ProgressBar, ProgressStyle};
use podnet_lab::{Client, Layout};
use podnet_model::endpoints::pod_is_ready;
use podnet_model::objects::{DEFAULT_NAMESPACE, SERVICE_NAME_LABEL};
use podnet_model::{Kind, Object};

/// The demo's lab.
pub const LAB: &str = "demo";
const WEB_YAML: &str = include_str!("../../../../../examples/web.yaml");
const READY_TIMEOUT: Duration = Duration::from_secs(45);
/// Requests the client sends to the Service.
const REQUESTS: u32 = 9;

#[derive(Args)]
pub struct DemoArgs {
    /// How nodes reach each other's pods, for a new lab (vxlan when not given; an existing
    /// demo lab is reused only if it has this backend).
    #[arg(long, value_parser = ["vxlan", "host-gw"])]
    backend: Option<String>,
    /// Remove the lab at the end.
    #[arg(long)]
    rm: bool,
}

#[derive(Parser)]
#[command(no_binary_name = true)]
struct UpCli {
    #[command(flatten)]
    args: super::up::UpArgs,
}

#[derive(Parser)]
#[command(no_binary_name = true)]
struct GetCli {
    #[command(flatten)]
    args: super::get::GetArgs,
}

/// Shows the command being run, as a person would type it.
fn step(cmd: &str) {
    println!("\n$ podnet lab --name {LAB} {cmd}");
}

/// `podnet lab get ARGS...`, through `get`'s own printing.
fn get(layout: &Layout, args: &[&str]) -> anyhow::Result<()> {
    step(&format!("get {}", args.join(" ")));
    let a = GetCli::try_parse_from(args)?.args;
    super::get::run(layout, a)?;
    Ok(())
}

pub fn run(a: DemoArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let layout = Layout::new(LAB).map_err(anyhow::Error::msg)?;
    let client = super::client(&layout);
    match client.status() {
        Ok(st) => {
            if let Some(b) = a.backend.as_deref().filter(|b| *b != st.config.backend) {
                bail!(
                    "lab {LAB} already exists with backend {}; remove it with `podnet lab --name {LAB} down` to start one with {b}",
                    st.config.backend
                );
            }
            if st.phase != "ready" {
                bail!(
                    "lab {LAB} exists but is {} ({}); remove it with `podnet lab --name {LAB} down`",
                    st.phase,
                    st.message
                );
            }
            println!(
                "lab {LAB} is already up ({} nodes, {}): using it (`podnet lab --name {LAB} down` removes it)",
                st.config.nodes, st.config.backend
            );
            super::get::print_nodes(&client, false)?;
        }
        Err(_) => {
            let backend = a.backend.as_deref().unwrap_or("vxlan");
            let argv = ["--nodes", "3", "--backend", backend];
            step(&format!("up {}", argv.join(" ")));
            let code = super::up::run(&layout, UpCli::try_parse_from(argv)?.args)?;
            if code != 0 {
                return Ok(code);
            }
            reap_supervisor(&client);
        }
    }

    step("apply -f examples/web.yaml");
    super::apply::print_applied(&client.apply(WEB_YAML)?)?;
    wait_app(&client)?;
    get(&layout, &["pods", "-o", "wide"])?;
    get(&layout, &["services", "-o", "wide"])?;
    get(&layout, &["endpointslices"])?;

    let ip = cluster_ip(&client, "web")?;
    let url = format!("http://{ip}/hostname");
    let count = REQUESTS.to_string();
    step(&format!(
        "exec client -- podnet probe get {url} -c {count}    # the client asks the Service {REQUESTS} times: which pods answer?"
    ));
    let exe = std::env::current_exe().context("find the podnet binary")?;
    Command::new(&exe)
        .args(["lab", "--name", LAB, "exec", "client", "--"])
        .args([
            "podnet",
            "probe",
            "get",
            &url,
            "-c",
            &count,
            "--timeout",
            "1s",
        ])
        .status()
        .context("run the client")?;

    step("test    # deploys its own pods in namespace podnet-test and checks the whole network");
    let code = super::test::run(&layout, super::test::TestArgs::default())?;

    if a.rm {
        step("down");
        super::down::run(&layout)?;
    } else {
        let (pod, pod_ip) = a_web_pod(&client)?;
        println!("\nThe lab is still up. Try:");
        for line in [
            format!("podnet lab --name {LAB} get pods -o wide"),
            format!("podnet lab --name {LAB} exec client -- podnet probe get http://{pod_ip}:8080/clientip   # {pod} sees the client's own IP"),
            format!("podnet lab --name {LAB} delete pod/{pod}   # the Deployment replaces it, the Service follows"),
            format!("podnet lab --name {LAB} exec client -- podnet probe get {url} -c 20"),
            format!("podnet lab --name {LAB} exec node/node-1 -- ip route"),
            format!("podnet lab --name {LAB} test --only pod-to-service"),
        ] {
            println!("  {line}");
        }
        println!("Remove it with:\n  podnet lab --name {LAB} down");
    }
    println!(
        "\ndemo finished in {:.1}s{}",
        started.elapsed().as_secs_f64(),
        if code == 0 {
            ": every check passed"
        } else {
            ": some checks FAILED (see above)"
        }
    );
    Ok(code)
}

/// `up` started the supervisor from this process, so it is our child: reap it when it
/// exits (on `down`), or it would linger as our zombie and `down` would wait for it in
/// vain. If the demo ends first, the supervisor is handed to init as usual.
fn reap_supervisor(client: &Client) {
    let Ok(st) = client.status() else { return };
    let Ok(pid) = i32::try_from(st.supervisor_pid) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    });
}

/// Waits until Deployment `web` and pod `client` are ready and the Service has its
/// endpoints.
fn wait_app(client: &Client) -> anyhow::Result<()> {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let start = Instant::now();
    loop {
        let ns = Some(DEFAULT_NAMESPACE);
        let want = client
            .get(Kind::Deployment, ns, Some("web"))?
            .into_iter()
            .find_map(|o| match o {
                Object::Deployment(d) => d.spec.and_then(|s| s.replicas),
                _ => None,
            })
            .unwrap_or(1) as usize;
        let pods = client.get(Kind::Pod, ns, None)?;
        let ready = |p: &&Object| matches!(p, Object::Pod(p) if pod_is_ready(p));
        let web_ready = pods
            .iter()
            .filter(ready)
            .filter(|o| {
                o.meta()
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app"))
                    .map(String::as_str)
                    == Some("web")
            })
            .count();
        let client_ready = pods.iter().filter(ready).any(|o| o.name() == "client");
        let endpoints: usize = client
            .get(Kind::EndpointSlice, ns, None)?
            .iter()
            .filter_map(|o| match o {
                Object::EndpointSlice(e)
                    if e.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .map(String::as_str)
                        == Some("web") =>
                {
                    Some(e.endpoints.len())
                }
                _ => None,
            })
            .sum();
        bar.set_message(format!(
            "waiting for the pods: web {web_ready}/{want} ready, client {}, Service web {endpoints}/{want} endpoints",
            if client_ready { "ready" } else { "not ready" }
        ));
        if web_ready >= want && client_ready && endpoints >= want {
            bar.finish_and_clear();
            println!(
                "web {web_ready}/{want} and client ready ({:.1}s)",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if start.elapsed() > READY_TIMEOUT {
            bar.abandon();
            bail!(
                "the demo's pods were not ready after {}s; see `podnet lab --name {LAB} get pods -o wide`",
                READY_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cluster_ip(client: &Client, name: &str) -> anyhow::Result<String> {
    client
        .get(Kind::Service, Some(DEFAULT_NAMESPACE), Some(name))?
        .into_iter()
        .find_map(|o| match o {
            Object::Service(s) => s.spec.and_then(|s| s.cluster_ip),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("Service {name} has no ClusterIP"))
}

/// The name and IP of one web pod, for the suggestions.
fn a_web_pod(client: &Client) -> anyhow::Result<(String, String)> {
    client
        .get(Kind::Pod, Some(DEFAULT_NAMESPACE), None)?
        .into_iter()
        .find_map(|o| match &o {
            Object::Pod(p)
                if o.meta()
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app"))
                    .map(String::as_str)
                    == Some("web") =>
            {
                let ip = p.status.as_ref()?.pod_ip.clone()?;
                Some((o.name().to_string(), ip))
            }
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("no web pod"))
}
