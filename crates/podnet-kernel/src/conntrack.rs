//! Connection tracking over ctnetlink (`NETLINK_NETFILTER`, subsystem
//! `NFNL_SUBSYS_CTNETLINK`): list the IPv4 flows of one L4 protocol and delete flows by
//! their original tuple. This is what `conntrack -L -p udp` and `conntrack -D` do, without
//! running the tool.
//!
//! The service proxy needs it when a Service's endpoints change: UDP has no connection
//! to close, so a client that keeps its socket keeps hitting the flow conntrack made for
//! its first datagram, towards an endpoint that may be gone, or towards the ClusterIP
//! itself when the datagram came while the Service had no endpoints.
//!
//! As with [`crate::Netlink`], one [`Conntrack`] is one socket bound to the namespace it
//! was opened in. Messages are netlink-packet-netfilter's conntrack types; deciding which
//! flows to delete is up to the caller.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple as CtTuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::errno::Errno;

/// IANA protocol numbers of the flows podnet cares about.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// One direction of a flow, as conntrack saw (original) or expects (reply) it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// 0 for protocols without ports (ICMP).
    pub src_port: u16,
    pub dst_port: u16,
}

/// One IPv4 conntrack entry.
///
/// `original` is the first packet as it was sent (for a Service: client to ClusterIP and
/// port). `reply` is what an answer must look like, after NAT: for a DNAT'ed flow its
/// `src` and `src_port` are the endpoint the flow was sent to; for a flow nothing
/// translated they mirror `original` (so `reply.src` is the ClusterIP itself when the
/// Service had no endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The L4 protocol number (17 for UDP).
    pub protocol: u8,
    pub original: Tuple,
    pub reply: Tuple,
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} -> {}:{}",
            self.src, self.src_port, self.dst, self.dst_port
        )
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (reply {})",
            protocol_name(self.protocol),
            self.original,
            self.reply
        )
    }
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        1 => "icmp".into(),
        PROTO_SCTP => "sctp".into(),
        p => format!("proto {p}"),
    }
}

/// What failed talking to conntrack, on which flows.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The kernel refused the request.
    #[error("{op}: {errno}")]
    Kernel { op: String, errno: Errno },
    /// The socket itself failed.
    #[error("{op}: ctnetlink socket: {source}")]
    Io { op: String, source: io::Error },
    /// The kernel answered with something we cannot read.
    #[error("{op}: cannot decode the kernel's ctnetlink answer: {detail}")]
    Decode { op: String, detail: String },
}

impl ConntrackError {
    /// The errno the kernel answered with, if it refused the request.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            ConntrackError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ConntrackError>;

/// A ctnetlink socket bound to one network namespace.
pub struct Conntrack {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

// The kernel fills dump datagrams up to 32 KiB at most; this holds any of them.
const RECV_BUF: usize = 64 * 1024;

// Netlink message types below this are control messages (NOOP, ERROR, DONE, OVERRUN).
const NLMSG_MIN_TYPE: u16 = 16;

impl Conntrack {
    /// Opens a socket in the namespace the calling thread is in (wrap the call in
    /// [`crate::NetNs::run`] to reach another one). Needs CAP_NET_ADMIN there.
    pub fn open() -> Result<Conntrack> {
        let io_err = |source| ConntrackError::Io {
            op: "open ctnetlink socket".into(),
            source,
        };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io_err)?;
        socket.bind_auto().map_err(io_err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io_err)?;
        // Ask for precise ACK errors; older kernels may lack it, which is harmless.
        let _ = socket.set_ext_ack(true);
        Ok(Conntrack {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Every IPv4 flow of L4 `protocol` (17 = UDP, 6 = TCP) in the socket's namespace.
    ///
    /// A dump of a table that changes meanwhile may miss or repeat flows that came or
    /// went during it (the kernel walks its hash table bucket by bucket).
    pub fn flows(&mut self, protocol: u8) -> Result<Vec<Flow>> {
        let mut flows = self.dump(&format!("list {} conntrack flows", protocol_name(protocol)))?;
        flows.retain(|f| f.protocol == protocol);
        Ok(flows)
    }

    /// Every IPv4 flow in the socket's namespace, of any protocol (one dump; see
    /// [`Conntrack::flows`]).
    pub fn all_flows(&mut self) -> Result<Vec<Flow>> {
        self.dump("list conntrack flows")
    }

    fn dump(&mut self, what: &str) -> Result<Vec<Flow>> {
        let op = || what.to_string();
        // The family in the request makes the kernel dump only IPv4 entries; it has no
        // L4 filter older kernels understand, so callers filter by protocol.
        let answers = self.request(&op, ConntrackMessage::Get(Vec::new()), NLM_F_DUMP)?;
        let mut flows = Vec::new();
        for answer in answers {
            let ConntrackMessage::New(attributes) = answer else {
                continue;
            };
            let flow = flow_from_attributes(&attributes)
                .map_err(|detail| ConntrackError::Decode { op: op(), detail })?;
            flows.extend(flow);
        }
        Ok(flows)
    }

    /// Deletes the flow whose original tuple is `flow.original` (in conntrack zone 0);
    /// `Ok(false)` if there is none (anymore). `flow.reply` is not looked at.
    ///
    /// Works for protocols with ports (UDP, TCP, SCTP, ...); for ICMP the kernel needs
    /// the echo id, which [`Tuple`] does not carry, and refuses with EINVAL.
    pub fn delete(&mut self, flow: &Flow) -> Result<bool> {
        let op = || format!("delete conntrack flow {flow}");
        match self.request(&op, delete_message(flow), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes every IPv4 flow of `protocol` that `pred` selects; returns how many this
    /// call deleted (flows that vanished between the dump and the delete do not count).
    /// Stops at the first error the kernel answers with.
    pub fn delete_where(&mut self, protocol: u8, pred: impl Fn(&Flow) -> bool) -> Result<usize> {
        let mut deleted = 0;
        for flow in self.flows(protocol)?.iter().filter(|f| pred(f)) {
            if self.delete(flow)? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Sends one ctnetlink request and reads its whole answer: for a dump every entry up
    /// to NLMSG_DONE, otherwise up to the ACK.
    fn request(
        &mut self,
        op: &dyn Fn() -> String,
        message: ConntrackMessage,
        flags: u16,
    ) -> Result<Vec<ConntrackMessage>> {
        let io_err = |source| ConntrackError::Io { op: op(), source };
        let decode_err = |detail: String| ConntrackError::Decode { op: op(), detail };

        self.seq = self.seq.wrapping_add(1);
        let out = serialize(message, self.seq, flags);
        self.socket.send(&out, 0).map_err(io_err)?;

        let mut answers = Vec::new();
        // An entry we cannot read fails the request, but only once the rest of the answer
        // is read: what is left in the socket would otherwise confuse the next request.
        let mut unreadable: Option<String> = None;
        loop {
            let size = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(io_err)?;
            let mut offset = 0;
            while offset < size {
                let bytes = &self.buf[offset..size];
                // The header alone tells where the next message starts; without it the
                // rest of the datagram is lost.
                let header = NetlinkBuffer::new_checked(bytes)
                    .map_err(|e| decode_err(format!("bad netlink header: {e}")))?;
                let len = header.length() as usize;
                let (kind, seq) = (header.message_type(), header.sequence_number());
                // Messages are padded to 4 bytes within a datagram.
                offset += (len + 3) & !3;
                // Answers to an earlier request that failed half-way.
                if seq != self.seq {
                    continue;
                }
                let msg = match NetlinkMessage::<NetfilterMessage>::deserialize(&bytes[..len]) {
                    Ok(msg) => msg,
                    Err(e) if kind >= NLMSG_MIN_TYPE => {
                        unreadable.get_or_insert(e.to_string());
                        continue;
                    }
                    // A DONE or ERROR we cannot read: we cannot know when the answer ends.
                    Err(e) => return Err(decode_err(e.to_string())),
                };
                match msg.payload {
                    NetlinkPayload::Done(_) => return finish(answers, unreadable, decode_err),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return finish(answers, unreadable, decode_err),
                        Some(code) => {
                            return Err(ConntrackError::Kernel {
                                op: op(),
                                errno: Errno::from_raw(-code.get()),
                            })
                        }
                    },
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(ct),
                        ..
                    }) => answers.push(ct),
                    _ => {}
                }
            }
        }
    }
}

fn finish(
    answers: Vec<ConntrackMessage>,
    unreadable: Option<String>,
    decode_err: impl Fn(String) -> ConntrackError,
) -> Result<Vec<ConntrackMessage>> {
    match unreadable {
        None => Ok(answers),
        Some(detail) => Err(decode_err(detail)),
    }
}

/// The bytes of one ctnetlink request: netlink header, nfgenmsg (family IPv4, version 0,
/// resource id 0) and the conntrack attributes. Requests that are not dumps ask for an
/// ACK, so success is confirmed too.
fn serialize(message: ConntrackMessage, seq: u32, flags: u16) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
    header.sequence_number = seq;
    let nf = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
        message,
    );
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(nf));
    packet.finalize();
    let mut out = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut out);
    out
}

/// IPCTNL_MSG_CT_DELETE with the original tuple: the kernel looks the flow up by it.
///
/// The tuple must never be left out: a DELETE without one flushes the whole table.
fn delete_message(flow: &Flow) -> ConntrackMessage {
    let t = &flow.original;
    ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(vec![
        CtTuple::Ip(vec![
            IPTuple::SourceAddress(IpAddr::V4(t.src)),
            IPTuple::DestinationAddress(IpAddr::V4(t.dst)),
        ]),
        CtTuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::from(flow.protocol)),
            ProtoTuple::SourcePort(t.src_port),
            ProtoTuple::DestinationPort(t.dst_port),
        ]),
    ])])
}

/// The flow in one dumped entry; `None` if it is not IPv4.
fn flow_from_attributes(
    attributes: &[ConntrackAttribute],
) -> std::result::Result<Option<Flow>, String> {
    let (mut original, mut reply) = (None, None);
    for attr in attributes {
        match attr {
            ConntrackAttribute::CtaTupleOrig(t) => original = Some(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(t),
            _ => {}
        }
    }
    let original = original.ok_or("conntrack entry without an original tuple")?;
    let reply = reply.ok_or("conntrack entry without a reply tuple")?;
    let (Some((protocol, original)), Some((_, reply))) =
        (parse_tuple(original)?, parse_tuple(reply)?)
    else {
        return Ok(None);
    };
    Ok(Some(Flow {
        protocol,
        original,
        reply,
    }))
}

/// The L4 protocol and the addresses and ports of a CTA_TUPLE_*; `None` if not IPv4.
fn parse_tuple(parts: &[CtTuple]) -> std::result::Result<Option<(u8, Tuple)>, String> {
    let (mut src, mut dst, mut protocol) = (None, None, None);
    let (mut src_port, mut dst_port) = (0, 0);
    for part in parts {
        match part {
            CtTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            CtTuple::Proto(fields) => {
                for field in fields {
                    match field {
                        ProtoTuple::Protocol(p) => protocol = Some(u8::from(*p)),
                        ProtoTuple::SourcePort(p) => src_port = *p,
                        ProtoTuple::DestinationPort(p) => dst_port = *p,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let protocol = protocol.ok_or("conntrack tuple without a protocol number")?;
    match (src, dst) {
        (Some(IpAddr::V4(src)), Some(IpAddr::V4(dst))) => Ok(Some((
            protocol,
            Tuple {
                src,
                dst,
                src_port,
                dst_port,
            },
        ))),
        (Some(_), Some(_)) => Ok(None),
        _ => Err("conntrack tuple without addresses".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow {
            protocol: PROTO_UDP,
            original: Tuple {
                src: Ipv4Addr::new(10, 0, 0, 1),
                dst: Ipv4Addr::new(10, 96, 0, 10),
                src_port: 1234,
                dst_port: 53,
            },
            reply: Tuple {
                src: Ipv4Addr::new(10, 244, 1, 5),
                dst: Ipv4Addr::new(10, 0, 0, 1),
                src_port: 5353,
                dst_port: 1234,
            },
        }
    }

    /// The DELETE request, byte for byte as linux/netfilter/nfnetlink_conntrack.h lays it
    /// out (host byte order for netlink lengths and types, network order for ports).
    #[test]
    #[cfg(target_endian = "little")]
    fn delete_request_bytes() {
        let bytes = serialize(delete_message(&flow()), 7, 0);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            // nlmsghdr: length 72, type CTNETLINK<<8 | IPCTNL_MSG_CT_DELETE, REQUEST|ACK, seq 7, pid 0
            72, 0, 0, 0,  0x02, 0x01,  0x05, 0x00,  7, 0, 0, 0,  0, 0, 0, 0,
            // nfgenmsg: AF_INET, version 0, res_id 0
            2, 0, 0, 0,
            // CTA_TUPLE_ORIG (nested)
            52, 0, 0x01, 0x80,
            //   CTA_TUPLE_IP (nested): CTA_IP_V4_SRC, CTA_IP_V4_DST
                20, 0, 0x01, 0x80,
                    8, 0, 1, 0,  10, 0, 0, 1,
                    8, 0, 2, 0,  10, 96, 0, 10,
            //   CTA_TUPLE_PROTO (nested): CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT
                28, 0, 0x02, 0x80,
                    5, 0, 1, 0,  17, 0, 0, 0,
                    6, 0, 2, 0,  0x04, 0xd2, 0, 0,
                    6, 0, 3, 0,  0, 53, 0, 0,
        ];
        assert_eq!(bytes, want);
    }

    #[test]
    fn dump_request_asks_for_ipv4_without_ack() {
        let bytes = serialize(ConntrackMessage::Get(Vec::new()), 1, NLM_F_DUMP);
        let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes).expect("parse");
        assert_eq!(msg.header.message_type, 0x0101);
        assert_eq!(msg.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
        let NetlinkPayload::InnerMessage(nf) = msg.payload else {
            panic!("not a netfilter message");
        };
        assert_eq!(nf.header.family, NetfilterProtoFamily::IPv4);
    }

    #[test]
    fn flow_from_entry_reads_both_tuples() {
        let f = flow();
        let tuple = |t: &Tuple| {
            vec![
                CtTuple::Ip(vec![
                    IPTuple::SourceAddress(IpAddr::V4(t.src)),
                    IPTuple::DestinationAddress(IpAddr::V4(t.dst)),
                ]),
                CtTuple::Proto(vec![
                    ProtoTuple::Protocol(Protocol::Udp),
                    ProtoTuple::SourcePort(t.src_port),
                    ProtoTuple::DestinationPort(t.dst_port),
                ]),
            ]
        };
        let attrs = vec![
            ConntrackAttribute::CtaTupleOrig(tuple(&f.original)),
            ConntrackAttribute::CtaTupleReply(tuple(&f.reply)),
            ConntrackAttribute::CtaTimeout(30),
        ];
        assert_eq!(flow_from_attributes(&attrs), Ok(Some(f)));
    }

    #[test]
    fn ipv6_entries_are_skipped_and_broken_ones_refused() {
        let v6 = vec![
            CtTuple::Ip(vec![
                IPTuple::SourceAddress("fd00::1".parse().expect("addr")),
                IPTuple::DestinationAddress("fd00::2".parse().expect("addr")),
            ]),
            CtTuple::Proto(vec![ProtoTuple::Protocol(Protocol::Udp)]),
        ];
        let attrs = vec![
            ConntrackAttribute::CtaTupleOrig(v6.clone()),
            ConntrackAttribute::CtaTupleReply(v6),
        ];
        assert_eq!(flow_from_attributes(&attrs), Ok(None));
        assert!(flow_from_attributes(&[ConntrackAttribute::CtaMark(1)]).is_err());
    }

    #[test]
    fn flows_print_like_conntrack() {
        assert_eq!(
            flow().to_string(),
            "udp 10.0.0.1:1234 -> 10.96.0.10:53 (reply 10.244.1.5:5353 -> 10.0.0.1:1234)"
        );
    }
}
