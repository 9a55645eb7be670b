//! The lab's supervisor as a source: list, then watch; on a broken or expired watch, list
//! again. A reader thread turns the watch stream into messages, so bursts are batched.

use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use podnet_lab::api::WatchEvent;
use podnet_lab::{Client, Layout};
use podnet_model::{Kind, Object};

use super::{receive, ClusterView, Dirty, Source, SourceError};

const KINDS: [Kind; 3] = [Kind::Node, Kind::Service, Kind::EndpointSlice];

pub struct LabSource {
    client: Client,
    view: ClusterView,
    events: Option<Receiver<Result<WatchEvent, String>>>,
}

impl LabSource {
    pub fn new(lab: &str) -> Result<LabSource, SourceError> {
        let layout = Layout::new(lab).map_err(SourceError)?;
        Ok(LabSource {
            client: Client::new(&layout),
            view: ClusterView::default(),
            events: None,
        })
    }

    fn relist(&mut self) -> Result<(), SourceError> {
        let (rv, objects) = self
            .client
            .list(&KINDS)
            .map_err(|e| SourceError(e.to_string()))?;
        self.view = ClusterView::default();
        for o in objects {
            self.apply(o, false);
        }
        self.view.dirty = Dirty {
            all: true,
            services: Default::default(),
        };
        let mut watch = self
            .client
            .watch(&KINDS, rv)
            .map_err(|e| SourceError(e.to_string()))?;
        let (tx, rx) = channel();
        std::thread::spawn(move || loop {
            let ev = watch.next_event().map_err(|e| e.to_string());
            let stop = ev.is_err() || matches!(ev, Ok(WatchEvent::Gone));
            if tx.send(ev).is_err() || stop {
                return;
            }
        });
        self.events = Some(rx);
        Ok(())
    }

    /// Applies one object (or its removal); `true` if the view changed.
    fn apply(&mut self, o: Object, deleted: bool) -> bool {
        let key = (
            o.meta().namespace.clone().unwrap_or_default(),
            o.name().to_string(),
        );
        match o {
            Object::Node(_) if deleted => self.view.remove_node(&key.1),
            Object::Node(n) => self.view.put_node(n),
            Object::Service(s) => self.view.put_service(key, (!deleted).then_some(s)),
            Object::EndpointSlice(e) => self.view.put_slice(key, (!deleted).then_some(e)),
            _ => false,
        }
    }

    /// Applies one watch message; `Ok(true)` if the view changed.
    fn handle(&mut self, msg: Result<WatchEvent, String>) -> Result<bool, SourceError> {
        let ev = msg.map_err(SourceError)?;
        let (object, deleted) = match ev {
            WatchEvent::Added { object } | WatchEvent::Modified { object } => (object, false),
            WatchEvent::Deleted { object } => (object, true),
            WatchEvent::Bookmark { .. } => return Ok(false),
            WatchEvent::Gone => return Err(SourceError("watch expired (410 Gone)".into())),
        };
        let o = Object::from_json(object).map_err(SourceError)?;
        Ok(self.apply(o, deleted))
    }
}

impl Source for LabSource {
    fn wait(&mut self, timeout: Duration) -> Result<bool, SourceError> {
        let Some(rx) = self.events.take() else {
            // First call, or after a broken watch: a fresh list is a change.
            self.relist()?;
            return Ok(true);
        };
        let Some(changed) = receive(&rx, timeout, |msg| self.handle(msg))? else {
            return Err(SourceError("the watch ended".into()));
        };
        self.events = Some(rx);
        Ok(changed)
    }

    fn view(&self) -> &ClusterView {
        &self.view
    }

    fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.view.dirty)
    }

    fn annotate_node(&mut self, node: &str, key: &str, value: &str) -> Result<(), SourceError> {
        self.client
            .annotate(
                podnet_model::ObjectRef {
                    kind: Kind::Node,
                    namespace: None,
                    name: node.to_string(),
                },
                key,
                value,
            )
            .map_err(|e| SourceError(e.to_string()))
    }
}
