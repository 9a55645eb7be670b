//! `serve`: the HTTP server (`/hostname`, `/clientip`, `/healthz`), the TCP echo server and the
//! UDP echo server, on one current-thread runtime.
//!
//! Every answer names the server (its hostname: the pod's name) and the client address it saw,
//! so a client can tell which pod answered and whether its source address survived the trip.

use std::convert::Infallible;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;

use crate::args::ServeArgs;
use crate::error::ProbeError;

/// The longest line the TCP echo server reads at once; a longer one is answered in pieces.
pub const MAX_LINE: u64 = 64 * 1024;

/// The sockets `serve` answers on, already bound: `serve` binds them on 0.0.0.0, tests bind
/// them on 127.0.0.1 port 0 and read the ports the system chose.
#[derive(Debug, Default)]
pub struct Listeners {
    pub http: Option<std::net::TcpListener>,
    pub tcp_echo: Option<std::net::TcpListener>,
    pub udp_echo: Option<std::net::UdpSocket>,
}

impl Listeners {
    /// Binds what `args` asks for on 0.0.0.0.
    pub fn bind(args: &ServeArgs) -> Result<Listeners, ProbeError> {
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let listen = |what, addr| move |source| ProbeError::Listen { what, addr, source };
        let mut listeners = Listeners::default();
        if let Some(port) = args.http_port() {
            let addr = any(port);
            listeners.http = Some(std::net::TcpListener::bind(addr).map_err(listen("HTTP", addr))?);
        }
        if let Some(port) = args.tcp_echo {
            let addr = any(port);
            listeners.tcp_echo =
                Some(std::net::TcpListener::bind(addr).map_err(listen("TCP echo", addr))?);
        }
        if let Some(port) = args.udp_echo {
            let addr = any(port);
            listeners.udp_echo =
                Some(std::net::UdpSocket::bind(addr).map_err(listen("UDP echo", addr))?);
        }
        Ok(listeners)
    }
}

/// The machine's hostname (in a pod: the pod's name), as the servers report it.
pub fn hostname() -> Result<String, ProbeError> {
    let name = nix::unistd::gethostname().map_err(ProbeError::Hostname)?;
    Ok(name.to_string_lossy().into_owned())
}

/// Serves on `listeners` until the future is dropped; returns early only when setting up
/// fails (or at once when there is nothing to serve). Must run inside a tokio runtime.
pub async fn serve_on(listeners: Listeners) -> Result<(), ProbeError> {
    Servers::new(listeners)?.run().await;
    Ok(())
}

/// `serve`: binds on 0.0.0.0 and serves until SIGTERM or SIGINT.
pub fn serve(args: &ServeArgs) -> Result<(), ProbeError> {
    let listeners = Listeners::bind(args)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let servers = Servers::new(listeners)?;
        // As a container's command we are often PID 1, which the kernel does not kill on
        // SIGTERM by default: without a handler every pod deletion would wait out its grace
        // period.
        let stop = shutdown_signal()?;
        tokio::select! {
            () = servers.run() => {}
            () = stop => log(format_args!("stopping")),
        }
        Ok(())
    })
}

/// A server running on a thread of its own, stopped when dropped: for tests, which call the
/// (blocking) clients from their own thread.
#[derive(Debug)]
pub struct ServerHandle {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts serving on `listeners` on a new thread. Setting up (reading the hostname, handing
/// the sockets to the runtime) is done before this returns, so its errors are returned here.
pub fn spawn_server(listeners: Listeners) -> Result<ServerHandle, ProbeError> {
    let runtime = runtime()?;
    let servers = {
        let _context = runtime.enter();
        Servers::new(listeners)?
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("probe-serve".to_string())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    () = servers.run() => {}
                    _ = stopped => {}
                }
            });
        })
        .map_err(ProbeError::Thread)?;
    Ok(ServerHandle {
        stop: Some(stop),
        thread: Some(thread),
    })
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `GET /hostname`, `/clientip` and `/healthz`: the status and body for one request.
pub fn respond(
    method: &Method,
    path: &str,
    hostname: &str,
    peer: SocketAddr,
) -> (StatusCode, String) {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::NOT_FOUND, "not found\n".to_string());
    }
    match path {
        "/hostname" => (StatusCode::OK, format!("{hostname}\n")),
        "/clientip" => (StatusCode::OK, format!("{peer}\n")),
        "/healthz" => (StatusCode::OK, "ok\n".to_string()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    }
}

/// An echo reply: `<hostname> <client-ip>:<client-port> <payload>`.
pub fn echo_reply(hostname: &str, peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut reply = format!("{hostname} {peer} ").into_bytes();
    reply.extend_from_slice(payload);
    reply
}

/// The address to report: an IPv4 client seen through an IPv6 socket is shown as IPv4.
fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

fn runtime() -> Result<tokio::runtime::Runtime, ProbeError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProbeError::Runtime)
}

fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, ProbeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(ProbeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ProbeError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// One line on stderr per event, with a timestamp (`kubectl logs` shows none by default).
fn log(args: fmt::Arguments<'_>) {
    eprintln!(
        "{} {args}",
        humantime::format_rfc3339_millis(SystemTime::now())
    );
}

/// A failing `accept` (e.g. out of file descriptors) must not stop the server, nor spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The servers, with their sockets handed to the runtime.
struct Servers {
    hostname: Arc<str>,
    http: Option<TcpListener>,
    tcp_echo: Option<TcpListener>,
    udp_echo: Option<UdpSocket>,
}

impl Servers {
    /// Must be called inside a runtime.
    fn new(listeners: Listeners) -> Result<Servers, ProbeError> {
        let hostname: Arc<str> = hostname()?.into();
        let using = |what| move |source| ProbeError::Listener { what, source };
        let tcp = |listener: std::net::TcpListener, what| {
            listener.set_nonblocking(true).map_err(using(what))?;
            TcpListener::from_std(listener).map_err(using(what))
        };
        let http = listeners.http.map(|l| tcp(l, "HTTP")).transpose()?;
        let tcp_echo = listeners.tcp_echo.map(|l| tcp(l, "TCP echo")).transpose()?;
        let udp_echo = listeners
            .udp_echo
            .map(|socket| {
                socket.set_nonblocking(true).map_err(using("UDP echo"))?;
                UdpSocket::from_std(socket).map_err(using("UDP echo"))
            })
            .transpose()?;

        let mut listening = Vec::new();
        let mut note = |what: &str, addr: std::io::Result<SocketAddr>| {
            if let Ok(addr) = addr {
                listening.push(format!("{what} on {addr}"));
            }
        };
        if let Some(l) = &http {
            note("http", l.local_addr());
        }
        if let Some(l) = &tcp_echo {
            note("tcp echo", l.local_addr());
        }
        if let Some(s) = &udp_echo {
            note("udp echo", s.local_addr());
        }
        log(format_args!(
            "serving as {hostname}: {}",
            listening.join(", ")
        ));
        Ok(Servers {
            hostname,
            http,
            tcp_echo,
            udp_echo,
        })
    }

    /// Runs every server; never returns while there is one.
    async fn run(self) {
        let Servers {
            hostname,
            http,
            tcp_echo,
            udp_echo,
        } = self;
        let http = async {
            if let Some(listener) = http {
                serve_http(listener, hostname.clone()).await;
            }
        };
        let tcp = async {
            if let Some(listener) = tcp_echo {
                serve_tcp_echo(listener, hostname.clone()).await;
            }
        };
        let udp = async {
            if let Some(socket) = udp_echo {
                serve_udp_echo(socket, hostname.clone()).await;
            }
        };
        tokio::join!(http, tcp, udp);
    }
}

async fn serve_http(listener: TcpListener, hostname: Arc<str>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(http_connection(stream, canonical(peer), hostname.clone()));
            }
            Err(e) => {
                log(format_args!("http: accept: {e}"));
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One HTTP/1.1 connection, kept alive for as many requests as the client sends.
async fn http_connection(stream: TcpStream, peer: SocketAddr, hostname: Arc<str>) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (status, body) = respond(request.method(), request.uri().path(), &hostname, peer);
        log(format_args!(
            "http {peer} {} {} {}",
            request.method(),
            request.uri(),
            status.as_u16()
        ));
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        async move { Ok::<_, Infallible>(response) }
    });
    // The timer lets hyper drop a client that opens a connection and never sends its headers.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = connection.await {
        log(format_args!("http {peer}: {e}"));
    }
}

async fn serve_tcp_echo(listener: TcpListener, hostname: Arc<str>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(tcp_echo_connection(
                    stream,
                    canonical(peer),
                    hostname.clone(),
                ));
            }
            Err(e) => {
                log(format_args!("tcp echo: accept: {e}"));
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Answers each line of one connection until the client closes it.
async fn tcp_echo_connection(stream: TcpStream, peer: SocketAddr, hostname: Arc<str>) {
    let _ = stream.set_nodelay(true);
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                log(format_args!("tcp echo {peer}: {e}"));
                break;
            }
        }
        let payload = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(&line);
        let mut reply = echo_reply(&hostname, peer, payload);
        reply.push(b'\n');
        log(format_args!(
            "tcp echo {peer} {}",
            String::from_utf8_lossy(payload).escape_debug()
        ));
        if let Err(e) = writer.write_all(&reply).await {
            log(format_args!("tcp echo {peer}: {e}"));
            break;
        }
    }
}

async fn serve_udp_echo(socket: UdpSocket, hostname: Arc<str>) {
    // The largest UDP payload.
    let mut buf = vec![0u8; 65_535];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                let payload = &buf[..n];
                log(format_args!(
                    "udp echo {peer} {}",
                    String::from_utf8_lossy(payload).trim_end().escape_debug()
                ));
                let reply = echo_reply(&hostname, canonical(peer), payload);
                if let Err(e) = socket.send_to(&reply, peer).await {
                    log(format_args!("udp echo {peer}: {e}"));
                }
            }
            Err(e) => {
                log(format_args!("udp echo: {e}"));
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([10, 244, 2, 7], 41234))
    }

    #[test]
    fn routes() {
        let get = |path| respond(&Method::GET, path, "web-1", peer());
        assert_eq!(get("/hostname"), (StatusCode::OK, "web-1\n".to_string()));
        assert_eq!(
            get("/clientip"),
            (StatusCode::OK, "10.244.2.7:41234\n".to_string())
        );
        assert_eq!(get("/healthz"), (StatusCode::OK, "ok\n".to_string()));
        assert_eq!(get("/").0, StatusCode::NOT_FOUND);
        assert_eq!(get("/hostname/x").0, StatusCode::NOT_FOUND);
        assert_eq!(
            respond(&Method::POST, "/hostname", "web-1", peer()).0,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn echo_replies() {
        assert_eq!(
            echo_reply("web-1", peer(), b"hello"),
            b"web-1 10.244.2.7:41234 hello".to_vec()
        );
    }

    #[test]
    fn mapped_addresses_are_shown_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.244.2.7]:41234".parse().expect("address");
        assert_eq!(canonical(mapped), peer());
    }

    #[test]
    fn only_http_by_default() {
        let args = ServeArgs::default();
        assert_eq!(args.http_port(), Some(crate::args::DEFAULT_HTTP_PORT));
    }
}
