//! The health check node ports of LoadBalancer Services with `externalTrafficPolicy:
//! Local` (`spec.healthCheckNodePort`), as kube-proxy serves them: a cloud load balancer
//! asks each node, and sends traffic only to nodes that have a local endpoint. Any path
//! answers 200 while this node has one, 503 otherwise, with kube-proxy's JSON.
//!
//! Which ports and what they answer is decided by the Service proxy (pure); this only
//! keeps one listener per port, on every address of the node.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hyper::StatusCode;

use crate::health::{http_server, Server};

/// What one health check port answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// (namespace, name) of the Service.
    pub service: (String, String),
    /// Its ready endpoints on this node.
    pub local_endpoints: usize,
}

/// kube-proxy's answer: 200 with local endpoints, else 503.
pub fn answer(check: Option<&Check>) -> (StatusCode, String) {
    let Some(c) = check else {
        return (StatusCode::NOT_FOUND, "no such health check\n".into());
    };
    let status = if c.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "service": {"namespace": c.service.0, "name": c.service.1},
        "localEndpoints": c.local_endpoints,
        "serviceProxyHealthy": true,
    });
    (status, format!("{body}\n"))
}

#[derive(Default)]
pub struct HealthChecks {
    checks: Arc<Mutex<BTreeMap<u16, Check>>>,
    servers: BTreeMap<u16, Server>,
}

impl HealthChecks {
    /// Serves exactly `want`; returns the ports it could not listen on, and why.
    pub fn sync(&mut self, want: BTreeMap<u16, Check>) -> Vec<String> {
        let mut errors = Vec::new();
        self.servers.retain(|port, _| want.contains_key(port));
        for port in want.keys() {
            if self.servers.contains_key(port) {
                continue;
            }
            let checks = self.checks.clone();
            let port = *port;
            let answer = Arc::new(move |_: &str| {
                let checks = checks.lock().map(|c| c.get(&port).cloned()).ok().flatten();
                answer(checks.as_ref())
            });
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            match http_server(addr, "podnet-hc", answer) {
                Ok((_, server)) => {
                    self.servers.insert(port, server);
                }
                Err(e) => errors.push(format!(
                    "health check node port {port} of Service {}/{}: {e}",
                    want[&port].service.0, want[&port].service.1
                )),
            }
        }
        if let Ok(mut checks) = self.checks.lock() {
            *checks = want;
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_with_a_local_endpoint() {
        let mut c = Check {
            service: ("default".into(), "web".into()),
            local_endpoints: 2,
        };
        let (status, body) = answer(Some(&c));
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["localEndpoints"], 2);
        assert_eq!(v["service"]["name"], "web");
        c.local_endpoints = 0;
        assert_eq!(answer(Some(&c)).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer(None).0, StatusCode::NOT_FOUND);
    }
}
