//! The agent's health endpoints, for the kubelet's probes and for people:
//! - `/healthz`: the agent's loop is alive (it went round within [`LIVENESS`]);
//! - `/readyz`: the node's network is configured: the CNI config is written and the last
//!   sync succeeded (which includes repairing what someone else changed in podnet's
//!   nftables table); otherwise 503 and why;
//! - `/metrics`: a few counters and gauges in the Prometheus text format.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::drift::Kind;

/// `/healthz` fails when the loop has not gone round for this long. A full sync of
/// 10,000 Services takes a few seconds; a stuck loop takes forever.
pub const LIVENESS: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the loop's last round.
    last_tick: AtomicU64,
    ready: Mutex<Result<(), String>>,
    /// What works, but not as well as it should (a sysctl podnet could not set).
    warnings: Mutex<Vec<String>>,
    syncs: AtomicU64,
    sync_errors: AtomicU64,
    services: AtomicU64,
    services_ignored: AtomicU64,
    peers: AtomicU64,
    last_sync_micros: AtomicU64,
    drift_checks: AtomicU64,
    last_drift_check_micros: AtomicU64,
    /// Repairs of the nftables table, per [`Kind`] of drift (in [`Kind::ALL`]'s order).
    repairs: [AtomicU64; Kind::ALL.len()],
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            last_tick: AtomicU64::new(0),
            ready: Mutex::new(Err("starting".into())),
            warnings: Mutex::new(Vec::new()),
            syncs: AtomicU64::new(0),
            sync_errors: AtomicU64::new(0),
            services: AtomicU64::new(0),
            services_ignored: AtomicU64::new(0),
            peers: AtomicU64::new(0),
            last_sync_micros: AtomicU64::new(0),
            drift_checks: AtomicU64::new(0),
            last_drift_check_micros: AtomicU64::new(0),
            repairs: Default::default(),
        }
    }
}

impl Health {
    /// The loop went round.
    pub fn tick(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_tick.store(ms, Ordering::Relaxed);
    }

    pub fn set_ready(&self, ready: Result<(), String>) {
        if let Ok(mut r) = self.ready.lock() {
            *r = ready;
        }
    }

    /// Replaces the warnings `/readyz` lists below its verdict.
    pub fn set_warnings(&self, warnings: Vec<String>) {
        if let Ok(mut w) = self.warnings.lock() {
            *w = warnings;
        }
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.lock().map(|w| w.clone()).unwrap_or_default()
    }

    pub fn is_ready(&self) -> Result<(), String> {
        self.ready
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|_| Err("health state poisoned".into()))
    }

    /// Records a dataplane sync and the size of what it served.
    pub fn synced(&self, ok: bool, took: Duration, services: usize, peers: usize) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.sync_errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.last_sync_micros.store(micros, Ordering::Relaxed);
        self.services.store(services as u64, Ordering::Relaxed);
        self.peers.store(peers as u64, Ordering::Relaxed);
    }

    /// How many Services the proxy ignores, wholly or in part (their IPv6 family).
    pub fn set_services_ignored(&self, n: usize) {
        self.services_ignored.store(n as u64, Ordering::Relaxed);
    }

    /// Records a comparison of the nftables table with what the agent committed.
    pub fn drift_checked(&self, took: Duration) {
        self.drift_checks.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.last_drift_check_micros
            .store(micros, Ordering::Relaxed);
    }

    /// Records a repair of the nftables table, of each kind of drift it found.
    pub fn repaired(&self, kinds: &BTreeSet<Kind>) {
        for (kind, counter) in Kind::ALL.iter().zip(&self.repairs) {
            if kinds.contains(kind) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn alive(&self) -> Result<(), String> {
        let now = self.started.elapsed();
        let last = Duration::from_millis(self.last_tick.load(Ordering::Relaxed));
        let idle = now.saturating_sub(last);
        if idle > LIVENESS {
            return Err(format!(
                "the agent's loop has not run for {}s",
                idle.as_secs()
            ));
        }
        Ok(())
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        let ready = u8::from(self.is_ready().is_ok());
        let rows: [(&str, &str, &str, f64); 10] = [
            (
                "podnet_ready",
                "gauge",
                "1 when the node's network is configured",
                f64::from(ready),
            ),
            (
                "podnet_warnings",
                "gauge",
                "things that work, but not as configured (listed on /readyz)",
                self.warnings().len() as f64,
            ),
            (
                "podnet_syncs_total",
                "counter",
                "dataplane syncs",
                self.syncs.load(Ordering::Relaxed) as f64,
            ),
            (
                "podnet_sync_errors_total",
                "counter",
                "dataplane syncs that failed",
                self.sync_errors.load(Ordering::Relaxed) as f64,
            ),
            (
                "podnet_last_sync_seconds",
                "gauge",
                "duration of the last dataplane sync",
                self.last_sync_micros.load(Ordering::Relaxed) as f64 / 1e6,
            ),
            (
                "podnet_services",
                "gauge",
                "Services the proxy serves",
                self.services.load(Ordering::Relaxed) as f64,
            ),
            (
                "podnet_services_ignored",
                "gauge",
                "Services the proxy does not serve, wholly or in part (IPv6 families)",
                self.services_ignored.load(Ordering::Relaxed) as f64,
            ),
            (
                "podnet_peers",
                "gauge",
                "other nodes this node routes to",
                self.peers.load(Ordering::Relaxed) as f64,
            ),
            (
                "podnet_nftables_drift_checks_total",
                "counter",
                "comparisons of the nftables table with what podnet committed",
                self.drift_checks.load(Ordering::Relaxed) as f64,
            ),
            (
                "podnet_nftables_last_drift_check_seconds",
                "gauge",
                "duration of the last comparison of the nftables table",
                self.last_drift_check_micros.load(Ordering::Relaxed) as f64 / 1e6,
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let name = "podnet_nftables_repairs_total";
        let _ = writeln!(
            out,
            "# HELP {name} repairs of changes made to podnet's nftables table behind its back, by what was changed\n# TYPE {name} counter"
        );
        for (kind, counter) in Kind::ALL.iter().zip(&self.repairs) {
            let value = counter.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{kind=\"{}\"}} {value}", kind.label());
        }
        out
    }

    fn answer(&self, path: &str) -> (StatusCode, String) {
        let check = |r: Result<(), String>| match r {
            Ok(()) => (StatusCode::OK, "ok\n".to_string()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        };
        match path {
            "/healthz" | "/livez" => check(self.alive()),
            "/readyz" => {
                let (code, mut body) = check(self.alive().and_then(|()| self.is_ready()));
                for w in self.warnings() {
                    let _ = writeln!(body, "warning: {w}");
                }
                (code, body)
            }
            "/metrics" => (StatusCode::OK, self.metrics()),
            _ => (
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz or /metrics\n".into(),
            ),
        }
    }
}

/// Binds `addr` now (so a taken port is an error at start) and serves the endpoints on a
/// thread of their own.
pub fn serve(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    let (bound, server) = http_server(
        addr,
        "podnet-health",
        Arc::new(move |path: &str| health.answer(path)),
    )?;
    // It serves as long as the agent runs.
    std::mem::forget(server);
    Ok(bound)
}

/// The Service proxy's health, where load balancers look for it (kube-proxy's
/// `--healthz-bind-address`, port 10256): `/healthz` and `/livez` answer 200 once the
/// node's rules are synced and the loop is alive, else 503, with kube-proxy's JSON.
pub fn serve_proxy(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    let (bound, server) = http_server(
        addr,
        "podnet-proxy-health",
        Arc::new(move |path: &str| match path {
            "/healthz" | "/livez" => {
                let ok = health.alive().and_then(|()| health.is_ready()).is_ok();
                let status = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (
                    status,
                    format!("{{\"healthy\":{ok},\"nodeEligible\":true}}\n"),
                )
            }
            _ => (StatusCode::NOT_FOUND, "not found: try /healthz\n".into()),
        }),
    )?;
    std::mem::forget(server);
    Ok(bound)
}

/// What an HTTP server answers for a path: status and body.
pub type Answer = Arc<dyn Fn(&str) -> (StatusCode, String) + Send + Sync>;

/// A running HTTP server; it stops when dropped.
pub struct Server {
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves `answer` on `addr` from a thread of its own (named `name`) until the returned
/// [`Server`] is dropped.
pub fn http_server(
    addr: SocketAddr,
    name: &str,
    answer: Answer,
) -> std::io::Result<(SocketAddr, Server)> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("HTTP server on {bound}: {e}");
                        return;
                    }
                };
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = &mut stopped => return,
                    };
                    let Ok((stream, _)) = accepted else {
                        continue;
                    };
                    let answer = answer.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (status, body) = answer(req.uri().path());
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() = status;
                            async move { Ok::<_, Infallible>(resp) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        })?;
    Ok((bound, Server { _stop: stop }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_once_configured_and_alive() {
        let h = Health::default();
        h.tick();
        assert_eq!(h.answer("/healthz").0, StatusCode::OK);
        let (code, why) = h.answer("/readyz");
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(why, "starting\n");
        h.set_ready(Err("node n1 has no pod CIDR".into()));
        assert_eq!(h.answer("/readyz").1, "node n1 has no pod CIDR\n");
        h.set_ready(Ok(()));
        assert_eq!(h.answer("/readyz").0, StatusCode::OK);
        assert_eq!(h.answer("/nope").0, StatusCode::NOT_FOUND);
        // A warning is said, and does not make the node unready.
        h.set_warnings(vec![
            "sysctl net.bridge.bridge-nf-call-iptables=0: read-only".into(),
        ]);
        assert_eq!(
            h.answer("/readyz"),
            (
                StatusCode::OK,
                "ok\nwarning: sysctl net.bridge.bridge-nf-call-iptables=0: read-only\n".into()
            )
        );
        assert!(h.metrics().contains("podnet_warnings 1\n"));
    }

    #[test]
    fn a_stuck_loop_is_not_alive() {
        let h = Health {
            started: Instant::now() - LIVENESS - Duration::from_secs(5),
            ..Health::default()
        };
        h.set_ready(Ok(()));
        // Ticked at 0 ms since a start more than LIVENESS ago.
        assert_eq!(h.answer("/healthz").0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.answer("/readyz").0, StatusCode::SERVICE_UNAVAILABLE);
        h.tick();
        assert_eq!(h.answer("/healthz").0, StatusCode::OK);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let h = Health::default();
        h.synced(true, Duration::from_millis(12), 3, 2);
        h.synced(false, Duration::from_millis(1), 3, 2);
        let m = h.metrics();
        assert!(
            m.contains("# TYPE podnet_syncs_total counter\npodnet_syncs_total 2\n"),
            "{m}"
        );
        assert!(m.contains("podnet_sync_errors_total 1\n"), "{m}");
        assert!(m.contains("podnet_services 3\n"), "{m}");
        assert!(m.contains("podnet_ready 0\n"), "{m}");
    }

    #[test]
    fn repairs_are_counted_by_kind() {
        let h = Health::default();
        h.repaired(&BTreeSet::from([Kind::Element]));
        h.repaired(&BTreeSet::from([Kind::Rule, Kind::Element]));
        h.drift_checked(Duration::from_millis(3));
        let m = h.metrics();
        assert!(
            m.contains("# TYPE podnet_nftables_repairs_total counter\n"),
            "{m}"
        );
        for (kind, n) in [
            ("element", 2),
            ("rule", 1),
            ("chain", 0),
            ("table", 0),
            ("set", 0),
        ] {
            assert!(
                m.contains(&format!(
                    "podnet_nftables_repairs_total{{kind=\"{kind}\"}} {n}\n"
                )),
                "{kind}: {m}"
            );
        }
        assert!(m.contains("podnet_nftables_drift_checks_total 1\n"), "{m}");
        assert!(
            m.contains("podnet_nftables_last_drift_check_seconds 0.003\n"),
            "{m}"
        );
    }
}
