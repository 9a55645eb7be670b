//! Network namespaces: open one by path, enter it on the current thread, and create or
//! delete named ones under `/run/netns` the way iproute2 does (so `ip netns` sees them).
//!
//! Entering a namespace changes only the calling thread, so [`NetNsGuard`] is `!Send` and
//! restores the previous namespace on drop. Never hold one on a multi-threaded async
//! runtime's worker.

use std::fs::{self, File};
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Where named namespaces live, as with `ip netns add`.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace bound at `path` (e.g. `/run/netns/pod-1` or `/proc/123/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> io::Result<NetNs> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path)?;
        // A plain file at that path would make setns fail later with a confusing EINVAL.
        let ns = NetNs { file, path };
        ns.check_is_netns()?;
        Ok(ns)
    }

    /// The namespace the calling thread is in now.
    pub fn current() -> io::Result<NetNs> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    /// Opens the namespace named `name` under [`NETNS_RUN_DIR`].
    pub fn open_named(name: &str) -> io::Result<NetNs> {
        NetNs::open(Path::new(NETNS_RUN_DIR).join(name))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the calling thread into this namespace until the guard is dropped.
    pub fn enter(&self) -> io::Result<NetNsGuard> {
        let previous = NetNs::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        Ok(NetNsGuard {
            previous,
            _not_send: PhantomData,
        })
    }

    /// Runs `f` with the calling thread inside this namespace.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let _guard = self.enter()?;
        Ok(f())
    }

    /// Which namespace this is: equal ids are the same namespace, whatever the paths.
    pub fn id(&self) -> io::Result<NsId> {
        let st = nix::sys::stat::fstat(&self.file).map_err(io::Error::from)?;
        Ok(NsId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    fn check_is_netns(&self) -> io::Result<()> {
        // NSFS_MAGIC: the bind mount (or /proc link) of a namespace lives on nsfs.
        const NSFS_MAGIC: i64 = 0x6e73_6673;
        // NS_GET_NSTYPE (_IO(0xb7, 0x3)): the CLONE_NEW* flag of the namespace's type.
        const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
        let not_netns = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is {what}, not a network namespace", self.path.display()),
            )
        };
        let st = nix::sys::statfs::fstatfs(&self.file).map_err(io::Error::from)?;
        if st.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(not_netns("not a namespace"));
        }
        // nsfs holds every kind of namespace; a UTS or mount namespace would only fail
        // later, in setns or in a netlink request, with a bare EINVAL.
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the open descriptor.
        let kind = unsafe { libc::ioctl(self.file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind < 0 {
            return Err(io::Error::last_os_error());
        }
        if kind != libc::CLONE_NEWNET {
            return Err(not_netns("another kind of namespace"));
        }
        Ok(())
    }
}

/// A namespace's identity while it lives: the nsfs device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The calling thread is inside another namespace while this lives.
#[must_use = "the namespace is left again as soon as the guard is dropped"]
pub struct NetNsGuard {
    previous: NetNs,
    _not_send: PhantomData<*const ()>,
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        // Failing to return would leave this thread configuring the wrong namespace;
        // there is no safe way to continue.
        if let Err(e) = setns(self.previous.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            panic!(
                "cannot return to network namespace {}: {e}",
                self.previous.path.display()
            );
        }
    }
}

/// Creates a new, empty network namespace bound at `/run/netns/<name>` and returns it.
/// Fails with `AlreadyExists` if the name is taken.
pub fn create_named(name: &str) -> io::Result<NetNs> {
    validate_name(name)?;
    ensure_run_dir()?;
    let path = Path::new(NETNS_RUN_DIR).join(name);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    // unshare() moves the calling thread, so do it on a thread of its own that ends
    // right after; the bind mount keeps the namespace alive.
    let target = path.clone();
    let made = std::thread::spawn(move || -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
    })
    .join()
    .map_err(|_| io::Error::other("namespace creation thread panicked"))?;
    if let Err(e) = made {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    NetNs::open(&path)
}

/// Deletes `/run/netns/<name>`. The namespace itself goes away once no process and no
/// other mount holds it. Succeeds if it is already gone.
pub fn delete_named(name: &str) -> io::Result<()> {
    validate_name(name)?;
    let path = Path::new(NETNS_RUN_DIR).join(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Names of the namespaces under `/run/netns` that start with `prefix`.
pub fn list_named(prefix: &str) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn validate_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid network namespace name {name:?}"),
        ));
    }
    Ok(())
}

/// Makes `/run/netns` a shared mount point, as iproute2 does, so namespaces bound there
/// are visible in every mount namespace.
fn ensure_run_dir() -> io::Result<()> {
    fs::create_dir_all(NETNS_RUN_DIR)?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_RUN_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            shared().map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}
