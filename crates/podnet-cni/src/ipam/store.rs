//! The pool of one network on disk: `<dataDir>/<network>/pool.json`, guarded by an
//! exclusive `flock` on `<dataDir>/<network>/lock`.
//!
//! Crash safety: every change is written to a temporary file and renamed over the pool,
//! so a plugin killed at any instant leaves either the old or the new pool, never a torn
//! one. An allocation is recorded before any interface gets the address, so a crash never
//! yields two pods with one address; an allocation whose ADD died is found again by the
//! next ADD or DEL of the same attachment, or freed by GC. No fsync: the pool describes
//! pods, and pods do not survive the machine going down.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::Pool;

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pool_path(&self) -> PathBuf {
        self.dir.join("pool.json")
    }

    fn lock(&self) -> io::Result<Flock<File>> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| annotate(e, &self.dir, "create IPAM directory"))?;
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| annotate(e, &path, "open IPAM lock"))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| annotate(errno.into(), &path, "lock IPAM"))
    }

    fn load(&self) -> io::Result<Pool> {
        let path = self.pool_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "IPAM state {} is corrupt ({e}); move it aside and run GC to rebuild from the runtime's attachments",
                        path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Pool::default()),
            Err(e) => Err(annotate(e, &path, "read IPAM state")),
        }
    }

    fn save(&self, pool: &Pool) -> io::Result<()> {
        let path = self.pool_path();
        let tmp = self.dir.join("pool.json.tmp");
        let bytes = serde_json::to_vec(pool).map_err(io::Error::other)?;
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| annotate(e, &tmp, "write IPAM state"))?;
        f.write_all(&bytes)
            .map_err(|e| annotate(e, &tmp, "write IPAM state"))?;
        fs::rename(&tmp, &path).map_err(|e| annotate(e, &path, "replace IPAM state"))
    }

    /// Runs `f` on the pool under the lock and saves the pool if `f` changed it.
    pub fn update<R>(&self, f: impl FnOnce(&mut Pool) -> R) -> io::Result<R> {
        let _lock = self.lock()?;
        let mut pool = self.load()?;
        let before = pool.clone();
        let r = f(&mut pool);
        if pool != before {
            self.save(&pool)?;
        }
        Ok(r)
    }

    /// The pool as it is now.
    pub fn read(&self) -> io::Result<Pool> {
        if !self.dir.exists() {
            return Ok(Pool::default());
        }
        let _lock = self.lock()?;
        self.load()
    }
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
    fn update_persists_and_concurrent_updates_never_collide() {
        let dir = tmpdir("conc");
        let subnet = "10.0.0.0/24".parse().expect("net");
        let gw = "10.0.0.1".parse().expect("ip");
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    Store::new(dir)
                        .update(|p| {
                            p.allocate(
                                subnet,
                                gw,
                                &Attachment {
                                    container_id: format!("c{i}"),
                                    ifname: "eth0".into(),
                                },
                            )
                        })
                        .expect("io")
                        .expect("fits")
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
        assert_eq!(Store::new(&dir).read().expect("read").allocations.len(), 16);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn corrupt_state_is_reported_with_its_path() {
        let dir = tmpdir("corrupt");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("pool.json"), b"{not json").expect("write");
        let err = Store::new(&dir).read().expect_err("corrupt");
        assert!(err.to_string().contains("pool.json is corrupt"), "{err}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
