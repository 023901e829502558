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
//! pub/sub does there.

use std::collections::HashMap;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::ClusterHash;
use futures::future::BoxFuture;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot};

use super::{Bus, BusMessage, BusReceiver};
use crate::redis::redis_error;
use crate::{Backend, BackendError};

/// Longest wait for Redis to confirm a subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

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
/// has processed it. fred resolves a subscription once it is written; a
/// PING on the same connection (on a cluster: to the node owning the
/// channel's slot) is answered only after Redis has processed it, so the
/// channel is live when this returns.
async fn subscribe(subscriber: &SubscriberClient, channel: &str) -> Result<(), fred::error::Error> {
    if subscriber.is_clustered() {
        subscriber.ssubscribe(channel).await?;
        let slot = fred::util::redis_keyslot(channel.as_bytes());
        let on_its_node = Options {
            cluster_hash: Some(ClusterHash::Custom(slot)),
            ..Options::default()
        };
        subscriber
            .with_options(&on_its_node)
            .ping::<Value>(None)
            .await
            .map(drop)
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

async fn run(subscriber: SubscriberClient, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    let mut channels: HashMap<String, Vec<(u64, mpsc::UnboundedSender<BusMessage>)>> =
        HashMap::new();
    let mut next_id = 0u64;
    let tell_all = |channels: &HashMap<String, Vec<(u64, mpsc::UnboundedSender<BusMessage>)>>| {
        for receivers in channels.values() {
            for (_, tx) in receivers {
                let _ = tx.send(BusMessage::Reconnected);
            }
        }
    };
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => break,
                Some(Command::Subscribe { channel, tx, done }) => {
                    let first = !channels.contains_key(&channel);
                    if first {
                        let subscribed =
                            tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe(&subscriber, &channel))
                                .await;
                        let result = match subscribed {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(err(e)),
                            Err(_) => Err(unavailable("subscribe timed out")),
                        };
                        if let Err(e) = result {
                            // fred tracks the channel even if the server did
                            // not confirm; forget it so a retry starts clean.
                            let _ = unsubscribe(&subscriber, &channel).await;
                            let _ = done.send(Err(e));
                            continue;
                        }
                    }
                    next_id += 1;
                    channels.entry(channel).or_default().push((next_id, tx));
                    let _ = done.send(Ok(next_id));
                }
                Some(Command::Unsubscribe { channel, id }) => {
                    let Some(receivers) = channels.get_mut(&channel) else { continue };
                    receivers.retain(|(i, _)| *i != id);
                    if receivers.is_empty() {
                        channels.remove(&channel);
                        if let Err(e) = unsubscribe(&subscriber, &channel).await {
                            tracing::debug!(channel, error = %e, "unsubscribe failed");
                        }
                    }
                }
            },
            message = messages.recv() => match message {
                Ok(message) => {
                    let Some(receivers) = channels.get_mut(&*message.channel) else { continue };
                    let Some(payload) = message.value.as_string() else { continue };
                    receivers.retain(|(_, tx)| tx.send(BusMessage::Payload(payload.clone())).is_ok());
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "bus messages dropped locally; subscribers will resume");
                    tell_all(&channels);
                }
                Err(RecvError::Closed) => break,
            },
            reconnect = reconnects.recv() => match reconnect {
                Ok(_) | Err(RecvError::Lagged(_)) => tell_all(&channels),
                Err(RecvError::Closed) => break,
            },
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
