//! The CNI environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS`, `CNI_PATH`.

use super::error::{code, CniError};

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
        for (k, v) in vars {
            match k.as_ref() {
                "CNI_COMMAND" => command = Some(v.into()),
                "CNI_CONTAINERID" => container_id = Some(v.into()),
                "CNI_NETNS" => netns = Some(v.into()),
                "CNI_IFNAME" => ifname = Some(v.into()),
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
