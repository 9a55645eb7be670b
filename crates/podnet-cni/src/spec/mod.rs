//! The CNI specification as data: versions, the environment, the network config, results
//! and errors. Pure: no I/O here, so all of it is unit-tested without root.

pub mod config;
pub mod env;
pub mod error;
pub mod result;
pub mod version;

pub use config::{Attachment, NetConf, NodeConfig, PortMapping, Resolved, RuntimeConfig};
pub use env::{Command, CrashAt, Env};
pub use error::{code, CniError};
pub use result::{AddResult, Interface, IpConfig, RouteEntry};
pub use version::Version;
