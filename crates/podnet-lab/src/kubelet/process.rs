//! A pod's containers as processes: each runs inside the pod's network namespace, in a
//! UTS namespace of its own with the pod's name as hostname, in its own process group,
//! with its output appended to a log file.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{sethostname, Pid};
use podnet_kernel::NetNs;

/// What a container runs: `command` + `args`, with `podnet` meaning this very binary.
pub fn argv(exe: &Path, command: &[String], args: &[String]) -> Vec<String> {
    let mut v: Vec<String> = command.iter().chain(args).cloned().collect();
    if v.first().map(String::as_str) == Some("podnet") {
        v[0] = exe.display().to_string();
    }
    v
}

pub struct Spawn<'a> {
    pub argv: &'a [String],
    pub netns: &'a NetNs,
    pub hostname: &'a str,
    pub env: &'a [(String, String)],
    pub log: &'a Path,
}

pub fn spawn(s: &Spawn<'_>) -> std::io::Result<Child> {
    let (prog, args) = s
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"))?;
    let log = open_log(s.log)?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .envs(s.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let fd = s.netns.as_fd().try_clone_to_owned()?;
    // Host names are at most 64 bytes; pod names may be longer.
    let hostname: String = s.hostname.chars().take(63).collect();
    // SAFETY: only async-signal-safe syscalls run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)?;
            unshare(CloneFlags::CLONE_NEWUTS)?;
            sethostname(&hostname)?;
            Ok(())
        });
    }
    cmd.spawn()
}

fn open_log(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Stops a container: SIGTERM to its process group, SIGKILL after `grace`.
pub fn stop(child: &mut Child, grace: Duration) {
    let pgid = Pid::from_raw(child.id() as i32);
    if matches!(child.try_wait(), Ok(Some(_))) {
        // The leader is gone; its group may not be.
        let _ = killpg(pgid, Signal::SIGKILL);
        return;
    }
    let _ = killpg(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            let _ = killpg(pgid, Signal::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podnet_means_this_binary() {
        let exe = Path::new("/opt/podnet/bin/podnet");
        let v = argv(exe, &["podnet".into(), "probe".into()], &["serve".into()]);
        assert_eq!(v, ["/opt/podnet/bin/podnet", "probe", "serve"]);
        let v = argv(exe, &["sleep".into()], &["1".into()]);
        assert_eq!(v, ["sleep", "1"]);
    }
}
