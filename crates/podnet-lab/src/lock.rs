//! Creating a lab is exclusive. `lab up` takes an flock on `/run/podnet/labs/N/lock` and
//! hands the locked descriptor to the supervisor it starts, which holds it until it exits:
//! there is no moment when neither holds it, so a second `up` of the same name fails at
//! once instead of starting a second supervisor over the first.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};

use crate::layout::{Layout, LABS_DIR};
use crate::teardown;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lab {lab:?} is being created or already exists ({holder} holds {path}); use it, or remove it with `podnet lab down --name {lab}`")]
    Held {
        lab: String,
        /// Who holds the lock, as well as can be told.
        holder: String,
        path: String,
    },
    #[error("lab {lab:?}: {what}: {source}")]
    Io {
        lab: String,
        what: String,
        source: io::Error,
    },
    #[error("lab {lab:?}: descriptor {fd} is not the lock of the lab ({path})")]
    NotTheLock {
        lab: String,
        fd: RawFd,
        path: String,
    },
}

/// The held lock of one lab; released when its last holder exits.
#[derive(Debug)]
pub struct LabLock {
    file: File,
    created_dir: bool,
}

impl LabLock {
    /// Takes the lock of `layout`'s lab, creating its state directory if there is none.
    pub fn acquire(layout: &Layout) -> Result<LabLock, LockError> {
        let io_err = |what: String| {
            let lab = layout.name.clone();
            move |source| LockError::Io { lab, what, source }
        };
        let path = layout.lock_file();
        fs::create_dir_all(LABS_DIR).map_err(io_err(format!("create {LABS_DIR}")))?;
        // The holder before us may remove the directory, lock file and all, just as we open
        // it: a lock on a removed file protects nothing, so check and take a fresh one.
        for _ in 0..5 {
            let created_dir = match fs::create_dir(layout.dir()) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(io_err(format!("create {}", layout.dir().display()))(e)),
            };
            let file = match OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(LockError::Held {
                        lab: layout.name.clone(),
                        holder: match teardown::supervisor_pid(layout) {
                            Some(pid) => format!("its supervisor, pid {pid},"),
                            None => "another `podnet lab up`".into(),
                        },
                        path: path.display().to_string(),
                    })
                }
                Err(TryLockError::Error(e)) => {
                    return Err(io_err(format!("lock {}", path.display()))(e))
                }
            }
            if same_file(&file, &path) {
                return Ok(LabLock { file, created_dir });
            }
        }
        Err(io_err(format!("lock {}", path.display()))(
            io::Error::other("the lock file keeps being removed; is `podnet lab down` running?"),
        ))
    }

    /// Adopts the lock `up` passed down as descriptor `fd` (see [`LabLock::inherit`]), and
    /// keeps it from the supervisor's own children.
    pub fn adopt(layout: &Layout, fd: OwnedFd) -> Result<LabLock, LockError> {
        let path = layout.lock_file();
        let raw = fd.as_raw_fd();
        let file = File::from(fd);
        if !same_file(&file, &path) {
            return Err(LockError::NotTheLock {
                lab: layout.name.clone(),
                fd: raw,
                path: path.display().to_string(),
            });
        }
        fcntl(&file, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| LockError::Io {
            lab: layout.name.clone(),
            what: format!("keep descriptor {raw} from child processes"),
            source: e.into(),
        })?;
        Ok(LabLock {
            file,
            created_dir: false,
        })
    }

    /// Whether taking the lock created the lab's state directory (nothing of an earlier
    /// lab of this name was there).
    pub fn created_dir(&self) -> bool {
        self.created_dir
    }

    /// Lets the process `cmd` starts inherit the lock; returns the descriptor number it
    /// will have there.
    pub fn inherit(&self, cmd: &mut Command) -> RawFd {
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl is async-signal-safe, and `fd` stays open in the parent until the
        // child is spawned (we borrow `self`), so it is open in the forked child.
        unsafe {
            cmd.pre_exec(move || {
                let fd = BorrowedFd::borrow_raw(fd);
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
                    .map(drop)
                    .map_err(io::Error::from)
            });
        }
        fd
    }
}

/// Whether `file` is the file now at `path` (not one removed meanwhile).
fn same_file(file: &File, path: &std::path::Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lab directory of this test's own, removed on drop.
    struct Dir(Layout);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(self.0.dir());
        }
    }

    #[test]
    fn one_holder_at_a_time_and_a_removed_lock_file_is_not_a_lock() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test writes {LABS_DIR} and must run as root"
        );
        let dir = Dir(Layout::new(&format!("lockt{}", std::process::id())).expect("name"));
        let layout = &dir.0;
        let first = LabLock::acquire(layout).expect("free");
        assert!(first.created_dir());
        let err = LabLock::acquire(layout).expect_err("held");
        assert_eq!(
            err.to_string(),
            format!(
                "lab {:?} is being created or already exists (another `podnet lab up` holds {}); use it, or remove it with `podnet lab down --name {}`",
                layout.name,
                layout.lock_file().display(),
                layout.name
            )
        );
        // A holder that removes the directory (as `down` does) leaves the next one free.
        fs::remove_dir_all(layout.dir()).expect("remove");
        let second = LabLock::acquire(layout).expect("a fresh lock");
        assert!(second.created_dir());
        drop(first);
        drop(second);
        let third = LabLock::acquire(layout).expect("released on drop");
        assert!(!third.created_dir());
    }
}
