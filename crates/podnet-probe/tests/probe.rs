//! The servers and the clients against each other, in-process, on 127.0.0.1 only, on ports
//! the system chooses. Every test runs under a time limit.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use podnet_probe::client;
use podnet_probe::serve::hostname;
use podnet_probe::{
    spawn_server, ClientOptions, Failure, GetArgs, Listeners, OutputFormat, ProbeCommand,
    ServerHandle, TcpArgs, UdpArgs,
};

const LIMIT: Duration = Duration::from_secs(20);

/// Runs `test` on a thread of its own and fails if it takes longer than `LIMIT`.
fn within<T: Send + 'static>(test: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(panic::catch_unwind(AssertUnwindSafe(test)));
    });
    match result.recv_timeout(LIMIT) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => panic::resume_unwind(panic),
        Err(_) => panic!("the test took longer than {LIMIT:?}"),
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// All three servers on 127.0.0.1.
struct Server {
    http: SocketAddr,
    tcp: SocketAddr,
    udp: SocketAddr,
    _handle: ServerHandle,
}

fn start() -> Server {
    let http = TcpListener::bind(loopback()).expect("bind http");
    let tcp = TcpListener::bind(loopback()).expect("bind tcp echo");
    let udp = UdpSocket::bind(loopback()).expect("bind udp echo");
    let addrs = (
        http.local_addr().expect("addr"),
        tcp.local_addr().expect("addr"),
        udp.local_addr().expect("addr"),
    );
    let handle = spawn_server(Listeners {
        http: Some(http),
        tcp_echo: Some(tcp),
        udp_echo: Some(udp),
    })
    .expect("server starts");
    Server {
        http: addrs.0,
        tcp: addrs.1,
        udp: addrs.2,
        _handle: handle,
    }
}

/// A port on 127.0.0.1 with nothing listening: bound by the system, then let go.
fn dead_tcp_port() -> SocketAddr {
    TcpListener::bind(loopback())
        .expect("bind")
        .local_addr()
        .expect("addr")
}

fn dead_udp_port() -> SocketAddr {
    UdpSocket::bind(loopback())
        .expect("bind")
        .local_addr()
        .expect("addr")
}

fn opts(count: u32) -> ClientOptions {
    ClientOptions {
        count,
        timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

fn get(url: &str, count: u32) -> podnet_probe::Report {
    client::get(&GetArgs {
        url: url.parse().expect("url"),
        opts: opts(count),
    })
    .expect("get runs")
}

#[test]
fn http_hostname_answers_with_the_hostname() {
    within(|| {
        let server = start();
        let report = get(&format!("http://{}/hostname", server.http), 1);
        let me = hostname().expect("hostname");
        assert_eq!(report.answered(), 1, "{report:?}");
        assert_eq!(report.render_text(), format!("{me}\n"));
        assert_eq!(report.exit_code(), 0);
        assert_eq!(report.by_hostname().get(me.as_str()), Some(&1));
    });
}

#[test]
fn http_clientip_is_the_clients_own_address_on_a_new_connection_each_time() {
    within(|| {
        let server = start();
        let report = get(&format!("http://{}/clientip", server.http), 3);
        assert_eq!(report.answered(), 3, "{report:?}");
        let mut ports = Vec::new();
        for attempt in &report.attempts {
            let local = attempt.local.expect("the client's address");
            let answer = attempt.outcome.as_ref().expect("answered");
            assert_eq!(answer.text, local.to_string());
            assert_eq!(answer.hostname, local.to_string());
            ports.push(local.port());
        }
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 3, "one connection per request: {ports:?}");
        assert_eq!(report.by_hostname().len(), 3);
    });
}

#[test]
fn http_healthz_and_not_found() {
    within(|| {
        let server = start();
        let report = get(&format!("http://{}/healthz", server.http), 1);
        assert_eq!(report.render_text(), "ok\n");
        let report = get(&format!("{}/nothing-here", server.http), 1);
        assert_eq!(
            report.attempts[0].outcome,
            Err(Failure::Status("404 Not Found".to_string()))
        );
        assert_eq!(report.exit_code(), 1);
    });
}

/// Reads one HTTP/1.1 response with a Content-Length: (status line, body).
fn read_response(reader: &mut impl BufRead) -> (String, String) {
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).expect("header");
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("content length");
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    (
        status.trim_end().to_string(),
        String::from_utf8(body).expect("utf-8"),
    )
}

#[test]
fn http_keeps_connections_alive() {
    within(|| {
        let server = start();
        let mut stream = TcpStream::connect(server.http).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let me = stream.local_addr().expect("addr");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        for path in ["/clientip", "/hostname", "/clientip"] {
            write!(stream, "GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n").expect("request");
            let (status, body) = read_response(&mut reader);
            assert_eq!(status, "HTTP/1.1 200 OK");
            let expected = match path {
                "/clientip" => me.to_string(),
                _ => hostname().expect("hostname"),
            };
            assert_eq!(body, format!("{expected}\n"));
        }
    });
}

#[test]
fn tcp_echo_names_the_server_and_the_client() {
    within(|| {
        let server = start();
        let report = client::tcp(&TcpArgs {
            target: server.tcp.to_string().parse().expect("target"),
            message: "ping pong".to_string(),
            opts: opts(3),
        })
        .expect("tcp runs");
        let me = hostname().expect("hostname");
        assert_eq!(report.answered(), 3, "{report:?}");
        for attempt in &report.attempts {
            let local = attempt.local.expect("the client's address");
            let answer = attempt.outcome.as_ref().expect("answered");
            assert_eq!(answer.text, format!("{me} {local} ping pong"));
            assert_eq!(answer.hostname, me);
        }
        assert_eq!(report.by_hostname().get(me.as_str()), Some(&3));
        assert_eq!(report.target, server.tcp.to_string());
    });
}

#[test]
fn tcp_echo_serves_many_connections_at_once() {
    within(|| {
        let server = start();
        let me = hostname().expect("hostname");
        let streams: Vec<TcpStream> = (0..20)
            .map(|_| {
                let s = TcpStream::connect(server.tcp).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                s
            })
            .collect();
        // Every connection is open before any is answered, and each gets several lines.
        let mut readers: Vec<_> = streams
            .iter()
            .map(|s| BufReader::new(s.try_clone().expect("clone")))
            .collect();
        for round in 0..3 {
            for (i, mut stream) in streams.iter().enumerate() {
                write!(stream, "line {i}.{round}\r\n").expect("send");
            }
            for (i, reader) in readers.iter_mut().enumerate() {
                let local = streams[i].local_addr().expect("addr");
                let mut reply = String::new();
                reader.read_line(&mut reply).expect("reply");
                assert_eq!(reply, format!("{me} {local} line {i}.{round}\n"));
            }
        }
    });
}

#[test]
fn udp_uses_one_socket_for_every_datagram() {
    within(|| {
        let server = start();
        let report = client::udp(&UdpArgs {
            target: server.udp.to_string().parse().expect("target"),
            message: "hello".to_string(),
            opts: opts(4),
        })
        .expect("udp runs");
        let me = hostname().expect("hostname");
        assert_eq!(report.answered(), 4, "{report:?}");
        let local = report.attempts[0].local.expect("the client's address");
        assert_eq!(local.ip(), server.udp.ip());
        for attempt in &report.attempts {
            assert_eq!(attempt.local, Some(local), "one socket");
            let answer = attempt.outcome.as_ref().expect("answered");
            assert_eq!(answer.text, format!("{me} {local} hello"));
            assert_eq!(answer.hostname, me);
        }
    });
}

#[test]
fn udp_ignores_the_late_reply_to_an_earlier_datagram() {
    within(|| {
        // An echo server that holds its answer to the first datagram until the second one
        // arrives, then answers both: the late answer must not pass for the second's.
        let socket = UdpSocket::bind(loopback()).expect("bind");
        let target = socket.local_addr().expect("addr");
        let slow = thread::spawn(move || {
            socket
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut held = Vec::new();
            let mut buf = [0u8; 1500];
            for _ in 0..2 {
                let (n, peer) = socket.recv_from(&mut buf).expect("datagram");
                let reply = format!("slow {peer} {}", String::from_utf8_lossy(&buf[..n]));
                held.push((reply, peer));
            }
            for (reply, peer) in held {
                socket.send_to(reply.as_bytes(), peer).expect("reply");
            }
        });
        let report = client::udp(&UdpArgs {
            target: target.to_string().parse().expect("target"),
            message: "m".to_string(),
            opts: ClientOptions {
                count: 2,
                timeout: Duration::from_millis(300),
                ..ClientOptions::default()
            },
        })
        .expect("udp runs");
        slow.join().expect("slow server");
        let local = report.attempts[0].local.expect("address");
        assert_eq!(
            report.attempts[0].outcome,
            Err(Failure::TimedOut {
                after: Duration::from_millis(300)
            })
        );
        let second = report.attempts[1].outcome.as_ref().expect("answered");
        assert_eq!(second.text, format!("slow {local} m"));
        assert_eq!((report.answered(), report.failed()), (1, 1));
    });
}

#[test]
fn refused_connections_are_reported_quickly() {
    within(|| {
        let dead = dead_tcp_port();
        let quick = Duration::from_secs(1);

        let report = get(&format!("http://{dead}/hostname"), 1);
        let attempt = &report.attempts[0];
        assert_eq!(attempt.outcome, Err(Failure::Refused));
        assert!(attempt.elapsed < quick, "{:?}", attempt.elapsed);
        let text = report.render_text();
        assert!(
            text.starts_with("1  error: connection refused after "),
            "{text}"
        );
        assert_eq!(report.exit_code(), 1);

        let report = client::tcp(&TcpArgs {
            target: dead.to_string().parse().expect("target"),
            message: "hello".to_string(),
            opts: opts(2),
        })
        .expect("tcp runs");
        assert_eq!(report.failed(), 2);
        for attempt in &report.attempts {
            assert_eq!(attempt.outcome, Err(Failure::Refused));
            assert!(attempt.elapsed < quick, "{:?}", attempt.elapsed);
        }

        let started = Instant::now();
        let report = client::udp(&UdpArgs {
            target: dead_udp_port().to_string().parse().expect("target"),
            message: "hello".to_string(),
            opts: opts(1),
        })
        .expect("udp runs");
        assert_eq!(report.attempts[0].outcome, Err(Failure::Refused));
        assert!(started.elapsed() < quick, "{:?}", started.elapsed());
    });
}

#[test]
fn a_silent_server_times_out() {
    within(|| {
        // Connections complete in the kernel's backlog, but nobody ever answers.
        let silent = TcpListener::bind(loopback()).expect("bind");
        let timeout = Duration::from_millis(200);
        let report = client::tcp(&TcpArgs {
            target: silent
                .local_addr()
                .expect("addr")
                .to_string()
                .parse()
                .expect("target"),
            message: "hello".to_string(),
            opts: ClientOptions {
                count: 1,
                timeout,
                ..ClientOptions::default()
            },
        })
        .expect("tcp runs");
        let attempt = &report.attempts[0];
        assert_eq!(attempt.outcome, Err(Failure::TimedOut { after: timeout }));
        assert!(attempt.elapsed >= timeout && attempt.elapsed < Duration::from_secs(2));
        assert!(attempt.local.is_some(), "connected before timing out");
        assert!(report
            .render_text()
            .starts_with("1  error: timed out after 200ms\n"));
    });
}

#[test]
fn json_report_shape() {
    within(|| {
        let server = start();
        let me = hostname().expect("hostname");
        let mut report = get(&format!("http://{}/hostname", server.http), 2);
        let refused = get(&format!("http://{}/hostname", dead_tcp_port()), 1);
        report.attempts.extend(refused.attempts);

        let json: serde_json::Value =
            serde_json::from_str(&report.render(OutputFormat::Json)).expect("one JSON object");
        assert_eq!(json["target"], format!("http://{}/hostname", server.http));
        assert_eq!(json["sent"], 3);
        assert_eq!(json["answered"], 2);
        assert_eq!(json["failed"], 1);
        assert_eq!(json["by_hostname"], serde_json::json!({ me.clone(): 2 }));
        let attempts = json["attempts"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 3);
        for ok in &attempts[..2] {
            assert_eq!(ok["ok"], true);
            assert_eq!(ok["answer"], me.as_str());
            assert_eq!(ok["hostname"], me.as_str());
            assert!(ok["millis"].as_f64().is_some_and(|ms| ms >= 0.0));
            assert_eq!(ok.as_object().map(|o| o.len()), Some(4));
        }
        assert_eq!(attempts[2]["ok"], false);
        assert_eq!(attempts[2]["error"], "connection refused");
        assert!(attempts[2]["millis"].is_f64());
        assert_eq!(attempts[2].as_object().map(|o| o.len()), Some(3));
    });
}

#[test]
fn run_returns_the_exit_code() {
    within(|| {
        let server = start();
        let cmd = |target: SocketAddr| {
            ProbeCommand::Tcp(TcpArgs {
                target: target.to_string().parse().expect("target"),
                message: "hello".to_string(),
                opts: ClientOptions {
                    output: OutputFormat::Json,
                    ..opts(2)
                },
            })
        };
        assert_eq!(podnet_probe::run(cmd(server.tcp)).expect("runs"), 0);
        assert_eq!(podnet_probe::run(cmd(dead_tcp_port())).expect("runs"), 1);
    });
}
