//! Calling CNI plugins as a container runtime does: the conflist from the node's CNI
//! directory, one plugin after another with the previous result, environment variables
//! and the config on stdin, the plugin running in the node's network namespace.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sched::{setns, CloneFlags};
use podnet_kernel::NetNs;
use serde_json::Value;

/// The conflist file the agent writes on each node.
pub const CONFLIST: &str = "10-podnet.conflist";

pub struct Runtime {
    /// Directories searched for plugin binaries (`CNI_PATH`).
    pub cni_path: Vec<PathBuf>,
}

pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// The pod's hostPorts, as CNI port mappings (`{hostPort, containerPort, protocol,
    /// hostIP}`): handed to plugins that declare the `portMappings` capability.
    pub port_mappings: &'a [Value],
}

/// A pod's hostPorts as CNI port mappings, as the kubelet passes them to the runtime.
pub fn port_mappings(pod: &podnet_model::k8s_openapi::api::core::v1::Pod) -> Vec<Value> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host_port = p.host_port.filter(|h| *h > 0)?;
            Some(serde_json::json!({
                "hostPort": host_port,
                "containerPort": p.container_port,
                "protocol": p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                "hostIP": p.host_ip.clone().unwrap_or_default(),
            }))
        })
        .collect()
}

impl Runtime {
    fn plugin(&self, ty: &str) -> Result<PathBuf, String> {
        self.cni_path
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.exists())
            .ok_or_else(|| {
                format!(
                    "CNI plugin {ty:?} not found in {}",
                    self.cni_path
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                )
            })
    }

    fn exec(
        &self,
        verb: &str,
        node: &NetNs,
        conf: &Value,
        att: &Attachment<'_>,
    ) -> Result<Value, String> {
        let ty = conf["type"]
            .as_str()
            .ok_or("a plugin in the conflist has no type")?;
        let bin = self.plugin(ty)?;
        let path = std::env::join_paths(&self.cni_path).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", att.container_id)
            .env("CNI_NETNS", att.netns)
            .env("CNI_IFNAME", att.ifname)
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fd = node
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| e.to_string())?;
        // SAFETY: only setns runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("run {}: {e}", bin.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.to_string().as_bytes())
                .map_err(|e| format!("write config to {ty}: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wait for {ty}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let v: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
            let msg = v["msg"].as_str().map(str::to_string).unwrap_or_else(|| {
                format!(
                    "{} {}",
                    stdout.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            });
            let code = v["code"].as_u64().unwrap_or(0);
            return Err(format!("{ty} {verb} failed (code {code}): {msg}"));
        }
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).map_err(|e| format!("{ty} {verb}: unreadable result: {e}"))
    }

    /// ADD through every plugin of the conflist; returns the final result.
    pub fn add(
        &self,
        node: &NetNs,
        conflist: &Value,
        att: &Attachment<'_>,
    ) -> Result<Value, String> {
        let mut prev = Value::Null;
        for plugin in plugins(conflist, att)? {
            let mut conf = plugin;
            if !prev.is_null() {
                conf["prevResult"] = prev;
            }
            prev = self.exec("ADD", node, &conf, att)?;
        }
        Ok(prev)
    }

    /// DEL through every plugin, last first; keeps going past failures, reports them all.
    pub fn del(&self, node: &NetNs, conflist: &Value, att: &Attachment<'_>) -> Result<(), String> {
        let mut errors = Vec::new();
        for conf in plugins(conflist, att)?.into_iter().rev() {
            if let Err(e) = self.exec("DEL", node, &conf, att) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Each plugin's config as the runtime hands it over: with the list's name and version,
/// and, as libcni does, `runtimeConfig` holding what the plugin declared a capability for.
fn plugins(conflist: &Value, att: &Attachment<'_>) -> Result<Vec<Value>, String> {
    let name = conflist["name"].clone();
    let version = conflist["cniVersion"].clone();
    let list = conflist["plugins"]
        .as_array()
        .ok_or("the conflist has no plugins")?;
    Ok(list
        .iter()
        .map(|p| {
            let mut c = p.clone();
            c["name"] = name.clone();
            c["cniVersion"] = version.clone();
            if c["capabilities"]["portMappings"] == true && !att.port_mappings.is_empty() {
                c["runtimeConfig"] = serde_json::json!({"portMappings": att.port_mappings});
            }
            c
        })
        .collect())
}

/// Reads the node's conflist; `None` while the agent has not written it.
pub fn read_conflist(cni_dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(cni_dir.join(CONFLIST)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The pod IP of a CNI result.
pub fn result_ip(result: &Value) -> Option<String> {
    let addr = result["ips"].get(0)?["address"].as_str()?;
    Some(addr.split('/').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plugins_get_the_list_name_and_version() {
        let list = json!({"cniVersion": "1.1.0", "name": "podnet", "plugins": [
            {"type": "podnet-cni", "mtu": 1450, "capabilities": {"portMappings": true}},
            {"type": "tuning"}]});
        let mappings =
            [json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""})];
        let att = Attachment {
            container_id: "c",
            netns: Path::new("/run/netns/x"),
            ifname: "eth0",
            port_mappings: &mappings,
        };
        let p = plugins(&list, &att).expect("plugins");
        assert_eq!(
            p[0],
            json!({"type": "podnet-cni", "mtu": 1450, "name": "podnet", "cniVersion": "1.1.0",
                   "capabilities": {"portMappings": true},
                   "runtimeConfig": {"portMappings": mappings}})
        );
        // Only to plugins that declare the capability.
        assert_eq!(p[1]["type"], "tuning");
        assert!(p[1].get("runtimeConfig").is_none());
        assert_eq!(
            result_ip(&json!({"ips": [{"address": "10.244.1.5/24"}]})).as_deref(),
            Some("10.244.1.5")
        );
    }
}
