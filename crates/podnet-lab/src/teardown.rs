//! Removing a lab: ask its supervisor to shut down cleanly, then make sure whatever is
//! left goes too, even after a crash: every process inside one of the lab's namespaces,
//! every namespace named with the lab's prefix, the supervisor and the state directory.
//! Nothing of another lab is touched: they have other prefixes.
//!
//! A supervisor that does not answer (stopped with SIGSTOP, or hung) is killed by the pid
//! it recorded, at once: it cannot exit by itself, so waiting for it would only hang `down`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use podnet_kernel::netns;

use crate::client::Client;
use crate::layout::{Layout, LABS_DIR};

/// How long a supervisor has to answer the request to shut down.
const SHUTDOWN_ANSWER: Duration = Duration::from_secs(3);
/// How long a supervisor that agreed to shut down has to stop its pods and agents and exit.
const SHUTDOWN_EXIT: Duration = Duration::from_secs(30);

/// How the supervisor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It stopped everything and exited when asked.
    ShutDown,
    /// It was stopped (SIGSTOP), so it was killed without asking.
    KilledStopped,
    /// It did not answer the request to shut down within [`SHUTDOWN_ANSWER`] (or was not
    /// listening yet).
    KilledNoAnswer,
    /// It answered but did not exit within [`SHUTDOWN_EXIT`] (or was stopped meanwhile).
    KilledSlow,
}

/// What `down` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub lab: String,
    /// The supervisor's pid and how it ended, if one ran.
    pub supervisor: Option<(i32, Ended)>,
    /// Processes killed in the lab's namespaces (pods and agents a dead supervisor left).
    pub processes: usize,
    /// The lab's namespaces that existed (whether its supervisor or `down` removed them).
    pub namespaces: usize,
    /// The state directory, if it existed.
    pub dir: Option<PathBuf>,
}

impl Removed {
    /// One line for the user, which never reads as "nothing" when something was removed.
    pub fn summary(&self) -> String {
        let lab = &self.lab;
        if self.supervisor.is_none()
            && self.processes == 0
            && self.namespaces == 0
            && self.dir.is_none()
        {
            return format!("lab {lab} does not exist; nothing to remove");
        }
        let count =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut done = vec![match self.supervisor {
            Some((pid, Ended::ShutDown)) => format!("stopped the supervisor (pid {pid})"),
            Some((pid, Ended::KilledStopped)) => {
                format!("killed the supervisor (pid {pid}), which was stopped (SIGSTOP)")
            }
            Some((pid, Ended::KilledNoAnswer)) => {
                format!("killed the supervisor (pid {pid}), which did not answer")
            }
            Some((pid, Ended::KilledSlow)) => format!(
                "killed the supervisor (pid {pid}), which did not exit within {}s",
                SHUTDOWN_EXIT.as_secs()
            ),
            None => "no supervisor was running".to_string(),
        }];
        if self.processes > 0 {
            done.push(format!(
                "killed {} left in its namespaces",
                count(self.processes, "process", "processes")
            ));
        }
        let mut gone = Vec::new();
        if self.namespaces > 0 {
            gone.push(count(self.namespaces, "namespace", "namespaces"));
        }
        if let Some(dir) = &self.dir {
            gone.push(dir.display().to_string());
        }
        if !gone.is_empty() {
            done.push(format!("removed {}", gone.join(" and ")));
        }
        format!("lab {lab}: {}", done.join(", "))
    }
}

pub fn down(layout: &Layout) -> std::io::Result<Removed> {
    let mut errors = Vec::new();
    let namespaces_before = match netns::list_named(&layout.netns_prefix()) {
        Ok(n) => n.len(),
        Err(e) => {
            errors.push(e.to_string());
            0
        }
    };
    let dir = layout.dir().exists().then(|| layout.dir());
    let supervisor =
        find_supervisor(layout).map(|pid| (pid.as_raw(), stop_supervisor(layout, pid)));
    let mut removed = Removed {
        lab: layout.name.clone(),
        supervisor,
        processes: 0,
        namespaces: namespaces_before,
        dir,
    };
    match remove_namespaces(layout) {
        Ok((processes, namespaces)) => {
            removed.processes = processes;
            removed.namespaces = removed.namespaces.max(namespaces);
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
            "could not remove all of lab {}: {}",
            layout.name,
            errors.join("; ")
        )))
    }
}

/// Ends the supervisor: asks it to shut down if it can answer, kills it otherwise; returns
/// once it is gone.
fn stop_supervisor(layout: &Layout, pid: Pid) -> Ended {
    let ended = if is_stopped(pid) {
        Ended::KilledStopped
    } else {
        match Client::new(layout).with_timeout(SHUTDOWN_ANSWER).shutdown() {
            Ok(()) if wait_exit(pid, SHUTDOWN_EXIT) => return Ended::ShutDown,
            Ok(()) => Ended::KilledSlow,
            Err(_) => Ended::KilledNoAnswer,
        }
    };
    // SIGKILL ends a stopped process too.
    let _ = kill(pid, Signal::SIGKILL);
    wait_exit(pid, Duration::from_secs(5));
    ended
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

/// Waits until `pid` has exited; `false` if it still runs after `limit`, or was stopped
/// meanwhile (then it cannot exit by itself).
fn wait_exit(pid: Pid, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        // The supervisor is not our child (except under `lab demo`): it may linger as a
        // zombie until its parent reaps it, which is gone enough.
        if !alive(pid.as_raw()) {
            return true;
        }
        if is_stopped(pid) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Whether `pid` is stopped by a signal (SIGSTOP, SIGTSTP) or a tracer.
pub fn is_stopped(pid: Pid) -> bool {
    process_state(pid.as_raw()).is_some_and(|s| s == 'T' || s == 't')
}

/// A process's state letter (`R`, `S`, `T`, `Z`, ...), if it exists.
fn process_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name in parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The supervisor's pid, if its pid file names a live `podnet lab supervise` of this lab.
pub fn supervisor_pid(layout: &Layout) -> Option<Pid> {
    let pid: i32 = fs::read_to_string(layout.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_supervisor(layout, pid).then(|| Pid::from_raw(pid))
}

/// Whether `pid` is a `podnet lab supervise` of this lab.
fn is_supervisor(layout: &Layout, pid: i32) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.contains(&b"supervise".as_slice()) && args.contains(&layout.name.as_bytes())
}

/// The supervisor's pid from its pid file or, if that is gone, from the supervisor itself.
fn find_supervisor(layout: &Layout) -> Option<Pid> {
    supervisor_pid(layout).or_else(|| {
        let st = Client::new(layout)
            .with_timeout(SHUTDOWN_ANSWER)
            .status()
            .ok()?;
        let pid = i32::try_from(st.supervisor_pid).ok()?;
        is_supervisor(layout, pid).then(|| Pid::from_raw(pid))
    })
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
    process_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
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

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(
        supervisor: Option<(i32, Ended)>,
        processes: usize,
        namespaces: usize,
        dir: bool,
    ) -> Removed {
        Removed {
            lab: "x".into(),
            supervisor,
            processes,
            namespaces,
            dir: dir.then(|| PathBuf::from("/run/podnet/labs/x")),
        }
    }

    #[test]
    fn down_says_what_it_removed_and_never_reads_as_nothing() {
        assert_eq!(
            removed(Some((42, Ended::ShutDown)), 0, 7, true).summary(),
            "lab x: stopped the supervisor (pid 42), removed 7 namespaces and /run/podnet/labs/x"
        );
        assert_eq!(
            removed(Some((42, Ended::KilledStopped)), 3, 4, true).summary(),
            "lab x: killed the supervisor (pid 42), which was stopped (SIGSTOP), killed 3 processes left in its namespaces, removed 4 namespaces and /run/podnet/labs/x"
        );
        assert_eq!(
            removed(Some((42, Ended::KilledNoAnswer)), 0, 1, false).summary(),
            "lab x: killed the supervisor (pid 42), which did not answer, removed 1 namespace"
        );
        assert_eq!(
            removed(None, 1, 0, true).summary(),
            "lab x: no supervisor was running, killed 1 process left in its namespaces, removed /run/podnet/labs/x"
        );
        assert_eq!(
            removed(None, 0, 0, false).summary(),
            "lab x does not exist; nothing to remove"
        );
    }

    #[test]
    fn process_states_are_read_from_proc() {
        let me = Pid::this();
        assert!(alive(me.as_raw()));
        assert!(!is_stopped(me));
        assert_eq!(process_state(i32::MAX), None);
    }
}
