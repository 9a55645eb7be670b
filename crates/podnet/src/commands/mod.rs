//! One module per command.

pub mod agent;
pub mod lab;
