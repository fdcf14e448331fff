//! The in-process MQTT client the rest of the node uses: publish (retained or not) and
//! subscribe, without a socket. Publishes go through one rumqttd link driven by a thread of
//! its own (rumqttd's link sends can block); each subscription gets a link of its own, so
//! overlapping filters never deliver a message twice to one subscriber.
//!
//! Must not be used for traffic that needs QoS 1/2 or a will; those arrive with the edge's
//! own sessions (docs/broker.md).

use std::sync::Arc;

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Protocol as _, Publish};
use rumqttd::Notification;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::embed::{
    blocking, disconnect, link_error, send_blocking, LinkFactory, INTERNAL_ID_PREFIX,
};
use crate::error::{Error, Result};
use crate::metrics::BrokerMetrics;
use crate::retained::{self, Change, Retained, Stored};

/// Messages a subscription buffers before its link stops draining (backpressure).
const SUBSCRIPTION_BUFFER: usize = 1024;
/// Publishes queued toward the router before `publish` waits.
const PUBLISH_BUFFER: usize = 1024;

/// A message delivered to an in-process subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published on.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
}

/// Handle to the node's in-process MQTT client; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct BrokerClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Feeds the publisher thread.
    publish: mpsc::Sender<Packet>,
    /// Opens the links of new subscriptions.
    links: LinkFactory,
    /// Counts messages in and out of the in-process client.
    metrics: BrokerMetrics,
    /// The durable retained set, for retained publishes made here.
    retained: Retained,
    /// Stops subscription tasks at shutdown.
    token: CancellationToken,
    /// Tracks subscription tasks so shutdown can wait for them.
    tracker: TaskTracker,
}

/// A stream of messages matching one filter. Dropping it unsubscribes.
pub struct Subscription {
    filter: String,
    rx: mpsc::Receiver<Message>,
}

impl Subscription {
    /// The next message, or `None` once the broker has shut down. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The filter this subscription was made with.
    pub fn filter(&self) -> &str {
        &self.filter
    }
}

impl BrokerClient {
    /// Opens the publisher link and starts its thread. Called once by `Broker::start`.
    pub(crate) async fn start(
        links: LinkFactory,
        metrics: BrokerMetrics,
        retained: Retained,
        token: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Self> {
        let factory = links.clone();
        let id = internal_id("publisher");
        let link_id = id.clone();
        let (link_tx, link_rx) = blocking(move || factory(&link_id)).await?;
        let (publish, queue) = mpsc::channel(PUBLISH_BUFFER);
        std::thread::Builder::new()
            .name("roost-publisher".into())
            .spawn(move || publisher(&id, link_tx, queue))
            .map_err(|e| Error::Startup(format!("spawning the publisher thread: {e}")))?;
        // The publisher link subscribes to nothing, but the router may still ask it to
        // reschedule; drain it so it never stalls.
        tracker.spawn(drain(link_rx, token.clone()));
        Ok(BrokerClient {
            inner: Arc::new(Inner {
                publish,
                links,
                metrics,
                retained,
                token,
                tracker,
            }),
        })
    }

    /// Publishes `payload` on `topic` at QoS 0, retained if asked. A retained message (or a
    /// retained empty payload, which deletes one) is durable before it is routed. Resolves once the
    /// message is queued for the router; waits if the queue is full.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        retain: bool,
    ) -> Result<()> {
        validate_topic(topic)?;
        let payload = payload.into();
        if retain && payload.is_empty() {
            self.inner.retained.record(topic, Change::Delete).await;
        } else if retain {
            let stored = Stored {
                qos: 0,
                packet: retained::publish_packet(topic, &payload).into(),
            };
            self.inner.retained.record(topic, Change::Set(stored)).await;
        }
        // rumqttd keeps no retained messages: Roost does (retained.rs).
        let publish = Publish::new(Bytes::copy_from_slice(topic.as_bytes()), payload, false);
        self.route(Packet::Publish(publish, None)).await
    }

    /// Hands a publish to the publisher thread and counts it.
    async fn route(&self, publish: Packet) -> Result<()> {
        self.inner
            .publish
            .send(publish)
            .await
            .map_err(|_| Error::Closed)?;
        self.inner
            .metrics
            .messages_received
            .with_label_values(&["local"])
            .inc();
        Ok(())
    }

    /// Publishes an MQTT 5 PUBLISH packet as given (properties kept), at QoS 0 toward the
    /// router. Used by the edge to fire wills. The caller keeps the retained set in step.
    pub(crate) async fn publish_v5(&self, packet: &[u8]) -> Result<()> {
        let mut buf = bytes::BytesMut::from(packet);
        let publish = match rumqttd::protocol::v5::V5.read_mut(&mut buf, usize::MAX) {
            Ok(publish @ Packet::Publish(..)) => publish,
            _ => return Err(Error::BadPacket("PUBLISH")),
        };
        self.route(publish).await
    }

    /// Subscribes to `filter` (MQTT wildcards allowed) on a link of its own.
    ///
    /// The retained messages matching the filter are delivered first, then live messages.
    pub async fn subscribe(&self, filter: &str) -> Result<Subscription> {
        validate_filter(filter)?;
        if self.inner.token.is_cancelled() {
            return Err(Error::Closed);
        }
        let id = internal_id(&format!("sub-{}", next_link_number()));
        let links = self.inner.links.clone();
        let owned_filter = filter.to_owned();
        let link_id = id.clone();
        let (link_tx, link_rx) = blocking(move || {
            let (mut tx, rx) = links(&link_id)?;
            tx.subscribe(owned_filter)
                .map_err(|e| link_error(&link_id, e))?;
            Ok((tx, rx))
        })
        .await?;
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let retained = self
            .inner
            .retained
            .matching(filter)
            .into_iter()
            .filter_map(|(topic, stored)| {
                let payload = Bytes::copy_from_slice(stored.payload()?);
                Some(Message { topic, payload })
            })
            .collect();
        let task = SubscriptionTask {
            id,
            retained,
            link_tx,
            link_rx,
            deliver: tx,
            metrics: self.inner.metrics.clone(),
            token: self.inner.token.clone(),
        };
        self.inner.tracker.spawn(task.run());
        Ok(Subscription {
            filter: filter.to_owned(),
            rx,
        })
    }
}

/// Moves queued publishes into the router; ends when every client handle is dropped.
fn publisher(id: &str, mut link: LinkTx, mut queue: mpsc::Receiver<Packet>) {
    while let Some(packet) = queue.blocking_recv() {
        if let Err(e) = send_blocking(id, &mut link, packet) {
            tracing::error!(error = %e, "in-process publishes stop");
            return;
        }
    }
}

/// Keeps a link that receives nothing of interest from stalling the router.
async fn drain(mut link: LinkRx, token: CancellationToken) {
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            next = link.next() => match next {
                Ok(Some(Notification::Unschedule)) => {
                    if link.wake().await.is_err() {
                        return;
                    }
                }
                Ok(Some(Notification::Disconnect(..))) => {
                    tracing::error!("the router dropped the node's publisher link; in-process publishes are lost");
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            },
        }
    }
}

/// Forwards one link's messages to its `Subscription`, after the retained ones.
struct SubscriptionTask {
    id: String,
    /// Retained messages matching the filter when it was subscribed, delivered first.
    retained: Vec<Message>,
    link_tx: LinkTx,
    link_rx: LinkRx,
    deliver: mpsc::Sender<Message>,
    metrics: BrokerMetrics,
    token: CancellationToken,
}

impl SubscriptionTask {
    async fn run(mut self) {
        let delivered = self.metrics.messages_sent.with_label_values(&["local"]);
        for message in std::mem::take(&mut self.retained) {
            delivered.inc();
            if self.deliver.send(message).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::select! {
                () = self.token.cancelled() => return,
                () = self.deliver.closed() => break,
                next = self.link_rx.next() => next,
            };
            match next {
                Ok(Some(Notification::Forward(forward))) => {
                    let topic = String::from_utf8_lossy(&forward.publish.topic).into_owned();
                    let message = Message {
                        topic,
                        payload: forward.publish.payload,
                    };
                    delivered.inc();
                    if self.deliver.send(message).await.is_err() {
                        break;
                    }
                }
                Ok(Some(Notification::Unschedule)) => {
                    if self.link_rx.wake().await.is_err() {
                        return;
                    }
                }
                Ok(Some(Notification::Disconnect(..))) => {
                    tracing::error!(link = %self.id, "the router dropped an in-process subscription");
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(link = %self.id, error = %e, "in-process subscription ended");
                    return;
                }
            }
        }
        // The subscriber went away: free the router's connection slot.
        let mut link_tx = self.link_tx;
        let id = self.id;
        if let Err(e) = blocking(move || send_blocking(&id, &mut link_tx, disconnect())).await {
            tracing::debug!(error = %e, "closing an in-process subscription link");
        }
    }
}

/// A client id for one of the node's links, under the prefix the edge reserves.
fn internal_id(name: &str) -> String {
    format!("{INTERNAL_ID_PREFIX}{}-{name}", std::process::id())
}

fn next_link_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Checks an MQTT topic name (for publishing).
pub fn validate_topic(topic: &str) -> Result<()> {
    check_common("topic", topic)?;
    if topic.contains(['+', '#']) {
        return Err(invalid(
            "topic",
            topic,
            "wildcards are not allowed in a topic name",
        ));
    }
    Ok(())
}

/// Checks an MQTT topic filter (for subscribing).
pub fn validate_filter(filter: &str) -> Result<()> {
    check_common("filter", filter)?;
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(invalid(
                "filter",
                filter,
                "'#' must be a whole level and the last one",
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(invalid("filter", filter, "'+' must be a whole level"));
        }
    }
    Ok(())
}

/// The rules topic names and filters share: not empty, at most 65535 bytes, no NUL.
fn check_common(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(invalid(what, value, "it is empty"));
    }
    if value.len() > usize::from(u16::MAX) {
        return Err(invalid(what, value, "it is longer than 65535 bytes"));
    }
    if value.contains('\0') {
        return Err(invalid(what, value, "it contains NUL"));
    }
    Ok(())
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> Error {
    Error::InvalidTopic {
        what,
        value: value.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules() {
        assert!(validate_topic("roost/home/nodes/a/status").is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic("a/+/b").is_err());
        assert!(validate_topic("a/#").is_err());
        assert!(validate_topic("a\0b").is_err());
    }

    #[test]
    fn filter_rules() {
        for ok in ["#", "a/#", "+/b", "a/+/c", "+", "a/b"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "#/a", "a/+b"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }
}
