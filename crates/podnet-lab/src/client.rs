//! The client end of the lab's socket, used by the CLI and by agents.
//!
//! Every request has a deadline, from connecting to the last byte of the answer: a
//! supervisor that is stopped (SIGSTOP) or wedged still lets the kernel queue connections
//! and data, so without one a command would wait for ever. A watch has no end, but a
//! silent one (no bookmark for [`WATCH_SILENCE`]) is an error.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::time::{TimeVal, TimeValLike};
use podnet_model::{Kind, Object, ObjectRef};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{AppliedObject, LabStatus, ObjectList, Request, WatchEvent};
use crate::layout::Layout;
use crate::teardown;

/// How long a request may take by default. The supervisor answers in milliseconds; only a
/// stopped or hung one is slower.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An apply is parsed and admitted whole before it is answered (20,000 objects, about 6 MB,
/// take 1.4 s in a release build, more in a debug one): its deadline grows by a second for
/// every this many bytes of YAML.
const APPLY_BYTES_PER_SECOND: usize = 100_000;
/// An idle watch carries a bookmark every second; this much silence means the supervisor
/// is gone or stopped.
pub const WATCH_SILENCE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("lab {lab:?} is not running (no supervisor answers on {socket}); start it with `podnet lab up --name {lab}`")]
    NotRunning { lab: String, socket: String },
    #[error("lab {lab:?} did not answer `{op}` within {}: {hint}", humanize(*.after))]
    Timeout {
        lab: String,
        op: &'static str,
        after: Duration,
        /// What the supervisor is doing, if that can be seen, and what to do.
        hint: String,
    },
    #[error("talking to lab {lab:?}: {source}")]
    Io { lab: String, source: io::Error },
    #[error("{0}")]
    Refused(String),
    #[error("lab {lab:?} answered something unreadable: {detail}")]
    Protocol { lab: String, detail: String },
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

pub struct Client {
    layout: Layout,
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(layout: &Layout) -> Client {
        Client {
            layout: layout.clone(),
            socket: layout.socket(),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// A client of `layout`'s lab on another socket (tests' fake supervisors).
    #[cfg(test)]
    fn at(layout: &Layout, socket: PathBuf) -> Client {
        Client {
            socket,
            ..Client::new(layout)
        }
    }

    /// The same client with another deadline per request.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    fn lab(&self) -> String {
        self.layout.name.clone()
    }

    /// How long `req` may take.
    fn timeout_of(&self, req: &Request) -> Duration {
        match req {
            Request::Apply { yaml } => {
                self.timeout + Duration::from_secs((yaml.len() / APPLY_BYTES_PER_SECOND) as u64)
            }
            _ => self.timeout,
        }
    }

    /// Turns an I/O error of `req` into what the user needs to know.
    fn error(&self, req: &Request, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                lab: self.lab(),
                socket: self.socket.display().to_string(),
            },
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                lab: self.lab(),
                op: req.op(),
                after: self.timeout_of(req),
                hint: unresponsive_hint(&self.layout),
            },
            _ => ClientError::Io {
                lab: self.lab(),
                source: e,
            },
        }
    }

    /// Connects and sends `req`, all before `deadline`.
    fn open(&self, req: &Request, deadline: Instant) -> Result<UnixStream, ClientError> {
        let stream = connect(&self.socket, deadline).map_err(|e| self.error(req, e))?;
        let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol {
            lab: self.lab(),
            detail: e.to_string(),
        })?;
        line.push(b'\n');
        write_all(&stream, &line, deadline).map_err(|e| self.error(req, e))?;
        Ok(stream)
    }

    fn call<T: DeserializeOwned>(&self, req: &Request) -> Result<T, ClientError> {
        let deadline = Instant::now() + self.timeout_of(req);
        let stream = self.open(req, deadline)?;
        let line = read_line(&stream, deadline).map_err(|e| self.error(req, e))?;
        let v: Value = serde_json::from_slice(&line).map_err(|e| ClientError::Protocol {
            lab: self.lab(),
            detail: e.to_string(),
        })?;
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            return Err(ClientError::Refused(err.to_string()));
        }
        serde_json::from_value(v.get("ok").cloned().unwrap_or(Value::Null)).map_err(|e| {
            ClientError::Protocol {
                lab: self.lab(),
                detail: e.to_string(),
            }
        })
    }

    pub fn status(&self) -> Result<LabStatus, ClientError> {
        self.call(&Request::Status)
    }

    pub fn apply(&self, yaml: &str) -> Result<Vec<AppliedObject>, ClientError> {
        self.call(&Request::Apply {
            yaml: yaml.to_string(),
        })
    }

    pub fn delete(&self, refs: Vec<ObjectRef>) -> Result<Vec<ObjectRef>, ClientError> {
        self.call(&Request::Delete { refs })
    }

    pub fn get(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Object>, ClientError> {
        let list: ObjectList = self.call(&Request::Get {
            kind,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
        })?;
        self.objects(list.items)
    }

    /// Every object of `kinds` and the version to watch from.
    pub fn list(&self, kinds: &[Kind]) -> Result<(u64, Vec<Object>), ClientError> {
        let list: ObjectList = self.call(&Request::List {
            kinds: kinds.to_vec(),
        })?;
        Ok((list.resource_version, self.objects(list.items)?))
    }

    fn objects(&self, items: Vec<Value>) -> Result<Vec<Object>, ClientError> {
        items
            .into_iter()
            .map(|v| {
                Object::from_json(v).map_err(|detail| ClientError::Protocol {
                    lab: self.lab(),
                    detail,
                })
            })
            .collect()
    }

    /// Opens a watch; read it with [`Watch::next_event`]. Opening it has the request
    /// deadline; then each event may take up to [`WATCH_SILENCE`].
    pub fn watch(&self, kinds: &[Kind], resource_version: u64) -> Result<Watch, ClientError> {
        let req = Request::Watch {
            kinds: kinds.to_vec(),
            resource_version,
        };
        let stream = self.open(&req, Instant::now() + self.timeout_of(&req))?;
        stream
            .set_read_timeout(Some(WATCH_SILENCE))
            .map_err(|e| self.error(&req, e))?;
        Ok(Watch {
            lab: self.lab(),
            stream,
            buf: Vec::new(),
        })
    }

    pub fn annotate(
        &self,
        reference: ObjectRef,
        key: &str,
        value: &str,
    ) -> Result<(), ClientError> {
        self.call::<Value>(&Request::Annotate {
            reference,
            key: key.to_string(),
            value: value.to_string(),
        })
        .map(drop)
    }

    pub fn add_node(&self) -> Result<String, ClientError> {
        self.call(&Request::AddNode)
    }

    pub fn remove_node(&self, node: &str) -> Result<(), ClientError> {
        self.call::<Value>(&Request::RemoveNode {
            node: node.to_string(),
        })
        .map(drop)
    }

    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.call::<Value>(&Request::Shutdown).map(drop)
    }
}

/// What to tell a user whose lab does not answer: whether its supervisor runs, is stopped,
/// or is gone, and what to do.
fn unresponsive_hint(layout: &Layout) -> String {
    let name = &layout.name;
    match teardown::supervisor_pid(layout) {
        Some(pid) if teardown::is_stopped(pid) => format!(
            "its supervisor (pid {pid}) is stopped; resume it with `kill -CONT {pid}`, or remove the lab with `podnet lab down --name {name}`"
        ),
        Some(pid) => format!(
            "its supervisor (pid {pid}) is busy or hung; see {}, or remove the lab with `podnet lab down --name {name}`",
            layout.supervisor_log().display()
        ),
        None => format!(
            "no supervisor of it runs; remove what is left with `podnet lab down --name {name}`"
        ),
    }
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}

/// Connects before `deadline`. A listener that does not accept (a stopped supervisor)
/// blocks a connect once its backlog is full; the send timeout bounds that wait.
fn connect(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let left = remaining(deadline)?;
    let tv = TimeVal::microseconds(i64::try_from(left.as_micros()).unwrap_or(i64::MAX).max(1));
    socket::setsockopt(&fd, sockopt::SendTimeout, &tv)?;
    loop {
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(UnixStream::from(fd)),
            Err(nix::errno::Errno::EINTR) => remaining(deadline).map(drop)?,
            Err(e) => return Err(e.into()),
        }
    }
}

fn write_all(mut stream: &UnixStream, mut data: &[u8], deadline: Instant) -> io::Result<()> {
    while !data.is_empty() {
        stream.set_write_timeout(Some(remaining(deadline)?))?;
        match stream.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One answer line (without its newline), complete before `deadline`.
fn read_line(mut stream: &UnixStream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the supervisor closed the connection without answering",
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        match chunk[..n].iter().position(|b| *b == b'\n') {
            Some(end) => {
                line.extend_from_slice(&chunk[..end]);
                return Ok(line);
            }
            None => line.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A watch stream.
pub struct Watch {
    lab: String,
    stream: UnixStream,
    /// What was read past the last complete line.
    buf: Vec<u8>,
}

impl Watch {
    /// The next event; an error when the stream ends or stays silent for [`WATCH_SILENCE`].
    pub fn next_event(&mut self) -> io::Result<WatchEvent> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&line)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("lab {:?} closed the watch", self.lab),
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "lab {:?} sent nothing for {}s, not even a bookmark: its supervisor is gone or stopped",
                            self.lab,
                            WATCH_SILENCE.as_secs()
                        ),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A directory for a fake supervisor's socket, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("podnet-client-{tag}-{}", std::process::id()));
            let _ = fs_remove(&p);
            std::fs::create_dir_all(&p).expect("create temp dir");
            TempDir(p)
        }
    }

    fn fs_remove(p: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(p)
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs_remove(&self.0);
        }
    }

    fn client(dir: &TempDir, timeout: Duration) -> Client {
        let layout = Layout::new("fake-lab").expect("valid name");
        Client::at(&layout, dir.0.join("api.sock")).with_timeout(timeout)
    }

    fn assert_times_out(r: Result<Vec<Object>, ClientError>, started: Instant) {
        let took = started.elapsed();
        let err = r.expect_err("nobody answers");
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
        assert!(took < Duration::from_secs(2), "gave up after {took:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("lab \"fake-lab\" did not answer `get` within 0.3s: no supervisor of it runs; remove what is left with `podnet lab down --name fake-lab`"),
            "{msg}"
        );
    }

    #[test]
    fn a_supervisor_that_accepts_nothing_times_out_with_the_lab_and_what_to_do() {
        let dir = TempDir::new("silent");
        // Bound but never accepting, as a stopped supervisor: the kernel queues the
        // connection and the request, and nothing answers.
        let _listener = UnixListener::bind(dir.0.join("api.sock")).expect("bind");
        let c = client(&dir, Duration::from_millis(300));
        let started = Instant::now();
        assert_times_out(c.get(Kind::Pod, None, None), started);
    }

    #[test]
    fn a_full_backlog_does_not_block_connect_past_the_deadline() {
        let dir = TempDir::new("backlog");
        let path = dir.0.join("api.sock");
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(&path).expect("addr")).expect("bind");
        socket::listen(&fd, socket::Backlog::new(0).expect("backlog")).expect("listen");
        // Fill the queue; the next connect would wait for an accept that never comes.
        let mut queued = Vec::new();
        while let Ok(s) = connect(&path, Instant::now() + Duration::from_millis(100)) {
            queued.push(s);
            assert!(queued.len() < 10, "the backlog never filled");
        }
        let c = client(&dir, Duration::from_millis(300));
        let started = Instant::now();
        assert_times_out(c.get(Kind::Pod, None, None), started);
    }

    #[test]
    fn no_socket_means_not_running() {
        let dir = TempDir::new("none");
        let err = client(&dir, Duration::from_millis(300))
            .status()
            .expect_err("no socket");
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err:?}");
    }

    #[test]
    fn an_answer_in_pieces_is_read_whole() {
        let dir = TempDir::new("pieces");
        let listener = UnixListener::bind(dir.0.join("api.sock")).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).expect("read the request");
            assert!(String::from_utf8_lossy(&req[..n]).contains("\"op\":\"annotate\""));
            s.write_all(b"{\"ok\": ").expect("write");
            std::thread::sleep(Duration::from_millis(50));
            s.write_all(b"\"annotated\"}\n").expect("write");
        });
        let r = ObjectRef {
            kind: Kind::Pod,
            namespace: Some("default".into()),
            name: "p".into(),
        };
        client(&dir, Duration::from_secs(2))
            .annotate(r, "k", "v")
            .expect("answered");
        server.join().expect("server");
    }

    #[test]
    fn a_silent_watch_is_an_error_naming_the_lab() {
        let dir = TempDir::new("watch");
        let _listener = UnixListener::bind(dir.0.join("api.sock")).expect("bind");
        let mut w = client(&dir, Duration::from_millis(300))
            .watch(&[Kind::Node], 0)
            .expect("the request is queued");
        let started = Instant::now();
        let err = w.next_event().expect_err("silence");
        assert!(started.elapsed() < WATCH_SILENCE + Duration::from_secs(1));
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            err.to_string()
                .starts_with("lab \"fake-lab\" sent nothing for 5s"),
            "{err}"
        );
    }
}
