//! The supervisor's end of the lab socket: one thread per connection.

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use podnet_model::objects::parse_numbered_documents;
use podnet_model::Kind;
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::{AppliedObject, ObjectList, Request, WatchEvent};
use crate::store::EventType;
use crate::supervisor::Shared;

/// Serves requests until the process exits.
pub fn serve(listener: UnixListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let shared = shared.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(conn, &shared) {
                tracing::debug!("api connection: {e}");
            }
        });
    }
}

fn handle(stream: UnixStream, shared: &Shared) -> io::Result<()> {
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => return reply::<Value>(&stream, Err(format!("bad request: {e}"))),
    };
    match req {
        Request::Status => reply(&stream, Ok(shared.status())),
        Request::Apply { yaml } => {
            let result = parse_numbered_documents(&yaml)
                .and_then(|docs| shared.with_store(|s| s.apply(docs)))
                .map_err(|e| e.to_string())
                .map(|applied| {
                    applied
                        .into_iter()
                        .map(|(reference, result)| AppliedObject { reference, result })
                        .collect::<Vec<_>>()
                });
            reply(&stream, result)
        }
        Request::Delete { refs } => reply(&stream, shared.delete(&refs)),
        Request::Get {
            kind,
            namespace,
            name,
        } => {
            let items = shared.with_store(|s| {
                s.list(kind, namespace.as_deref())
                    .into_iter()
                    .filter(|o| name.as_deref().is_none_or(|n| o.name() == n))
                    .map(|o| o.to_json())
                    .collect::<Vec<_>>()
            });
            if let (Some(n), true) = (&name, items.is_empty()) {
                let ns = namespace.map(|ns| format!("{ns}/")).unwrap_or_default();
                return reply::<Value>(&stream, Err(format!("{kind} {ns}{n} not found")));
            }
            reply(
                &stream,
                Ok(ObjectList {
                    resource_version: 0,
                    items,
                }),
            )
        }
        Request::List { kinds } => {
            let list = shared.with_store(|s| ObjectList {
                resource_version: s.resource_version(),
                items: kinds
                    .iter()
                    .flat_map(|k| s.list(*k, None))
                    .map(|o| o.to_json())
                    .collect(),
            });
            reply(&stream, Ok(list))
        }
        Request::Watch {
            kinds,
            resource_version,
        } => watch(
            stream,
            shared,
            kinds.into_iter().collect(),
            resource_version,
        ),
        Request::Annotate {
            reference,
            key,
            value,
        } => {
            let result = shared.with_store(|s| {
                let mut obj = s
                    .get(&reference)
                    .cloned()
                    .ok_or_else(|| format!("{reference} not found"))?;
                obj.meta_mut()
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(key, value);
                s.put(obj);
                Ok::<_, String>(json!("annotated"))
            });
            reply(&stream, result)
        }
        Request::AddNode => reply(&stream, Ok(shared.queue_add_node())),
        Request::RemoveNode { node } => reply(
            &stream,
            shared.queue_remove_node(&node).map(|()| json!("removing")),
        ),
        Request::Shutdown => {
            shared.request_shutdown();
            reply(&stream, Ok(json!("shutting down")))
        }
    }
}

fn reply<T: Serialize>(mut stream: &UnixStream, result: Result<T, String>) -> io::Result<()> {
    let v = match result {
        Ok(v) => json!({ "ok": v }),
        Err(e) => json!({ "error": e }),
    };
    let mut line = serde_json::to_vec(&v).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

fn watch(
    mut stream: UnixStream,
    shared: &Shared,
    kinds: BTreeSet<Kind>,
    mut rv: u64,
) -> io::Result<()> {
    loop {
        let (events, head) =
            shared.with_store(|s| (s.events_since(rv, &kinds), s.resource_version()));
        let Ok(events) = events else {
            return send(&mut stream, &WatchEvent::Gone);
        };
        if events.is_empty() {
            // Nothing of these kinds up to `head`.
            rv = head;
            if shared.wait_change(head, Duration::from_secs(1)) == head {
                send(
                    &mut stream,
                    &WatchEvent::Bookmark {
                        resource_version: rv,
                    },
                )?;
            }
            continue;
        }
        for e in events {
            rv = e.resource_version;
            let object = e.object.to_json();
            let ev = match e.kind {
                EventType::Added => WatchEvent::Added { object },
                EventType::Modified => WatchEvent::Modified { object },
                EventType::Deleted => WatchEvent::Deleted { object },
            };
            send(&mut stream, &ev)?;
        }
    }
}

fn send(stream: &mut UnixStream, ev: &WatchEvent) -> io::Result<()> {
    let mut line = serde_json::to_vec(ev).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}
