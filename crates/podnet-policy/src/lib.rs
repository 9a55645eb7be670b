//! podnet's NetworkPolicy model, pure: no I/O, no clock.
//!
//! - [`objects`]: slim views of Pods and Namespaces ([`PodInfo`], [`NamespaceInfo`]);
//! - [`policy`]: a NetworkPolicy with the API's defaults resolved ([`PolicyInfo`]);
//! - [`index`]: the incremental [`PolicyIndex`], fed objects one at a time, that keeps the
//!   compiled form of a node's pods and what changed ([`Delta`]);
//! - [`compiled`]: the compiled form (verdict maps → policy sets → rules over sets of
//!   addresses and ports, as nftables will hold it) and [`decide`], the decision it makes.
//!
//! docs/network-policy.md describes the semantics and the nftables layout.

pub mod compiled;
pub mod index;
pub mod objects;
pub mod policy;
pub mod ranges;
pub mod selector;

pub use compiled::{
    decide, judge, Always, Compiled, CompiledRule, Delta, Direction, Element, Judgement, NamedPort,
    PeerMatch, PolicyId, PolicySet, PortMatch, RuleId, SetId, Source, Verdict, View,
};
pub use index::{PolicyIndex, Scope};
pub use objects::{
    InvalidObject, Key, Labels, NamespaceInfo, PodInfo, PodKey, PolicyKey, Protocol,
    NAMESPACE_NAME_LABEL,
};
pub use policy::PolicyInfo;
