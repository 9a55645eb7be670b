//! Sysctls of the network namespace the calling thread is in: `/proc/sys/net` shows the
//! namespace of whoever opens it, so enter the namespace first (see [`crate::NetNs::run`]).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Writes `value` to the sysctl `key` (e.g. `net.ipv4.ip_forward`) unless it already has it.
pub fn set(key: &str, value: &str) -> io::Result<()> {
    let p = path(key);
    if let Ok(current) = fs::read_to_string(&p) {
        if current.trim() == value {
            return Ok(());
        }
    }
    fs::write(&p, value).map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}={value}: {e}")))
}

/// Whether the sysctl `key` exists (some exist only while a module is loaded).
pub fn exists(key: &str) -> bool {
    path(key).exists()
}

/// Like [`set`], for a sysctl that exists only when a module is loaded (e.g.
/// `net.bridge.*` with br_netfilter); `Ok(false)` when it does not exist.
pub fn set_if_present(key: &str, value: &str) -> io::Result<bool> {
    if !exists(key) {
        return Ok(false);
    }
    set(key, value).map(|()| true)
}

/// The three `net.bridge.bridge-nf-call-*` sysctls: whether bridged frames also run
/// through the IPv4, IPv6 and ARP netfilter hooks (br_netfilter).
pub const BRIDGE_NF_CALL: [&str; 3] = [
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
];

/// Reads the sysctl `key`.
pub fn get(key: &str) -> io::Result<String> {
    fs::read_to_string(path(key))
        .map(|s| s.trim().to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}: {e}")))
}

/// The entries of `net.ipv4.conf` (`all`, `default` and each device) whose
/// `rp_filter` is 1, strict reverse-path checking, sorted.
pub fn strict_rp_filter() -> io::Result<Vec<String>> {
    let conf = path("net.ipv4.conf");
    let mut strict = Vec::new();
    for entry in fs::read_dir(&conf)? {
        let entry = entry?;
        let file = entry.path().join("rp_filter");
        // A device removed since the listing has no file any more.
        let Ok(value) = fs::read_to_string(&file) else {
            continue;
        };
        if value.trim() == "1" {
            strict.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    strict.sort();
    Ok(strict)
}

/// Like [`set`], and the first time a value is changed, its original value is kept in
/// `originals/<key>` (never overwritten, so repeated changes keep the very first), for
/// [`restore_originals`] to put back when podnet is uninstalled. The file is created
/// exclusively, so processes changing sysctls at the same time cannot lose an original.
pub fn set_keeping_original(key: &str, value: &str, originals: &Path) -> io::Result<()> {
    let current = get(key)?;
    if current == value {
        return Ok(());
    }
    fs::create_dir_all(originals).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "keep the original of sysctl {key} in {}: {e}",
                originals.display()
            ),
        )
    })?;
    let file = originals.join(key);
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
    {
        Ok(mut f) => f.write_all(current.as_bytes())?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "keep the original of sysctl {key} in {}: {e}",
                    file.display()
                ),
            ))
        }
    }
    set(key, value)
}

/// Puts back every sysctl [`set_keeping_original`] changed, then forgets it; returns what
/// it restored (`key`, original value). A sysctl that no longer exists (its device or
/// module is gone) is forgotten. Keeps going past failures and returns them all.
pub fn restore_originals(originals: &Path) -> Result<Vec<(String, String)>, Vec<String>> {
    let entries = match fs::read_dir(originals) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(vec![format!("read {}: {e}", originals.display())]),
    };
    let mut restored = Vec::new();
    let mut errors = Vec::new();
    for entry in entries.flatten() {
        let key = entry.file_name().to_string_lossy().into_owned();
        let original = match fs::read_to_string(entry.path()) {
            Ok(v) => v.trim().to_string(),
            Err(e) => {
                errors.push(format!("read {}: {e}", entry.path().display()));
                continue;
            }
        };
        match set_if_present(&key, &original) {
            Ok(true) => restored.push((key, original)),
            Ok(false) => {}
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        }
        if let Err(e) = fs::remove_file(entry.path()) {
            errors.push(format!("remove {}: {e}", entry.path().display()));
        }
    }
    let _ = fs::remove_dir(originals);
    restored.sort();
    if errors.is_empty() {
        Ok(restored)
    } else {
        Err(errors)
    }
}
