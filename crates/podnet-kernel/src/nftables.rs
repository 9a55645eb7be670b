//! nftables over nf_tables netlink (`NETLINK_NETFILTER`, subsystem
//! `NFNL_SUBSYS_NFTABLES`), for the sets and maps of an existing `inet` table:
//! - [`NfTables::commit`]: add and delete elements as one atomic batch (what `nft -f`
//!   does for `add element` and `delete element` lines, without running the tool);
//! - [`NfTables::list_table`], [`NfTables::list_elements`], [`NfTables::generation`]:
//!   read a table's chains, rules and elements back, to compare them with what was
//!   committed;
//! - [`Monitor`]: the kernel's notifications of every committed change, to notice
//!   changes someone else made.
//!
//! Why not `nft`: the tool reads the whole table back before each transaction (to resolve
//! names and check types), which costs 10–20 ms, and over a second once the table holds
//! 200,000 elements; the kernel itself applies such a batch in well under a millisecond.
//! Tables, chains, rules and the sets themselves are still made with [`crate::nft`]; this
//! only changes elements.
//!
//! The kernel checks the length of a key or value, not its meaning: [`encode`] lays the
//! fields out as nft does, and using the field order of the set's type is up to the
//! caller. As with [`crate::Netlink`], one [`NfTables`] is one socket bound to the
//! namespace it was opened in.

mod list;
mod monitor;

pub use list::{ListedChain, ListedRule, Listing};
pub use monitor::{Monitor, Notice};

use std::fmt;
use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{
    parse_u32, Emitable, ErrorBuffer, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlasIterator, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
    SetElementMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::errno::Errno;
use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use nix::sys::time::TimeVal;

/// One field of a set key or map value, as nftables stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datum {
    /// `ipv4_addr`, `ip daddr`: 4 bytes, network order.
    Ipv4(Ipv4Addr),
    /// `inet_proto`, `meta l4proto`: 1 byte.
    Proto(u8),
    /// `inet_service`, `th dport`: 2 bytes, network order.
    Port(u16),
    /// `numgen ... mod N` and other host-order integers: 4 bytes, host order.
    U32(u32),
}

impl Datum {
    /// The field at its natural width: the bytes and how many of them count.
    fn natural(&self) -> ([u8; 4], usize) {
        match *self {
            Datum::Ipv4(a) => (a.octets(), 4),
            Datum::Proto(p) => ([p, 0, 0, 0], 1),
            Datum::Port(p) => {
                let [hi, lo] = p.to_be_bytes();
                ([hi, lo, 0, 0], 2)
            }
            // numgen writes its result into a register as a host-order u32, and nft
            // stores such integers the same way.
            Datum::U32(v) => (v.to_ne_bytes(), 4),
        }
    }
}

/// Encodes a key or value: a single field at its natural width (ipv4 4 bytes, proto 1,
/// port 2 big-endian, U32 4 bytes in HOST byte order as numgen writes it); a
/// concatenation (2+ fields) with every field padded to 4 bytes (nftables' register
/// alignment), as nft does.
///
/// `10.96.0.10 . tcp . 80` is `0a 60 00 0a | 06 00 00 00 | 00 50 00 00`.
pub fn encode(fields: &[Datum]) -> Vec<u8> {
    if let [single] = fields {
        let (bytes, len) = single.natural();
        return bytes[..len].to_vec();
    }
    // Each field of a concatenation starts a new 32-bit register, so every field takes
    // a multiple of 4 bytes; all of ours fit in one.
    let mut out = Vec::with_capacity(4 * fields.len());
    for field in fields {
        out.extend_from_slice(&field.natural().0);
    }
    out
}

/// What a map element maps its key to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ElementData {
    /// A set element: no value.
    None,
    /// A data map's value, e.g. [`encode`]`(&[Ipv4(ep), Port(port)])`.
    Value(Vec<u8>),
    /// A verdict map's `goto <chain>`.
    Goto(String),
    /// A verdict map's `jump <chain>`.
    Jump(String),
    /// Any other verdict (`accept` is 1, `drop` 0, `return` -5 as u32, ...), as the
    /// kernel lists it.
    Verdict(u32),
}

/// One element of a set or map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    pub key: Vec<u8>,
    /// Ignored for [`Op::Delete`]: the kernel finds the element by its key.
    pub data: ElementData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Adds elements; adding one that is already there with the same value is a no-op,
    /// with another value an error (delete it first, in the same batch).
    Add,
    /// Deletes elements; deleting one that is not there is an error.
    Delete,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Add => "add elements to",
            Op::Delete => "delete elements from",
        })
    }
}

/// Elements to add to, or delete from, one set or map of the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Change {
    pub op: Op,
    pub set: String,
    pub elements: Vec<Element>,
}

/// What failed committing a batch, on which set. Unless said otherwise nothing in the
/// batch was applied: the kernel rolls a batch back as a whole.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The kernel refused the elements of one change (the first it refused, in batch
    /// order). `key` is the element it pointed at, when it said.
    #[error(
        "nftables: {op} inet {table} {set}{}: {}; {}; nothing in the batch was applied",
        key_note(.key), .errno.desc(), element_hint(*.op, *.errno, .key.is_some())
    )]
    Element {
        op: Op,
        table: String,
        set: String,
        key: Option<Vec<u8>>,
        errno: Errno,
    },
    /// The kernel refused the batch as a whole (or could not commit it).
    #[error(
        "nftables: commit a batch to inet {table}: {}{}; nothing in the batch was applied",
        .errno.desc(), batch_hint(*.errno)
    )]
    Batch { table: String, errno: Errno },
    /// A change that cannot be sent as asked; nothing was sent.
    #[error("nftables: {op} inet {table} {set}: {detail}; nothing was sent")]
    Invalid {
        op: Op,
        table: String,
        set: String,
        detail: String,
    },
    /// The socket failed; `what` says whether the batch may have been applied.
    #[error("nftables: {what} (inet {table}): {source}")]
    Io {
        table: String,
        what: String,
        source: io::Error,
    },
    /// The kernel answered with something we cannot read.
    #[error(
        "nftables: cannot decode the kernel's answer to a batch for inet {table}: {detail}; \
         the batch may or may not have been applied (list the table before retrying)"
    )]
    Decode { table: String, detail: String },
}

impl NftError {
    /// The errno the kernel answered with, if it refused the batch.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            NftError::Element { errno, .. } | NftError::Batch { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// ` (key 0a60000a 06000000 00500000)`: the bytes in 32-bit words, as `nft --debug`
/// prints them (but in memory order).
fn key_note(key: &Option<Vec<u8>>) -> String {
    let Some(key) = key else {
        return String::new();
    };
    let words: Vec<String> = key
        .chunks(4)
        .map(|w| w.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    format!(" (key {})", words.join(" "))
}

fn element_hint(op: Op, errno: Errno, key_known: bool) -> &'static str {
    match (op, errno) {
        (Op::Delete, Errno::ENOENT) if key_known => {
            "the element is not in the set (changed behind podnet's back?)"
        }
        (Op::Delete, Errno::ENOENT) => {
            "the element or set is not in the kernel (changed behind podnet's back?)"
        }
        (Op::Add, Errno::ENOENT) => {
            "the table, the set or a goto/jump chain does not exist (was the table created?)"
        }
        (Op::Add, Errno::EEXIST | Errno::EBUSY) => {
            "the key is already in the set with another value; delete it first in the same batch"
        }
        (_, Errno::EINVAL | Errno::ERANGE) => {
            "the key or value does not fit the set's type (field widths or count)"
        }
        (_, Errno::ENFILE) => "the set is full (its size limit)",
        (_, Errno::ELOOP) => "a goto/jump element would make a chain loop",
        (_, Errno::EOPNOTSUPP) => "the set does not support such elements (its flags?)",
        (_, Errno::EPERM) => "podnet needs CAP_NET_ADMIN in this network namespace",
        _ => "the kernel refused the element",
    }
}

fn batch_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::EPERM => "; podnet needs CAP_NET_ADMIN in this network namespace",
        Errno::ENOMEM => "; the kernel ran out of memory",
        _ => "",
    }
}

pub type Result<T> = std::result::Result<T, NftError>;

/// An nf_tables netlink socket bound to one network namespace.
pub struct NfTables {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

// nfnetlink's batch messages carry the subsystem they are for as the resource id.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
// nfgenmsg's family for `inet` tables.
const NFPROTO_INET: u8 = 1;

// The elements of one message sit in a single attribute, whose length field has 16
// bits. nft fills page-sized buffers; half the limit keeps us far from it.
const MAX_MESSAGE_ELEMENTS: usize = 1000;
const MAX_ELEMENTS_BYTES: usize = 32 * 1024;

// Answers are acks of about 40 bytes each (errors echo only the request's header, see
// open), one per datagram.
const RECV_BUF: usize = 64 * 1024;
// What one queued ack costs the receive buffer, bookkeeping included (nft counts the
// same).
const ACK_ROOM: usize = 1024;

// The kernel handles a batch inside the send call, so its answers are queued before we
// read: this only guards against waiting forever on a kernel that never answers.
const ANSWER_TIMEOUT_SECS: i64 = 10;

// NLMSGERR_ATTR_OFFS: where in the request the attribute the kernel refused starts.
const NLMSGERR_ATTR_OFFS: u16 = 2;

/// One element message of a batch, to name what the kernel refused.
struct Sent {
    /// Index into the changes.
    change: usize,
    /// Index of the message's first element in its change.
    first: usize,
    /// Offset of each element's attribute from the start of the message.
    offsets: Vec<u32>,
}

/// A serialised batch: BATCH_BEGIN with sequence number `begin`, element message `i` with
/// `begin + 1 + i`, BATCH_END with `begin + 1 + sent.len()`.
struct Batch {
    bytes: Vec<u8>,
    begin: u32,
    sent: Vec<Sent>,
}

impl Batch {
    fn end(&self) -> u32 {
        self.begin.wrapping_add(1 + self.sent.len() as u32)
    }

    /// The element message with sequence number `seq`, if it is one.
    fn message(&self, seq: u32) -> Option<&Sent> {
        let i = seq.wrapping_sub(self.begin).checked_sub(1)?;
        self.sent.get(i as usize)
    }

    fn contains(&self, seq: u32) -> bool {
        seq.wrapping_sub(self.begin) <= self.end().wrapping_sub(self.begin)
    }
}

impl NfTables {
    /// Opens a socket in the namespace the calling thread is in (wrap the call in
    /// [`crate::NetNs::run`] to reach another one). Committing needs CAP_NET_ADMIN there.
    pub fn open() -> io::Result<NfTables> {
        let ctx = |what: &str, e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("{what} of an nf_tables netlink socket: {e}"),
            )
        };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| ctx("open", e))?;
        socket.bind_auto().map_err(|e| ctx("bind", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| ctx("connect", e))?;
        // Extended acks say which element the kernel refused; capped acks echo only the
        // header of a refused message, not its up to 32 KiB. Kernels without them
        // still work, with less precise errors.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        setsockopt(
            &socket,
            sockopt::ReceiveTimeout,
            &TimeVal::new(ANSWER_TIMEOUT_SECS, 0),
        )
        .map_err(|e| ctx("set the receive timeout", e.into()))?;
        Ok(NfTables {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Commits `changes` to table `inet <table>` in one atomic batch: all or nothing.
    ///
    /// Changes apply in order, so deleting an element and adding it back with another
    /// value in one batch replaces it without a moment where it is missing. Changes
    /// without elements are skipped; with none at all nothing is sent.
    pub fn commit(&mut self, table: &str, changes: &[Change]) -> Result<()> {
        let Some(batch) = build_batch(table, changes, self.seq.wrapping_add(1))? else {
            return Ok(());
        };
        self.seq = batch.end();
        let io_err = |what: String, source: io::Error| NftError::Io {
            table: table.to_string(),
            what,
            source,
        };
        let size = batch.bytes.len();
        self.size_buffers(size, batch.sent.len()).map_err(|e| {
            io_err(
                "size the socket buffers for a batch; nothing was applied".into(),
                e,
            )
        })?;
        // nfnetlink handles one batch per datagram: it must go out in one send.
        match self.socket.send(&batch.bytes, 0) {
            Ok(n) if n == size => {}
            Ok(n) => {
                return Err(io_err(
                    format!("send a batch of {size} bytes; nothing was applied"),
                    io::Error::other(format!("the socket took {n} bytes only")),
                ))
            }
            Err(e) => {
                let what = if e.raw_os_error() == Some(libc::EMSGSIZE) {
                    format!(
                        "send a batch of {size} bytes, more than the socket send buffer \
                         (raising it needs CAP_NET_ADMIN, or net.core.wmem_max >= {size}); \
                         nothing was applied"
                    )
                } else {
                    format!("send a batch of {size} bytes; nothing was applied")
                };
                return Err(io_err(what, e));
            }
        }
        self.read_answers(table, changes, &batch)
    }

    /// Makes room for a batch of `size` bytes going out and `acks` answers coming back.
    fn size_buffers(&self, size: usize, acks: usize) -> io::Result<()> {
        // The kernel refuses a datagram bigger than the send buffer (EMSGSIZE), and drops
        // acks that do not fit the receive buffer (ENOBUFS: the outcome is lost). The
        // FORCE options pass over net.core.[wr]mem_max but need CAP_NET_ADMIN; plain
        // ones get as far as that limit. The kernel stores (and reports) twice the size
        // asked for, which overflows beyond INT_MAX / 2.
        let limit = i32::MAX as usize / 2;
        let snd = (size + 4096).min(limit);
        if getsockopt(&self.socket, sockopt::SndBuf)? < snd
            && setsockopt(&self.socket, sockopt::SndBufForce, &snd).is_err()
        {
            let _ = setsockopt(&self.socket, sockopt::SndBuf, &snd);
        }
        let rcv = (RECV_BUF + acks * ACK_ROOM).min(limit);
        if getsockopt(&self.socket, sockopt::RcvBuf)? < rcv
            && setsockopt(&self.socket, sockopt::RcvBufForce, &rcv).is_err()
        {
            let _ = setsockopt(&self.socket, sockopt::RcvBuf, &rcv);
        }
        Ok(())
    }

    /// Sends one request for the inet family and collects its answers until the ack
    /// (`NLM_F_ACK`) or the end of the dump (`NLM_F_DUMP`).
    fn request(
        &mut self,
        message: NfTablesMessage,
        flags: u16,
    ) -> io::Result<Vec<NfTablesMessage>> {
        let seq = self.next_seq();
        let mut bytes = Vec::new();
        let nf = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
            message,
        );
        push_message(&mut bytes, nf, flags, seq);
        let mut out = Vec::new();
        self.exchange(&bytes, seq, |answer| {
            let message = NetlinkMessage::<NetfilterMessage>::deserialize(answer)
                .map_err(|e| io::Error::other(format!("bad nf_tables answer: {e}")))?;
            if let NetlinkPayload::InnerMessage(m) = message.payload {
                if let NetfilterMessageInner::NfTables(t) = m.inner {
                    out.push(t);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Dumps objects of the inet family (`get`: an NFT_MSG_GET* type) whose request
    /// carries the attributes `filter`, handing each answer's type and attributes to
    /// `each`. A dump the kernel says a commit interrupted fails with
    /// [`io::ErrorKind::Interrupted`]: take it again.
    fn dump(&mut self, get: u8, filter: &[u8], mut each: impl FnMut(u8, &[u8])) -> io::Result<()> {
        let seq = self.next_seq();
        let len = 16 + 4 + filter.len();
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&(len as u32).to_ne_bytes());
        bytes.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | u16::from(get)).to_ne_bytes());
        bytes.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: the family, version 0, resource id 0.
        bytes.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]);
        bytes.extend_from_slice(filter);
        let mut interrupted = false;
        self.exchange(&bytes, seq, |answer| {
            let header = NetlinkBuffer::new_checked(answer)
                .map_err(|e| io::Error::other(format!("bad netlink header: {e}")))?;
            interrupted |= header.flags() & NLM_F_DUMP_INTR != 0;
            // The low byte of the type is the nf_tables message; after the header comes
            // the nfgenmsg, then the attributes.
            let kind = header.message_type() as u8;
            each(kind, header.payload().get(4..).unwrap_or_default());
            Ok(())
        })?;
        if interrupted {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the ruleset changed during the listing",
            ));
        }
        Ok(())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `request` (sequence number `seq`) and hands each answer (one netlink
    /// message) to `each` until the ack, an error or the end of a dump.
    fn exchange(
        &mut self,
        request: &[u8],
        seq: u32,
        mut each: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.socket.send(request, 0)?;
        loop {
            let size = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < size {
                let start = offset;
                let buf = NetlinkBuffer::new_checked(&self.buf[start..size])
                    .map_err(|e| io::Error::other(format!("bad netlink header: {e}")))?;
                let (kind, len, answer_seq) = (
                    buf.message_type(),
                    buf.length() as usize,
                    buf.sequence_number(),
                );
                offset += align4(len);
                if answer_seq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = ErrorBuffer::new_checked(buf.payload())
                            .map_err(|e| io::Error::other(format!("bad ack: {e}")))?
                            .code();
                        return match code {
                            None => Ok(()),
                            Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                        };
                    }
                    _ => each(&self.buf[start..start + len])?,
                }
            }
        }
    }

    /// Reads answers until every element message is acked (success) or the kernel
    /// refused something (the whole batch was rolled back).
    ///
    /// Acks alone prove nothing: on a failed batch the kernel acks the messages it could
    /// apply too, before rolling everything back. Only all acks and no error mean
    /// committed.
    fn read_answers(&mut self, table: &str, changes: &[Change], batch: &Batch) -> Result<()> {
        let decode_err = |detail: String| NftError::Decode {
            table: table.to_string(),
            detail,
        };
        let mut acked = vec![false; batch.sent.len()];
        let mut missing = batch.sent.len();
        // The first refusal, and the element message it came for.
        let mut refused: Option<(NftError, u32)> = None;
        loop {
            if missing == 0 && refused.is_none() {
                return Ok(());
            }
            // Once refused, the rest of the answers is queued already: take it without
            // waiting, so the next batch starts on an empty socket.
            let flags = if refused.is_some() {
                libc::MSG_DONTWAIT
            } else {
                0
            };
            let size = match self.socket.recv(&mut &mut self.buf[..], flags) {
                Ok(size) => size,
                Err(e) => {
                    if let Some((refused, _)) = refused {
                        // WouldBlock: drained. Anything else: the refusal is what matters.
                        return Err(refused);
                    }
                    let what = if e.kind() == io::ErrorKind::WouldBlock {
                        format!(
                            "no answer from the kernel within {ANSWER_TIMEOUT_SECS} s; the \
                             batch may or may not have been applied (list the table before \
                             retrying)"
                        )
                    } else {
                        "read the kernel's answers to the batch; it may or may not have been \
                         applied (list the table before retrying)"
                            .to_string()
                    };
                    return Err(NftError::Io {
                        table: table.to_string(),
                        what,
                        source: e,
                    });
                }
            };
            let mut offset = 0;
            while offset < size {
                let bytes = &self.buf[offset..size];
                // The header alone tells where the next message starts; without it the
                // rest of the datagram is lost.
                let header = NetlinkBuffer::new_checked(bytes)
                    .map_err(|e| decode_err(format!("bad netlink header: {e}")))?;
                let (kind, seq, nl_flags) = (
                    header.message_type(),
                    header.sequence_number(),
                    header.flags(),
                );
                // Messages are padded to 4 bytes within a datagram.
                offset += align4(header.length() as usize);
                // Answers to an earlier batch that failed half-way, or nothing we asked
                // for: only acks and errors answer a batch.
                if kind != NLMSG_ERROR || !batch.contains(seq) {
                    continue;
                }
                let payload = header.payload();
                let code = ErrorBuffer::new_checked(payload)
                    .map_err(|e| decode_err(format!("bad ack: {e}")))?
                    .code();
                let Some(code) = code else {
                    if let Some(i) = seq.wrapping_sub(batch.begin).checked_sub(1) {
                        if let Some(done) = acked.get_mut(i as usize) {
                            if !*done {
                                *done = true;
                                missing -= 1;
                            }
                        }
                    }
                    // Errors about the batch as a whole (it could not be committed, or
                    // not queued) go to the first message after BATCH_BEGIN, ahead of
                    // the acks of every message: that message itself was fine.
                    if let Some((NftError::Element { table, errno, .. }, at)) = &refused {
                        if *at == seq {
                            let batch_error = NftError::Batch {
                                table: table.clone(),
                                errno: *errno,
                            };
                            refused = Some((batch_error, seq));
                        }
                    }
                    continue;
                };
                if refused.is_some() {
                    continue;
                }
                let errno = Errno::from_raw(-code.get());
                let error = match batch.message(seq) {
                    Some(sent) => {
                        let change = &changes[sent.change];
                        let key = refused_attribute(nl_flags, payload)
                            .and_then(|at| refused_element(sent, at))
                            .and_then(|i| change.elements.get(i))
                            .map(|e| e.key.clone());
                        NftError::Element {
                            op: change.op,
                            table: table.to_string(),
                            set: change.set.clone(),
                            key,
                            errno,
                        }
                    }
                    // An error on BATCH_BEGIN: the kernel could not take or commit the
                    // batch as a whole.
                    None => NftError::Batch {
                        table: table.to_string(),
                        errno,
                    },
                };
                refused = Some((error, seq));
            }
        }
    }
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The offset of the attribute the kernel refused, from the extended ack's
/// NLMSGERR_ATTR_OFFS; `None` if it did not say.
fn refused_attribute(flags: u16, payload: &[u8]) -> Option<u32> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // After the errno comes the refused request: its header alone when capped.
    let request = payload.get(4..)?;
    let echoed = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        NetlinkBuffer::new_checked(request).ok()?.length() as usize
    };
    let tlvs = request.get(align4(echoed)..)?;
    NlasIterator::new(tlvs)
        .filter_map(|nla| nla.ok())
        .find(|nla| nla.kind() == NLMSGERR_ATTR_OFFS)
        .and_then(|nla| parse_u32(nla.value()).ok())
}

/// Index in its change of the element whose attribute holds offset `at`; `None` if `at`
/// is before the elements (the kernel refused the table or set name).
fn refused_element(sent: &Sent, at: u32) -> Option<usize> {
    let after = sent.offsets.partition_point(|&o| o <= at);
    Some(sent.first + after.checked_sub(1)?)
}

/// Serialises the batch for `changes`, sequence numbers from `begin`; `None` if there is
/// no element to change.
fn build_batch(table: &str, changes: &[Change], begin: u32) -> Result<Option<Batch>> {
    if changes.iter().all(|c| c.elements.is_empty()) {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    let mut sent = Vec::new();
    push_message(
        &mut bytes,
        batch_control(ControlMessage::BatchBegin),
        0,
        begin,
    );
    for (index, change) in changes.iter().enumerate() {
        let invalid = |detail: String| NftError::Invalid {
            op: change.op,
            table: table.to_string(),
            set: change.set.clone(),
            detail,
        };
        // A NUL would end the name early in the kernel and name another object.
        for (what, name) in [("table", table), ("set", change.set.as_str())] {
            if name.is_empty() || name.contains('\0') {
                return Err(invalid(format!("invalid {what} name {name:?}")));
            }
        }
        let mut chunk: Vec<ListAttribute<SetElementAttribute>> = Vec::new();
        let mut chunk_bytes = 0;
        let mut first = 0;
        for (i, element) in change.elements.iter().enumerate() {
            if let ElementData::Goto(chain) | ElementData::Jump(chain) = &element.data {
                if chain.is_empty() || chain.contains('\0') {
                    return Err(invalid(format!("invalid chain name {chain:?}")));
                }
            }
            let attribute = element_attribute(change.op, element);
            let len = attribute.buffer_len();
            if len > MAX_ELEMENTS_BYTES {
                return Err(invalid(format!(
                    "an element of {len} bytes{} is larger than a netlink message may carry",
                    key_note(&Some(element.key.clone()))
                )));
            }
            if !chunk.is_empty()
                && (chunk.len() == MAX_MESSAGE_ELEMENTS || chunk_bytes + len > MAX_ELEMENTS_BYTES)
            {
                let seq = begin.wrapping_add(1 + sent.len() as u32);
                sent.push(push_elements(
                    &mut bytes,
                    table,
                    change,
                    std::mem::take(&mut chunk),
                    seq,
                    (index, first),
                ));
                chunk_bytes = 0;
                first = i;
            }
            chunk_bytes += len;
            chunk.push(attribute);
        }
        if !chunk.is_empty() {
            let seq = begin.wrapping_add(1 + sent.len() as u32);
            sent.push(push_elements(
                &mut bytes,
                table,
                change,
                chunk,
                seq,
                (index, first),
            ));
        }
    }
    let end = begin.wrapping_add(1 + sent.len() as u32);
    push_message(&mut bytes, batch_control(ControlMessage::BatchEnd), 0, end);
    Ok(Some(Batch { bytes, begin, sent }))
}

/// BATCH_BEGIN or BATCH_END for nf_tables: family unspecified, the subsystem as resource
/// id.
fn batch_control(message: ControlMessage) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
        message,
    )
}

/// Appends one NEWSETELEM or DELSETELEM message for `elements` of `change`; `at` is
/// (index of the change, index of the first element in it).
fn push_elements(
    bytes: &mut Vec<u8>,
    table: &str,
    change: &Change,
    elements: Vec<ListAttribute<SetElementAttribute>>,
    seq: u32,
    (index, first): (usize, usize),
) -> Sent {
    let table_attr = SetElementList::Table(table.to_string());
    let set_attr = SetElementList::Set(change.set.clone());
    // nlmsghdr, nfgenmsg, the table and set names, then the header of the element list.
    let mut at = 16 + 4 + table_attr.buffer_len() + set_attr.buffer_len() + 4;
    let mut offsets = Vec::with_capacity(elements.len());
    for element in &elements {
        offsets.push(at as u32);
        at += element.buffer_len();
    }
    let message = SetElementMessage {
        attributes: vec![table_attr, set_attr, SetElementList::Elements(elements)],
    };
    let (message, flags) = match change.op {
        Op::Add => (NfTablesMessage::NewSetElement(message), NLM_F_CREATE),
        Op::Delete => (NfTablesMessage::DeleteSetElement(message), 0),
    };
    let nf = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
        message,
    );
    // Every element message asks for an ack: success is only known once all came.
    push_message(bytes, nf, NLM_F_ACK | flags, seq);
    Sent {
        change: index,
        first,
        offsets,
    }
}

fn push_message(bytes: &mut Vec<u8>, message: NetfilterMessage, flags: u16, seq: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let start = bytes.len();
    bytes.resize(start + packet.buffer_len(), 0);
    packet.serialize(&mut bytes[start..]);
    bytes.resize(align4(bytes.len()), 0);
}

/// NFTA_LIST_ELEM for one element: its key and, when adding to a map, its value.
fn element_attribute(op: Op, element: &Element) -> ListAttribute<SetElementAttribute> {
    let mut attributes = vec![SetElementAttribute::Key(DataAttribute::Value(
        element.key.clone(),
    ))];
    // The kernel finds the element to delete by its key alone.
    if op == Op::Add {
        let verdict = |code, chain: &String| {
            DataAttribute::Verdict(vec![
                VerdictAttribute::Code(code),
                VerdictAttribute::Chain(chain.clone()),
            ])
        };
        match &element.data {
            ElementData::None => {}
            ElementData::Value(value) => attributes.push(SetElementAttribute::Data(
                DataAttribute::Value(value.clone()),
            )),
            ElementData::Goto(chain) => {
                attributes.push(SetElementAttribute::Data(verdict(Verdict::Goto, chain)))
            }
            ElementData::Jump(chain) => {
                attributes.push(SetElementAttribute::Data(verdict(Verdict::Jump, chain)))
            }
            ElementData::Verdict(code) => {
                attributes.push(SetElementAttribute::Data(DataAttribute::Verdict(vec![
                    VerdictAttribute::Code(Verdict::from(*code)),
                ])))
            }
        }
    }
    ListAttribute::Element(attributes)
}
