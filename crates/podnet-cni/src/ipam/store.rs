//! The pool of one network on disk: `<dataDir>/<network>/pool.json`, guarded by an
//! exclusive `flock` on `<dataDir>/<network>/lock`.
//!
//! Durability: every change is written to a temporary file, which is fsynced, renamed over
//! the pool, and the directory fsynced; a plugin killed at any instant, or a machine that
//! loses power, leaves the old or the new pool, never a torn one.
//!
//! The lock is taken with a bounded wait: a stuck process holding it makes the others
//! answer "try again later", naming the lock and its holder, instead of hanging.
//!
//! `<dataDir>/<network>/adds` tells whether ADDs are in flight: an ADD holds it shared
//! from its allocation until it returns. Rebuilding a lost pool from the node needs it
//! exclusive, because an ADD between allocating an address and creating its interface is
//! visible nowhere but in the pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::Pool;

/// How long an invocation waits for the IPAM lock before it answers "try again later".
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Store {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process held the lock for the whole wait.
    #[error("IPAM lock {} is held by {holder}; gave up after {:.1} s", path.display(), waited.as_secs_f64())]
    Busy {
        path: PathBuf,
        holder: String,
        waited: Duration,
    },
    /// `pool.json` exists but is not a pool.
    #[error("IPAM state {} is unreadable ({reason})", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The pool lock, held: the pool may be read and replaced while this lives.
pub struct Locked<'a> {
    store: &'a Store,
    _lock: Flock<File>,
}

/// Held by an ADD from its allocation until it returns (see the module docs).
pub struct AddInFlight {
    _lock: Flock<File>,
}

/// No ADD is in flight while this lives.
pub struct NoAddsInFlight {
    _lock: Flock<File>,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pool_path(&self) -> PathBuf {
        self.dir.join("pool.json")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// Takes the pool lock, waiting at most `timeout`.
    pub fn lock(&self, timeout: Duration) -> Result<Locked<'_>, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| annotate(e, &self.dir, "create IPAM directory"))?;
        let path = self.lock_path();
        let mut file = open_lock_file(&path)?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    return Ok(Locked {
                        store: self,
                        _lock: lock,
                    })
                }
                Err((f, Errno::EWOULDBLOCK)) => file = f,
                Err((_, errno)) => return Err(annotate(errno.into(), &path, "lock IPAM").into()),
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(StoreError::Busy {
                    holder: lock_holder(&file),
                    path,
                    waited,
                });
            }
            std::thread::sleep(pause.min(timeout - waited));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

impl Locked<'_> {
    /// The pool on disk; `None` if there is no pool file.
    pub fn load(&self) -> Result<Option<Pool>, StoreError> {
        let path = self.store.pool_path();
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Unreadable {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(annotate(e, &path, "read IPAM state").into()),
        }
    }

    /// Replaces the pool on disk, durably.
    pub fn save(&self, pool: &Pool) -> Result<(), StoreError> {
        let dir = self.store.dir();
        let path = self.store.pool_path();
        let tmp = dir.join("pool.json.tmp");
        let bytes = serde_json::to_vec(pool).map_err(io::Error::other)?;
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        write().map_err(|e| annotate(e, &tmp, "write IPAM state"))?;
        fs::rename(&tmp, &path).map_err(|e| annotate(e, &path, "replace IPAM state"))?;
        sync_dir(dir)?;
        Ok(())
    }

    /// Moves an unreadable pool file aside (kept for inspection) and returns where to.
    pub fn move_aside(&self) -> Result<PathBuf, StoreError> {
        let path = self.store.pool_path();
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut aside = self.store.dir().join(format!("pool.json.corrupt-{secs}"));
        let mut n = 1;
        while aside.exists() {
            aside = self
                .store
                .dir()
                .join(format!("pool.json.corrupt-{secs}-{n}"));
            n += 1;
        }
        fs::rename(&path, &aside).map_err(|e| annotate(e, &path, "move IPAM state aside"))?;
        sync_dir(self.store.dir())?;
        Ok(aside)
    }

    /// Marks an ADD in flight until the returned guard is dropped. Never waits: only a
    /// holder of the pool lock (this one) can hold the marker exclusively.
    pub fn add_in_flight(&self) -> Result<AddInFlight, StoreError> {
        let path = self.store.dir().join("adds");
        Flock::lock(open_lock_file(&path)?, FlockArg::LockSharedNonblock)
            .map(|lock| AddInFlight { _lock: lock })
            .map_err(|(_, errno)| annotate(errno.into(), &path, "mark an ADD in flight").into())
    }

    /// Whether no ADD is in flight; if so, none starts while the returned guard lives.
    pub fn no_adds_in_flight(&self) -> Result<Option<NoAddsInFlight>, StoreError> {
        let path = self.store.dir().join("adds");
        match Flock::lock(open_lock_file(&path)?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(NoAddsInFlight { _lock: lock })),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => {
                Err(annotate(errno.into(), &path, "check for ADDs in flight").into())
            }
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| annotate(e, path, "open IPAM lock").into())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| annotate(e, dir, "sync IPAM directory").into())
}

/// Who holds a lock on `file`, from `/proc/locks`: "pid N (comm)", or "another process".
fn lock_holder(file: &File) -> String {
    let unknown = || "another process".to_string();
    let (Ok(meta), Ok(locks)) = (file.metadata(), fs::read_to_string("/proc/locks")) else {
        return unknown();
    };
    let dev = meta.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    );
    // "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"; waiters are marked "->".
    locks
        .lines()
        .filter(|l| !l.contains("->"))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(5) == Some(&want.as_str())).then(|| f.get(4).map(|p| p.to_string()))?
        })
        .map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("pid {pid} ({})", comm.trim())
        })
        .unwrap_or_else(unknown)
}

fn annotate(e: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Attachment;

    fn tmpdir(label: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("podnet-ipam-unit-{}-{label}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn updates_persist_and_concurrent_updates_never_collide() {
        let dir = tmpdir("conc");
        let subnet = "10.0.0.0/24".parse().expect("net");
        let gw = "10.0.0.1".parse().expect("ip");
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let store = Store::new(dir);
                    let locked = store.lock(LOCK_TIMEOUT).expect("lock");
                    let mut pool = locked.load().expect("load").unwrap_or_default();
                    let att = Attachment {
                        container_id: format!("c{i}"),
                        ifname: "eth0".into(),
                    };
                    let ip = pool.allocate(subnet, gw, &att, None).expect("fits");
                    locked.save(&pool).expect("save");
                    ip
                })
            })
            .collect();
        let mut ips: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 16);
        let store = Store::new(&dir);
        let pool = store
            .lock(LOCK_TIMEOUT)
            .expect("lock")
            .load()
            .expect("load");
        assert_eq!(pool.expect("a pool").allocations.len(), 16);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn an_unreadable_pool_is_reported_with_its_path_and_moved_aside() {
        let dir = tmpdir("corrupt");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("pool.json"), b"{not json").expect("write");
        let store = Store::new(&dir);
        let locked = store.lock(LOCK_TIMEOUT).expect("lock");
        let err = locked.load().expect_err("corrupt");
        assert!(
            matches!(&err, StoreError::Unreadable { path, .. } if path.ends_with("pool.json")),
            "{err}"
        );
        let aside = locked.move_aside().expect("move aside");
        assert_eq!(fs::read(&aside).expect("kept"), b"{not json");
        assert!(locked.load().expect("load").is_none());
        drop(locked);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_held_lock_is_waited_for_only_so_long_and_its_holder_named() {
        let dir = tmpdir("busy");
        let store = Store::new(&dir);
        let held = store.lock(LOCK_TIMEOUT).expect("lock");
        let started = Instant::now();
        // flock locks belong to the open file, so a second open in this process waits too.
        let err = store.lock(Duration::from_millis(200)).err().expect("busy");
        assert!(started.elapsed() < Duration::from_secs(2));
        match &err {
            StoreError::Busy { path, holder, .. } => {
                assert!(path.ends_with("lock"));
                assert!(
                    holder.contains(&format!("pid {}", std::process::id())),
                    "{holder}"
                );
            }
            other => panic!("{other}"),
        }
        drop(held);
        store.lock(Duration::from_millis(200)).expect("free again");
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn an_add_in_flight_keeps_a_rebuild_out() {
        let dir = tmpdir("inflight");
        let store = Store::new(&dir);
        let locked = store.lock(LOCK_TIMEOUT).expect("lock");
        let add = locked.add_in_flight().expect("mark");
        assert!(locked.no_adds_in_flight().expect("check").is_none());
        drop(add);
        let quiet = locked.no_adds_in_flight().expect("check");
        assert!(quiet.is_some());
        drop(quiet);
        drop(locked);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
