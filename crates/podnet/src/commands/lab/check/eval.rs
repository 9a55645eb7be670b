//! A check's output read into a verdict and its evidence. Pure.
//!
//! Probes print JSON reports (`podnet probe ... -o json`, one a line when several ran):
//! `{"sent": 3, "attempts": [{"ok": true, "answer": "web-1", "hostname": "web-1",
//! "millis": 1.2}, {"ok": false, "error": "connection refused", "millis": 0.3}], ...}`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use serde_json::Value;

/// What a check's output must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Every request answered, each by `hostname` (`itself`: the client's own name).
    AnsweredBy { hostname: String, itself: bool },
    /// Every request answered (by `answered_by`, when given), and the client address the
    /// `observer` saw is one of `expected`: an address and who has it (`client has`).
    Source {
        observer: &'static str,
        answered_by: Option<String>,
        expected: Vec<(Ipv4Addr, String)>,
    },
    /// Every request answered, by `endpoints` only, and by every one of them.
    Spread { endpoints: BTreeSet<String> },
    /// Every request answered, all by the same one of `endpoints`.
    Sticky { endpoints: BTreeSet<String> },
    /// The connection refused, within `within`.
    Refused { within: Duration },
    /// `ip -4 -o addr show dev eth0` shows `api`, the pod's IP in the API.
    OwnAddress { api: Ipv4Addr },
}

/// What a command left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    /// Set when the command overran its time and was stopped.
    pub killed_after: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub evidence: String,
}

fn pass(evidence: impl Into<String>) -> Verdict {
    Verdict {
        ok: true,
        evidence: evidence.into(),
    }
}

fn fail(evidence: impl Into<String>) -> Verdict {
    Verdict {
        ok: false,
        evidence: evidence.into(),
    }
}

/// One answer of a probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub hostname: String,
}

/// One or more probe reports, merged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeRun {
    pub sent: usize,
    pub answers: Vec<Answer>,
    /// Failed attempts: the reason and how long they took.
    pub errors: Vec<(String, f64)>,
}

impl ProbeRun {
    /// Reads every JSON report in `stdout`; `None` when there is none.
    pub fn parse(stdout: &str) -> Option<ProbeRun> {
        let mut run = ProbeRun::default();
        let mut reports = 0;
        for v in serde_json::Deserializer::from_str(stdout).into_iter::<Value>() {
            let Ok(v) = v else { break };
            let Some(attempts) = v.get("attempts").and_then(Value::as_array) else {
                continue;
            };
            reports += 1;
            for a in attempts {
                run.sent += 1;
                let millis = a.get("millis").and_then(Value::as_f64).unwrap_or_default();
                if a.get("ok").and_then(Value::as_bool) == Some(true) {
                    let s = |k| {
                        a.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    run.answers.push(Answer {
                        text: s("answer"),
                        hostname: s("hostname"),
                    });
                } else {
                    let e = a.get("error").and_then(Value::as_str).unwrap_or("failed");
                    run.errors.push((e.to_string(), millis));
                }
            }
        }
        (reports > 0).then_some(run)
    }

    /// Answers per hostname.
    pub fn by_hostname(&self) -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for a in &self.answers {
            *m.entry(a.hostname.as_str()).or_insert(0) += 1;
        }
        m
    }

    /// `40/40 answered`, or `38/40 answered, 2 failed: timed out`.
    fn tally(&self) -> String {
        let mut s = format!("{}/{} answered", self.answers.len(), self.sent);
        if !self.errors.is_empty() {
            let reasons: BTreeSet<&str> = self.errors.iter().map(|(e, _)| e.as_str()).collect();
            let reasons: Vec<&str> = reasons.into_iter().collect();
            let _ = write!(s, ", {} failed: {}", self.errors.len(), reasons.join(", "));
        }
        s
    }

    /// `web-1 (14), web-2 (13)`.
    fn who(&self) -> String {
        list(self.by_hostname().iter().map(|(h, n)| format!("{h} ({n})")))
    }
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().collect::<Vec<_>>().join(", ")
}

/// Why there is no report: the command was stopped, or what it said last.
fn no_report(out: &Output) -> String {
    if let Some(d) = out.killed_after {
        return format!(
            "no result within {}: stopped",
            millis(d.as_secs_f64() * 1000.0)
        );
    }
    out.stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.strip_prefix("error: ").unwrap_or(l).to_string())
        .unwrap_or_else(|| "no report from the probe".into())
}

/// The client address in an answer: an HTTP `/clientip` body is `IP:PORT`; an echo reply
/// is `HOSTNAME IP:PORT PAYLOAD`.
pub fn client_ip(answer: &str) -> Option<Ipv4Addr> {
    answer
        .split_whitespace()
        .find_map(|w| w.parse::<SocketAddrV4>().ok())
        .map(|a| *a.ip())
}

/// The IPv4 address in `ip -4 -o addr show dev eth0`.
pub fn eth0_address(stdout: &str) -> Option<Ipv4Addr> {
    let mut words = stdout.split_whitespace();
    while let Some(w) = words.next() {
        if w == "inet" {
            return words.next()?.split('/').next()?.parse().ok();
        }
    }
    None
}

/// The verdict on `out` for `expect`.
pub fn evaluate(expect: &Expect, out: &Output) -> Verdict {
    let v = evaluate_output(expect, out);
    match out.killed_after {
        // What was printed before may look fine; the check still overran.
        Some(d) if v.ok => fail(format!(
            "stopped after {}: {}",
            millis(d.as_secs_f64() * 1000.0),
            v.evidence
        )),
        _ => v,
    }
}

fn evaluate_output(expect: &Expect, out: &Output) -> Verdict {
    if let Expect::OwnAddress { api } = expect {
        return match eth0_address(&out.stdout) {
            Some(ip) if ip == *api => pass(format!("eth0 has {ip}, the API says {api}")),
            Some(ip) => fail(format!("eth0 has {ip}, but the API says {api}")),
            None => fail(format!("no IPv4 address on eth0: {}", no_report(out))),
        };
    }
    let Some(run) = ProbeRun::parse(&out.stdout) else {
        return fail(no_report(out));
    };
    if run.sent == 0 {
        return fail("the probe sent nothing");
    }
    match expect {
        Expect::Refused { within } => refused(&run, *within),
        _ if !run.errors.is_empty() || run.answers.is_empty() => {
            let mut s = run.tally();
            if !run.answers.is_empty() {
                let _ = write!(s, "; by {}", run.who());
            }
            fail(s)
        }
        Expect::AnsweredBy { hostname, itself } => {
            let others: Vec<&str> = run
                .by_hostname()
                .into_keys()
                .filter(|h| h != hostname)
                .collect();
            let me = if *itself { " itself" } else { "" };
            if !others.is_empty() {
                fail(format!(
                    "{}, by {}; expected {hostname}{me} only",
                    run.tally(),
                    run.who()
                ))
            } else if run.sent == 1 {
                pass(format!("answered by {hostname}{me}"))
            } else {
                pass(format!("{}, all by {hostname}{me}", run.tally()))
            }
        }
        Expect::Source {
            observer,
            answered_by,
            expected,
        } => source(&run, observer, answered_by.as_deref(), expected),
        Expect::Spread { endpoints } => {
            let seen: BTreeSet<String> =
                run.by_hostname().into_keys().map(str::to_string).collect();
            let missing: Vec<String> = endpoints.difference(&seen).cloned().collect();
            let extra: Vec<String> = seen.difference(endpoints).cloned().collect();
            let base = format!("{}, by {}", run.tally(), run.who());
            if !extra.is_empty() {
                fail(format!("{base}; not endpoints: {}", list(extra)))
            } else if !missing.is_empty() {
                fail(format!("{base}; never answered: {}", list(missing)))
            } else {
                pass(base)
            }
        }
        Expect::Sticky { endpoints } => {
            let by = run.by_hostname();
            match by.keys().collect::<Vec<_>>().as_slice() {
                [one] if endpoints.contains(**one) => {
                    pass(format!("{}, all by {one}", run.tally()))
                }
                [one] => fail(format!("{}, all by {one}, not an endpoint", run.tally())),
                _ => fail(format!(
                    "{}, by {}: not all by one pod",
                    run.tally(),
                    run.who()
                )),
            }
        }
        Expect::OwnAddress { .. } => unreachable!("handled above"),
    }
}

fn refused(run: &ProbeRun, within: Duration) -> Verdict {
    let limit = within.as_secs_f64() * 1000.0;
    match (run.answers.first(), run.errors.first()) {
        (Some(a), _) => fail(format!(
            "answered by {} (expected a refusal)",
            if a.hostname.is_empty() {
                &a.text
            } else {
                &a.hostname
            }
        )),
        (None, Some((e, ms))) if e.contains("refused") && *ms <= limit => {
            pass(format!("{e} after {}", millis(*ms)))
        }
        (None, Some((e, ms))) if e.contains("refused") => fail(format!(
            "{e} only after {} (expected within {})",
            millis(*ms),
            humantime::format_duration(within)
        )),
        (None, Some((e, ms))) => fail(format!(
            "{e} after {} (expected refused within {})",
            millis(*ms),
            humantime::format_duration(within)
        )),
        (None, None) => fail("the probe sent nothing"),
    }
}

/// `0.4ms`, `12ms`, `1.3s`.
fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

fn source(
    run: &ProbeRun,
    observer: &str,
    answered_by: Option<&str>,
    expected: &[(Ipv4Addr, String)],
) -> Verdict {
    if let Some(want) = answered_by {
        if let Some(a) = run.answers.iter().find(|a| a.hostname != want) {
            return fail(format!("answered by {}, expected {want}", a.hostname));
        }
    }
    let seen: BTreeSet<Option<Ipv4Addr>> = run.answers.iter().map(|a| client_ip(&a.text)).collect();
    let seen: Vec<Option<Ipv4Addr>> = seen.into_iter().collect();
    let (first_ip, first_who) = match expected.first() {
        Some((ip, who)) => (ip.to_string(), who.as_str()),
        None => ("?".into(), "expected"),
    };
    match seen.as_slice() {
        [Some(ip)] => match expected.iter().find(|(e, _)| e == ip) {
            Some((e, who)) => pass(format!("{observer} saw {ip}, {who} {e}")),
            None => fail(format!("{observer} saw {ip}, but {first_who} {first_ip}")),
        },
        [None] => fail(format!(
            "no client address in the answer {:?}",
            run.answers
                .first()
                .map(|a| a.text.as_str())
                .unwrap_or_default()
        )),
        many => fail(format!(
            "{observer} saw {}, but {first_who} {first_ip}",
            list(
                many.iter()
                    .map(|ip| ip.map_or("?".into(), |i| i.to_string()))
            )
        )),
    }
}

/// What one client saw in one step of the endpoints-follow scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// Its answers matched, at the latest this long after the change.
    Within(Duration),
    /// They never did: the evidence of its last probe.
    Never(String),
    /// Before any change its answers did not come from the first pods: the evidence.
    BadStart(String),
    /// The change could not be made: why.
    NotMade(String),
}

/// `only follow-2`, `follow-2 and follow-3`.
fn names(set: &BTreeSet<String>, only: bool) -> String {
    match set.iter().collect::<Vec<_>>().as_slice() {
        [one] if only => format!("only {one}"),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", list(rest.iter().map(|s| s.to_string()))),
        [] => "nobody".into(),
    }
}

/// The verdict of one step of the endpoints-follow scenario for one client: after
/// `change` (`deleting follow-1`), answers must come from `now`; before any change they
/// came from `before`.
pub fn follow_verdict(
    change: &str,
    before: &BTreeSet<String>,
    now: &BTreeSet<String>,
    r: &Followed,
) -> Verdict {
    let who = names(now, true);
    match r {
        Followed::Within(d) => pass(format!(
            "{who} answered, within {} of {change}",
            millis(d.as_secs_f64() * 1000.0)
        )),
        Followed::Never(last) => fail(format!("still not {who} after {change}; last: {last}")),
        Followed::BadStart(e) => fail(format!(
            "before any change, answers were not from {}: {e}",
            names(before, false)
        )),
        Followed::NotMade(e) => fail(format!("{change} failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(stdout: &str) -> Output {
        Output {
            stdout: stdout.into(),
            ..Output::default()
        }
    }

    fn report(attempts: &[(&str, bool)]) -> String {
        let a: Vec<Value> = attempts
            .iter()
            .map(|(text, ok)| {
                if *ok {
                    let host = text.split_whitespace().next().unwrap_or_default();
                    serde_json::json!({"ok": true, "answer": text, "hostname": host, "millis": 0.8})
                } else {
                    serde_json::json!({"ok": false, "error": text, "millis": 1000.2})
                }
            })
            .collect();
        serde_json::json!({"target": "t", "sent": a.len(), "attempts": a}).to_string() + "\n"
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn source_address_without_nat_passes_and_nat_fails() {
        let e = Expect::Source {
            observer: "server",
            answered_by: None,
            expected: vec![(Ipv4Addr::new(10, 244, 2, 7), "client has".into())],
        };
        let v = evaluate(&e, &out(&report(&[("10.244.2.7:41234", true)])));
        assert_eq!(v, pass("server saw 10.244.2.7, client has 10.244.2.7"));
        let v = evaluate(&e, &out(&report(&[("10.244.2.1:41234", true)])));
        assert_eq!(v, fail("server saw 10.244.2.1, but client has 10.244.2.7"));
        let v = evaluate(&e, &out(&report(&[("timed out", false)])));
        assert_eq!(v, fail("0/1 answered, 1 failed: timed out"));
    }

    #[test]
    fn udp_echo_answers_name_the_server_and_the_client() {
        let e = Expect::Source {
            observer: "server",
            answered_by: Some("web-node-2".into()),
            expected: vec![(Ipv4Addr::new(10, 244, 0, 3), "client has".into())],
        };
        let ok = report(&[("web-node-2 10.244.0.3:5000 hello", true)]);
        assert!(evaluate(&e, &out(&ok)).ok);
        let wrong = report(&[("web-node-3 10.244.0.3:5000 hello", true)]);
        assert_eq!(
            evaluate(&e, &out(&wrong)),
            fail("answered by web-node-3, expected web-node-2")
        );
    }

    #[test]
    fn a_node_may_be_seen_with_any_of_its_addresses() {
        let e = Expect::Source {
            observer: "pod",
            answered_by: None,
            expected: vec![
                (Ipv4Addr::new(172, 18, 0, 11), "node-1 has".into()),
                (
                    Ipv4Addr::new(10, 244, 0, 1),
                    "node-1's pod bridge has".into(),
                ),
            ],
        };
        let v = evaluate(&e, &out(&report(&[("10.244.0.1:40000", true)])));
        assert_eq!(
            v,
            pass("pod saw 10.244.0.1, node-1's pod bridge has 10.244.0.1")
        );
        let v = evaluate(&e, &out(&report(&[("172.18.0.12:40000", true)])));
        assert_eq!(v, fail("pod saw 172.18.0.12, but node-1 has 172.18.0.11"));
    }

    #[test]
    fn spread_needs_every_endpoint_and_no_other() {
        let e = Expect::Spread {
            endpoints: set(&["web-1", "web-2"]),
        };
        let both = report(&[("web-1", true), ("web-2", true), ("web-1", true)]);
        assert_eq!(
            evaluate(&e, &out(&both)),
            pass("3/3 answered, by web-1 (2), web-2 (1)")
        );
        let one = report(&[("web-1", true), ("web-1", true)]);
        assert_eq!(
            evaluate(&e, &out(&one)),
            fail("2/2 answered, by web-1 (2); never answered: web-2")
        );
        let stale = report(&[("web-1", true), ("web-2", true), ("web-9", true)]);
        assert!(evaluate(&e, &out(&stale))
            .evidence
            .ends_with("not endpoints: web-9"));
        let lossy = report(&[("web-1", true), ("web-2", true), ("timed out", false)]);
        assert_eq!(
            evaluate(&e, &out(&lossy)),
            fail("2/3 answered, 1 failed: timed out; by web-1 (1), web-2 (1)")
        );
    }

    #[test]
    fn several_reports_are_merged() {
        // One line per UDP socket.
        let text = report(&[("web-1 10.0.0.1:1 hello", true)])
            + &report(&[("web-2 10.0.0.1:2 hello", true)]);
        let e = Expect::Spread {
            endpoints: set(&["web-1", "web-2"]),
        };
        assert_eq!(
            evaluate(&e, &out(&text)),
            pass("2/2 answered, by web-1 (1), web-2 (1)")
        );
    }

    #[test]
    fn affinity_means_one_pod() {
        let e = Expect::Sticky {
            endpoints: set(&["web-1", "web-2"]),
        };
        let same = report(&[("web-2", true), ("web-2", true)]);
        assert_eq!(
            evaluate(&e, &out(&same)),
            pass("2/2 answered, all by web-2")
        );
        let mixed = report(&[("web-2", true), ("web-1", true)]);
        assert_eq!(
            evaluate(&e, &out(&mixed)),
            fail("2/2 answered, by web-1 (1), web-2 (1): not all by one pod")
        );
    }

    #[test]
    fn hairpin_answers_come_from_the_pod_itself() {
        let e = Expect::AnsweredBy {
            hostname: "web-1".into(),
            itself: true,
        };
        let ok = report(&[("web-1", true), ("web-1", true)]);
        assert_eq!(
            evaluate(&e, &out(&ok)),
            pass("2/2 answered, all by web-1 itself")
        );
        let none = report(&[("timed out", false), ("timed out", false)]);
        assert_eq!(
            evaluate(&e, &out(&none)),
            fail("0/2 answered, 2 failed: timed out")
        );
        let single = Expect::AnsweredBy {
            hostname: "web-1".into(),
            itself: false,
        };
        assert_eq!(
            evaluate(&single, &out(&report(&[("web-1", true)]))),
            pass("answered by web-1")
        );
    }

    #[test]
    fn refusal_must_be_quick() {
        let e = Expect::Refused {
            within: Duration::from_secs(1),
        };
        let quick =
            r#"{"sent":1,"attempts":[{"ok":false,"error":"connection refused","millis":0.31}]}"#;
        assert_eq!(
            evaluate(&e, &out(quick)),
            pass("connection refused after 0.3ms")
        );
        let slow =
            r#"{"sent":1,"attempts":[{"ok":false,"error":"connection refused","millis":1500}]}"#;
        assert_eq!(
            evaluate(&e, &out(slow)),
            fail("connection refused only after 1.5s (expected within 1s)")
        );
        let silent = r#"{"sent":1,"attempts":[{"ok":false,"error":"timed out","millis":2000}]}"#;
        assert_eq!(
            evaluate(&e, &out(silent)),
            fail("timed out after 2.0s (expected refused within 1s)")
        );
        let answered = report(&[("web-1 10.0.0.1:1 hello", true)]);
        assert_eq!(
            evaluate(&e, &out(&answered)),
            fail("answered by web-1 (expected a refusal)")
        );
    }

    #[test]
    fn own_address() {
        let line = "2: eth0    inet 10.244.0.2/24 brd 10.244.0.255 scope global eth0\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(eth0_address(line), Some(Ipv4Addr::new(10, 244, 0, 2)));
        let e = Expect::OwnAddress {
            api: Ipv4Addr::new(10, 244, 0, 2),
        };
        assert_eq!(
            evaluate(&e, &out(line)),
            pass("eth0 has 10.244.0.2, the API says 10.244.0.2")
        );
        let e = Expect::OwnAddress {
            api: Ipv4Addr::new(10, 244, 0, 9),
        };
        assert!(!evaluate(&e, &out(line)).ok);
    }

    #[test]
    fn no_report_says_why() {
        let e = Expect::Spread {
            endpoints: set(&["a"]),
        };
        let stopped = Output {
            killed_after: Some(Duration::from_millis(10_003)),
            ..Output::default()
        };
        assert_eq!(
            evaluate(&e, &stopped),
            fail("no result within 10.0s: stopped")
        );
        let refused = Output {
            stderr: "error: pod podnet-test/x has no network yet (it is Pending)\n".into(),
            ..Output::default()
        };
        assert_eq!(
            evaluate(&e, &refused),
            fail("pod podnet-test/x has no network yet (it is Pending)")
        );
        // A complete report of a stopped command still fails.
        let late = Output {
            stdout: report(&[("a", true)]),
            killed_after: Some(Duration::from_secs(8)),
            ..Output::default()
        };
        assert_eq!(
            evaluate(&e, &late),
            fail("stopped after 8.0s: 1/1 answered, by a (1)")
        );
    }

    #[test]
    fn following_endpoints() {
        let before = set(&["follow-1", "follow-2"]);
        let v = follow_verdict(
            "deleting follow-1",
            &before,
            &set(&["follow-2"]),
            &Followed::Within(Duration::from_millis(830)),
        );
        assert_eq!(
            v,
            pass("only follow-2 answered, within 830ms of deleting follow-1")
        );
        let v = follow_verdict(
            "creating follow-3",
            &before,
            &set(&["follow-2", "follow-3"]),
            &Followed::Never("16/16 answered, by follow-2 (16)".into()),
        );
        assert_eq!(
            v,
            fail("still not follow-2 and follow-3 after creating follow-3; last: 16/16 answered, by follow-2 (16)")
        );
        let v = follow_verdict(
            "deleting follow-1",
            &before,
            &set(&["follow-2"]),
            &Followed::BadStart("8/8 answered, by follow-1 (8); never answered: follow-2".into()),
        );
        assert_eq!(
            v,
            fail("before any change, answers were not from follow-1 and follow-2: 8/8 answered, by follow-1 (8); never answered: follow-2")
        );
    }

    #[test]
    fn client_addresses() {
        assert_eq!(client_ip("10.0.0.1:80"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(
            client_ip("web-1 10.0.0.2:5353 hello"),
            Some(Ipv4Addr::new(10, 0, 0, 2))
        );
        assert_eq!(client_ip("web-1"), None);
    }
}
