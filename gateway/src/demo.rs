//! The simulated demo devices of `roost` with no arguments, as plain MQTT topics: a relay
//! (commandable, its state kept in the state store across restarts), a button (pressed by a
//! command) and a temperature sensor (a slow daily-looking curve every 10 s). They exist so a
//! newcomer sees something at once; firmware-bridge takes them over as real simulated GPIO.

use std::f64::consts::TAU;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use roost_broker::{BrokerClient, Subscription};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::NodeId;
use crate::replication::{Replicated, WriteError};
use crate::state::{self, Key, Namespace};
use crate::topics::Topics;

/// How often the temperature sensor reports.
const SENSOR_PERIOD: Duration = Duration::from_secs(10);
/// How long a simulated button press stays ON.
const PRESS_LENGTH: Duration = Duration::from_millis(300);

/// Why the demo devices stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The relay's state could not be read.
    #[error("demo relay state: {0}")]
    Store(#[from] state::Error),
    /// The relay's state could not be written.
    #[error("demo relay state: {0}")]
    Write(#[from] WriteError),
    /// The broker refused a publish or subscription.
    #[error("demo devices: {0}")]
    Broker(#[from] roost_broker::Error),
}

/// The relay's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct RelayState {
    on: bool,
}

/// What a relay command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelayCommand {
    On,
    Off,
    Toggle,
}

impl RelayCommand {
    /// Parses `ON`/`1`/`TRUE`, `OFF`/`0`/`FALSE`, `TOGGLE` (any case, whitespace ignored).
    fn parse(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?.trim();
        match text.to_ascii_uppercase().as_str() {
            "ON" | "1" | "TRUE" => Some(RelayCommand::On),
            "OFF" | "0" | "FALSE" => Some(RelayCommand::Off),
            "TOGGLE" => Some(RelayCommand::Toggle),
            _ => None,
        }
    }

    fn apply(self, was_on: bool) -> bool {
        match self {
            RelayCommand::On => true,
            RelayCommand::Off => false,
            RelayCommand::Toggle => !was_on,
        }
    }
}

/// The demo devices' wiring.
pub struct Demo {
    client: BrokerClient,
    state: Replicated,
    topics: Topics,
    node: NodeId,
    command_errors: IntCounterVec,
}

fn on_off(on: bool) -> &'static str {
    if on {
        "ON"
    } else {
        "OFF"
    }
}

/// The simulated temperature at `t` seconds: 21 °C ± 2.5 over an hour, to one decimal.
fn temperature_at(t: f64) -> f64 {
    let value = 21.0 + 2.5 * (TAU * t / 3600.0).sin();
    (value * 10.0).round() / 10.0
}

impl Demo {
    /// Registers the demo's metric and prepares its topics.
    pub fn new(
        client: BrokerClient,
        state: Replicated,
        topics: Topics,
        node: NodeId,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let command_errors = IntCounterVec::new(
            Opts::new(
                "roost_device_command_errors_total",
                "Device commands rejected as invalid, by device",
            ),
            &["device"],
        )?;
        registry.register(Box::new(command_errors.clone()))?;
        Ok(Demo {
            client,
            state,
            topics,
            node,
            command_errors,
        })
    }

    /// Publishes the devices' initial states and runs them until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) -> Result<(), DemoError> {
        let relay_key = Key::new(Namespace::Devices, format!("{}/demo-relay", self.node))?;
        let mut relay_on = self
            .state
            .store()
            .get::<RelayState>(&relay_key)
            .await?
            .map(|e| e.value.on)
            .unwrap_or(false);
        let relay_state = self.topics.device(&self.node, "demo-relay", "state");
        let button_state = self.topics.device(&self.node, "demo-button", "state");
        let sensor_state = self.topics.device(&self.node, "demo-temperature", "state");
        let mut relay_set = self.subscribe("demo-relay", "set").await?;
        let mut button_press = self.subscribe("demo-button", "press").await?;
        self.client
            .publish(&relay_state, on_off(relay_on), true)
            .await?;
        self.client.publish(&button_state, "OFF", true).await?;
        tracing::info!(relay = %relay_state, button = %button_state, sensor = %sensor_state, "demo devices running");

        let started = tokio::time::Instant::now();
        let mut sensor = tokio::time::interval(SENSOR_PERIOD);
        loop {
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                _ = sensor.tick() => {
                    let value = temperature_at(started.elapsed().as_secs_f64());
                    self.client.publish(&sensor_state, format!("{value:.1}"), true).await?;
                }
                Some(message) = relay_set.recv() => {
                    let Some(command) = RelayCommand::parse(&message.payload) else {
                        self.reject("demo-relay", &message.payload);
                        continue;
                    };
                    let on = command.apply(relay_on);
                    self.state.put(&relay_key, &RelayState { on }).await?;
                    relay_on = on;
                    self.client.publish(&relay_state, on_off(on), true).await?;
                }
                Some(_) = button_press.recv() => {
                    self.client.publish(&button_state, "ON", true).await?;
                    tokio::select! {
                        () = token.cancelled() => return Ok(()),
                        () = tokio::time::sleep(PRESS_LENGTH) => {}
                    }
                    self.client.publish(&button_state, "OFF", true).await?;
                }
            }
        }
    }

    async fn subscribe(&self, device: &str, leaf: &str) -> Result<Subscription, DemoError> {
        let topic = self.topics.device(&self.node, device, leaf);
        Ok(self.client.subscribe(&topic).await?)
    }

    fn reject(&self, device: &str, payload: &[u8]) {
        let shown = String::from_utf8_lossy(&payload[..payload.len().min(64)]);
        tracing::warn!(device, payload = %shown, "ignoring invalid command: expected ON, OFF, TOGGLE, 1, 0, true or false");
        self.command_errors.with_label_values(&[device]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_commands() {
        assert_eq!(RelayCommand::parse(b" on\n"), Some(RelayCommand::On));
        assert_eq!(RelayCommand::parse(b"OFF"), Some(RelayCommand::Off));
        assert_eq!(RelayCommand::parse(b"toggle"), Some(RelayCommand::Toggle));
        assert_eq!(RelayCommand::parse(b"maybe"), None);
        assert_eq!(RelayCommand::parse(&[0xff, 0xfe]), None);
        assert!(RelayCommand::Toggle.apply(false));
        assert!(!RelayCommand::Toggle.apply(true));
    }

    #[test]
    fn temperature_curve() {
        assert_eq!(temperature_at(0.0), 21.0);
        assert_eq!(temperature_at(900.0), 23.5);
        assert_eq!(temperature_at(2700.0), 18.5);
    }
}
