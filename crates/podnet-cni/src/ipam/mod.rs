//! IP address management for the node's pod subnet.
//!
//! [`pool`] decides (pure); [`store`] keeps the pool on disk under a lock so that
//! concurrent plugin invocations and crashes at any point are safe.

pub mod pool;
pub mod store;

pub use pool::{Allocation, Exhausted, Held, NetnsRef, Pool};
pub use store::{Locked, Store, StoreError, LOCK_TIMEOUT};
