//! Fixtures for tests that need the kernel: every namespace and directory a test makes
//! carries the prefix `pntest-<pid>-`, is removed when the fixture is dropped (also on
//! panic), and a later run sweeps what a killed run left behind (its pid is gone).
//!
//! Nothing here touches the machine's own network namespace: traffic starts and ends in
//! namespaces the fixture made.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
pub use podnet_kernel::netns;
use podnet_kernel::NetNs;

pub mod apiserver;

/// Every test artefact starts with this, then the creating process's pid.
pub const PREFIX: &str = "pntest-";

/// Fails the test unless it runs as root: these tests need to create namespaces.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and must run as root (sudo cargo test)"
    );
}

/// A set of namespaces and a state directory belonging to one test.
pub struct Fixture {
    prefix: String,
    dir: PathBuf,
    namespaces: Vec<String>,
}

impl Fixture {
    pub fn new(label: &str) -> Fixture {
        require_root();
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_stale);
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "{PREFIX}{}-{}{}",
            std::process::id(),
            label,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fixture's state directory");
        Fixture {
            prefix,
            dir,
            namespaces: Vec::new(),
        }
    }

    /// The fixture's private state directory (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the namespace `<prefix>-<name>` (as new as `ip netns add` makes it: only
    /// `lo`, down) and returns its handle.
    pub fn netns(&mut self, name: &str) -> NetNs {
        let full = format!("{}-{name}", self.prefix);
        let ns = netns::create_named(&full)
            .unwrap_or_else(|e| panic!("create network namespace {full}: {e}"));
        self.namespaces.push(full);
        ns
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for name in self.namespaces.drain(..) {
            if let Err(e) = netns::delete_named(&name) {
                eprintln!("fixture: cannot delete network namespace {name}: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes namespaces and directories of earlier test processes that no longer run.
fn sweep_stale() {
    let stale = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return false;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        pid.parse::<u32>()
            .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(names) = netns::list_named(PREFIX) {
        for name in names.iter().filter(|n| stale(n)) {
            let _ = netns::delete_named(name);
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Makes `cmd` start inside `ns` (setns in the child before exec, so the test process
/// itself never moves).
pub fn in_netns<'a>(cmd: &'a mut Command, ns: &NetNs) -> &'a mut Command {
    let fd = ns
        .as_fd()
        .try_clone_to_owned()
        .expect("duplicate namespace fd");
    // SAFETY: setns is async-signal-safe; the closure only makes that one syscall.
    unsafe {
        cmd.pre_exec(move || {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        })
    }
}

/// Runs `f` on a new thread that lives inside `ns`.
pub fn on_thread_in<T: Send + 'static>(
    ns: &NetNs,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = NetNs::open(ns.path()).expect("reopen namespace");
    std::thread::spawn(move || {
        let _guard = ns.enter().expect("enter namespace");
        f()
    })
}

/// A TCP listener bound inside `ns`; answers each connection with the address it saw
/// the client come from.
pub fn tcp_echo_source(ns: &NetNs, bind: SocketAddr) -> SocketAddr {
    let listener = ns
        .run(|| TcpListener::bind(bind))
        .expect("enter namespace")
        .expect("bind TCP listener");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            if let Ok(peer) = conn.peer_addr() {
                let _ = conn.write_all(peer.ip().to_string().as_bytes());
            }
        }
    });
    addr
}

/// Connects from inside `ns` to a [`tcp_echo_source`] server; returns what it saw.
pub fn tcp_ask_source(ns: &NetNs, server: SocketAddr) -> std::io::Result<String> {
    let mut conn = ns.run(|| TcpStream::connect_timeout(&server, Duration::from_secs(3)))??;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    Ok(out)
}

/// A UDP socket bound inside `ns`; answers each datagram with its source address.
pub fn udp_echo_source(ns: &NetNs, bind: SocketAddr) -> SocketAddr {
    let sock = ns
        .run(|| UdpSocket::bind(bind))
        .expect("enter namespace")
        .expect("bind UDP socket");
    let addr = sock.local_addr().expect("local addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(peer.ip().to_string().as_bytes(), peer);
        }
    });
    addr
}

/// Sends a datagram from inside `ns` to a [`udp_echo_source`] server; returns the answer.
pub fn udp_ask_source(ns: &NetNs, server: SocketAddr) -> std::io::Result<String> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let sock = ns.run(|| UdpSocket::bind(bind))??;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 1500];
    // A few tries: the first datagram may wait on ARP resolution.
    for _ in 0..3 {
        sock.send_to(b"?", server)?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no UDP answer from {server}"),
    ))
}

/// Builds (once per test process) `tests/libcni-client`, the Go program that drives CNI
/// plugins through libcni as containerd, CRI-O and Podman do, into `out_dir` (a test's
/// `CARGO_TARGET_TMPDIR`); returns its path. Needs Debian's golang-go and
/// golang-github-appc-cni-dev (GOPATH mode: no module download).
pub fn libcni_client(out_dir: &Path) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let out = out_dir.join("libcni-client");
            let status = Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg("./tests/libcni-client")
                .current_dir(&root)
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .env("GOCACHE", out_dir.join("gocache"))
                .status()
                .expect("run `go` (install golang-go and golang-github-appc-cni-dev)");
            assert!(status.success(), "building the libcni client failed");
            out
        })
        .clone()
}
