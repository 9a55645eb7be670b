//! A fake Kubernetes API server for tests of kube-rs clients: it speaks the HTTP the
//! kube-apiserver speaks (LIST, chunked WATCH streams with bookmarks, GET and merge PATCH
//! on objects, `Status` errors) over one in-memory store with a single resourceVersion
//! counter, as etcd has.
//!
//! It serves only inside a network namespace the test made, on 127.0.0.1 there, so the
//! client under test must create its sockets in that namespace too, e.g. by running its
//! tokio runtime on a thread from [`crate::on_thread_in`]:
//!
//! ```ignore
//! let mut fx = Fixture::new("agent");
//! let ns = fx.netns("api");
//! let api = FakeApiServer::start_in(&ns);
//! api.apply("nodes", json!({"metadata": {"name": "n1", "labels": {"role": "worker"}}}));
//! let url = api.url();
//! let client = on_thread_in(&ns, move || {
//!     let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
//!     rt.block_on(async {
//!         let mut config = kube::Config::new(url.parse().expect("url"));
//!         config.default_retry = false; // else kube retries 503s quietly for minutes
//!         let nodes: Api<Node> = Api::all(kube::Client::try_from(config).expect("client"));
//!         // ... watcher(nodes, watcher::Config::default()) ...
//!     })
//! });
//! // ... api.apply / api.drop_watches() / api.compact() / api.requests() ...
//! ```
//!
//! Faults come from the test: [`FakeApiServer::drop_watches`] cuts open watch connections,
//! [`FakeApiServer::compact`] makes old resourceVersions expire (410 Gone) and
//! [`FakeApiServer::set_down`] answers every request with 503.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::pin::Pin;
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use podnet_kernel::{NetNs, Netlink};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

/// A resource the fake serves.
struct ResourceType {
    resource: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    namespaced: bool,
}

/// Add a row to serve another resource: (resource, group, kind, namespaced), at v1.
#[rustfmt::skip]
const RESOURCES: &[ResourceType] = &[
    rt("nodes", "", "Node", false),
    rt("namespaces", "", "Namespace", false),
    rt("pods", "", "Pod", true),
    rt("services", "", "Service", true),
    rt("endpointslices", "discovery.k8s.io", "EndpointSlice", true),
    rt("networkpolicies", "networking.k8s.io", "NetworkPolicy", true),
];

const fn rt(
    resource: &'static str,
    group: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> ResourceType {
    ResourceType {
        resource,
        group,
        version: "v1",
        kind,
        namespaced,
    }
}

impl ResourceType {
    fn named(resource: &str) -> &'static ResourceType {
        RESOURCES
            .iter()
            .find(|r| r.resource == resource)
            .unwrap_or_else(|| panic!("the fake API server does not serve {resource:?}"))
    }

    fn api_version(&self) -> String {
        match self.group {
            "" => self.version.to_string(),
            g => format!("{g}/{}", self.version),
        }
    }

    fn key(&self, namespace: Option<&str>, name: &str) -> Key {
        (
            self.resource,
            namespace.unwrap_or_default().to_string(),
            name.to_string(),
        )
    }
}

/// (resource, namespace or "", name): the store's order is the real server's list order.
type Key = (&'static str, String, String);

/// One HTTP request as the server saw it (path and query still percent-encoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
}

impl Request {
    /// `(api group, resource, RBAC verb)` this request needs permission for, e.g.
    /// `("", "nodes", "watch")`; `None` for paths that name no resource.
    pub fn verb_and_resource(&self) -> Option<(String, String, String)> {
        let p = ApiPath::parse(&self.path)?;
        let verb = match (self.method.as_str(), p.name.is_some()) {
            ("GET", false) if is_watch(&self.query) => "watch",
            ("GET", false) => "list",
            ("GET", true) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => return None,
        };
        Some((p.group.into(), p.resource.into(), verb.into()))
    }
}

/// A running fake API server; dropping it stops the server and cuts its connections.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApiServer {
    /// Brings `lo` up in `ns` and serves on 127.0.0.1 there, from a thread of its own.
    /// Refuses the namespace the test process itself runs in.
    pub fn start_in(ns: &NetNs) -> FakeApiServer {
        let file = std::fs::File::from(ns.as_fd().try_clone_to_owned().expect("dup ns fd"));
        let id = file
            .metadata()
            .map(|m| (m.dev(), m.ino()))
            .expect("stat namespace");
        for own in ["/proc/self/ns/net", "/proc/1/ns/net"] {
            let own = std::fs::metadata(own).map(|m| (m.dev(), m.ino())).ok();
            assert_ne!(
                Some(id),
                own,
                "the fake API server serves only in a test's namespace"
            );
        }
        let mut nl = Netlink::open_in(ns).expect("netlink in the server's namespace");
        let lo = nl
            .link_by_name("lo")
            .expect("look up lo")
            .expect("the namespace has lo");
        nl.set_up(lo.index).expect("bring lo up");

        let shared = Arc::new(Shared(Mutex::default()));
        let (stop, stopped) = oneshot::channel();
        let (bound_tx, bound) = std_mpsc::channel();
        let state = shared.clone();
        let thread = crate::on_thread_in(ns, move || {
            let setup = (|| {
                let listener = TcpListener::bind(("127.0.0.1", 0))?;
                listener.set_nonblocking(true)?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok::<_, io::Error>((listener, runtime))
            })();
            match setup {
                Ok((listener, runtime)) => {
                    let _ = bound_tx.send(listener.local_addr());
                    runtime.block_on(serve(listener, state, stopped));
                }
                Err(e) => drop(bound_tx.send(Err(e))),
            }
        });
        let addr = bound
            .recv()
            .expect("the server thread reports its address")
            .expect("bind 127.0.0.1:0 in the server's namespace");
        FakeApiServer {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces an object (ADDED or MODIFIED event) and returns it as stored.
    /// Namespaced objects without `metadata.namespace` go to `default`.
    pub fn apply(&self, resource: &str, mut obj: Value) -> Value {
        let rt = ResourceType::named(resource);
        assert!(obj.is_object(), "a {resource} object is a JSON object");
        if let (false, Some(meta)) = (rt.namespaced, obj["metadata"].as_object_mut()) {
            meta.remove("namespace");
        } else if rt.namespaced && obj["metadata"]["namespace"].is_null() {
            obj["metadata"]["namespace"] = json!("default");
        }
        let name = obj["metadata"]["name"].as_str().expect("metadata.name");
        let key = rt.key(obj["metadata"]["namespace"].as_str(), name);
        let mut store = self.shared.lock();
        let old = store
            .objects
            .get(&key)
            .map(|o| o["metadata"].clone())
            .unwrap_or_default();
        let uid = json!(format!("00000000-0000-4000-8000-{:012x}", store.rv + 1));
        for (field, new) in [("uid", uid), ("creationTimestamp", json!(now_rfc3339()))] {
            if obj["metadata"][field].is_null() {
                obj["metadata"][field] = if old[field].is_null() {
                    new
                } else {
                    old[field].clone()
                };
            }
        }
        store.commit(rt, key, obj, false)
    }

    /// Deletes an object (DELETED event at a new resourceVersion); `None` if absent.
    pub fn delete(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = ResourceType::named(resource).key(namespace, name);
        let mut store = self.shared.lock();
        let obj = store.objects.get(&key)?.clone();
        Some(store.commit(ResourceType::named(resource), key, obj, true))
    }

    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = ResourceType::named(resource).key(namespace, name);
        self.shared.lock().objects.get(&key).cloned()
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Sends a BOOKMARK at the latest resourceVersion to every watch that allows them
    /// (the server also does so every second by itself).
    pub fn bookmark(&self) {
        self.shared.lock().bookmark();
    }

    /// Cuts every open watch connection: a dropped connection, not a clean end.
    pub fn drop_watches(&self) {
        self.shared.lock().abort_watches();
    }

    /// Forgets history up to the latest resourceVersion: a watch from an older one gets
    /// the 410 Expired ERROR event.
    pub fn compact(&self) {
        let store = &mut *self.shared.lock();
        store.compacted = store.rv;
        store.events.clear();
    }

    /// While down, every request gets 503 and open watches are cut. kube's default
    /// client retries 503s with backoff for minutes before it reports an error; set
    /// `Config::default_retry = false` to see them at once.
    pub fn set_down(&self, down: bool) {
        let mut store = self.shared.lock();
        store.down = down;
        if down {
            store.abort_watches();
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// Waits until a request matching `pred` has been seen (earlier ones count).
    pub fn wait_for_request(&self, pred: impl Fn(&Request) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.shared.lock().requests.iter().any(&pred) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One change, kept for watches that start from an older resourceVersion.
struct Event {
    rv: u64,
    resource: &'static str,
    object: Value,
    /// The object before the change; `None` for a creation.
    prev: Option<Value>,
    deleted: bool,
}

/// An open watch; its stream ends cleanly when `tx` is dropped.
struct Watcher {
    id: u64,
    rt: &'static ResourceType,
    namespace: Option<String>,
    selector: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Result<Bytes, io::Error>>,
}

impl Watcher {
    fn wants(&self, obj: &Value) -> bool {
        let ns = &obj["metadata"]["namespace"];
        self.namespace.as_deref().is_none_or(|n| ns == n) && self.selector.matches(obj)
    }

    /// The line this watch gets for `ev`, if any. As on the real server, an object that
    /// comes into the selector is ADDED, and one that leaves it is DELETED (as it was).
    fn line(&self, ev: &Event) -> Option<Bytes> {
        if ev.resource != self.rt.resource {
            return None;
        }
        let before = ev.prev.as_ref().is_some_and(|p| self.wants(p));
        match (before, !ev.deleted && self.wants(&ev.object)) {
            (true, true) => Some(event_line("MODIFIED", &ev.object)),
            (false, true) => Some(event_line("ADDED", &ev.object)),
            (true, false) => {
                let mut last = ev.prev.clone()?;
                last["metadata"]["resourceVersion"] = json!(ev.rv.to_string());
                Some(event_line("DELETED", &last))
            }
            (false, false) => None,
        }
    }
}

#[derive(Default)]
struct Store {
    rv: u64,
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    events: Vec<Event>,
    watchers: Vec<Watcher>,
    next_watch: u64,
    down: bool,
    requests: Vec<Request>,
}

impl Store {
    /// Stores (or removes) `obj` at a new resourceVersion, records the change and hands
    /// it to the open watches; returns the object as stored.
    fn commit(
        &mut self,
        rt: &'static ResourceType,
        key: Key,
        mut obj: Value,
        deleted: bool,
    ) -> Value {
        self.rv += 1;
        obj["kind"] = json!(rt.kind);
        obj["apiVersion"] = json!(rt.api_version());
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let prev = match deleted {
            true => self.objects.remove(&key),
            false => self.objects.insert(key, obj.clone()),
        };
        let resource = rt.resource;
        let ev = Event {
            rv: self.rv,
            resource,
            object: obj.clone(),
            prev,
            deleted,
        };
        // A watch whose client has gone is forgotten here.
        self.watchers
            .retain(|w| w.line(&ev).is_none_or(|line| w.tx.send(Ok(line)).is_ok()));
        self.events.push(ev);
        obj
    }

    fn bookmark(&mut self) {
        let rv = self.rv.to_string();
        self.watchers.retain(|w| {
            let (kind, api_version) = (w.rt.kind, w.rt.api_version());
            let obj = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv}});
            !w.bookmarks || w.tx.send(Ok(event_line("BOOKMARK", &obj))).is_ok()
        });
    }

    fn abort_watches(&mut self) {
        for w in self.watchers.drain(..) {
            let _ = w.tx.send(Err(io::ErrorKind::ConnectionAborted.into()));
        }
    }
}

struct Shared(Mutex<Store>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A test that panicked while holding the lock must not hide its own failure.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn event_line(ty: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": ty, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// A watch response body fed by the store; an error makes hyper drop the connection.
struct WatchBody(mpsc::UnboundedReceiver<Result<Bytes, io::Error>>);

impl Body for WatchBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

type Response = hyper::Response<BoxBody<Bytes, io::Error>>;

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stopped: oneshot::Receiver<()>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let ticker = shared.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            ticker.lock().bookmark();
        }
    });
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        let service = hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(shared, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new();
        tokio::spawn(conn.serve_connection(TokioIo::new(stream), service));
    }
}

/// A path `/api/v1/REST` or `/apis/GROUP/VERSION/REST`, where REST is `RESOURCE[/NAME]`
/// or `namespaces/NS/RESOURCE[/NAME]`.
struct ApiPath<'a> {
    group: &'a str,
    version: &'a str,
    namespace: Option<&'a str>,
    resource: &'a str,
    name: Option<&'a str>,
}

impl ApiPath<'_> {
    fn parse(path: &str) -> Option<ApiPath<'_>> {
        let (group, version, rest) = match path.strip_prefix("/api/v1/") {
            Some(rest) => ("", "v1", rest),
            None => {
                let (group, rest) = path.strip_prefix("/apis/")?.split_once('/')?;
                let (version, rest) = rest.split_once('/')?;
                (group, version, rest)
            }
        };
        let (namespace, resource, name) = match rest.split('/').collect::<Vec<_>>()[..] {
            [r] => (None, r, None),
            ["namespaces", ns, r] => (Some(ns), r, None),
            ["namespaces", ns, r, n] => (Some(ns), r, Some(n)),
            [r, n] => (None, r, Some(n)),
            _ => return None,
        };
        Some(ApiPath {
            group,
            version,
            namespace,
            resource,
            name,
        })
    }

    fn resource_type(&self) -> Option<&'static ResourceType> {
        let rt = RESOURCES.iter().find(|r| {
            (r.group, r.version, r.resource) == (self.group, self.version, self.resource)
        })?;
        // A namespaced object needs its namespace; a cluster-scoped resource has none.
        let ns_ok =
            self.namespace.is_some() == rt.namespaced || self.name.is_none() && rt.namespaced;
        ns_ok.then_some(rt)
    }
}

async fn handle(shared: Arc<Shared>, req: hyper::Request<Incoming>) -> Response {
    let uri = req.uri();
    let (path, query) = (
        uri.path().to_string(),
        uri.query().unwrap_or_default().to_string(),
    );
    {
        let mut store = shared.lock();
        let method = req.method().to_string();
        store.requests.push(Request {
            method,
            path: path.clone(),
            query: query.clone(),
        });
        if store.down {
            let msg = "the server is currently unable to handle the request";
            return status(503, "ServiceUnavailable", msg, None);
        }
    }
    let found = ApiPath::parse(&path).and_then(|p| Some((p.resource_type()?, p)));
    let Some((rt, p)) = found else {
        let msg = format!("the server could not find the requested resource ({path})");
        return status(404, "NotFound", &msg, None);
    };
    let selector = match Selector::parse(&query_param(&query, "labelSelector").unwrap_or_default())
    {
        Ok(s) => s,
        Err(msg) => return status(400, "BadRequest", &msg, None),
    };
    let key = p.name.map(|n| rt.key(p.namespace, n));
    match (req.method(), key) {
        (&Method::GET, None) if is_watch(&query) => {
            watch(&shared, rt, p.namespace, selector, &query)
        }
        (&Method::GET, None) => list(&shared.lock(), rt, p.namespace, &selector),
        (&Method::GET, Some(key)) => match shared.lock().objects.get(&key) {
            Some(obj) => json_response(200, obj),
            None => not_found(rt, &key.2),
        },
        (&Method::PATCH, Some(key)) => patch(&shared, rt, key, req).await,
        _ => status(
            405,
            "MethodNotAllowed",
            "the fake API server does not do this",
            None,
        ),
    }
}

fn list(
    store: &Store,
    rt: &ResourceType,
    namespace: Option<&str>,
    selector: &Selector,
) -> Response {
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((r, ns, _), obj)| {
            *r == rt.resource && namespace.is_none_or(|n| n == ns) && selector.matches(obj)
        })
        .map(|(_, obj)| {
            // The real server leaves the type off list items.
            let mut item = obj.clone();
            item.as_object_mut()
                .map(|m| (m.remove("kind"), m.remove("apiVersion")));
            item
        })
        .collect();
    let meta = json!({"resourceVersion": store.rv.to_string()});
    let kind = format!("{}List", rt.kind);
    json_response(
        200,
        &json!({"kind": kind, "apiVersion": rt.api_version(), "metadata": meta, "items": items}),
    )
}

/// Opens a watch: history after `resourceVersion` (or, from 0 or none, the current state
/// as ADDED events), then changes as they come, until `timeoutSeconds`.
fn watch(
    shared: &Arc<Shared>,
    rt: &'static ResourceType,
    namespace: Option<&str>,
    selector: Selector,
    query: &str,
) -> Response {
    let (tx, rx) = mpsc::unbounded_channel();
    let param = |key| query_param(query, key).unwrap_or_default();
    let since = param("resourceVersion").parse::<u64>().unwrap_or(0);
    let namespace = namespace.map(str::to_string);
    let bookmarks = param("allowWatchBookmarks") == "true";
    let mut w = Watcher {
        id: 0,
        rt,
        namespace,
        selector,
        bookmarks,
        tx,
    };
    let mut store = shared.lock();
    if since == 0 {
        for ((r, _, _), obj) in &store.objects {
            if *r == rt.resource && w.wants(obj) {
                let _ = w.tx.send(Ok(event_line("ADDED", obj)));
            }
        }
    } else if since < store.compacted {
        // What the real server sends: 200, one ERROR event, end of stream.
        let message = format!("too old resource version: {since} ({})", store.compacted);
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": "Expired", "code": 410});
        let _ = w.tx.send(Ok(event_line("ERROR", &status)));
        return watch_response(rx);
    } else {
        for line in store
            .events
            .iter()
            .filter(|e| e.rv > since)
            .filter_map(|e| w.line(e))
        {
            let _ = w.tx.send(Ok(line));
        }
    }
    store.next_watch += 1;
    w.id = store.next_watch;
    let id = w.id;
    store.watchers.push(w);
    if let Ok(secs) = param("timeoutSeconds").parse() {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            // Dropping the sender ends the body cleanly.
            shared.lock().watchers.retain(|w| w.id != id);
        });
    }
    watch_response(rx)
}

fn watch_response(rx: mpsc::UnboundedReceiver<Result<Bytes, io::Error>>) -> Response {
    respond(StatusCode::OK, WatchBody(rx).boxed())
}

/// PATCH with a JSON merge patch; a strategic merge patch is read as one, which is
/// right for what clients patch on these objects (labels, annotations, status fields).
async fn patch(
    shared: &Shared,
    rt: &'static ResourceType,
    key: Key,
    req: hyper::Request<Incoming>,
) -> Response {
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok());
    let ctype = ctype.unwrap_or_default().to_string();
    if !matches!(
        ctype.as_str(),
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        let msg = format!("the body of the request was in an unknown format ({ctype})");
        return status(415, "UnsupportedMediaType", &msg, None);
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let Ok(patch @ Value::Object(_)) = serde_json::from_slice(&body) else {
        return status(400, "BadRequest", "the patch is not a JSON object", None);
    };
    let mut store = shared.lock();
    let Some(mut obj) = store.objects.get(&key).cloned() else {
        return not_found(rt, &key.2);
    };
    let identity = obj["metadata"].clone();
    merge_patch(&mut obj, &patch);
    for field in ["name", "namespace", "uid", "creationTimestamp"] {
        obj["metadata"][field] = identity[field].clone();
    }
    if let (false, Some(meta)) = (rt.namespaced, obj["metadata"].as_object_mut()) {
        meta.remove("namespace");
    }
    json_response(200, &store.commit(rt, key, obj, false))
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes a key, anything
/// else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in fields {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn not_found(rt: &ResourceType, name: &str) -> Response {
    let msg = format!("{} \"{name}\" not found", rt.resource);
    status(
        404,
        "NotFound",
        &msg,
        Some(json!({"name": name, "kind": rt.resource})),
    )
}

/// A `Status` failure as the real server sends it.
fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Response {
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": code});
    if let Some(details) = details {
        body["details"] = details;
    }
    json_response(code, &body)
}

fn json_response(code: u16, body: &Value) -> Response {
    let full = Full::new(Bytes::from(body.to_string())).map_err(|never| match never {});
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(code, full.boxed())
}

fn respond(code: StatusCode, body: BoxBody<Bytes, io::Error>) -> Response {
    let mut response = hyper::Response::new(body);
    *response.status_mut() = code;
    let json = hyper::header::HeaderValue::from_static("application/json");
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, json);
    response
}

fn is_watch(query: &str) -> bool {
    matches!(query_param(query, "watch").as_deref(), Some("true" | "1"))
}

/// The decoded value of `key` in a form-encoded query string.
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.as_bytes().get(i) {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 2;
            }
            (b'+', _) => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An equality-based label selector: `key`, `!key`, `key=value`, `key==value` and
/// `key!=value`, comma-separated, all of which must hold. Set-based terms (`in`, `notin`)
/// are refused with 400 rather than misread.
#[derive(Debug, Default)]
struct Selector(Vec<(String, Op)>);

#[derive(Debug)]
enum Op {
    Exists,
    Absent,
    Eq(String),
    Ne(String),
}

impl Selector {
    fn parse(s: &str) -> Result<Selector, String> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if term.contains(['(', ' ']) {
                return Err(format!(
                    "unable to parse requirement {term:?}: set-based selectors are not supported"
                ));
            }
            let (key, op) = if let Some(key) = term.strip_prefix('!') {
                (key, Op::Absent)
            } else if let Some((k, v)) = term.split_once("!=") {
                (k, Op::Ne(v.into()))
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, Op::Eq(v.into()))
            } else {
                (term, Op::Exists)
            };
            terms.push((key.to_string(), op));
        }
        Ok(Selector(terms))
    }

    fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(key, op)| {
            let value = obj["metadata"]["labels"][key.as_str()].as_str();
            match op {
                Op::Exists => value.is_some(),
                Op::Absent => value.is_none(),
                Op::Eq(v) => value == Some(v.as_str()),
                Op::Ne(v) => value != Some(v.as_str()),
            }
        })
    }
}

/// Now in RFC 3339, UTC (civil date from days after Howard Hinnant's algorithm).
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (z, rem) = ((secs / 86_400) as i64 + 719_468, secs % 86_400);
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;

    use super::*;
    use crate::Fixture;

    /// A test, its namespace and the server in it.
    struct Env {
        api: FakeApiServer,
        ns: NetNs,
        _fx: Fixture,
    }

    impl Env {
        fn new() -> Env {
            let mut fx = Fixture::new("apisrv");
            let ns = fx.netns("api");
            Env {
                api: FakeApiServer::start_in(&ns),
                ns,
                _fx: fx,
            }
        }

        /// Sends one HTTP/1.1 request from a socket made inside the namespace.
        fn send(&self, method: &str, target: &str, ctype: &str, body: &str) -> Conn {
            let connect = || TcpStream::connect(self.api.addr());
            let stream = self
                .ns
                .run(connect)
                .expect("enter namespace")
                .expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let len = body.len();
            let head = format!(
                "{method} {target} HTTP/1.1\r\nHost: api\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\n\r\n{body}"
            );
            (&stream).write_all(head.as_bytes()).expect("send request");
            let mut conn = Conn {
                reader: BufReader::new(stream),
                status: 0,
                length: None,
                pending: Vec::new(),
            };
            let status = conn.line();
            conn.status = status
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("status");
            loop {
                let header = conn.line();
                if header.trim().is_empty() {
                    return conn;
                }
                let (name, value) = header.split_once(':').expect("a header");
                if name.eq_ignore_ascii_case("content-length") {
                    conn.length = value.trim().parse().ok();
                }
            }
        }

        fn get(&self, target: &str) -> (u16, Value) {
            self.send("GET", target, "application/json", "").json()
        }

        fn watch(&self, query: &str) -> Conn {
            let conn = self.send("GET", &format!("/api/v1/nodes?watch=true&{query}"), "", "");
            assert_eq!(conn.status, 200);
            conn
        }

        fn patch(&self, target: &str, body: &str) -> (u16, Value) {
            self.send("PATCH", target, "application/merge-patch+json", body)
                .json()
        }
    }

    struct Conn {
        reader: BufReader<TcpStream>,
        status: u16,
        length: Option<usize>,
        pending: Vec<u8>,
    }

    impl Conn {
        fn line(&mut self) -> String {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("read a line");
            line
        }

        fn json(mut self) -> (u16, Value) {
            let mut body = vec![0; self.length.expect("Content-Length")];
            self.reader.read_exact(&mut body).expect("read body");
            (
                self.status,
                serde_json::from_slice(&body).expect("JSON body"),
            )
        }

        /// The next watch event; `Ok(None)` at a clean end (the terminating chunk), an
        /// error if the connection ends without one.
        fn event(&mut self) -> io::Result<Option<Value>> {
            while !self.pending.contains(&b'\n') {
                let mut size = String::new();
                if self.reader.read_line(&mut size)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let size = usize::from_str_radix(size.trim(), 16).map_err(io::Error::other)?;
                if size == 0 {
                    return Ok(None);
                }
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                self.pending.extend(&chunk[..size]);
            }
            let end = self
                .pending
                .iter()
                .position(|b| *b == b'\n')
                .unwrap_or_default();
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            serde_json::from_slice(&line)
                .map(Some)
                .map_err(io::Error::other)
        }

        fn next(&mut self) -> Value {
            self.event()
                .expect("read event")
                .expect("an event before the end")
        }
    }

    fn node(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}})
    }

    #[test]
    fn list_then_watch_from_its_resource_version() {
        let t = Env::new();
        t.api.apply("nodes", node("a", json!({})));
        let (code, list) =
            t.get("/api/v1/nodes?&limit=500&resourceVersion=0&resourceVersionMatch=NotOlderThan");
        assert_eq!(code, 200);
        assert_eq!(
            (list["kind"].as_str(), list["apiVersion"].as_str()),
            (Some("NodeList"), Some("v1"))
        );
        assert_eq!(list["metadata"]["resourceVersion"], "1");
        assert_eq!(list["items"][0]["metadata"]["name"], "a");
        assert!(
            list["items"][0].get("kind").is_none(),
            "list items carry no kind"
        );

        let mut watch = t.watch("resourceVersion=1&allowWatchBookmarks=true&timeoutSeconds=290");
        t.api.apply("nodes", node("b", json!({})));
        let event = watch.next();
        assert_eq!(
            (event["type"].as_str(), event["object"]["kind"].as_str()),
            (Some("ADDED"), Some("Node"))
        );
        assert_eq!(event["object"]["metadata"]["name"], "b");
        assert_eq!(event["object"]["metadata"]["resourceVersion"], "2");
        t.api.bookmark();
        let bookmark = watch.next();
        assert_eq!(bookmark["type"], "BOOKMARK");
        assert_eq!(
            bookmark["object"],
            json!({"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": "2"}})
        );

        // From 0, the current state comes as ADDED events.
        let mut replay = t.watch("resourceVersion=0");
        let names: Vec<Value> = (0..2)
            .map(|_| replay.next()["object"]["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, [json!("a"), json!("b")]);
    }

    #[test]
    fn a_watch_from_a_compacted_version_gets_410() {
        let t = Env::new();
        t.api.apply("nodes", node("a", json!({})));
        t.api.apply("nodes", node("b", json!({})));
        t.api.compact();
        let mut watch = t.watch("resourceVersion=1");
        let status = watch.next()["object"].clone();
        assert_eq!(
            (status["code"].as_u64(), status["reason"].as_str()),
            (Some(410), Some("Expired"))
        );
        assert_eq!(status["message"], "too old resource version: 1 (2)");
        assert!(watch.event().expect("a clean end").is_none());

        let mut watch = t.watch("resourceVersion=2");
        t.api.delete("nodes", None, "a");
        let deleted = watch.next();
        assert_eq!(deleted["type"], "DELETED");
        assert_eq!(deleted["object"]["metadata"]["resourceVersion"], "3");
    }

    #[test]
    fn drop_watches_cuts_the_connection_and_a_timeout_ends_it_cleanly() {
        let t = Env::new();
        let mut watch = t.watch("resourceVersion=0");
        t.api.apply("nodes", node("a", json!({})));
        assert_eq!(watch.next()["type"], "ADDED");
        t.api.drop_watches();
        assert!(
            watch.event().is_err(),
            "an aborted watch has no terminating chunk"
        );

        let mut short = t.watch("resourceVersion=1&timeoutSeconds=1");
        assert!(short.event().expect("a clean end").is_none());

        t.api.set_down(true);
        let (code, body) = t.get("/api/v1/nodes");
        assert_eq!(
            (code, body["reason"].as_str()),
            (503, Some("ServiceUnavailable"))
        );
        t.api.set_down(false);
        assert_eq!(t.get("/api/v1/nodes").0, 200);
    }

    #[test]
    fn merge_patch_adds_an_annotation() {
        let t = Env::new();
        t.api.apply("nodes", node("a", json!({"role": "worker"})));
        let mut watch = t.watch("resourceVersion=1");
        let patch = r#"{"metadata":{"annotations":{"podnet.io/subnet":"10.0.1.0/24"},"labels":{"role":null}}}"#;
        let (code, obj) = t.patch("/api/v1/nodes/a?fieldManager=podnet", patch);
        assert_eq!((code, obj["kind"].as_str()), (200, Some("Node")));
        assert_eq!(
            obj["metadata"]["annotations"]["podnet.io/subnet"],
            "10.0.1.0/24"
        );
        assert_eq!(obj["metadata"]["labels"], json!({}));
        let event = watch.next();
        assert_eq!(
            (event["type"].as_str(), &event["object"]),
            (Some("MODIFIED"), &obj)
        );
        assert_eq!(t.api.get("nodes", None, "a").as_ref(), Some(&obj));
        assert_eq!(t.get("/api/v1/nodes/a").1, obj);

        let (code, status) = t.patch("/api/v1/nodes/x", "{}");
        assert_eq!(code, 404);
        let details = json!({"name": "x", "kind": "nodes"});
        assert_eq!(
            (status["message"].as_str(), &status["details"]),
            (Some("nodes \"x\" not found"), &details)
        );
    }

    #[test]
    fn label_selectors_filter_lists_and_watches() {
        let t = Env::new();
        let svc = |name: &str, labels: Value| json!({"metadata": {"name": name, "namespace": "web", "labels": labels}});
        t.api.apply("services", svc("plain", json!({"app": "web"})));
        t.api.apply(
            "services",
            svc(
                "headless",
                json!({"app": "web", "service.kubernetes.io/headless": ""}),
            ),
        );
        t.api.apply("services", svc("db", json!({"app": "db"})));
        let selector = "%21service.kubernetes.io%2Fheadless%2C%21service.kubernetes.io%2Fservice-proxy-name,app%3Dweb";
        let (_, list) = t.get(&format!("/api/v1/services?labelSelector={selector}"));
        let names: Vec<&str> = list["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["metadata"]["name"].as_str())
            .collect();
        assert_eq!(names, ["plain"]);
        let (_, list) = t.get("/api/v1/namespaces/web/services?labelSelector=app%21%3Dweb");
        assert_eq!(list["items"][0]["metadata"]["name"], "db");
        assert_eq!(
            t.get("/api/v1/services?labelSelector=app+in+%28web%29").0,
            400
        );

        let target = format!("/api/v1/services?watch=1&resourceVersion=3&labelSelector={selector}");
        let mut watch = t.send("GET", &target, "", "");
        t.api.apply("services", svc("other", json!({"app": "db"})));
        t.api.apply("services", svc("db", json!({"app": "web"})));
        t.api.apply("services", svc("plain", json!({"app": "db"})));
        let seen: Vec<(String, String)> = (0..2)
            .map(|_| watch.next())
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or_default().into(),
                    e["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                )
            })
            .collect();
        // Entering the selector reads as ADDED, leaving it as DELETED, as on a real server.
        assert_eq!(
            seen,
            [
                ("ADDED".into(), "db".into()),
                ("DELETED".into(), "plain".into())
            ]
        );
    }

    #[test]
    fn requests_are_recorded_with_their_rbac_verb() {
        let t = Env::new();
        t.api.apply(
            "endpointslices",
            json!({"metadata": {"name": "s1", "namespace": "web"}}),
        );
        let slices = "/apis/discovery.k8s.io/v1/endpointslices";
        assert_eq!(t.get(&format!("{slices}?limit=500")).0, 200);
        drop(t.send(
            "GET",
            &format!("{slices}?watch=1&resourceVersion=1"),
            "",
            "",
        ));
        assert_eq!(
            t.get("/apis/discovery.k8s.io/v1/namespaces/web/endpointslices/s1")
                .0,
            200
        );
        assert_eq!(
            t.get("/apis/discovery.k8s.io/v1beta1/endpointslices").0,
            404
        );
        assert_eq!(t.get("/api/v1/namespaces/web/nodes/n1").0, 404);
        t.patch("/api/v1/nodes/n1", "{}");
        assert!(t
            .api
            .wait_for_request(|r| r.method == "PATCH", Duration::from_secs(1)));
        let seen: Vec<_> = t
            .api
            .requests()
            .iter()
            .map(Request::verb_and_resource)
            .collect();
        let rbac = |g: &str, r: &str, v: &str| Some((g.to_string(), r.to_string(), v.to_string()));
        let group = "discovery.k8s.io";
        let slices = |verb| rbac(group, "endpointslices", verb);
        let want = [
            slices("list"),
            slices("watch"),
            slices("get"),
            slices("list"),
            rbac("", "nodes", "get"),
            rbac("", "nodes", "patch"),
        ];
        assert_eq!(seen, want);
        let req = |method: &str, path: &str| Request {
            method: method.into(),
            path: path.into(),
            query: String::new(),
        };
        assert_eq!(
            req("PUT", "/api/v1/namespaces/a/services/b").verb_and_resource(),
            rbac("", "services", "update")
        );
        assert_eq!(
            req("POST", "/api/v1/namespaces/a/pods").verb_and_resource(),
            rbac("", "pods", "create")
        );
        assert_eq!(
            req("DELETE", "/api/v1/nodes/n").verb_and_resource(),
            rbac("", "nodes", "delete")
        );
        assert_eq!(req("GET", "/version").verb_and_resource(), None);
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1]});
        merge_patch(
            &mut doc,
            &json!({"a": "z", "c": {"f": null}, "l": [2], "n": {"x": 1}}),
        );
        assert_eq!(
            doc,
            json!({"a": "z", "c": {"d": "e"}, "l": [2], "n": {"x": 1}})
        );
        assert_eq!(now_rfc3339().len(), "2024-01-01T00:00:00Z".len());
    }
}
