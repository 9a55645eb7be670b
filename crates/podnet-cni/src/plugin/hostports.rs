//! The `portMappings` capability (hostPort): at ADD the runtime passes the pod's
//! mappings in `runtimeConfig.portMappings`; the plugin records them, with the pod's
//! address, in one file per attachment in the `hostports` directory beside the node file,
//! where the podnet agent reads them and programs the DNAT. DEL and GC remove the file
//! before the address is freed, so a mapping never points at a reused address.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde_json::json;

use super::{host_veth_name, io_error};
use crate::spec::{Attachment, CniError, NetConf, PortMapping};

fn dir(conf: &NetConf) -> PathBuf {
    conf.node_config_path()
        .parent()
        .map(|p| p.join("hostports"))
        .unwrap_or_else(|| PathBuf::from("hostports"))
}

fn file(conf: &NetConf, att: &Attachment) -> PathBuf {
    dir(conf).join(format!("{}.json", host_veth_name(att)))
}

/// Records `mappings` for `att` at `ip` (replacing what it had); none: removes its file.
pub fn record(
    conf: &NetConf,
    att: &Attachment,
    ip: Ipv4Addr,
    mappings: &[PortMapping],
) -> Result<(), CniError> {
    if mappings.is_empty() {
        return forget(conf, att);
    }
    let path = file(conf, att);
    let what = format!(
        "container {}: record hostPorts in {}",
        att.container_id,
        path.display()
    );
    let body = json!({
        "containerId": att.container_id,
        "ifname": att.ifname,
        "ip": ip,
        "portMappings": mappings,
    });
    let write = || -> io::Result<()> {
        fs::create_dir_all(dir(conf))?;
        let tmp = path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(body.to_string().as_bytes())?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| io_error(what, e))
}

/// Removes `att`'s mappings, if it has any.
pub fn forget(conf: &NetConf, att: &Attachment) -> Result<(), CniError> {
    let path = file(conf, att);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(
            format!("container {}: remove {}", att.container_id, path.display()),
            e,
        )),
    }
}

/// Removes the mappings of every attachment not in `keep` (GC); returns the failures.
pub fn forget_unless(conf: &NetConf, keep: &[Attachment]) -> Vec<String> {
    let names: HashSet<String> = keep
        .iter()
        .map(|a| format!("{}.json", host_veth_name(a)))
        .collect();
    let Ok(entries) = fs::read_dir(dir(conf)) else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !names.contains(&name) {
            if let Err(err) = fs::remove_file(e.path()) {
                if err.kind() != io::ErrorKind::NotFound {
                    errors.push(format!("remove {}: {err}", e.path().display()));
                }
            }
        }
    }
    errors
}
