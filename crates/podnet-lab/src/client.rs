//! The client end of the lab's socket, used by the CLI and by agents.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use podnet_model::{Kind, Object, ObjectRef};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{AppliedObject, LabStatus, ObjectList, Request, WatchEvent};
use crate::layout::Layout;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("lab {lab:?} is not running (no supervisor answers on {socket}); start it with `podnet lab up --name {lab}`")]
    NotRunning { lab: String, socket: String },
    #[error("talking to lab {lab:?}: {source}")]
    Io { lab: String, source: io::Error },
    #[error("{0}")]
    Refused(String),
    #[error("lab {lab:?} answered something unreadable: {detail}")]
    Protocol { lab: String, detail: String },
}

pub struct Client {
    lab: String,
    socket: std::path::PathBuf,
}

impl Client {
    pub fn new(layout: &Layout) -> Client {
        Client {
            lab: layout.name.clone(),
            socket: layout.socket(),
        }
    }

    /// Whether a supervisor answers on the socket.
    pub fn is_up(&self) -> bool {
        self.status().is_ok()
    }

    fn connect(&self) -> Result<UnixStream, ClientError> {
        connect(&self.socket).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                lab: self.lab.clone(),
                socket: self.socket.display().to_string(),
            },
            _ => ClientError::Io {
                lab: self.lab.clone(),
                source: e,
            },
        })
    }

    fn call<T: DeserializeOwned>(&self, req: &Request) -> Result<T, ClientError> {
        let stream = self.connect()?;
        let io_err = |source| ClientError::Io {
            lab: self.lab.clone(),
            source,
        };
        send(&stream, req).map_err(io_err)?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(io_err)?;
        let v: Value = serde_json::from_str(&line).map_err(|e| ClientError::Protocol {
            lab: self.lab.clone(),
            detail: e.to_string(),
        })?;
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            return Err(ClientError::Refused(err.to_string()));
        }
        serde_json::from_value(v.get("ok").cloned().unwrap_or(Value::Null)).map_err(|e| {
            ClientError::Protocol {
                lab: self.lab.clone(),
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
                    lab: self.lab.clone(),
                    detail,
                })
            })
            .collect()
    }

    /// Opens a watch; read it with [`Watch::next_event`].
    pub fn watch(&self, kinds: &[Kind], resource_version: u64) -> Result<Watch, ClientError> {
        let stream = self.connect()?;
        send(
            &stream,
            &Request::Watch {
                kinds: kinds.to_vec(),
                resource_version,
            },
        )
        .map_err(|source| ClientError::Io {
            lab: self.lab.clone(),
            source,
        })?;
        // Bookmarks arrive every second; silence means the supervisor is gone.
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|source| ClientError::Io {
                lab: self.lab.clone(),
                source,
            })?;
        Ok(Watch {
            reader: BufReader::new(stream),
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

fn connect(path: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(path)
}

fn send(mut stream: &UnixStream, req: &Request) -> io::Result<()> {
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// A watch stream.
pub struct Watch {
    reader: BufReader<UnixStream>,
}

impl Watch {
    /// The next event; an error when the stream ends or stalls.
    pub fn next_event(&mut self) -> io::Result<WatchEvent> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the lab closed the watch",
            ));
        }
        serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}
