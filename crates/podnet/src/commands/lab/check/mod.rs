//! What `podnet lab test` checks, as pure data and functions; `test.rs` only runs them.
//!
//! - [`plan`]: from the lab's nodes, the workload to deploy (namespace `podnet-test`) and,
//!   once it runs, the list of [`plan::Check`]s: who runs which probe against what, and
//!   what its answer must show;
//! - [`eval`]: a probe's JSON report (or its absence) read into a pass/fail verdict with
//!   its evidence;
//! - [`report`]: the rows shown as a table or as JSON.

pub mod eval;
pub mod plan;
pub mod report;

use clap::ValueEnum;

/// The groups of checks, in the order they run and are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Group {
    /// The containers of a pod talk over localhost.
    ContainerToContainer,
    /// Pods reach pods on the same node and on other nodes, without NAT.
    PodToPod,
    /// Nodes reach pods on every node, seen as themselves.
    NodeToPod,
    /// Services: ClusterIP, load spreading, endpoints following pods, NodePorts, ...
    PodToService,
    /// Traffic leaving the cluster is seen as its node.
    Egress,
}

impl Group {
    pub const ALL: [Group; 5] = [
        Group::ContainerToContainer,
        Group::PodToPod,
        Group::NodeToPod,
        Group::PodToService,
        Group::Egress,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Group::ContainerToContainer => "container-to-container",
            Group::PodToPod => "pod-to-pod",
            Group::NodeToPod => "node-to-pod",
            Group::PodToService => "pod-to-service",
            Group::Egress => "egress",
        }
    }
}

/// The groups to run: those given, or all of them; in their canonical order.
pub fn selected(only: &[Group]) -> Vec<Group> {
    Group::ALL
        .into_iter()
        .filter(|g| only.is_empty() || only.contains(g))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_the_cli_values() {
        for g in Group::ALL {
            let v = g.to_possible_value().expect("a value");
            assert_eq!(v.get_name(), g.name());
        }
    }

    #[test]
    fn selection_keeps_the_canonical_order() {
        assert_eq!(selected(&[]), Group::ALL.to_vec());
        assert_eq!(
            selected(&[Group::Egress, Group::PodToPod]),
            vec![Group::PodToPod, Group::Egress]
        );
    }
}
