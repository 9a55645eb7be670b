//! The rows of a `lab test` run, as a table or as JSON. Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::Group;
use crate::output::table;

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub group: Group,
    pub check: String,
    pub from: String,
    pub to: String,
    pub ok: bool,
    pub evidence: String,
    /// How long the check took (for the endpoints-follow rows: until the answers matched).
    pub millis: u64,
}

/// The table, one line a row, without trailing spaces.
pub fn render_table(rows: &[Row]) -> String {
    let mut t = table(&["GROUP", "CHECK", "FROM → TO", "RESULT", "EVIDENCE"]);
    for r in rows {
        t.add_row(vec![
            r.group.name().to_string(),
            r.check.clone(),
            format!("{} → {}", r.from, r.to),
            if r.ok { "pass" } else { "FAIL" }.to_string(),
            r.evidence.clone(),
        ]);
    }
    let mut s = String::new();
    for line in t.to_string().lines() {
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// The failed checks, by group and check: `pod-to-service/hairpin-tcp (3)`.
fn failures(rows: &[Row]) -> Vec<String> {
    let mut m: BTreeMap<(Group, &str), usize> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.ok) {
        *m.entry((r.group, r.check.as_str())).or_insert(0) += 1;
    }
    m.into_iter()
        .map(|((g, c), n)| format!("{}/{c} ({n})", g.name()))
        .collect()
}

/// `65 checks, 63 passed, 2 failed in 8.4s: pod-to-service/hairpin-tcp (2)`.
pub fn summary(rows: &[Row], elapsed: Duration) -> String {
    let failed = rows.iter().filter(|r| !r.ok).count();
    let mut s = format!(
        "{} check{}, {} passed, {failed} failed in {:.1}s",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        rows.len() - failed,
        elapsed.as_secs_f64()
    );
    if failed > 0 {
        s.push_str(": ");
        s.push_str(&failures(rows).join(", "));
    }
    s
}

/// `{"lab": ..., "checks": [{group, check, from, to, ok, evidence, millis}], "summary": {...}}`.
pub fn render_json(lab: &str, rows: &[Row], elapsed: Duration) -> Value {
    let failed = rows.iter().filter(|r| !r.ok).count();
    json!({
        "lab": lab,
        "checks": rows.iter().map(|r| json!({
            "group": r.group.name(),
            "check": r.check,
            "from": r.from,
            "to": r.to,
            "ok": r.ok,
            "evidence": r.evidence,
            "millis": r.millis,
        })).collect::<Vec<_>>(),
        "summary": {
            "total": rows.len(),
            "passed": rows.len() - failed,
            "failed": failed,
            "failures": failures(rows),
            "millis": elapsed.as_millis() as u64,
            "ok": failed == 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        vec![
            Row {
                group: Group::PodToPod,
                check: "tcp-cross-node".into(),
                from: "client-node-1".into(),
                to: "web-node-2".into(),
                ok: true,
                evidence: "server saw 10.244.0.3, client has 10.244.0.3".into(),
                millis: 24,
            },
            Row {
                group: Group::PodToService,
                check: "hairpin-tcp".into(),
                from: "web-node-1".into(),
                to: "svc/self-node-1".into(),
                ok: false,
                evidence: "0/5 answered, 5 failed: timed out".into(),
                millis: 2510,
            },
        ]
    }

    #[test]
    fn table() {
        assert_eq!(
            render_table(&rows()),
            "GROUP            CHECK            FROM → TO                      RESULT   EVIDENCE\n\
             pod-to-pod       tcp-cross-node   client-node-1 → web-node-2     pass     server saw 10.244.0.3, client has 10.244.0.3\n\
             pod-to-service   hairpin-tcp      web-node-1 → svc/self-node-1   FAIL     0/5 answered, 5 failed: timed out\n"
        );
    }

    #[test]
    fn summary_names_the_failures() {
        assert_eq!(
            summary(&rows(), Duration::from_millis(8420)),
            "2 checks, 1 passed, 1 failed in 8.4s: pod-to-service/hairpin-tcp (1)"
        );
        assert_eq!(
            summary(&rows()[..1], Duration::from_secs(1)),
            "1 check, 1 passed, 0 failed in 1.0s"
        );
    }

    #[test]
    fn json() {
        let v = render_json("demo", &rows(), Duration::from_millis(8420));
        assert_eq!(
            v["checks"][0],
            json!({"group": "pod-to-pod", "check": "tcp-cross-node", "from": "client-node-1",
                   "to": "web-node-2", "ok": true,
                   "evidence": "server saw 10.244.0.3, client has 10.244.0.3", "millis": 24})
        );
        assert_eq!(
            v["summary"],
            json!({"total": 2, "passed": 1, "failed": 1, "millis": 8420, "ok": false,
                   "failures": ["pod-to-service/hairpin-tcp (1)"]})
        );
        assert_eq!(v["lab"], "demo");
    }
}
