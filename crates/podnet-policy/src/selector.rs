//! Label selectors, checked once when a policy is parsed and then matched cheaply.

use std::collections::BTreeSet;

use podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use podnet_model::selector::{check_label_key, check_label_value};

use crate::objects::Labels;

/// A parsed `LabelSelector`: all requirements must hold (`matchLabels` are `In` with one
/// value). No requirement selects everything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

impl Selector {
    /// The selector that selects everything (`{}`).
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn selects_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Parses a selector; on error returns the sub-field at fault (to append to the
    /// selector's own path) and the message.
    pub fn parse(sel: &LabelSelector) -> Result<Selector, (String, String)> {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            let field = format!("matchLabels.{k}");
            check_label_key(k).map_err(|m| (field.clone(), m))?;
            check_label_value(k, v).map_err(|m| (field, m))?;
            requirements.push(Requirement {
                key: k.clone(),
                op: Op::In(BTreeSet::from([v.clone()])),
            });
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            check_label_key(&e.key).map_err(|m| (format!("{field}.key"), m))?;
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            for v in &values {
                check_label_value(&e.key, v).map_err(|m| (format!("{field}.values"), m))?;
            }
            let op = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err((
                        format!("{field}.values"),
                        format!("operator {} needs at least one value", e.operator),
                    ))
                }
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err((
                        format!("{field}.values"),
                        format!("operator {} takes no values; remove them", e.operator),
                    ))
                }
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err((
                        format!("{field}.operator"),
                        format!(
                            "unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"
                        ),
                    ))
                }
            };
            requirements.push(Requirement {
                key: e.key.clone(),
                op,
            });
        }
        Ok(Selector { requirements })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.get(&r.key);
            match &r.op {
                Op::In(vs) => value.is_some_and(|v| vs.contains(v)),
                Op::NotIn(vs) => value.is_none_or(|v| !vs.contains(v)),
                Op::Exists => value.is_some(),
                Op::DoesNotExist => value.is_none(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn sel(exprs: Vec<LabelSelectorRequirement>) -> Result<Selector, (String, String)> {
        Selector::parse(&LabelSelector {
            match_labels: None,
            match_expressions: Some(exprs),
        })
    }

    #[test]
    fn operators() {
        let s = sel(vec![
            expr("env", "In", &["prod", "stage"]),
            expr("tier", "NotIn", &["db"]),
            expr("app", "Exists", &[]),
            expr("canary", "DoesNotExist", &[]),
        ])
        .expect("valid");
        assert!(s.matches(&labels(&[("env", "prod"), ("app", "x")])));
        assert!(s.matches(&labels(&[("env", "stage"), ("app", "x"), ("tier", "fe")])));
        assert!(!s.matches(&labels(&[("env", "dev"), ("app", "x")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("app", "x"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("app", "x"), ("canary", "")])));
        assert!(Selector::everything().matches(&Labels::new()));
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        let (field, msg) = sel(vec![expr("a", "In", &[])]).expect_err("no values");
        assert_eq!(field, "matchExpressions[0].values");
        assert!(msg.contains("at least one value"), "{msg}");
        let (field, _) = sel(vec![expr("a", "Exists", &["x"])]).expect_err("values");
        assert_eq!(field, "matchExpressions[0].values");
        let (field, msg) = sel(vec![expr("a", "Maybe", &[])]).expect_err("operator");
        assert_eq!(field, "matchExpressions[0].operator");
        assert!(msg.contains("Maybe"), "{msg}");
        let (field, _) = Selector::parse(&LabelSelector {
            match_labels: Some(labels(&[("bad key", "v")])),
            match_expressions: None,
        })
        .expect_err("key");
        assert_eq!(field, "matchLabels.bad key");
    }
}
