//! Which node runs a pod: `spec.nodeName` when given, otherwise the ready node with the
//! fewest pods (ties broken by name, so the choice is reproducible).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Node(String),
    /// Cannot be placed now; the reason is shown in the pod's status.
    Unschedulable(String),
}

/// `ready_nodes` maps each ready node to how many pods it runs.
pub fn place(node_name: Option<&str>, ready_nodes: &BTreeMap<String, usize>) -> Placement {
    if let Some(n) = node_name.filter(|n| !n.is_empty()) {
        return if ready_nodes.contains_key(n) {
            Placement::Node(n.to_string())
        } else {
            Placement::Unschedulable(format!(
                "spec.nodeName {n:?} is not a ready node of this lab"
            ))
        };
    }
    ready_nodes
        .iter()
        .min_by_key(|(name, count)| (**count, (*name).clone()))
        .map(|(name, _)| Placement::Node(name.clone()))
        .unwrap_or_else(|| Placement::Unschedulable("no ready node".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(counts: &[(&str, usize)]) -> BTreeMap<String, usize> {
        counts.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn least_loaded_then_by_name() {
        let n = nodes(&[("node-1", 2), ("node-2", 1), ("node-3", 1)]);
        assert_eq!(place(None, &n), Placement::Node("node-2".into()));
    }

    #[test]
    fn node_name_is_honoured_or_explained() {
        let n = nodes(&[("node-1", 5), ("node-2", 0)]);
        assert_eq!(place(Some("node-1"), &n), Placement::Node("node-1".into()));
        assert!(
            matches!(place(Some("node-9"), &n), Placement::Unschedulable(m) if m.contains("node-9"))
        );
        assert!(matches!(
            place(None, &BTreeMap::new()),
            Placement::Unschedulable(_)
        ));
    }
}
