//! The demo devices of `roost` with no arguments (and of `[demo] enabled = true`): real
//! devices on a simulated board of their own, so a newcomer sees something at once and a
//! node on a Raspberry Pi never drives its real pins for them. A relay, a button, a door
//! contact and a temperature sensor; this module declares them and plays the world around
//! them (the temperature's slow curve); `devices.rs` runs them like any other device.

use std::f64::consts::TAU;
use std::sync::Arc;
use std::time::Duration;

use roost_firmware_bridge::entity::Kind;
use roost_firmware_bridge::gpio::{Pull, SimGpio};
use tokio_util::sync::CancellationToken;

use crate::config::{Attachment, DeviceSettings, EntitySettings};

/// The demo devices' ids; a configured device may not take one while the demo is on.
pub const DEVICE_IDS: [&str; 4] = ["demo-relay", "demo-button", "demo-door", "demo-temperature"];

/// The demo board's analog channel the temperature sensor reads.
const TEMPERATURE_CHANNEL: u8 = 0;
/// How often the simulated room's temperature moves.
const WEATHER_PERIOD: Duration = Duration::from_secs(10);

/// The demo devices, on the demo board.
pub fn devices() -> Vec<DeviceSettings> {
    let device = |id: &str, name: &str, entity: EntitySettings| DeviceSettings {
        id: id.to_owned(),
        name: name.to_owned(),
        attachment: Attachment::DemoBoard,
        entities: vec![entity],
    };
    vec![
        device(
            DEVICE_IDS[0],
            "Demo relay",
            EntitySettings {
                name: "Relay".into(),
                ..EntitySettings::new("relay", Kind::Switch, 17)
            },
        ),
        device(
            DEVICE_IDS[1],
            "Demo button",
            EntitySettings {
                name: "Button".into(),
                ..EntitySettings::new("button", Kind::Button, 22)
            },
        ),
        // A reed contact to 3.3 V with the pull-down on: the simulated door starts closed
        // (low, OFF) and opens when the pin is driven high.
        device(
            DEVICE_IDS[2],
            "Demo door",
            EntitySettings {
                name: "Door".into(),
                pull: Pull::Down,
                ..EntitySettings::new("door", Kind::BinarySensor, 27)
            },
        ),
        device(
            DEVICE_IDS[3],
            "Demo temperature",
            EntitySettings {
                name: "Temperature".into(),
                unit: Some("°C".into()),
                ..EntitySettings::new("temperature", Kind::Sensor, TEMPERATURE_CHANNEL)
            },
        ),
    ]
}

/// The simulated temperature at `t` seconds: 21 °C ± 2.5 over an hour, to one decimal.
fn temperature_at(t: f64) -> f64 {
    let value = 21.0 + 2.5 * (TAU * t / 3600.0).sin();
    (value * 10.0).round() / 10.0
}

/// Sets the demo board's temperature at once, so that the sensor's first reading is a
/// plausible one; call before the devices start.
pub fn prepare(board: &SimGpio) {
    board.set_analog(TEMPERATURE_CHANNEL, temperature_at(0.0));
}

/// Moves the demo board's temperature along its curve until `token` is cancelled.
pub async fn weather(board: Arc<SimGpio>, token: CancellationToken) {
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(WEATHER_PERIOD);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => {
                board.set_analog(TEMPERATURE_CHANNEL, temperature_at(started.elapsed().as_secs_f64()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_curve() {
        assert_eq!(temperature_at(0.0), 21.0);
        assert_eq!(temperature_at(900.0), 23.5);
        assert_eq!(temperature_at(2700.0), 18.5);
    }

    #[test]
    fn the_demo_devices_are_the_reserved_ids() {
        let ids: Vec<String> = devices().into_iter().map(|d| d.id).collect();
        assert_eq!(ids, DEVICE_IDS);
    }
}
