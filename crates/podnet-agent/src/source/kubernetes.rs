//! The Kubernetes API server as a source: kube-rs watchers for Nodes, Services and
//! EndpointSlices, on a small runtime of their own, feed the same [`ClusterView`] as the
//! lab. A watcher relists on `410 Gone` and reconnects with backoff by itself; a relist
//! replaces what it lists but marks only what really changed, so the agent redoes nothing
//! it does not need to. While the API server is unreachable the view, and so the
//! dataplane, stays as it is.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Config};
use podnet_model::k8s_openapi::api::core::v1::{Node, Service};
use podnet_model::k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{receive, ClusterView, Dirty, Key, Source, SourceError};

/// Every (API group, resource, verb) the agent calls. The DaemonSet's ClusterRole must
/// grant exactly these (a test checks the manifest against this list, and another that
/// the agent calls nothing else).
pub const API_CALLS: &[(&str, &str, &[&str])] = &[
    ("", "nodes", &["list", "watch", "patch"]),
    ("", "services", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
];

/// Services another proxy serves (kube-proxy skips them too).
const SERVICE_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name";
/// Slices that belong to a Service (the only ones the proxy reads).
const SLICE_SELECTOR: &str = "kubernetes.io/service-name";
/// The same API error is logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(30);
/// How long publishing an annotation may take.
const PATCH_TIMEOUT: Duration = Duration::from_secs(10);

enum Msg {
    Node(Box<Event<Node>>),
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
    Error(String),
}

/// Objects of one kind being relisted (between `Init` and `InitDone`).
struct Relist<K> {
    items: Option<Vec<K>>,
    synced: bool,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Relist {
            items: None,
            synced: false,
        }
    }
}

impl<K> Relist<K> {
    /// Follows one event; returns the objects of a finished relist.
    fn follow(&mut self, ev: Event<K>) -> Step<K> {
        match ev {
            Event::Init => {
                self.items = Some(Vec::new());
                Step::None
            }
            Event::InitApply(k) => {
                self.items.get_or_insert_with(Vec::new).push(k);
                Step::None
            }
            Event::InitDone => {
                self.synced = true;
                Step::Replace(self.items.take().unwrap_or_default())
            }
            Event::Apply(k) => Step::Put(k),
            Event::Delete(k) => Step::Delete(k),
        }
    }
}

enum Step<K> {
    None,
    Put(K),
    Delete(K),
    Replace(Vec<K>),
}

pub struct KubeSource {
    // Owns the watcher tasks: dropping the source stops them.
    runtime: tokio::runtime::Runtime,
    /// One config per API server address to try, in turn.
    endpoints: Vec<Config>,
    /// Whether the addresses came from `apiServers` (else the in-cluster config or a
    /// kubeconfig named one).
    configured: bool,
    current: usize,
    client: Client,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    watch_services: bool,
    tx: Sender<Msg>,
    events: Option<Receiver<Msg>>,
    /// Since when every answer from the current API server was an error.
    failing_since: Option<Instant>,
    nodes: Relist<Node>,
    services: Relist<Service>,
    slices: Relist<EndpointSlice>,
    view: ClusterView,
    reported_synced: bool,
    last_error: Option<(String, Instant)>,
}

/// How long the API server in use may fail before the next address is tried.
const FAILOVER_AFTER: Duration = Duration::from_secs(3);

impl KubeSource {
    /// Connects with `kubeconfig`, or else the in-cluster config (the pod's service
    /// account, `KUBERNETES_SERVICE_HOST`/`PORT`), or else `$KUBECONFIG`/`~/.kube/config`.
    /// `api_servers`, when given, replace the address that config names (its credentials
    /// stay) and are tried in turn, moving on while one fails. Without `services` the
    /// agent watches no Services or EndpointSlices (kube-proxy serves them).
    pub fn connect(
        kubeconfig: Option<&Path>,
        api_servers: &[String],
        services: bool,
    ) -> Result<KubeSource, SourceError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("podnet-kube")
            .enable_all()
            .build()
            .map_err(|e| SourceError(format!("starting the Kubernetes client's runtime: {e}")))?;
        let endpoints = endpoints(&runtime, kubeconfig, api_servers)?;
        let (tx, events) = channel();
        let client = client_for(&runtime, &endpoints[0])?;
        let mut source = KubeSource {
            runtime,
            endpoints,
            configured: !api_servers.is_empty(),
            current: 0,
            client,
            watchers: Vec::new(),
            watch_services: services,
            tx,
            events: Some(events),
            failing_since: None,
            nodes: Relist::default(),
            services: Relist {
                items: None,
                synced: !services,
            },
            slices: Relist {
                items: None,
                synced: !services,
            },
            view: ClusterView::default(),
            reported_synced: false,
            last_error: None,
        };
        source.start_watchers();
        Ok(source)
    }

    /// Removes `keys` from `node`'s annotations (a merge patch with nulls), through the
    /// first of the API servers that answers.
    pub fn remove_node_annotations(
        kubeconfig: Option<&Path>,
        api_servers: &[String],
        node: &str,
        keys: &[&str],
    ) -> Result<(), SourceError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SourceError(format!("starting the Kubernetes client's runtime: {e}")))?;
        let patch = json!({"metadata": {"annotations": keys.iter().map(|k| (k.to_string(), serde_json::Value::Null)).collect::<serde_json::Map<_, _>>()}});
        let mut errors = Vec::new();
        for config in endpoints(&runtime, kubeconfig, api_servers)? {
            let client = client_for(&runtime, &config)?;
            let api: Api<Node> = Api::all(client);
            let result = runtime.block_on(async {
                tokio::time::timeout(
                    PATCH_TIMEOUT,
                    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await
            });
            match result {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => errors.push(format!("{}: {e}", config.cluster_url)),
                Err(_) => errors.push(format!(
                    "{}: no answer within {PATCH_TIMEOUT:?}",
                    config.cluster_url
                )),
            }
        }
        Err(SourceError(format!(
            "removing podnet's annotations from node {node}: {}",
            errors.join("; ")
        )))
    }

    fn server(&self) -> String {
        self.endpoints[self.current].cluster_url.to_string()
    }

    fn start_watchers(&mut self) {
        for w in self.watchers.drain(..) {
            w.abort();
        }
        let _entered = self.runtime.enter();
        let client = &self.client;
        self.watchers.push(spawn_watch(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            "nodes",
            self.tx.clone(),
            |e| Msg::Node(Box::new(e)),
        ));
        if self.watch_services {
            self.watchers.push(spawn_watch(
                Api::<Service>::all(client.clone()),
                watcher::Config::default().labels(SERVICE_SELECTOR),
                "services",
                self.tx.clone(),
                |e| Msg::Service(Box::new(e)),
            ));
            self.watchers.push(spawn_watch(
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default().labels(SLICE_SELECTOR),
                "endpointslices",
                self.tx.clone(),
                |e| Msg::Slice(Box::new(e)),
            ));
        }
    }

    /// Moves on to the next API server address once the one in use has failed for
    /// [`FAILOVER_AFTER`].
    fn fail_over(&mut self) {
        let failing = self
            .failing_since
            .is_some_and(|t| t.elapsed() >= FAILOVER_AFTER);
        if !failing || self.endpoints.len() < 2 {
            return;
        }
        let from = self.server();
        let next = (self.current + 1) % self.endpoints.len();
        match client_for(&self.runtime, &self.endpoints[next]) {
            Ok(client) => {
                self.current = next;
                self.client = client;
                tracing::warn!(
                    "API server {from} does not answer; trying {}",
                    self.server()
                );
                self.failing_since = None;
                self.start_watchers();
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// What to do when no API server has answered yet.
    fn advice(&self) -> String {
        if self.configured {
            let all: Vec<String> = self
                .endpoints
                .iter()
                .map(|c| c.cluster_url.to_string())
                .collect();
            format!(
                "; apiServers lists {}: check that one of them is an API server this node reaches",
                all.join(", ")
            )
        } else {
            format!(
                "; with kube-proxy removed, the in-cluster address {} (the `kubernetes` Service's ClusterIP) answers only once podnet proxies Services, which needs the API first: set apiServers in the agent's config (the podnet-config ConfigMap) to the API servers' own addresses, e.g. apiServers: [\"https://192.168.1.10:6443\"]",
                self.server()
            )
        }
    }

    fn synced(&self) -> bool {
        self.nodes.synced && self.services.synced && self.slices.synced
    }

    /// Applies one message; `true` if the view changed.
    fn handle(&mut self, msg: Msg) -> bool {
        // A watcher announces every (re)list with `Init` before it asks: only what the
        // server sent back shows it answers.
        match &msg {
            Msg::Error(_) => {
                self.failing_since.get_or_insert_with(Instant::now);
            }
            Msg::Node(ev) if matches!(**ev, Event::Init) => {}
            Msg::Service(ev) if matches!(**ev, Event::Init) => {}
            Msg::Slice(ev) if matches!(**ev, Event::Init) => {}
            _ => self.failing_since = None,
        }
        let view = &mut self.view;
        match msg {
            Msg::Node(ev) => match self.nodes.follow(*ev) {
                Step::None => false,
                Step::Put(n) => view.put_node(n),
                Step::Delete(n) => view.remove_node(&name_of(&n.metadata)),
                Step::Replace(all) => {
                    let all = all.into_iter().map(|n| (name_of(&n.metadata), n)).collect();
                    let have = view.nodes.keys().cloned().collect();
                    replace(have, all, |name, n| match n {
                        Some(n) => view.put_node(n),
                        None => view.remove_node(&name),
                    })
                }
            },
            Msg::Service(ev) => match self.services.follow(*ev) {
                Step::None => false,
                Step::Put(s) => view.put_service(key_of(&s.metadata), Some(s)),
                Step::Delete(s) => view.put_service(key_of(&s.metadata), None),
                Step::Replace(all) => {
                    let all = all.into_iter().map(|s| (key_of(&s.metadata), s)).collect();
                    let have = view.services.keys().cloned().collect();
                    replace(have, all, |k, s| view.put_service(k, s))
                }
            },
            Msg::Slice(ev) => match self.slices.follow(*ev) {
                Step::None => false,
                Step::Put(s) => view.put_slice(key_of(&s.metadata), Some(s)),
                Step::Delete(s) => view.put_slice(key_of(&s.metadata), None),
                Step::Replace(all) => {
                    let all = all.into_iter().map(|s| (key_of(&s.metadata), s)).collect();
                    let have = view.slices.keys().cloned().collect();
                    replace(have, all, |k, s| view.put_slice(k, s))
                }
            },
            Msg::Error(e) => {
                let e = format!("{e} (API server {})", self.server());
                let repeat = self
                    .last_error
                    .as_ref()
                    .is_some_and(|(last, at)| *last == e && at.elapsed() < ERROR_LOG_EVERY);
                if !repeat && self.synced() {
                    tracing::warn!(
                        "Kubernetes API: {e}; keeping the dataplane as it is and retrying"
                    );
                }
                if !repeat {
                    self.last_error = Some((e, Instant::now()));
                }
                false
            }
        }
    }
}

/// Replaces the objects of one kind with a fresh list: those the view `have`s that the
/// list lacks are removed, the others recorded; `put` says whether each changed the view.
fn replace<K: Ord, V>(
    have: Vec<K>,
    all: BTreeMap<K, V>,
    mut put: impl FnMut(K, Option<V>) -> bool,
) -> bool {
    let mut changed = false;
    for k in have.into_iter().filter(|k| !all.contains_key(k)) {
        changed |= put(k, None);
    }
    for (k, v) in all {
        changed |= put(k, Some(v));
    }
    changed
}

fn name_of(m: &podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

fn key_of(m: &podnet_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (m.namespace.clone().unwrap_or_default(), name_of(m))
}

/// The API server configs to try: the one `kubeconfig` (or the in-cluster config, or
/// `$KUBECONFIG`) names, or one per `api_servers` address with its credentials.
fn endpoints(
    runtime: &tokio::runtime::Runtime,
    kubeconfig: Option<&Path>,
    api_servers: &[String],
) -> Result<Vec<Config>, SourceError> {
    let base = runtime.block_on(async {
        match kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| SourceError(format!("kubeconfig {}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| SourceError(format!("kubeconfig {}: {e}", path.display())))
            }
            None => Config::infer().await.map_err(|e| {
                SourceError(format!(
                    "no Kubernetes API configuration ({e}); run in a pod with a service account, or pass --kubeconfig"
                ))
            }),
        }
    })?;
    if api_servers.is_empty() {
        return Ok(vec![base]);
    }
    api_servers
        .iter()
        .map(|url| {
            let uri = url.parse().map_err(|e| {
                SourceError(format!(
                    "apiServers: {url:?} is not a URL ({e}); write it as https://192.168.1.10:6443"
                ))
            })?;
            let mut c = base.clone();
            c.cluster_url = uri;
            Ok(c)
        })
        .collect()
}

/// Runs one watcher on the current runtime, forwarding its events (and its errors, which
/// it retries after a backoff) to the agent's thread.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    tx: Sender<Msg>,
    wrap: fn(Event<K>) -> Msg,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let stream = watcher::watcher(api, config).default_backoff();
    tokio::spawn(forward(stream, what, tx, wrap))
}

/// A client for `config`; it starts a task on `runtime`.
fn client_for(runtime: &tokio::runtime::Runtime, config: &Config) -> Result<Client, SourceError> {
    let _entered = runtime.enter();
    Client::try_from(config.clone()).map_err(|e| {
        SourceError(format!(
            "building the Kubernetes client for {}: {e}",
            config.cluster_url
        ))
    })
}

async fn forward<K>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    what: &'static str,
    tx: Sender<Msg>,
    wrap: fn(Event<K>) -> Msg,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        let msg = match item {
            Ok(ev) => wrap(ev),
            Err(e) => Msg::Error(format!("watching {what}: {e}")),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

impl Source for KubeSource {
    fn wait(&mut self, timeout: Duration) -> Result<bool, SourceError> {
        let stopped = || SourceError("the Kubernetes watchers stopped".into());
        let rx = self.events.take().ok_or_else(stopped)?;
        let changed = receive(&rx, timeout, |msg| Ok(self.handle(msg)))?.ok_or_else(stopped)?;
        self.events = Some(rx);
        self.fail_over();
        if !self.synced() {
            let why = self
                .last_error
                .as_ref()
                .map(|(e, _)| format!(": {e}{}", self.advice()))
                .unwrap_or_default();
            let kinds = if self.watch_services {
                "nodes, services and endpointslices"
            } else {
                "nodes"
            };
            return Err(SourceError(format!(
                "waiting for the first list of {kinds} from the API server{why}"
            )));
        }
        if !self.reported_synced {
            self.reported_synced = true;
            self.view.dirty.all = true;
            return Ok(true);
        }
        Ok(changed)
    }

    fn view(&self) -> &ClusterView {
        &self.view
    }

    fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.view.dirty)
    }

    fn annotate_node(&mut self, node: &str, key: &str, value: &str) -> Result<(), SourceError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"metadata": {"annotations": {key: value}}});
        let result = self.runtime.block_on(async {
            tokio::time::timeout(
                PATCH_TIMEOUT,
                api.patch(node, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await
        });
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(SourceError(format!("annotating node {node} ({key}): {e}"))),
            Err(_) => Err(SourceError(format!(
                "annotating node {node} ({key}): no answer from the API server within {PATCH_TIMEOUT:?}"
            ))),
        }
    }
}
