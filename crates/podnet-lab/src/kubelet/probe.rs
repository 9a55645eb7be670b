//! Readiness probes, run as the kubelet runs them: TCP and HTTP from the node's network
//! namespace to the pod's address, exec inside the pod.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use podnet_kernel::NetNs;
use podnet_model::k8s_openapi::api::core::v1::{Container, Probe};
use podnet_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::process::argv;

/// Resolves a probe's port: a number, or the name of one of the container's ports.
fn port(container: &Container, p: &IntOrString) -> Result<u16, String> {
    let n = match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .map(|cp| cp.container_port)
            .ok_or_else(|| format!("container {} has no port named {name:?}", container.name))?,
    };
    u16::try_from(n).map_err(|_| format!("port {n} out of range"))
}

/// Runs one probe; `Ok` when it passes, the reason when not.
pub fn run(
    probe: &Probe,
    container: &Container,
    pod_ip: IpAddr,
    node: &NetNs,
    pod: &NetNs,
    exe: &Path,
) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(t) = &probe.tcp_socket {
        let addr = SocketAddr::new(host(t.host.as_deref(), pod_ip), port(container, &t.port)?);
        return node
            .run(|| TcpStream::connect_timeout(&addr, timeout))
            .map_err(|e| e.to_string())?
            .map(drop)
            .map_err(|e| format!("tcp {addr}: {e}"));
    }
    if let Some(h) = &probe.http_get {
        let addr = SocketAddr::new(host(h.host.as_deref(), pod_ip), port(container, &h.port)?);
        let path = h.path.as_deref().unwrap_or("/");
        let mut conn = node
            .run(|| TcpStream::connect_timeout(&addr, timeout))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("http {addr}{path}: {e}"))?;
        return http_status(&mut conn, addr, path, timeout).and_then(|code| {
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("http {addr}{path}: status {code}"))
            }
        });
    }
    if let Some(e) = &probe.exec {
        let cmd = e.command.as_deref().unwrap_or_default();
        return exec(&argv(exe, cmd, &[]), pod, timeout);
    }
    Err("the probe has no handler".into())
}

fn host(h: Option<&str>, pod_ip: IpAddr) -> IpAddr {
    h.and_then(|h| h.parse().ok()).unwrap_or(pod_ip)
}

/// The status code of `GET path`. A probe needs only the status line, so this speaks
/// just enough HTTP/1.0 for it.
fn http_status(
    conn: &mut TcpStream,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<u16, String> {
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let req =
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: podnet-lab-probe\r\n\r\n");
    conn.write_all(req.as_bytes())
        .map_err(|e| format!("http {addr}{path}: {e}"))?;
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while !got.contains(&b'\n') && got.len() < 64 {
        let n = conn
            .read(&mut buf)
            .map_err(|e| format!("http {addr}{path}: {e}"))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("http {addr}{path}: no HTTP status line"))
}

fn exec(argv: &[String], pod: &NetNs, timeout: Duration) -> Result<(), String> {
    let (prog, args) = argv.split_first().ok_or("exec probe without a command")?;
    let fd = pod
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only setns runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("exec {prog}: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("exec {prog}: {status}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("exec {prog}: timed out after {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("exec {prog}: {e}")),
        }
    }
}
