//! What stops a probe command as a whole. A request that gets no answer is not one of these:
//! it is a [`Failure`](crate::Failure) recorded in the report.

use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot use the {what} listener: {source}")]
    Listener {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the hostname: {0}")]
    Hostname(#[source] nix::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot start the server thread: {0}")]
    Thread(#[source] io::Error),
    #[error("cannot wait for signals: {0}")]
    Signals(#[source] io::Error),
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot open a UDP socket to {target}: {source}")]
    UdpSocket {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the report: {0}")]
    Output(#[source] io::Error),
}
