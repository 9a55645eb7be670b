//! A small synchronous rtnetlink client. One [`Netlink`] is one socket bound to the
//! namespace it was opened in; every request on it acts on that namespace, whatever
//! namespace the calling thread is in later (the netavark pattern: switch once, then
//! never again).
//!
//! Requests are built from netlink-packet-route's message types; the typed helpers in
//! the submodules cover what podnet owns: links, addresses and routes.

mod address;
mod link;
mod neighbour;
mod route;

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;

use crate::NetNs;

pub use link::{format_mac, mac_for_ipv4, BridgePort, Link, VethSpec, Vxlan, VxlanSpec};
pub use neighbour::{Fdb, Neighbour};
pub use route::{Route, PROTO_BOOT};

/// What failed talking to the kernel, on which object.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused the request.
    #[error("{op}: {errno}")]
    Kernel { op: String, errno: Errno },
    /// The socket itself failed.
    #[error("{op}: netlink socket: {source}")]
    Io { op: String, source: io::Error },
    /// The kernel answered with something we cannot read.
    #[error("{op}: cannot decode the kernel's netlink answer: {detail}")]
    Decode { op: String, detail: String },
}

impl NetlinkError {
    /// The errno the kernel answered with, if it refused the request.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The object does not exist (no such device, address or route).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(Errno::ENODEV | Errno::ENOENT | Errno::ESRCH | Errno::EADDRNOTAVAIL)
        )
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST)
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// A route netlink socket bound to one network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

// Dumps of large tables arrive in many datagrams; one of this size holds any of them.
const RECV_BUF: usize = 64 * 1024;

impl Netlink {
    /// Opens a socket in the namespace the calling thread is in.
    pub fn open() -> Result<Netlink> {
        let io_err = |source| NetlinkError::Io {
            op: "open rtnetlink socket".into(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_err)?;
        socket.bind_auto().map_err(io_err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io_err)?;
        // Ask for precise ACK errors; older kernels may lack it, which is harmless.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Opens a socket inside `ns`; the calling thread returns to its own namespace before
    /// this returns.
    pub fn open_in(ns: &NetNs) -> Result<Netlink> {
        let guard = ns.enter().map_err(|source| NetlinkError::Io {
            op: format!("enter network namespace {}", ns.path().display()),
            source,
        })?;
        let nl = Netlink::open();
        drop(guard);
        nl
    }

    /// Sends one request and waits for its ACK (or, for dumps, for all parts of the answer).
    pub(crate) fn request(
        &mut self,
        op: impl Fn() -> String,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        // Dumps end with NLMSG_DONE; everything else is confirmed by an ACK.
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket
            .send(&out, 0)
            .map_err(|source| NetlinkError::Io { op: op(), source })?;

        let mut answers = Vec::new();
        loop {
            let size = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|source| NetlinkError::Io { op: op(), source })?;
            let mut offset = 0;
            while offset < size {
                let bytes = &self.buf[offset..size];
                let msg =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                        NetlinkError::Decode {
                            op: op(),
                            detail: e.to_string(),
                        }
                    })?;
                let len = msg.header.length as usize;
                // Answers to an earlier request that timed out or was abandoned.
                if msg.header.sequence_number != self.seq {
                    offset += len.max(1);
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(code) => Err(NetlinkError::Kernel {
                                op: op(),
                                errno: Errno::from_raw(-code.get()),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}
