//! Sysctls of the network namespace the calling thread is in: `/proc/sys/net` shows the
//! namespace of whoever opens it, so enter the namespace first (see [`crate::NetNs::run`]).

use std::fs;
use std::io;
use std::path::PathBuf;

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

/// Like [`set`], for a sysctl that exists only when a module is loaded (e.g.
/// `net.bridge.*` with br_netfilter); `Ok(false)` when it does not exist.
pub fn set_if_present(key: &str, value: &str) -> io::Result<bool> {
    if !path(key).exists() {
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
