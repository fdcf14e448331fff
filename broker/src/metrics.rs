//! The broker's Prometheus metrics. The gateway owns the registry and passes it in once at
//! start; the edge and the in-process client update these handles directly.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// QoS label values.
const QOS: [&str; 3] = ["0", "1", "2"];

/// Why a message was not delivered to a session (`roost_mqtt_messages_dropped_total`).
const DROP_REASONS: [&str; 6] = [
    // A QoS 0 message for a session whose client is away (QoS 0 is not queued).
    "offline_qos0",
    // The session's queue was full: QoS 0 under overload, or QoS 1/2 for a client away.
    "queue_full",
    // Larger than the client's Maximum Packet Size (MQTT 5).
    "packet_too_large",
    // Its Message Expiry Interval ran out while queued.
    "expired",
    // The authorization hook refused the publish.
    "not_authorized",
    // The router carried something that is not an envelope (a bug).
    "not_an_envelope",
];

/// Why a subscription was refused (`roost_mqtt_subscriptions_refused_total`).
const REFUSAL_REASONS: [&str; 2] = [
    // Not a valid topic filter (or a malformed shared subscription).
    "invalid_filter",
    // The authorization hook refused the filter.
    "not_authorized",
];

/// Counters and gauges of the embedded broker, cheap to clone.
#[derive(Clone)]
pub struct BrokerMetrics {
    /// Network clients connected now.
    pub connections: IntGauge,
    /// Network connections accepted since start.
    pub connections_accepted: IntCounter,
    /// Connections refused or cut, by reason.
    pub connections_rejected: IntCounterVec,
    /// Protocol violations by network clients, by reason.
    pub protocol_errors: IntCounterVec,
    /// PUBLISH packets that entered the broker, by source (`network` or `local`) and QoS.
    pub messages_received: IntCounterVec,
    /// PUBLISH packets the broker delivered, by destination (`network` or `local`) and QoS.
    pub messages_sent: IntCounterVec,
    /// Topic and payload bytes of the PUBLISH packets received from network clients, by QoS.
    pub publish_bytes_received: IntCounterVec,
    /// Bytes of the PUBLISH packets delivered to network clients, by QoS.
    pub publish_bytes_sent: IntCounterVec,
    /// MQTT sessions kept now (connected or waiting for their client).
    pub sessions: IntGauge,
    /// Sessions ended because their Session Expiry Interval ran out.
    pub sessions_expired: IntCounter,
    /// Messages not delivered to a session, by reason.
    pub dropped: IntCounterVec,
    /// Filters of SUBSCRIBE packets refused in the SUBACK, by reason.
    pub subscriptions_refused: IntCounterVec,
    /// Bytes read from network clients.
    pub bytes_received: IntCounter,
    /// Bytes written to network clients.
    pub bytes_sent: IntCounter,
    /// Retained messages the broker holds.
    pub retained: IntGauge,
    /// Bytes of the retained messages the broker holds (as stored: MQTT 5 packets).
    pub retained_bytes: IntGauge,
    /// Retained changes that could not be written to disk.
    pub retained_persist_errors: IntCounter,
    /// Wills, by outcome: `published`, `delayed` (waiting out an MQTT 5 Will Delay),
    /// `cancelled` (the client came back within the delay).
    pub wills: IntCounterVec,
}

impl BrokerMetrics {
    /// Creates the metrics and registers them; called once per process.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = BrokerMetrics {
            connections: IntGauge::new(
                "roost_mqtt_connections",
                "MQTT network clients connected now",
            )?,
            connections_accepted: IntCounter::new(
                "roost_mqtt_connections_accepted_total",
                "MQTT network connections accepted",
            )?,
            connections_rejected: IntCounterVec::new(
                Opts::new(
                    "roost_mqtt_connections_rejected_total",
                    "MQTT connections refused or cut by the edge, by reason",
                ),
                &["reason"],
            )?,
            protocol_errors: IntCounterVec::new(
                Opts::new(
                    "roost_mqtt_protocol_errors_total",
                    "MQTT protocol violations by network clients, by reason",
                ),
                &["reason"],
            )?,
            messages_received: IntCounterVec::new(
                Opts::new(
                    "roost_mqtt_messages_received_total",
                    "PUBLISH packets received by the broker, by source and QoS",
                ),
                &["source", "qos"],
            )?,
            messages_sent: IntCounterVec::new(
                Opts::new(
                    "roost_mqtt_messages_sent_total",
                    "PUBLISH packets delivered by the broker, by destination and QoS",
                ),
                &["destination", "qos"],
            )?,
            publish_bytes_received: IntCounterVec::new(
                Opts::new(
                    "roost_mqtt_publish_bytes_received_total",
                    "Topic and payload bytes of PUBLISH packets from network clients, by QoS",
                ),
                &["qos"],
            )?,
            publish_bytes_sent: IntCounterVec::new(
                Opts::new(
                    "roost_mqtt_publish_bytes_sent_total",
                    "Bytes of PUBLISH packets delivered to network clients, by QoS",
                ),
                &["qos"],
            )?,
            sessions: IntGauge::new(
                "roost_mqtt_sessions",
                "MQTT sessions kept, connected or waiting for their client",
            )?,
            sessions_expired: IntCounter::new(
                "roost_mqtt_sessions_expired_total",
                "MQTT sessions ended by their Session Expiry Interval",
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "roost_mqtt_messages_dropped_total",
                    "Messages not delivered to a session, by reason",
                ),
                &["reason"],
            )?,
            subscriptions_refused: IntCounterVec::new(
                Opts::new(
                    "roost_mqtt_subscriptions_refused_total",
                    "Subscription filters refused in a SUBACK, by reason",
                ),
                &["reason"],
            )?,
            bytes_received: IntCounter::new(
                "roost_mqtt_bytes_received_total",
                "Bytes read from MQTT network clients",
            )?,
            bytes_sent: IntCounter::new(
                "roost_mqtt_bytes_sent_total",
                "Bytes written to MQTT network clients",
            )?,
            retained: IntGauge::new(
                "roost_mqtt_retained_messages",
                "Retained messages held by the broker",
            )?,
            retained_bytes: IntGauge::new(
                "roost_mqtt_retained_bytes",
                "Bytes of the retained messages held by the broker",
            )?,
            wills: IntCounterVec::new(
                Opts::new(
                    "roost_mqtt_wills_total",
                    "Wills handled by the edge, by outcome",
                ),
                &["outcome"],
            )?,
            retained_persist_errors: IntCounter::new(
                "roost_mqtt_retained_persist_errors_total",
                "Retained messages that could not be written to disk",
            )?,
        };
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.connections_accepted.clone()))?;
        registry.register(Box::new(m.connections_rejected.clone()))?;
        registry.register(Box::new(m.protocol_errors.clone()))?;
        registry.register(Box::new(m.messages_received.clone()))?;
        registry.register(Box::new(m.messages_sent.clone()))?;
        registry.register(Box::new(m.bytes_received.clone()))?;
        registry.register(Box::new(m.bytes_sent.clone()))?;
        registry.register(Box::new(m.retained.clone()))?;
        registry.register(Box::new(m.retained_persist_errors.clone()))?;
        registry.register(Box::new(m.retained_bytes.clone()))?;
        registry.register(Box::new(m.wills.clone()))?;
        registry.register(Box::new(m.publish_bytes_received.clone()))?;
        registry.register(Box::new(m.publish_bytes_sent.clone()))?;
        registry.register(Box::new(m.sessions.clone()))?;
        registry.register(Box::new(m.sessions_expired.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.subscriptions_refused.clone()))?;
        // Touch the label values so every series is exported from the start, at zero.
        for outcome in ["published", "delayed", "cancelled"] {
            m.wills.with_label_values(&[outcome]);
        }
        for qos in QOS {
            for source in ["network", "local"] {
                m.messages_received.with_label_values(&[source, qos]);
                m.messages_sent.with_label_values(&[source, qos]);
            }
            m.publish_bytes_received.with_label_values(&[qos]);
            m.publish_bytes_sent.with_label_values(&[qos]);
        }
        for reason in DROP_REASONS {
            m.dropped.with_label_values(&[reason]);
        }
        for reason in REFUSAL_REASONS {
            m.subscriptions_refused.with_label_values(&[reason]);
        }
        Ok(m)
    }

    /// Counts a PUBLISH from a network client of `bytes` topic and payload bytes.
    pub(crate) fn count_received(&self, qos: u8, bytes: usize) {
        let qos = QOS[usize::from(qos.min(2))];
        self.messages_received
            .with_label_values(&["network", qos])
            .inc();
        self.publish_bytes_received
            .with_label_values(&[qos])
            .inc_by(bytes as u64);
    }

    /// Counts a PUBLISH of `bytes` bytes delivered to a network client.
    pub(crate) fn count_sent(&self, qos: u8, bytes: usize) {
        let qos = QOS[usize::from(qos.min(2))];
        self.messages_sent
            .with_label_values(&["network", qos])
            .inc();
        self.publish_bytes_sent
            .with_label_values(&[qos])
            .inc_by(bytes as u64);
    }
}
