//! The CNI verbs. Each reads the validated environment and config, decides with the pure
//! [`crate::spec`] and [`crate::ipam`] code, and applies through [`podnet_kernel`].

mod add;
mod check;
mod del;
mod gc;
mod hostports;
mod names;
mod pool;
mod status;

use std::io;

use podnet_kernel::{NetNs, Netlink, NetlinkError};
use serde_json::{json, Value};

use crate::ipam::Store;
use crate::spec::version::SUPPORTED;
use crate::spec::{code, Attachment, CniError, Command, Env, NetConf, NodeConfig, Resolved};

pub use names::host_veth_name;

/// A failed invocation: the error, and the cniVersion to report it in.
#[derive(Debug)]
pub struct Failure {
    pub error: CniError,
    pub cni_version: String,
}

/// A successful invocation: what to print, and work that may finish after the answer.
pub struct Success {
    pub output: Option<Value>,
    pub deferred: Option<Deferred>,
}

/// Work whose outcome the runtime does not wait for: the caller may run it after answering
/// (in a child process), or at once with [`Deferred::run`].
pub enum Deferred {
    /// Delete a link that is already cut off. By index, so a link made later under the
    /// same name (a new ADD of the same attachment) is never touched.
    DeleteLink {
        netlink: Netlink,
        index: u32,
        name: String,
    },
}

impl Deferred {
    pub fn run(self) -> Result<(), CniError> {
        match self {
            Deferred::DeleteLink {
                mut netlink,
                index,
                name,
            } => netlink
                .delete_link_by_index(index)
                .map(drop)
                .map_err(|e| kernel_error(format!("delete {name}"), e)),
        }
    }
}

/// Runs one invocation.
pub fn run<I, K, V>(vars: I, stdin: &[u8]) -> Result<Success, Failure>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: Into<String>,
{
    let latest = || crate::spec::Version::LATEST.as_str().to_string();
    let env = Env::parse(vars).map_err(|error| Failure {
        error,
        cni_version: NetConf::parse(stdin)
            .map(|c| c.version_for_errors().to_string())
            .unwrap_or_else(|_| latest()),
    })?;
    if env.command == Command::Version {
        return Ok(Success {
            output: Some(version_info(stdin)),
            deferred: None,
        });
    }
    let conf = NetConf::parse(stdin).map_err(|error| Failure {
        error,
        cni_version: latest(),
    })?;
    let fail = |error| Failure {
        error,
        cni_version: conf.version_for_errors().to_string(),
    };
    let version = conf.version().map_err(fail)?;
    let done = |output| Success {
        output,
        deferred: None,
    };
    match env.command {
        Command::Add => add::add(&env, &conf, version).map(|r| done(Some(r))),
        Command::Del => del::del(&env, &conf).map(|deferred| Success {
            output: None,
            deferred,
        }),
        Command::Check => check::check(&env, &conf, version).map(|()| done(None)),
        Command::Status => status::status(&env, &conf, version).map(|()| done(None)),
        Command::Gc => gc::gc(&env, &conf, version).map(|()| done(None)),
        Command::Version => unreachable!("answered above"),
    }
    .map_err(fail)
}

fn version_info(stdin: &[u8]) -> Value {
    let asked = NetConf::parse(stdin)
        .map(|c| c.version_for_errors().to_string())
        .unwrap_or_else(|_| crate::spec::Version::LATEST.as_str().to_string());
    json!({"cniVersion": asked, "supportedVersions": SUPPORTED})
}

fn attachment(env: &Env) -> Attachment {
    Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

/// Applies defaults and, where needed, the node file the agent writes.
fn resolve(conf: &NetConf) -> Result<Resolved, CniError> {
    conf.resolve(|path| match std::fs::read(path) {
        Ok(bytes) => NodeConfig::parse(path, &bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::new(
            code::IO,
            format!("cannot read node config {}: {e}", path.display()),
        )),
    })
}

fn store(conf: &NetConf) -> Result<Store, CniError> {
    Ok(Store::new(conf.data_dir().join(conf.network_name()?)))
}

/// Opens the pod's namespace. A path that does not exist means the container is gone
/// (code 3: the runtime has nothing to clean up, and nothing was changed). A file that
/// is not a network namespace, or the namespace the plugin runs in (the node's: ADD would
/// replace the node's default route), is an invalid environment (code 4).
fn open_netns(env: &Env) -> Result<NetNs, CniError> {
    let path = env.netns.as_deref().unwrap_or_default();
    let ns = NetNs::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "container {}: network namespace {path} does not exist",
                env.container_id
            ),
        ),
        io::ErrorKind::InvalidInput => CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS={path} is not a network namespace"),
        ),
        _ => CniError::new(
            code::IO,
            format!(
                "container {}: cannot open network namespace {path}: {e}",
                env.container_id
            ),
        ),
    })?;
    let own = NetNs::current()
        .and_then(|own| own.id())
        .map_err(|e| io_error("identify the plugin's own network namespace", e))?;
    let target = ns
        .id()
        .map_err(|e| io_error(format!("identify network namespace {path}"), e))?;
    if own == target {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "container {}: CNI_NETNS={path} is the network namespace podnet-cni runs in (the node's), not a pod's",
                env.container_id
            ),
        )
        .with_details("pass the path of the pod's own network namespace"));
    }
    Ok(ns)
}

/// Test-only crash injection ([`crate::spec::env::CRASH_AT_VAR`]): dies by SIGKILL, as
/// if killed from outside, at the chosen pass of `step`.
fn crash_point(env: &Env, step: &str) {
    static PASSED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let Some(at) = &env.crash_at else { return };
    if at.step == step && PASSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == at.nth {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

fn io_error(what: impl std::fmt::Display, e: io::Error) -> CniError {
    CniError::new(code::IO, format!("{what}: {e}"))
}

fn kernel_error(what: impl std::fmt::Display, e: NetlinkError) -> CniError {
    CniError::new(code::KERNEL, format!("{what}: {e}"))
}
