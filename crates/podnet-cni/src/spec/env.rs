//! The CNI environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS`, `CNI_PATH`; and two variables of podnet's own for tests, which a runtime
//! never sets: [`LOCK_TIMEOUT_VAR`] and [`CRASH_AT_VAR`].

use std::time::Duration;

use super::error::{code, CniError};

/// How long to wait for the IPAM lock, in milliseconds (default 10 000). For tests.
pub const LOCK_TIMEOUT_VAR: &str = "PODNET_CNI_LOCK_TIMEOUT_MS";

/// Test-only crash injection: `<step>` or `<step>:<n>` makes the plugin kill itself with
/// SIGKILL the n-th time (default the first) it reaches the named step, so tests can
/// stop it between any two of its changes. The steps are listed in docs/cni.md.
pub const CRASH_AT_VAR: &str = "PODNET_CNI_TEST_CRASH_AT";

/// The default wait for the IPAM lock.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// The environment of one invocation, validated for its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<String>,
    pub ifname: String,
    /// How long to wait for the IPAM lock.
    pub lock_timeout: Duration,
    /// Where to crash, for tests ([`CRASH_AT_VAR`]).
    pub crash_at: Option<CrashAt>,
}

/// A step at which to crash, and at which pass of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashAt {
    pub step: String,
    pub nth: u32,
}

impl CrashAt {
    fn parse(s: &str) -> Option<CrashAt> {
        let (step, nth) = match s.split_once(':') {
            Some((step, n)) => (step, n.parse().ok().filter(|n| *n > 0)?),
            None => (s, 1),
        };
        (!step.is_empty()).then(|| CrashAt {
            step: step.to_string(),
            nth,
        })
    }
}

impl Env {
    /// Reads and validates the CNI variables from `vars` (normally `std::env::vars()`).
    pub fn parse<I, K, V>(vars: I) -> Result<Env, CniError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut command = None;
        let mut container_id = None;
        let mut netns = None;
        let mut ifname = None;
        let mut lock_timeout = DEFAULT_LOCK_TIMEOUT;
        let mut crash_at = None;
        for (k, v) in vars {
            match k.as_ref() {
                "CNI_COMMAND" => command = Some(v.into()),
                "CNI_CONTAINERID" => container_id = Some(v.into()),
                "CNI_NETNS" => netns = Some(v.into()),
                "CNI_IFNAME" => ifname = Some(v.into()),
                LOCK_TIMEOUT_VAR => {
                    let v: String = v.into();
                    let ms: u64 = v.parse().map_err(|_| {
                        invalid(format!(
                            "{LOCK_TIMEOUT_VAR}={v:?} is not a number of milliseconds"
                        ))
                    })?;
                    lock_timeout = Duration::from_millis(ms);
                }
                CRASH_AT_VAR => {
                    let v: String = v.into();
                    crash_at = Some(CrashAt::parse(&v).ok_or_else(|| {
                        invalid(format!("{CRASH_AT_VAR}={v:?} is not <step> or <step>:<n>"))
                    })?);
                }
                _ => {}
            }
        }
        let command_s = command.filter(|c: &String| !c.is_empty()).ok_or_else(|| {
            invalid("CNI_COMMAND is not set; expected one of ADD, DEL, CHECK, STATUS, GC, VERSION")
        })?;
        let command = Command::parse(&command_s).ok_or_else(|| {
            invalid(format!(
                "CNI_COMMAND={command_s:?} is not a CNI command; expected one of ADD, DEL, CHECK, STATUS, GC, VERSION"
            ))
        })?;
        let netns = netns.filter(|n| !n.is_empty());
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = container_id.unwrap_or_default();
        let ifname = ifname.unwrap_or_default();
        if per_attachment {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
            if netns.is_none() && command != Command::Del {
                return Err(invalid(format!(
                    "CNI_NETNS is not set; {command_s} needs the path of the pod's network namespace"
                )));
            }
        }
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            lock_timeout,
            crash_at,
        })
    }
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_ENVIRONMENT, msg)
}

/// The spec: at least one character, alphanumerics plus `_`, `.` and `-`, starting with
/// an alphanumeric.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let valid = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else if id.is_empty() {
        Err(invalid("CNI_CONTAINERID is not set"))
    } else {
        Err(invalid(format!(
            "CNI_CONTAINERID={id:?} is invalid: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        )))
    }
}

/// Linux interface names: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(invalid("CNI_IFNAME is not set"));
    }
    if name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(invalid(format!(
            "CNI_IFNAME={name:?} is not a valid interface name (at most 15 characters, no '/', ':' or spaces)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        Env::parse(vars.iter().map(|(k, v)| (*k, v.to_string())))
    }

    #[test]
    fn add_needs_id_ifname_and_netns() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("PATH", "/bin"),
        ])
        .expect("valid");
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.netns.as_deref(), Some("/run/netns/x"));
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let vars: Vec<_> = [
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_IFNAME", "eth0"),
            ]
            .into_iter()
            .filter(|(k, _)| *k != missing)
            .collect();
            let err = env(&vars).expect_err(missing);
            assert_eq!(err.code, code::INVALID_ENVIRONMENT);
            assert!(err.msg.contains(missing), "{}", err.msg);
        }
    }

    #[test]
    fn missing_or_unknown_command_is_code_4() {
        let err = env(&[("CNI_CONTAINERID", "a")]).expect_err("no command");
        assert_eq!(err.code, code::INVALID_ENVIRONMENT);
        assert!(err.msg.contains("CNI_COMMAND"));
        let err = env(&[("CNI_COMMAND", "ATTACH")]).expect_err("unknown");
        assert_eq!(err.code, code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn del_does_not_need_a_netns() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .expect("valid");
        assert_eq!(e.netns, None);
    }

    #[test]
    fn version_status_gc_need_nothing_else() {
        for c in ["VERSION", "STATUS", "GC"] {
            env(&[("CNI_COMMAND", c)]).expect(c);
        }
    }

    #[test]
    fn test_variables_parse() {
        let e = env(&[("CNI_COMMAND", "STATUS")]).expect("valid");
        assert_eq!((e.lock_timeout, e.crash_at), (DEFAULT_LOCK_TIMEOUT, None));
        let e = env(&[
            ("CNI_COMMAND", "GC"),
            (LOCK_TIMEOUT_VAR, "250"),
            (CRASH_AT_VAR, "gc-cut-off:3"),
        ])
        .expect("valid");
        assert_eq!(e.lock_timeout, Duration::from_millis(250));
        assert_eq!(
            e.crash_at,
            Some(CrashAt {
                step: "gc-cut-off".into(),
                nth: 3
            })
        );
        for (k, v) in [
            (LOCK_TIMEOUT_VAR, "soon"),
            (LOCK_TIMEOUT_VAR, "-1"),
            (CRASH_AT_VAR, ""),
            (CRASH_AT_VAR, "x:0"),
            (CRASH_AT_VAR, "x:y"),
        ] {
            let err = env(&[("CNI_COMMAND", "GC"), (k, v)]).expect_err(v);
            assert_eq!(err.code, code::INVALID_ENVIRONMENT, "{k}={v}");
            assert!(err.msg.contains(k), "{}", err.msg);
        }
    }

    #[test]
    fn bad_ids_and_names_are_rejected() {
        for id in ["-abc", "a b", "a/b", "ä"] {
            let err = env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", "eth0"),
            ])
            .expect_err(id);
            assert_eq!(err.code, code::INVALID_ENVIRONMENT, "{id}");
        }
        for name in ["averyveryverylongname", "a/b", "a:b", ".", "..", "a b"] {
            let err = env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", name),
            ])
            .expect_err(name);
            assert_eq!(err.code, code::INVALID_ENVIRONMENT, "{name}");
        }
    }
}
