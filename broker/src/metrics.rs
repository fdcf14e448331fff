//! The broker's Prometheus metrics. The gateway owns the registry and passes it in once at
//! start; the edge and the in-process client update these handles directly.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

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
    /// PUBLISH packets that entered the broker, by source (`network` or `local`).
    pub messages_received: IntCounterVec,
    /// PUBLISH packets the broker delivered, by destination (`network` or `local`).
    pub messages_sent: IntCounterVec,
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
                    "PUBLISH packets received by the broker, by source",
                ),
                &["source"],
            )?,
            messages_sent: IntCounterVec::new(
                Opts::new(
                    "roost_mqtt_messages_sent_total",
                    "PUBLISH packets delivered by the broker, by destination",
                ),
                &["destination"],
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
        // Touch the label values so every series is exported from the start, at zero.
        for outcome in ["published", "delayed", "cancelled"] {
            m.wills.with_label_values(&[outcome]);
        }
        for source in ["network", "local"] {
            m.messages_received.with_label_values(&[source]);
            m.messages_sent.with_label_values(&[source]);
        }
        Ok(m)
    }
}
