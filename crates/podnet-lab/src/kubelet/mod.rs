//! The lab's kubelets: every scheduled pod gets a worker thread that runs it on its node
//! (see [`pod`]); deleting a pod stops its worker, which tears the pod down and then
//! removes the object.

pub mod cni;
pub mod pod;
pub mod probe;
pub mod process;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use podnet_model::k8s_openapi::api::core::v1::Pod;
use podnet_model::Object;

use crate::supervisor::Shared;

struct Worker {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

#[derive(Default)]
pub struct Kubelet {
    workers: HashMap<String, Worker>,
}

impl Kubelet {
    /// Starts workers for newly scheduled pods and stops those of deleted ones.
    pub fn sync(&mut self, shared: &Arc<Shared>, pods: &[Pod]) {
        self.workers.retain(|_, w| !w.handle.is_finished());
        for pod in pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let scheduled = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some();
            let deleting = pod.metadata.deletion_timestamp.is_some();
            match (self.workers.get(&uid), deleting) {
                (Some(w), true) => w.stop.store(true, Ordering::Relaxed),
                (None, true) => {
                    // Never started on a node: nothing to tear down.
                    let r = Object::Pod(pod.clone()).reference();
                    shared.with_store(|s| {
                        if s.get(&r)
                            .is_some_and(|o| o.meta().uid.as_deref() == Some(uid.as_str()))
                        {
                            s.remove(&r);
                        }
                    });
                }
                (None, false) if scheduled => {
                    let stop = Arc::new(AtomicBool::new(false));
                    let (sh, p, st) = (shared.clone(), pod.clone(), stop.clone());
                    let handle = std::thread::spawn(move || pod::run(sh, p, st));
                    self.workers.insert(uid, Worker { stop, handle });
                }
                _ => {}
            }
        }
    }

    /// Stops every pod and waits until all are torn down.
    pub fn stop_all(&mut self) {
        for w in self.workers.values() {
            w.stop.store(true, Ordering::Relaxed);
        }
        for (_, w) in self.workers.drain() {
            let _ = w.handle.join();
        }
    }
}
