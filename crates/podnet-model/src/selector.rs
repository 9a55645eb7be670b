//! Label selectors: the equality-based map of Services and `matchLabels`, and
//! `matchExpressions` of Deployments and NetworkPolicies.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` carry every key/value of a Service selector (`spec.selector`). An
/// empty selector selects nothing for a Service (its endpoints are then managed by hand).
pub fn service_selects(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    !selector.is_empty() && map_matches(selector, labels)
}

fn map_matches(want: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    want.iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Whether `labels` match a `LabelSelector` (`matchLabels` and `matchExpressions`, all
/// ANDed). An empty selector matches everything, as in Kubernetes.
pub fn label_selector_matches(
    sel: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    if let Some(ml) = &sel.match_labels {
        if !map_matches(ml, labels) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let value = labels.and_then(|l| l.get(&e.key));
        let values = e.values.as_deref().unwrap_or_default();
        let ok = match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Checks a label key (`[prefix/]name`) against Kubernetes' syntax; returns why not.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || !is_dns_subdomain(p) {
            return Err(format!(
                "label key {key:?}: the prefix must be a DNS subdomain"
            ));
        }
    }
    if name.is_empty() || name.len() > 63 || !is_label_value(name) {
        return Err(format!(
            "label key {key:?}: the name must be 1-63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a label value: empty, or up to 63 characters of `[A-Za-z0-9_.-]` starting and
/// ending with an alphanumeric.
pub fn check_label_value(key: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && is_label_value(value)) {
        Ok(())
    } else {
        Err(format!(
            "label {key}={value:?}: a value must be at most 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ))
    }
}

fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, at
/// most 63 characters (names of Services, Namespaces).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters (names of Pods,
/// Deployments, EndpointSlices).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn service_selectors_are_equality_and() {
        let sel = labels(&[("app", "web"), ("tier", "fe")]);
        assert!(service_selects(
            &sel,
            Some(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")]))
        ));
        assert!(!service_selects(&sel, Some(&labels(&[("app", "web")]))));
        assert!(!service_selects(&sel, None));
        assert!(!service_selects(
            &BTreeMap::new(),
            Some(&labels(&[("app", "web")]))
        ));
    }

    #[test]
    fn match_expressions() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "env".into(),
                    operator: "In".into(),
                    values: Some(vec!["prod".into(), "stage".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert!(label_selector_matches(
            &sel,
            Some(&labels(&[("app", "web"), ("env", "prod")]))
        ));
        assert!(!label_selector_matches(
            &sel,
            Some(&labels(&[("app", "web"), ("env", "dev")]))
        ));
        assert!(!label_selector_matches(
            &sel,
            Some(&labels(&[("app", "web"), ("env", "prod"), ("canary", "1")]))
        ));
        assert!(label_selector_matches(&LabelSelector::default(), None));
    }

    #[test]
    fn label_syntax() {
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("app.kubernetes.io/name").is_ok());
        assert!(check_label_key("-app").is_err());
        assert!(check_label_key("a b").is_err());
        assert!(check_label_key("Bad_Prefix/x").is_err());
        assert!(check_label_value("app", "").is_ok());
        assert!(check_label_value("app", "web-1").is_ok());
        assert!(check_label_value("app", "web!").is_err());
        assert!(is_dns_label("web-1"));
        assert!(!is_dns_label("Web"));
        assert!(is_dns_subdomain("web-1.x"));
    }
}
