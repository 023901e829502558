//! The bus on Redis pub/sub, through fred.
//!
//! Publishing uses the shared command client. Subscriptions use one
//! dedicated subscriber connection per replica, owned by a task that keeps
//! channel → local receivers: it issues `SUBSCRIBE`/`UNSUBSCRIBE` in order
//! (so an unsubscribe never overtakes a later subscribe to the same channel),
//! dispatches messages, and tells every receiver [`BusMessage::Reconnected`]
//! when the connection came back or messages were dropped, because pub/sub
//! does not replay what was published meanwhile. fred re-subscribes the
//! tracked channels after a reconnect (`manage_subscriptions`).
//!
//! On a Redis Cluster the bus is sharded pub/sub (`SPUBLISH`,
//! `SSUBSCRIBE`): a channel lives on the node that owns its hash slot, so
//! a session's events (`sluice:{<id>}:events`) stay on its keys' node and
//! the cluster does not copy every message to every node, as classic
//! pub/sub does there. When a slot moves (resharding, a failover), Redis
//! drops the shard subscriptions on the node it left without a message fred
//! passes on; the bus checks the slots' owners every [`SLOT_CHECK`],
//! subscribes moved channels on their new node and tells their receivers to
//! resume (the event log has what they missed).

use std::collections::HashMap;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::Server;
use futures::future::BoxFuture;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot};

use super::{Bus, BusMessage, BusReceiver};
use crate::redis::redis_error;
use crate::{Backend, BackendError};

/// Longest wait for Redis to confirm a subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often, on a Redis Cluster, the bus checks whether a subscribed
/// channel's slot has moved to another node.
const SLOT_CHECK: Duration = Duration::from_secs(5);

/// The Redis bus. Cloning shares the connections.
#[derive(Clone)]
pub struct RedisBus {
    client: Client,
    commands: mpsc::UnboundedSender<Command>,
}

enum Command {
    Subscribe {
        channel: String,
        tx: mpsc::UnboundedSender<BusMessage>,
        done: oneshot::Sender<Result<u64, BackendError>>,
    },
    Unsubscribe {
        channel: String,
        id: u64,
    },
}

fn err(e: fred::error::Error) -> BackendError {
    redis_error(Backend::Bus, e)
}

fn unavailable(message: &str) -> BackendError {
    BackendError::unavailable(Backend::Bus, message)
}

/// Unsubscribes its receiver when dropped.
struct Unsubscribe {
    commands: mpsc::UnboundedSender<Command>,
    channel: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unsubscribe {
            channel: std::mem::take(&mut self.channel),
            id: self.id,
        });
    }
}

impl RedisBus {
    /// A bus publishing with `client` and subscribing with `subscriber`
    /// (both already connected). Spawns the subscriber's task.
    pub fn new(client: Client, subscriber: SubscriberClient) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        subscriber.manage_subscriptions();
        tokio::spawn(run(subscriber, rx));
        Self { client, commands }
    }
}

/// Subscribes to `channel` (sharded on a cluster) and waits until Redis
/// has processed it, so the channel is live when this returns. fred
/// resolves `SUBSCRIBE` once it is written, so a PING follows on the same
/// connection (answered only after the subscription); it waits for
/// `SSUBSCRIBE`'s own reply (to follow a MOVED), so that needs none.
async fn subscribe(subscriber: &SubscriberClient, channel: &str) -> Result<(), fred::error::Error> {
    if subscriber.is_clustered() {
        subscriber.ssubscribe(channel).await
    } else {
        subscriber.subscribe(channel).await?;
        subscriber.ping::<Value>(None).await.map(drop)
    }
}

async fn unsubscribe(
    subscriber: &SubscriberClient,
    channel: &str,
) -> Result<(), fred::error::Error> {
    if subscriber.is_clustered() {
        subscriber.sunsubscribe(channel).await
    } else {
        subscriber.unsubscribe(channel).await
    }
}

/// The cluster node that owns `channel`'s slot, as the subscriber last
/// learned (`None` on one Redis, or before it knows).
fn node_of(subscriber: &SubscriberClient, channel: &str) -> Option<Server> {
    let slot = fred::util::redis_keyslot(channel.as_bytes());
    subscriber.cached_cluster_state()?.get_server(slot).cloned()
}

type Receivers = Vec<(u64, mpsc::UnboundedSender<BusMessage>)>;

/// The subscriber task's state.
#[derive(Default)]
struct Channels {
    /// Each subscribed channel's local receivers.
    receivers: HashMap<String, Receivers>,
    /// On a cluster, the node each channel was subscribed on.
    nodes: HashMap<String, Option<Server>>,
    next_id: u64,
}

impl Channels {
    /// Tells every receiver of `channel` that messages may have been missed.
    fn tell(&self, channel: &str) {
        for (_, tx) in self.receivers.get(channel).into_iter().flatten() {
            let _ = tx.send(BusMessage::Reconnected);
        }
    }

    fn tell_all(&self) {
        for channel in self.receivers.keys() {
            self.tell(channel);
        }
    }

    async fn subscribe(
        &mut self,
        subscriber: &SubscriberClient,
        channel: String,
        tx: mpsc::UnboundedSender<BusMessage>,
    ) -> Result<u64, BackendError> {
        if !self.receivers.contains_key(&channel) {
            let subscribed =
                tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(subscriber, &channel)).await;
            let result = match subscribed {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(err(e)),
                Err(_) => Err(unavailable("subscribe timed out")),
            };
            if let Err(e) = result {
                // fred tracks the channel even if the server did not
                // confirm; forget it so a retry starts clean.
                let _ = unsubscribe(subscriber, &channel).await;
                return Err(e);
            }
            self.nodes
                .insert(channel.clone(), node_of(subscriber, &channel));
        }
        self.next_id += 1;
        self.receivers
            .entry(channel)
            .or_default()
            .push((self.next_id, tx));
        Ok(self.next_id)
    }

    async fn unsubscribe(&mut self, subscriber: &SubscriberClient, channel: String, id: u64) {
        let Some(receivers) = self.receivers.get_mut(&channel) else {
            return;
        };
        receivers.retain(|(i, _)| *i != id);
        if receivers.is_empty() {
            self.receivers.remove(&channel);
            self.nodes.remove(&channel);
            if let Err(e) = unsubscribe(subscriber, &channel).await {
                tracing::debug!(channel, error = %e, "unsubscribe failed");
            }
        }
    }

    fn deliver(&mut self, channel: &str, payload: String) {
        if let Some(receivers) = self.receivers.get_mut(channel) {
            receivers.retain(|(_, tx)| tx.send(BusMessage::Payload(payload.clone())).is_ok());
        }
    }

    /// On a cluster: when a channel's slot has moved to another node
    /// (resharding, a failover), Redis drops its shard subscriptions there
    /// with a message fred does not pass on. Such channels are subscribed
    /// again, on their new node, and their receivers told to resume.
    async fn follow_moved_slots(&mut self, subscriber: &SubscriberClient) {
        if self.nodes.is_empty() {
            return;
        }
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscriber.sync_cluster()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return tracing::debug!(error = %e, "cannot read the cluster's slots"),
            Err(_) => return tracing::debug!("reading the cluster's slots timed out"),
        }
        let moved: Vec<String> = self
            .nodes
            .iter()
            .filter(|(channel, node)| **node != node_of(subscriber, channel))
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in moved {
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(subscriber, &channel)).await {
                Ok(Ok(())) => {
                    tracing::info!(
                        channel,
                        "a bus channel's slot moved; subscribed on its new node"
                    );
                    self.nodes
                        .insert(channel.clone(), node_of(subscriber, &channel));
                    self.tell(&channel);
                }
                // Tried again at the next check: the node it was on stays.
                _ => tracing::warn!(channel, "cannot subscribe on a moved slot's new node yet"),
            }
        }
    }
}

async fn run(subscriber: SubscriberClient, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    let mut channels = Channels::default();
    let clustered = subscriber.is_clustered();
    let mut slot_check = tokio::time::interval(SLOT_CHECK);
    slot_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => break,
                Some(Command::Subscribe { channel, tx, done }) => {
                    let _ = done.send(channels.subscribe(&subscriber, channel, tx).await);
                }
                Some(Command::Unsubscribe { channel, id }) => {
                    channels.unsubscribe(&subscriber, channel, id).await;
                }
            },
            message = messages.recv() => match message {
                Ok(message) => {
                    if let Some(payload) = message.value.as_string() {
                        channels.deliver(&message.channel, payload);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "bus messages dropped locally; subscribers will resume");
                    channels.tell_all();
                }
                Err(RecvError::Closed) => break,
            },
            reconnect = reconnects.recv() => match reconnect {
                Ok(_) | Err(RecvError::Lagged(_)) => channels.tell_all(),
                Err(RecvError::Closed) => break,
            },
            _ = slot_check.tick(), if clustered => channels.follow_moved_slots(&subscriber).await,
        }
    }
}

impl Bus for RedisBus {
    fn publish(
        &self,
        channel: &str,
        payload: String,
    ) -> BoxFuture<'static, Result<usize, BackendError>> {
        let client = self.client.clone();
        let channel = channel.to_owned();
        Box::pin(async move {
            let received: i64 = if client.is_clustered() {
                client.spublish(channel, payload).await
            } else {
                client.publish(channel, payload).await
            }
            .map_err(err)?;
            Ok(received.max(0) as usize)
        })
    }

    fn subscribe(&self, channel: &str) -> BoxFuture<'static, Result<BusReceiver, BackendError>> {
        let commands = self.commands.clone();
        let channel = channel.to_owned();
        Box::pin(async move {
            let (tx, rx) = mpsc::unbounded_channel();
            let (done, ack) = oneshot::channel();
            commands
                .send(Command::Subscribe {
                    channel: channel.clone(),
                    tx,
                    done,
                })
                .map_err(|_| unavailable("bus stopped"))?;
            let id = ack.await.map_err(|_| unavailable("bus stopped"))??;
            let guard = Unsubscribe {
                commands,
                channel,
                id,
            };
            Ok(BusReceiver::new(rx, Box::new(guard)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::RedisConnections;
    use sluice_test_support::redis::TestRedis;

    #[tokio::test]
    async fn redis_bus_conforms() {
        conforms(TestRedis::start()).await;
    }

    /// Sharded pub/sub (SSUBSCRIBE, SPUBLISH) keeps the same contract.
    #[tokio::test]
    async fn redis_bus_conforms_on_a_cluster() {
        conforms(TestRedis::start_cluster(3)).await;
    }

    /// Resharding moves a channel's slot: Redis drops the subscription on
    /// the node it left; the bus subscribes on the new node and tells its
    /// receivers to resume.
    #[tokio::test]
    async fn a_channel_whose_slot_moves_is_followed_to_its_new_node() {
        let server = TestRedis::start_cluster(3);
        let subscriber = RedisConnections::connect(&server.url()).await.unwrap();
        let publisher = RedisConnections::connect(&server.url()).await.unwrap();
        let channel = "sluice:{moving}:events";
        let mut rx = subscriber.bus().subscribe(channel).await.unwrap();
        assert_eq!(
            publisher
                .bus()
                .publish(channel, "before".into())
                .await
                .unwrap(),
            1
        );
        let before = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert_eq!(before, Some(BusMessage::Payload("before".into())));

        let slot = server.slot_of(channel);
        server.move_slot(slot, (server.owner_of(slot) + 1) % 3);
        let told = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("told of the move");
        assert_eq!(told, Some(BusMessage::Reconnected));
        // Listening on the new node: a publish there arrives.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while publisher
            .bus()
            .publish(channel, "after".into())
            .await
            .unwrap_or(0)
            == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "never subscribed on the new node"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert_eq!(after, Some(BusMessage::Payload("after".into())));
    }

    async fn conforms(server: TestRedis) {
        let a = RedisConnections::connect(&server.url()).await.unwrap();
        let b = RedisConnections::connect(&server.url()).await.unwrap();
        crate::bus::conformance::run(|| (a.bus(), b.bus())).await;
    }

    #[tokio::test]
    async fn a_redis_restart_is_reported_and_subscriptions_come_back() {
        let mut server = TestRedis::start();
        let conns = RedisConnections::connect(&server.url()).await.unwrap();
        let bus = conns.bus();
        let mut rx = bus.subscribe("c").await.unwrap();
        server.restart();
        let got = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .unwrap();
        assert_eq!(got, Some(BusMessage::Reconnected));
        // Re-subscribed by itself: a publish after the restart arrives.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while bus.publish("c", "after".into()).await.unwrap_or(0) == 0 {
            assert!(std::time::Instant::now() < deadline, "never re-subscribed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(rx.recv().await, Some(BusMessage::Payload("after".into())));
    }
}
