//! The embedded bus: channels in this process. With the embedded backends
//! there is one replica, so the bus only carries a session's events between
//! its actor and this process's subscribers; several handles from
//! [`MemoryBus::connect`] behave like replicas sharing one bus (tests use that).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{Bus, BusMessage, BusReceiver};
use crate::BackendError;

/// A handle on an in-process bus.
#[derive(Clone, Default)]
pub struct MemoryBus {
    hub: Arc<Hub>,
    /// Which "replica" this handle is, for `publish`'s count.
    node: u64,
}

#[derive(Default)]
struct Hub {
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    channels: HashMap<String, Vec<Subscriber>>,
    next_id: u64,
}

struct Subscriber {
    id: u64,
    node: u64,
    tx: mpsc::UnboundedSender<BusMessage>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes its subscriber when the receiver is dropped.
struct Unsubscribe {
    hub: Arc<Hub>,
    channel: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        if let Some(subscribers) = state.channels.get_mut(&self.channel) {
            subscribers.retain(|s| s.id != self.id);
            if subscribers.is_empty() {
                state.channels.remove(&self.channel);
            }
        }
    }
}

impl MemoryBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Another handle on the same bus, counted as another replica.
    pub fn connect(&self) -> Self {
        let node = {
            let mut state = self.hub.lock();
            state.next_id += 1;
            state.next_id
        };
        Self {
            hub: self.hub.clone(),
            node,
        }
    }
}

impl Bus for MemoryBus {
    fn publish(
        &self,
        channel: &str,
        payload: String,
    ) -> BoxFuture<'static, Result<usize, BackendError>> {
        let mut nodes = Vec::new();
        if let Some(subscribers) = self.hub.lock().channels.get(channel) {
            for s in subscribers {
                if s.tx.send(BusMessage::Payload(payload.clone())).is_ok()
                    && !nodes.contains(&s.node)
                {
                    nodes.push(s.node);
                }
            }
        }
        Box::pin(futures::future::ready(Ok(nodes.len())))
    }

    fn subscribe(&self, channel: &str) -> BoxFuture<'static, Result<BusReceiver, BackendError>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut state = self.hub.lock();
            state.next_id += 1;
            let id = state.next_id;
            state
                .channels
                .entry(channel.to_owned())
                .or_default()
                .push(Subscriber {
                    id,
                    node: self.node,
                    tx,
                });
            id
        };
        let guard = Unsubscribe {
            hub: self.hub.clone(),
            channel: channel.to_owned(),
            id,
        };
        Box::pin(futures::future::ready(Ok(BusReceiver::new(
            rx,
            Box::new(guard),
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_bus_conforms() {
        crate::bus::conformance::run(|| {
            let bus = MemoryBus::new();
            (bus.connect(), bus.connect())
        })
        .await;
    }
}
