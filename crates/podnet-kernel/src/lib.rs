//! Thin adapters to the Linux kernel. Everything here performs I/O; deciding what to
//! ask the kernel for lives elsewhere and is pure.
//!
//! - [`conntrack`]: list and delete connection-tracking flows over ctnetlink;
//! - [`netns`]: open, enter, create and delete network namespaces;
//! - [`netlink`]: a small synchronous rtnetlink client bound to one namespace;
//! - [`nft`]: nftables transactions;
//! - [`nftables`]: set and map elements over nf_tables netlink, in atomic batches;
//! - [`sysctl`]: per-namespace sysctls.

pub mod conntrack;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod nftables;
pub mod sysctl;

pub use conntrack::{Conntrack, ConntrackError};
pub use netlink::{Link, Netlink, NetlinkError, Route, VethSpec};
pub use netns::{NetNs, NetNsGuard, NsId};
pub use nftables::{NfTables, NftError};
