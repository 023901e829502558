//! Feeds a subscriber on a replica that does not own its session: events
//! come from the session's bus channel into the subscriber's queue.
//!
//! Events at or below the join point are in the subscriber's replay. A
//! broken bus or a skipped `seq` closes the queue as
//! [`CloseReason::Resume`], so the client resumes from its cursor. A
//! deletion notice closes it as [`CloseReason::Deleted`]. If the owner dies
//! mid-generation, this replica takes the session over (the first replica
//! that needs it does), and its events keep arriving on the bus.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use sluice_backends::bus::{BusMessage, BusReceiver};
use sluice_backends::log::EncodedEvent;
use sluice_protocol::{Event, EventBody};

use crate::cluster::{Cluster, DELETED_NOTICE};
use crate::metrics::Metrics;
use crate::registry::{Lookup, SessionRegistry};
use crate::subscriber::{CloseReason, SubscriberQueue};

/// How often the pump checks that someone still runs the generation it
/// watches.
const OWNER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The session a pump follows, and what it needs to take it over.
pub(crate) struct Followed {
    /// The subscriber's user, who owns the session.
    pub user_id: String,
    /// The session.
    pub session_id: String,
    /// Who holds its lease.
    pub cluster: Arc<Cluster>,
    /// Where to ask for it, to take it over.
    pub registry: Addr<SessionRegistry>,
    /// `sluice_remote_resyncs_total`.
    pub metrics: Metrics,
}

/// Runs until the queue closes or the bus ends. `last` is the join point's
/// `seq`, `generating` whether a generation ran then.
pub(crate) async fn run(
    mut rx: BusReceiver,
    queue: Arc<SubscriberQueue>,
    mut last: u64,
    mut generating: bool,
    followed: Followed,
) {
    let Followed {
        user_id,
        session_id,
        cluster,
        registry,
        metrics,
    } = followed;
    let resync = |queue: &SubscriberQueue| {
        metrics.remote_resyncs_total.inc();
        queue.close(CloseReason::Resume);
    };
    let mut check = tokio::time::interval(OWNER_CHECK_INTERVAL);
    loop {
        tokio::select! {
            message = rx.recv() => {
                let payload = match message {
                    Some(BusMessage::Payload(payload)) => payload,
                    Some(BusMessage::Reconnected) | None => return resync(&queue),
                };
                for line in payload.lines() {
                    if line == DELETED_NOTICE {
                        return queue.close(CloseReason::Deleted);
                    }
                    let event: Event = match serde_json::from_str(line) {
                        Ok(event) => event,
                        Err(e) => {
                            tracing::warn!(session_id, error = %e, "malformed event on the bus");
                            return resync(&queue);
                        }
                    };
                    if event.seq <= last {
                        continue;
                    }
                    if event.seq > last + 1 {
                        return resync(&queue);
                    }
                    last = event.seq;
                    match event.body {
                        EventBody::GenerationStart { .. } => generating = true,
                        EventBody::GenerationEnd { .. } => generating = false,
                        _ => {}
                    }
                    let event = Arc::new(EncodedEvent { event, json: line.into() });
                    if !queue.push(&event) {
                        return;
                    }
                }
            }
            _ = check.tick() => {
                if queue.is_closed() {
                    return;
                }
                if !generating {
                    continue;
                }
                if let Ok(None) = cluster.leases().owner(&session_id).await {
                    // Nobody runs the generation any more: take it over here;
                    // its events arrive on the bus like any owner's.
                    let lookup = Lookup {
                        user_id: user_id.clone(),
                        session_id: session_id.clone(),
                        local_only: false,
                        retired: None,
                    };
                    if let Ok(Err(e)) = registry.send(lookup).await {
                        tracing::debug!(session_id, error = %e, "takeover attempt failed");
                    }
                }
            }
        }
    }
}
