//! The in-process MQTT client the rest of the node uses: publish (retained or not) and
//! subscribe, without a socket. Publishes enter through the same [`Intake`] as network
//! clients' (retained set first, then the router); the dispatcher (`fanout.rs`) hands each
//! subscription the messages matching its filter, once each.
//!
//! Everything here is QoS 0 inside the process: a subscription that keeps reading loses
//! nothing; one that stops reading has messages dropped past its buffer, counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::envelope::{Origin, Publication};
use crate::error::{Error, Result};
use crate::fanout::Subscribers;
use crate::intake::Intake;
use crate::metrics::BrokerMetrics;

/// Messages a subscription buffers; past that, live messages are dropped (counted in
/// `dropped{reason="queue_full"}`) until it reads again.
const SUBSCRIPTION_BUFFER: usize = 1024;

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
    /// Where publishes enter; also hands out subscription keys.
    intake: Arc<Intake>,
    /// Counts messages in and out of the in-process client.
    metrics: BrokerMetrics,
    /// Where subscriptions are registered for the dispatcher.
    subscribers: Arc<Subscribers>,
    /// Cancelled at shutdown: no new subscriptions.
    token: CancellationToken,
}

/// A stream of messages matching one filter. Dropping it unsubscribes.
pub struct Subscription {
    filter: String,
    /// Retained messages matching the filter when it was subscribed, delivered first.
    retained: VecDeque<Message>,
    /// Live messages, from the dispatcher (`fanout.rs`).
    rx: mpsc::Receiver<Message>,
    /// Live messages dropped because the buffer was full.
    dropped: Arc<AtomicU64>,
    key: u64,
    subscribers: Arc<Subscribers>,
}

impl Subscription {
    /// The next message, or `None` once the broker has shut down. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Message> {
        match self.retained.pop_front() {
            Some(message) => Some(message),
            None => self.rx.recv().await,
        }
    }

    /// The next message if one is ready now, without waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        match self.retained.pop_front() {
            Some(message) => Some(message),
            None => self.rx.try_recv().ok(),
        }
    }

    /// Drops the retained messages not yet received, for a subscriber that reads the
    /// retained set another way ([`BrokerClient::retained`]) and wants only live messages.
    pub fn discard_retained(&mut self) {
        self.retained.clear();
    }

    /// The filter this subscription was made with.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// How many live messages were dropped so far because this subscription's buffer was
    /// full (each also counted in `roost_mqtt_dropped_total{reason="queue_full"}`).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.subscribers.remove_local(self.key);
    }
}

impl BrokerClient {
    /// The node's client over `intake`. Called once by `Broker::start`.
    pub(crate) fn new(
        intake: Arc<Intake>,
        subscribers: Arc<Subscribers>,
        metrics: BrokerMetrics,
        token: CancellationToken,
    ) -> Self {
        BrokerClient {
            inner: Arc::new(Inner {
                intake,
                metrics,
                subscribers,
                token,
            }),
        }
    }

    /// Publishes `payload` on `topic` at QoS 0, retained if asked. A retained message (or a
    /// retained empty payload, which deletes one) is durable before it is routed. Resolves once
    /// the message is queued for the router; waits if the queue is full.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        retain: bool,
    ) -> Result<()> {
        self.publish_with(topic, payload.into(), retain, true).await
    }

    /// [`BrokerClient::publish`] for a caller that keeps the message durable in a store of
    /// its own and publishes it again after a crash: a retained message is in the retained
    /// set (and served) once this resolves, but not waited on to reach the broker's file.
    pub async fn publish_unsynced(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        retain: bool,
    ) -> Result<()> {
        self.publish_with(topic, payload.into(), retain, false)
            .await
    }

    async fn publish_with(
        &self,
        topic: &str,
        payload: Bytes,
        retain: bool,
        durable: bool,
    ) -> Result<()> {
        validate_topic(topic)?;
        let intake = &self.inner.intake;
        let message = Publication {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload,
            properties: Bytes::from_static(&[0]),
            qos: 0,
            retain,
            origin: Origin::Node,
            sequence: 0,
            expires_at: None,
            stamp: 0,
            writer: None,
        };
        if durable {
            intake.route(message).await?;
        } else {
            intake.route_queued(message).await?;
        }
        self.inner
            .metrics
            .messages_received
            .with_label_values(&["local", "0"])
            .inc();
        Ok(())
    }

    /// The retained messages whose topics match `filter` now, in topic order.
    pub fn retained(&self, filter: &str) -> Result<Vec<Message>> {
        validate_filter(filter)?;
        Ok(self
            .inner
            .intake
            .retained_for(filter, 0, None)
            .into_iter()
            .map(|o| Message {
                topic: String::from_utf8_lossy(&o.message.topic).into_owned(),
                payload: o.message.payload,
            })
            .collect())
    }

    /// Subscribes to `filter` (MQTT wildcards allowed).
    ///
    /// The retained messages matching the filter are delivered first, then live messages.
    pub async fn subscribe(&self, filter: &str) -> Result<Subscription> {
        self.subscribe_with(filter, SUBSCRIPTION_BUFFER).await
    }

    /// [`BrokerClient::subscribe`] with room for `buffer` live messages (at least 1) before
    /// any is dropped, for a subscriber that takes bursts.
    pub async fn subscribe_with(&self, filter: &str, buffer: usize) -> Result<Subscription> {
        validate_filter(filter)?;
        if self.inner.token.is_cancelled() {
            return Err(Error::Closed);
        }
        let intake = &self.inner.intake;
        let key = intake.next_key();
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        self.inner
            .subscribers
            .add_local(key, filter.to_owned(), tx, dropped.clone(), || {
                intake.routed()
            });
        // Taken once the dispatcher offers this subscription live messages: a retained message
        // published meanwhile is in this snapshot or arrives live.
        let retained: VecDeque<Message> = intake
            .retained_for(filter, 0, None)
            .into_iter()
            .map(|o| Message {
                topic: String::from_utf8_lossy(&o.message.topic).into_owned(),
                payload: o.message.payload,
            })
            .collect();
        let sent = self
            .inner
            .metrics
            .messages_sent
            .with_label_values(&["local", "0"]);
        sent.inc_by(retained.len() as u64);
        Ok(Subscription {
            filter: filter.to_owned(),
            retained,
            rx,
            dropped,
            key,
            subscribers: self.inner.subscribers.clone(),
        })
    }
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
