//! What a client run found, and how it is shown: the answer alone, a table for a person, or JSON.
//!
//! Everything here is pure so that the exact output is unit-tested.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::args::OutputFormat;

/// Why one attempt got no answer. `Display` is the short reason (`connection refused`);
/// [`Attempt::describe`] adds how long it took.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("connection refused")]
    Refused,
    #[error("timed out")]
    TimedOut {
        /// The limit that was reached: reported instead of the measured time, which is a
        /// hair longer and would only distract.
        after: Duration,
    },
    #[error("connection reset")]
    Reset,
    #[error("connection closed before a reply")]
    Closed,
    #[error("no route to host")]
    HostUnreachable,
    #[error("network unreachable")]
    NetworkUnreachable,
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("HTTP {0}")]
    Status(String),
    #[error("{0}")]
    Other(String),
}

/// One answer: what is shown, and what it is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The reply, trimmed.
    pub text: String,
    /// The grouping key: the body for HTTP, the reply's first word for TCP and UDP.
    pub hostname: String,
}

impl Answer {
    /// An HTTP body: the whole (trimmed) body is both the answer and the key, which makes
    /// `/hostname` group by server and `/clientip` by source address.
    pub fn from_http_body(body: &str) -> Answer {
        let text = body.trim().to_string();
        Answer {
            hostname: text.clone(),
            text,
        }
    }

    /// An echo reply `<hostname> <client> <payload>`: counted under its first word.
    pub fn from_echo_reply(reply: &str) -> Answer {
        let text = reply.trim().to_string();
        let hostname = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        Answer { text, hostname }
    }
}

/// One request and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub outcome: Result<Answer, Failure>,
    /// From the start of the attempt (connecting included) to its answer or failure.
    pub elapsed: Duration,
    /// The client's own address for this attempt, when a socket got that far: what a server
    /// without NAT in between reports as the client address.
    pub local: Option<SocketAddr>,
}

impl Attempt {
    /// One line: the answer, or e.g. `connection refused after 0.3ms`.
    pub fn describe(&self) -> String {
        match &self.outcome {
            Ok(answer) => one_line(&answer.text),
            Err(failure @ Failure::TimedOut { after }) => {
                format!("{failure} after {}", format_duration(*after))
            }
            Err(failure) => format!("{failure} after {}", format_duration(self.elapsed)),
        }
    }
}

/// Everything a client run did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The URL or `HOST:PORT`, as shown back.
    pub target: String,
    pub attempts: Vec<Attempt>,
}

impl Report {
    pub fn sent(&self) -> usize {
        self.attempts.len()
    }

    pub fn answered(&self) -> usize {
        self.attempts.iter().filter(|a| a.outcome.is_ok()).count()
    }

    pub fn failed(&self) -> usize {
        self.sent() - self.answered()
    }

    /// How many answers came from each hostname, sorted by hostname.
    pub fn by_hostname(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for answer in self.attempts.iter().filter_map(|a| a.outcome.as_ref().ok()) {
            *counts.entry(answer.hostname.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// 0 when every attempt was answered, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.sent() == 0 || self.failed() > 0)
    }

    /// The report in the format asked for, ending with a newline.
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Text => self.render_text(),
            OutputFormat::Json => self.render_json(),
        }
    }

    /// For a person: a single successful answer alone (so `$(podnet probe get …)` is the
    /// answer); otherwise one line per attempt and a summary.
    pub fn render_text(&self) -> String {
        if let [Attempt {
            outcome: Ok(answer),
            ..
        }] = self.attempts.as_slice()
        {
            return format!("{}\n", answer.text);
        }

        let mut out = String::new();
        let number_width = self.sent().to_string().len();
        let answer_width = self
            .attempts
            .iter()
            .filter(|a| a.outcome.is_ok())
            .map(|a| a.describe().chars().count())
            .max()
            .unwrap_or(0);
        for (i, attempt) in self.attempts.iter().enumerate() {
            let n = i + 1;
            let line = match &attempt.outcome {
                Ok(_) => format!(
                    "{n:>number_width$}  {:<answer_width$}  {}",
                    attempt.describe(),
                    format_duration(attempt.elapsed)
                ),
                Err(_) => format!("{n:>number_width$}  error: {}", attempt.describe()),
            };
            let _ = writeln!(out, "{}", line.trim_end());
        }

        out.push('\n');
        let rows = [
            ("target", self.target.clone()),
            ("total", self.sent().to_string()),
            ("answered", self.answered().to_string()),
            ("failed", self.failed().to_string()),
        ];
        let _ = write!(out, "{}", table(&rows, false));

        let counts = self.by_hostname();
        if !counts.is_empty() {
            let mut rows = vec![("hostname".to_string(), "answers".to_string())];
            rows.extend(counts.iter().map(|(h, n)| (one_line(h), n.to_string())));
            out.push('\n');
            let _ = write!(out, "{}", table(&rows, true));
        }
        out
    }

    /// One JSON object (see the crate documentation for its shape), with a newline.
    pub fn render_json(&self) -> String {
        let json = JsonReport {
            target: &self.target,
            sent: self.sent(),
            answered: self.answered(),
            failed: self.failed(),
            by_hostname: self.by_hostname(),
            attempts: self.attempts.iter().map(JsonAttempt::from).collect(),
        };
        // Serializing strings, numbers and maps with string keys cannot fail; fall back to a
        // valid object anyway rather than panic.
        let mut text = serde_json::to_string(&json)
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
        text.push('\n');
        text
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    target: &'a str,
    sent: usize,
    answered: usize,
    failed: usize,
    by_hostname: BTreeMap<&'a str, usize>,
    attempts: Vec<JsonAttempt<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonAttempt<'a> {
    Answered {
        ok: bool,
        answer: &'a str,
        hostname: &'a str,
        millis: f64,
    },
    Failed {
        ok: bool,
        error: String,
        millis: f64,
    },
}

impl<'a> From<&'a Attempt> for JsonAttempt<'a> {
    fn from(attempt: &'a Attempt) -> Self {
        let millis = millis(attempt.elapsed);
        match &attempt.outcome {
            Ok(answer) => JsonAttempt::Answered {
                ok: true,
                answer: &answer.text,
                hostname: &answer.hostname,
                millis,
            },
            Err(failure) => JsonAttempt::Failed {
                ok: false,
                error: failure.to_string(),
                millis,
            },
        }
    }
}

/// Milliseconds, to the microsecond.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// A short human duration: `0.3ms`, `12.5ms`, `250ms`, `2s`, `2.5s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 100.0 {
        format!("{}ms", trim_decimals(&format!("{ms:.1}")))
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{}s", trim_decimals(&format!("{:.2}", ms / 1000.0)))
    }
}

/// `2.50` → `2.5`, `2.00` → `2`.
fn trim_decimals(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Keeps a multi-line answer on its attempt's line.
fn one_line(s: &str) -> String {
    s.replace('\r', "").replace('\n', "\\n")
}

/// Two aligned columns; the second right-aligned when it holds numbers under a header.
fn table<K: AsRef<str>, V: AsRef<str>>(rows: &[(K, V)], right_align: bool) -> String {
    let key_width = rows
        .iter()
        .map(|(k, _)| k.as_ref().chars().count())
        .max()
        .unwrap_or(0);
    let value_width = rows
        .iter()
        .map(|(_, v)| v.as_ref().chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let (k, v) = (k.as_ref(), v.as_ref());
        let line = if right_align {
            format!("{k:<key_width$}  {v:>value_width$}")
        } else {
            format!("{k:<key_width$}  {v}")
        };
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str, ms: u64) -> Attempt {
        Attempt {
            outcome: Ok(Answer::from_http_body(body)),
            elapsed: Duration::from_millis(ms),
            local: None,
        }
    }

    fn failed(failure: Failure, micros: u64) -> Attempt {
        Attempt {
            outcome: Err(failure),
            elapsed: Duration::from_micros(micros),
            local: None,
        }
    }

    fn report(attempts: Vec<Attempt>) -> Report {
        Report {
            target: "http://web/hostname".to_string(),
            attempts,
        }
    }

    #[test]
    fn one_answer_is_printed_alone() {
        let r = report(vec![ok("web-1\n", 1)]);
        assert_eq!(r.render_text(), "web-1\n");
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn one_failure_gets_the_table() {
        let r = report(vec![failed(Failure::Refused, 300)]);
        assert_eq!(
            r.render_text(),
            "1  error: connection refused after 0.3ms\n\
             \n\
             target    http://web/hostname\n\
             total     1\n\
             answered  0\n\
             failed    1\n"
        );
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn many_attempts_get_lines_and_a_sorted_summary() {
        let mut attempts = vec![
            ok("web-2", 2),
            ok("web-10", 1),
            failed(
                Failure::TimedOut {
                    after: Duration::from_secs(2),
                },
                2_000_400,
            ),
        ];
        attempts.extend((0..7).map(|_| ok("web-2", 1)));
        let r = report(attempts);
        assert_eq!(
            r.render_text(),
            " 1  web-2   2ms\n \
               2  web-10  1ms\n \
               3  error: timed out after 2s\n \
               4  web-2   1ms\n \
               5  web-2   1ms\n \
               6  web-2   1ms\n \
               7  web-2   1ms\n \
               8  web-2   1ms\n \
               9  web-2   1ms\n\
             10  web-2   1ms\n\
             \n\
             target    http://web/hostname\n\
             total     10\n\
             answered  9\n\
             failed    1\n\
             \n\
             hostname  answers\n\
             web-10          1\n\
             web-2           8\n"
        );
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn json_shape() {
        let r = Report {
            target: "10.0.0.1:7".to_string(),
            attempts: vec![
                Attempt {
                    outcome: Ok(Answer::from_echo_reply("web-1 10.0.0.2:4000 hello\n")),
                    elapsed: Duration::from_micros(1234),
                    local: None,
                },
                failed(Failure::Refused, 300),
            ],
        };
        let v: serde_json::Value = serde_json::from_str(&r.render_json()).expect("valid JSON");
        assert_eq!(
            v,
            serde_json::json!({
                "target": "10.0.0.1:7",
                "sent": 2,
                "answered": 1,
                "failed": 1,
                "by_hostname": {"web-1": 1},
                "attempts": [
                    {"ok": true, "answer": "web-1 10.0.0.2:4000 hello", "hostname": "web-1", "millis": 1.234},
                    {"ok": false, "error": "connection refused", "millis": 0.3},
                ],
            })
        );
        assert!(r.render(OutputFormat::Json).ends_with("}\n"));
    }

    #[test]
    fn grouping_keys() {
        assert_eq!(
            Answer::from_http_body("10.244.2.7:41234\n").hostname,
            "10.244.2.7:41234"
        );
        let a = Answer::from_echo_reply("web-1 10.244.2.7:41234 hello world\n");
        assert_eq!(a.hostname, "web-1");
        assert_eq!(a.text, "web-1 10.244.2.7:41234 hello world");
        assert_eq!(Answer::from_echo_reply("").hostname, "");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(Duration::from_micros(300)), "0.3ms");
        assert_eq!(format_duration(Duration::from_micros(12_345)), "12.3ms");
        assert_eq!(format_duration(Duration::from_millis(5)), "5ms");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(millis(Duration::from_nanos(1_234_567)), 1.235);
    }

    #[test]
    fn failures_say_what_happened() {
        let a = failed(Failure::Closed, 1500);
        assert_eq!(a.describe(), "connection closed before a reply after 1.5ms");
        let a = failed(Failure::Status("404 Not Found".to_string()), 900);
        assert_eq!(a.describe(), "HTTP 404 Not Found after 0.9ms");
    }
}
