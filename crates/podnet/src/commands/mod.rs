//! One module per command.

pub mod agent;
pub mod install_cni;
pub mod lab;
pub mod uninstall;
