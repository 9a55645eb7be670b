//! The clients: `get` and `tcp` open a new connection per request, so that a Service's load
//! balancer sees (and may spread) every one; `udp` keeps one socket, like a client that holds
//! its socket open, and matches replies to requests by a sequence number.
//!
//! A request that fails is recorded in the [`Report`]; only what stops the whole run (no
//! runtime, no UDP socket) is an error.

use std::cell::Cell;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

use crate::args::{ClientOptions, GetArgs, HostPort, HttpUrl, TcpArgs, UdpArgs};
use crate::error::ProbeError;
use crate::report::{Answer, Attempt, Failure, Report};

/// The largest HTTP body or reply line read; the probe's answers are a few bytes.
pub const MAX_REPLY: usize = 1024 * 1024;

/// `get`: `count` HTTP GETs of `url`, each on a new connection.
pub fn get(args: &GetArgs) -> Result<Report, ProbeError> {
    let (url, timeout) = (&args.url, args.opts.timeout);
    let attempts = runtime()?.block_on(repeat(&args.opts, move |_| async move {
        let local = Cell::new(None);
        timed(timeout, &local, http_get(url, &local)).await
    }));
    Ok(Report {
        target: args.url.to_string(),
        attempts,
    })
}

/// `tcp`: `count` connections, each sending one line and reading one reply line.
pub fn tcp(args: &TcpArgs) -> Result<Report, ProbeError> {
    let (target, message, timeout) = (&args.target, &args.message, args.opts.timeout);
    let attempts = runtime()?.block_on(repeat(&args.opts, move |_| async move {
        let local = Cell::new(None);
        timed(timeout, &local, tcp_exchange(target, message, &local)).await
    }));
    Ok(Report {
        target: args.target.to_string(),
        attempts,
    })
}

/// `udp`: `count` datagrams from one socket, each waiting for its own reply.
pub fn udp(args: &UdpArgs) -> Result<Report, ProbeError> {
    let target = args.target.to_string();
    let (message, timeout) = (&args.message, args.opts.timeout);
    let attempts = runtime()?.block_on(async {
        let resolve_error = |reason| ProbeError::Resolve {
            host: args.target.host.clone(),
            reason,
        };
        let peer = *lookup(&args.target)
            .await
            .map_err(resolve_error)?
            .first()
            .ok_or_else(|| resolve_error("no address".to_string()))?;
        let socket_error = |source| ProbeError::UdpSocket {
            target: target.clone(),
            source,
        };
        let any: SocketAddr = if peer.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(any).await.map_err(socket_error)?;
        // Connected, the kernel drops datagrams from anyone else and reports an ICMP port
        // unreachable as "connection refused"; it also fixes the source address to report.
        socket.connect(peer).await.map_err(socket_error)?;
        let local = Cell::new(socket.local_addr().ok());
        let (socket, local) = (&socket, &local);
        let attempts = repeat(&args.opts, move |seq| async move {
            timed(timeout, local, udp_exchange(socket, message, seq)).await
        })
        .await;
        Ok::<_, ProbeError>(attempts)
    })?;
    Ok(Report { target, attempts })
}

/// The datagram for request `seq`: the message and a tag the reply carries back.
pub fn udp_payload(message: &str, seq: u32) -> String {
    format!("{message} #{seq}")
}

/// What a datagram received while waiting for the reply to request `seq` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpReply {
    /// The reply to this request, its tag removed.
    Current(String),
    /// The late reply to an earlier request that timed out: to be ignored.
    Stale,
}

/// Matches a reply to request `seq` by the tag [`udp_payload`] put at its end. A reply with
/// no tag at all (a foreign echo server) cannot be matched and is taken as the answer.
pub fn match_udp_reply(reply: &str, seq: u32) -> UdpReply {
    let reply = reply.trim_end();
    if let Some((rest, tag)) = reply.rsplit_once(" #") {
        if let Ok(n) = tag.parse::<u32>() {
            return if n == seq {
                UdpReply::Current(rest.to_string())
            } else {
                UdpReply::Stale
            };
        }
    }
    UdpReply::Current(reply.to_string())
}

/// The failure an I/O error stands for.
pub fn io_failure(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Failure::Refused,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => Failure::Reset,
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe => Failure::Closed,
        io::ErrorKind::HostUnreachable => Failure::HostUnreachable,
        io::ErrorKind::NetworkUnreachable => Failure::NetworkUnreachable,
        _ => Failure::Other(e.to_string()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ProbeError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProbeError::Runtime)
}

/// Runs `one(seq)` for seq = 1..=count, pausing `interval` between two.
async fn repeat<F, Fut>(opts: &ClientOptions, mut one: F) -> Vec<Attempt>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut attempts = Vec::new();
    for seq in 1..=opts.count {
        if seq > 1 && !opts.interval.is_zero() {
            tokio::time::sleep(opts.interval).await;
        }
        attempts.push(one(seq).await);
    }
    attempts
}

/// Times one exchange, bounded by `timeout`. The exchange notes its local address in `local`
/// as soon as it has a socket, so that even a timed-out attempt tells where it came from.
async fn timed(
    timeout: Duration,
    local: &Cell<Option<SocketAddr>>,
    exchange: impl Future<Output = Result<Answer, Failure>>,
) -> Attempt {
    let start = Instant::now();
    let outcome = match tokio::time::timeout(timeout, exchange).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Failure::TimedOut { after: timeout }),
    };
    Attempt {
        outcome,
        elapsed: start.elapsed(),
        local: local.get(),
    }
}

/// The addresses of `target`; a literal address is used as it is.
async fn lookup(target: &HostPort) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target.as_pair())
        .await
        .map_err(|e| {
            // The resolver's own words are enough ("Name or service not known").
            let reason = e.to_string();
            reason
                .strip_prefix("failed to lookup address information: ")
                .map_or(reason.clone(), str::to_string)
        })?
        .collect();
    if addrs.is_empty() {
        return Err("no address".to_string());
    }
    Ok(addrs)
}

/// A new connection to `target`, trying its addresses in turn.
async fn connect(target: &HostPort) -> Result<TcpStream, Failure> {
    let addrs = lookup(target).await.map_err(|reason| Failure::Resolve {
        host: target.host.clone(),
        reason,
    })?;
    let mut last = Failure::Other("no address".to_string());
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // One small request each way: do not let Nagle hold it back.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = io_failure(&e),
        }
    }
    Err(last)
}

/// One GET on a connection of its own.
async fn http_get(url: &HttpUrl, local: &Cell<Option<SocketAddr>>) -> Result<Answer, Failure> {
    let stream = connect(&url.target).await?;
    local.set(stream.local_addr().ok());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_failure(&e))?;
    // The connection task moves the bytes; abort it when this attempt ends, timed out or not.
    let connection = AbortOnDrop(tokio::spawn(connection));
    let request = Request::get(url.path_and_query.as_str())
        .header(HOST, url.authority.as_str())
        .header(
            USER_AGENT,
            concat!("podnet-probe/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure::Other(format!("cannot build the request: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| hyper_failure(&e))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_REPLY)
        .collect()
        .await
        .map_err(|e| body_failure(&*e))?
        .to_bytes();
    drop(connection);
    if !status.is_success() {
        return Err(Failure::Status(status.to_string()));
    }
    Ok(Answer::from_http_body(&String::from_utf8_lossy(&body)))
}

/// One line out and one line back, on a connection of its own.
async fn tcp_exchange(
    target: &HostPort,
    message: &str,
    local: &Cell<Option<SocketAddr>>,
) -> Result<Answer, Failure> {
    let mut stream = connect(target).await?;
    local.set(stream.local_addr().ok());
    stream
        .write_all(format!("{message}\n").as_bytes())
        .await
        .map_err(|e| io_failure(&e))?;
    let mut reply = Vec::new();
    let n = BufReader::new(stream)
        .take(MAX_REPLY as u64)
        .read_until(b'\n', &mut reply)
        .await
        .map_err(|e| io_failure(&e))?;
    if n == 0 {
        return Err(Failure::Closed);
    }
    Ok(Answer::from_echo_reply(&String::from_utf8_lossy(&reply)))
}

/// Request `seq` on the shared socket: waits for its own reply, skipping late ones.
async fn udp_exchange(socket: &UdpSocket, message: &str, seq: u32) -> Result<Answer, Failure> {
    socket
        .send(udp_payload(message, seq).as_bytes())
        .await
        .map_err(|e| io_failure(&e))?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = socket.recv(&mut buf).await.map_err(|e| io_failure(&e))?;
        match match_udp_reply(&String::from_utf8_lossy(&buf[..n]), seq) {
            UdpReply::Current(reply) => return Ok(Answer::from_echo_reply(&reply)),
            UdpReply::Stale => continue,
        }
    }
}

/// hyper wraps the socket's errors: report those as such ("connection refused", …).
fn hyper_failure(e: &hyper::Error) -> Failure {
    if let Some(io) = find_io_error(e) {
        return io_failure(io);
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return Failure::Closed;
    }
    Failure::Other(e.to_string())
}

fn body_failure(e: &(dyn StdError + Send + Sync + 'static)) -> Failure {
    if let Some(e) = e.downcast_ref::<hyper::Error>() {
        return hyper_failure(e);
    }
    if e.is::<http_body_util::LengthLimitError>() {
        return Failure::Other(format!("reply larger than {MAX_REPLY} bytes"));
    }
    Failure::Other(e.to_string())
}

fn find_io_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(e);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_replies_are_matched_by_sequence_number() {
        assert_eq!(udp_payload("hello", 3), "hello #3");
        assert_eq!(
            match_udp_reply("web-1 10.0.0.1:5000 hello #3", 3),
            UdpReply::Current("web-1 10.0.0.1:5000 hello".to_string())
        );
        assert_eq!(
            match_udp_reply("web-1 10.0.0.1:5000 hello #1", 11),
            UdpReply::Stale
        );
        assert_eq!(
            match_udp_reply("web-1 10.0.0.1:5000 hello #11", 1),
            UdpReply::Stale
        );
        // The user's own "#" does not confuse the match: only the last tag counts.
        assert_eq!(
            match_udp_reply("web-1 1.2.3.4:5 issue #7 #2\n", 2),
            UdpReply::Current("web-1 1.2.3.4:5 issue #7".to_string())
        );
        assert_eq!(
            match_udp_reply("pong", 2),
            UdpReply::Current("pong".to_string())
        );
    }

    #[test]
    fn io_errors_read_as_failures() {
        let e = |kind| io::Error::from(kind);
        assert_eq!(
            io_failure(&e(io::ErrorKind::ConnectionRefused)),
            Failure::Refused
        );
        assert_eq!(
            io_failure(&e(io::ErrorKind::ConnectionReset)),
            Failure::Reset
        );
        assert_eq!(
            io_failure(&e(io::ErrorKind::UnexpectedEof)),
            Failure::Closed
        );
        assert_eq!(
            io_failure(&io::Error::from_raw_os_error(nix::libc::EHOSTUNREACH)),
            Failure::HostUnreachable
        );
        assert!(matches!(
            io_failure(&e(io::ErrorKind::PermissionDenied)),
            Failure::Other(_)
        ));
    }

    #[test]
    fn io_errors_are_found_inside_wrappers() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct Wrapper(#[source] io::Error);
        let wrapped = Wrapper(io::Error::from(io::ErrorKind::ConnectionReset));
        let found = find_io_error(&wrapped).map(io::Error::kind);
        assert_eq!(found, Some(io::ErrorKind::ConnectionReset));
    }
}
