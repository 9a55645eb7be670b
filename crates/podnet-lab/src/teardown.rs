//! Removing a lab: ask its supervisor to shut down cleanly, then make sure whatever is
//! left goes too, even after a crash: every process inside one of the lab's namespaces,
//! every namespace named with the lab's prefix, the supervisor and the state directory.
//! Nothing of another lab is touched: they have other prefixes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use podnet_kernel::netns;

use crate::client::Client;
use crate::layout::{Layout, LABS_DIR};

/// What `down` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub graceful: bool,
    pub processes: usize,
    pub namespaces: usize,
}

pub fn down(layout: &Layout) -> std::io::Result<Removed> {
    let mut removed = Removed::default();
    let client = Client::new(layout);
    let supervisor = supervisor_pid(layout);
    if client.shutdown().is_ok() {
        removed.graceful = supervisor.is_none_or(|pid| wait_exit(pid, Duration::from_secs(30)));
    }
    if let Some(pid) = supervisor.filter(|_| !removed.graceful) {
        if kill(pid, Signal::SIGKILL).is_ok() {
            removed.processes += 1;
        }
    }
    let mut errors = Vec::new();
    match remove_namespaces(layout) {
        Ok((processes, namespaces)) => {
            removed.processes += processes;
            removed.namespaces += namespaces;
        }
        Err(e) => errors.push(e.to_string()),
    }
    match fs::remove_dir_all(layout.dir()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            errors.push(format!("{}: {e}", layout.dir().display()))
        }
        _ => {}
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(std::io::Error::other(format!(
            "could not remove: {}",
            errors.join("; ")
        )))
    }
}

/// Kills every process in one of the lab's namespaces and deletes the namespaces;
/// returns how many of each.
pub fn remove_namespaces(layout: &Layout) -> std::io::Result<(usize, usize)> {
    let names = netns::list_named(&layout.netns_prefix())?;
    let processes = kill_processes_in(&names);
    let mut errors = Vec::new();
    let mut namespaces = 0;
    for name in &names {
        match netns::delete_named(name) {
            Ok(()) => namespaces += 1,
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok((processes, namespaces))
    } else {
        Err(std::io::Error::other(errors.join("; ")))
    }
}

fn wait_exit(pid: Pid, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        // Signal 0 probes; the supervisor is not our child, so it cannot linger as a zombie of ours.
        if kill(pid, None).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The supervisor's pid, if its pid file names a live `podnet lab supervise` of this lab.
pub fn supervisor_pid(layout: &Layout) -> Option<Pid> {
    let pid: i32 = fs::read_to_string(layout.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.contains(&b"supervise".as_slice()) && args.contains(&layout.name.as_bytes());
    ours.then(|| Pid::from_raw(pid))
}

/// SIGKILLs every process whose network namespace is one of `names`; returns how many.
fn kill_processes_in(names: &[String]) -> usize {
    let inodes: Vec<(u64, u64)> = names
        .iter()
        .filter_map(|n| fs::metadata(Path::new(netns::NETNS_RUN_DIR).join(n)).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    if inodes.is_empty() {
        return 0;
    }
    let mut killed = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return 0;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(m) = fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if inodes.contains(&(m.dev(), m.ino())) && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
        {
            killed.push(pid);
        }
    }
    // Return once they are gone (or only zombies), so "down" means down.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && killed.iter().any(|pid| alive(*pid)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    killed.len()
}

fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Names of the labs that have state on this machine.
pub fn lab_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(LABS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
