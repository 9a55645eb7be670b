//! The kernel's notifications of committed nftables changes (multicast group
//! NFNLGRP_NFTABLES, what `nft monitor` reads), for every table of the namespace.
//!
//! Each committed transaction comes as a notice per object it added or deleted, then one
//! [`Notice::Generation`] naming the process that committed it. Every notice carries the
//! netlink port id of the socket that committed the transaction (a process's first such
//! socket gets its pid). To not hear one's own commits at all (and spare the kernel
//! building their notifications), [`Monitor::pause`] around them.

use std::io;

use netlink_packet_core::NetlinkBuffer;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nix::sys::socket::{setsockopt, sockopt};

use super::list::{attrs_of, string};
use super::{align4, NFNL_SUBSYS_NFTABLES};

const NFNLGRP_NFTABLES: u32 = 7;

// Notifications come in datagrams of at most a page or two; a dump-sized buffer is
// plenty.
const RECV_BUF: usize = 64 * 1024;
// How much the kernel may queue before it drops notices (and says so with ENOBUFS): an
// ordinary batch of the agent's fits many times over; a whole table of 200,000 elements
// written at once does not, and then a full comparison is the answer anyway.
const SOCKET_BUF: usize = 8 * 1024 * 1024;

const NFT_MSG_NEWGEN: u8 = 15;
const NFTA_GEN_ID: u16 = 1;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;

/// What a notification said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A transaction added, replaced or deleted an object.
    Change {
        /// In nft's words: `add rule`, `delete element`, ...
        what: &'static str,
        /// The table's family (`inet` is 1).
        family: u8,
        table: String,
        /// The chain of a chain or rule, the set of a set or element, the name of an
        /// object or flowtable; `None` for a table.
        object: Option<String>,
        /// The port id of the socket that committed it.
        portid: u32,
    },
    /// A transaction was committed: the changes notified since the last one were its own.
    Generation {
        /// The ruleset generation it started.
        id: u32,
        /// The port id of the socket that committed it.
        portid: u32,
        /// The committing process, as the kernel's initial pid namespace numbers it.
        pid: u32,
        /// Its name (`nft`, `podnet`, ...).
        process: String,
    },
    /// The socket's buffer overflowed and notices were lost: anything may have changed.
    Lost,
}

/// A socket subscribed to nftables notifications in one network namespace.
pub struct Monitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl Monitor {
    /// Subscribes in the namespace the calling thread is in (needs CAP_NET_ADMIN there).
    /// Notices queue from now on until [`Monitor::read`] takes them.
    pub fn open() -> io::Result<Monitor> {
        let ctx = |what: &str, e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("{what} of an nftables notification socket: {e}"),
            )
        };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| ctx("open", e))?;
        socket.bind_auto().map_err(|e| ctx("bind", e))?;
        socket
            .add_membership(NFNLGRP_NFTABLES)
            .map_err(|e| ctx("join the nftables group", e))?;
        socket
            .set_non_blocking(true)
            .map_err(|e| ctx("make non-blocking", e))?;
        // Past net.core.rmem_max with CAP_NET_ADMIN; up to it without.
        if setsockopt(&socket, sockopt::RcvBufForce, &SOCKET_BUF).is_err() {
            let _ = setsockopt(&socket, sockopt::RcvBuf, &SOCKET_BUF);
        }
        Ok(Monitor {
            socket,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Stops notices coming (those queued stay) until [`Monitor::resume`]. While nobody
    /// listens, the kernel does not build notifications at all: a commit of 230,000
    /// elements takes three times as long while someone does (3 s and 9-10 s, measured).
    pub fn pause(&self) -> io::Result<()> {
        self.socket
            .drop_membership(NFNLGRP_NFTABLES)
            .map_err(|e| io::Error::new(e.kind(), format!("leave the nftables group: {e}")))
    }

    /// Notices come again, from transactions committed from now on.
    pub fn resume(&self) -> io::Result<()> {
        self.socket
            .add_membership(NFNLGRP_NFTABLES)
            .map_err(|e| io::Error::new(e.kind(), format!("join the nftables group: {e}")))
    }

    /// Every notice queued so far, in order, without waiting.
    pub fn read(&mut self) -> io::Result<Vec<Notice>> {
        let mut out = Vec::new();
        loop {
            let size = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(size) => size,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                // The kernel dropped what did not fit; the socket goes on with what
                // comes next.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    out.push(Notice::Lost);
                    continue;
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("read nftables notifications: {e}"),
                    ))
                }
            };
            parse_datagram(&self.buf[..size], &mut out);
        }
    }
}

/// The notices of one datagram; a message that cannot be read loses the rest of it,
/// which is reported as [`Notice::Lost`].
fn parse_datagram(mut bytes: &[u8], out: &mut Vec<Notice>) {
    while !bytes.is_empty() {
        let Ok(header) = NetlinkBuffer::new_checked(bytes) else {
            out.push(Notice::Lost);
            return;
        };
        let kind = header.message_type();
        let portid = header.port_number();
        let payload = header.payload();
        bytes = bytes
            .get(align4(header.length() as usize)..)
            .unwrap_or_default();
        if kind >> 8 != NFNL_SUBSYS_NFTABLES {
            continue;
        }
        // nfgenmsg (family, version, resource id), then the attributes.
        let Some((&family, attrs)) = payload.split_first() else {
            out.push(Notice::Lost);
            return;
        };
        let attrs = attrs.get(3..).unwrap_or_default();
        out.extend(notice((kind & 0xff) as u8, family, portid, attrs));
    }
}

fn notice(message: u8, family: u8, portid: u32, attrs: &[u8]) -> Option<Notice> {
    if message == NFT_MSG_NEWGEN {
        let (mut id, mut pid, mut process) = (0, 0, String::new());
        for (kind, value) in attrs_of(attrs) {
            let number = || value.try_into().map(u32::from_be_bytes).unwrap_or_default();
            match kind {
                NFTA_GEN_ID => id = number(),
                NFTA_GEN_PROC_PID => pid = number(),
                NFTA_GEN_PROC_NAME => process = string(value),
                _ => {}
            }
        }
        return Some(Notice::Generation {
            id,
            portid,
            pid,
            process,
        });
    }
    // (what, the attribute naming the object): every object's table is attribute 1.
    let (what, object) = match message {
        0 => ("add table", None),
        2 => ("delete table", None),
        3 => ("add chain", Some(3)),
        5 => ("delete chain", Some(3)),
        6 => ("add rule", Some(2)),
        8 => ("delete rule", Some(2)),
        9 => ("add set", Some(2)),
        11 => ("delete set", Some(2)),
        12 => ("add element", Some(2)),
        14 => ("delete element", Some(2)),
        18 => ("add object", Some(2)),
        20 => ("delete object", Some(2)),
        22 => ("add flowtable", Some(2)),
        24 => ("delete flowtable", Some(2)),
        _ => return None,
    };
    let mut table = String::new();
    let mut name = None;
    for (kind, value) in attrs_of(attrs) {
        if kind == 1 {
            table = string(value);
        } else if Some(kind) == object {
            name = Some(string(value));
        }
    }
    Some(Notice::Change {
        what,
        family,
        table,
        object: name,
        portid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, family: u8, portid: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (t, v) in attrs {
            let len = 4 + v.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            body.resize(align4(body.len()), 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | u16::from(kind)).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&portid.to_ne_bytes());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn a_transaction_reads_as_its_changes_then_its_generation() {
        // `nft delete element inet podnet service-ips { ... }` by pid 4242, as the kernel
        // sends it: one datagram with both messages.
        let mut datagram = message(
            14,
            1,
            4242,
            &[(1, b"podnet\0"), (2, b"service-ips\0"), (3, &[])],
        );
        datagram.extend(message(
            NFT_MSG_NEWGEN,
            0,
            4242,
            &[
                (NFTA_GEN_ID, &77u32.to_be_bytes()),
                (NFTA_GEN_PROC_PID, &4242u32.to_be_bytes()),
                (NFTA_GEN_PROC_NAME, b"nft\0"),
            ],
        ));
        let mut out = Vec::new();
        parse_datagram(&datagram, &mut out);
        assert_eq!(
            out,
            [
                Notice::Change {
                    what: "delete element",
                    family: 1,
                    table: "podnet".into(),
                    object: Some("service-ips".into()),
                    portid: 4242,
                },
                Notice::Generation {
                    id: 77,
                    portid: 4242,
                    pid: 4242,
                    process: "nft".into(),
                },
            ]
        );
    }

    #[test]
    fn a_cut_message_is_a_loss() {
        let m = message(8, 1, 1, &[(1, b"podnet\0"), (2, b"services\0")]);
        let mut out = Vec::new();
        parse_datagram(&m[..m.len() - 8], &mut out);
        assert_eq!(out, [Notice::Lost]);
    }
}
