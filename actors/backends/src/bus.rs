//! The bus between replicas: fire-and-forget messages on named channels.
//!
//! The owner of a session publishes its events on the session's channel
//! after they are in the event log, so subscribers on other replicas see them
//! live; replicas also talk to each other on per-replica channels (see
//! the session layer's cluster).
//!
//! Contract for implementations (the conformance suite below holds every
//! implementation to it):
//! - `subscribe` returns once the subscription is active: every message
//!   published on the channel after it returns is delivered to the receiver,
//!   in publication order, unless the connection breaks, which the receiver
//!   learns as [`BusMessage::Reconnected`] (messages may have been missed).
//! - `publish` returns how many replicas' subscriptions received the message
//!   (0: nobody listens on that channel now).
//! - Dropping a [`BusReceiver`] ends its subscription.

pub mod memory;
pub mod redis;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::BackendError;

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusMessage {
    /// A message published on the channel.
    Payload(String),
    /// The bus connection broke and came back: messages may have been missed.
    Reconnected,
}

/// Publish and subscribe on named channels.
pub trait Bus: Send + Sync + 'static {
    /// Publishes `payload` on `channel`; the number of subscribed replicas
    /// (connections) that received it.
    fn publish(
        &self,
        channel: &str,
        payload: String,
    ) -> BoxFuture<'static, Result<usize, BackendError>>;

    /// Subscribes to `channel`; active once the future resolves.
    fn subscribe(&self, channel: &str) -> BoxFuture<'static, Result<BusReceiver, BackendError>>;
}

/// One subscription. Dropping it unsubscribes.
pub struct BusReceiver {
    rx: mpsc::UnboundedReceiver<BusMessage>,
    _guard: Box<dyn Send + Sync>,
}

impl BusReceiver {
    /// A receiver reading `rx`; `guard` is dropped with it (and unsubscribes).
    pub fn new(rx: mpsc::UnboundedReceiver<BusMessage>, guard: Box<dyn Send + Sync>) -> Self {
        Self { rx, _guard: guard }
    }

    /// The next message; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<BusMessage> {
        self.rx.recv().await
    }
}

/// The conformance suite every [`Bus`] must pass. `make` returns two handles
/// on the same bus, as two replicas would hold.
#[cfg(test)]
pub(crate) mod conformance {
    use std::time::Duration;

    use super::*;

    async fn next(rx: &mut BusReceiver) -> BusMessage {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a message within 5 s")
            .expect("the bus is alive")
    }

    async fn nothing(rx: &mut BusReceiver) {
        let got = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
        assert!(got.is_err(), "unexpected message: {got:?}");
    }

    pub async fn run<B: Bus>(make: impl Fn() -> (B, B)) {
        let (a, b) = make();
        assert_eq!(a.publish("c", "before".into()).await.unwrap(), 0);
        let mut on_b = b.subscribe("c").await.unwrap();
        let mut on_b2 = b.subscribe("c").await.unwrap();
        let mut other = b.subscribe("other").await.unwrap();
        let mut on_a = a.subscribe("c").await.unwrap();
        // Two replicas listen (b's two receivers share one subscription).
        assert_eq!(a.publish("c", "1".into()).await.unwrap(), 2);
        for i in 2..=100 {
            a.publish("c", i.to_string()).await.unwrap();
        }
        for rx in [&mut on_b, &mut on_b2, &mut on_a] {
            for i in 1..=100 {
                assert_eq!(next(rx).await, BusMessage::Payload(i.to_string()));
            }
        }
        nothing(&mut other).await;

        // Dropping a receiver unsubscribes it; others on the channel stay.
        drop(on_b);
        b.publish("c", "x".into()).await.unwrap();
        assert_eq!(next(&mut on_b2).await, BusMessage::Payload("x".into()));
        assert_eq!(next(&mut on_a).await, BusMessage::Payload("x".into()));
        drop(on_b2);
        drop(on_a);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while a.publish("c", "y".into()).await.unwrap() != 0 {
            assert!(std::time::Instant::now() < deadline, "never unsubscribed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Subscribing again right after works.
        let mut again = b.subscribe("c").await.unwrap();
        assert_eq!(a.publish("c", "z".into()).await.unwrap(), 1);
        assert_eq!(next(&mut again).await, BusMessage::Payload("z".into()));
    }
}
