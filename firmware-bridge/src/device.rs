//! GPIO devices at run time: the entities of each device wired to pins of a [`Gpio`]
//! backend. Outputs (switch, light, button) go to their safe state at start and on
//! [`GpioDevices::safe_state`], and follow checked commands; inputs (binary sensors) are
//! debounced and inverted as configured; sensors follow an analog input. Every state, at start and on each change, goes out
//! as an [`Update`] on a channel; the node turns those into retained MQTT messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedSender};

use crate::debounce::{Debouncer, Step};
use crate::entity::{parse_command, Command, CommandError, Kind, State};
use crate::gpio::{Edge, Gpio, GpioError, Pull, Reading};

/// One entity of a GPIO device.
#[derive(Debug, Clone, PartialEq)]
pub struct EntitySpec {
    /// Its id, unique in the device.
    pub id: String,
    /// What it is.
    pub kind: Kind,
    /// Its BCM pin; for a sensor, its analog channel ([`Gpio::analog_input`]).
    pub pin: u8,
    /// Whether the pin's low level means on (a relay board driven low, a button to ground).
    pub invert: bool,
    /// Binary sensors: how long a level must hold.
    pub debounce: Duration,
    /// Binary sensors: the pull resistor.
    pub pull: Pull,
    /// Buttons: how long a press holds the output on.
    pub pulse: Duration,
    /// Outputs: on or off at start and at shutdown.
    pub safe_on: bool,
}

/// One GPIO device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    /// Its id, unique on the node.
    pub id: String,
    /// Its entities.
    pub entities: Vec<EntitySpec>,
}

/// An entity's new state.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The device.
    pub device: String,
    /// The entity.
    pub entity: String,
    /// Its state now.
    pub state: State,
}

/// Why a device could not start or a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No device of that id on this node.
    #[error("no device {0:?} on this node")]
    UnknownDevice(String),
    /// No entity of that id in the device.
    #[error("device {device:?} has no entity {entity:?}")]
    UnknownEntity {
        /// The device.
        device: String,
        /// The entity asked for.
        entity: String,
    },
    /// A serial device has too many commands queued: it is not keeping up.
    #[error("device {0:?} is not keeping up with its commands")]
    Busy(String),
    /// Started outside a tokio runtime.
    #[error("GPIO devices need a tokio runtime")]
    NoRuntime,
    /// The command itself was refused.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The pin failed.
    #[error(transparent)]
    Gpio(#[from] GpioError),
}

impl DeviceError {
    /// The metric label of a refused command.
    pub fn label(&self) -> &'static str {
        match self {
            DeviceError::UnknownDevice(_) => "unknown_device",
            DeviceError::UnknownEntity { .. } => "unknown_entity",
            DeviceError::Busy(_) => "busy",
            DeviceError::NoRuntime => "no_runtime",
            DeviceError::Command(e) => e.label(),
            DeviceError::Gpio(_) => "gpio",
        }
    }
}

/// What an output holds now.
#[derive(Debug, Clone)]
struct Output {
    spec: EntitySpec,
    on: bool,
    /// Lights: the brightness, kept while off; 255 until set.
    brightness: u8,
    /// Buttons: presses so far, so that only the latest press's timer ends the pulse.
    presses: u64,
}

/// The GPIO devices of a node; cheap to clone.
#[derive(Clone)]
pub struct GpioDevices {
    inner: Arc<Inner>,
}

struct Inner {
    gpio: Arc<dyn Gpio>,
    /// Where button pulses are timed.
    runtime: tokio::runtime::Handle,
    /// Outputs by (device, entity).
    outputs: Mutex<HashMap<(String, String), Output>>,
    /// Every (device, entity) and its kind, for refusing commands to inputs.
    kinds: HashMap<(String, String), Kind>,
    updates: UnboundedSender<Update>,
}

impl GpioDevices {
    /// Sets every output to its safe state, starts watching every input (on the current
    /// tokio runtime, [`DeviceError::NoRuntime`] without one; the watcher ends when the
    /// backend drops the inputs' channels, or with the runtime), and sends every entity's
    /// initial state on `updates`.
    pub fn start(
        devices: &[DeviceSpec],
        gpio: Arc<dyn Gpio>,
        updates: UnboundedSender<Update>,
    ) -> Result<GpioDevices, DeviceError> {
        let runtime = runtime()?;
        let mut outputs = HashMap::new();
        let mut kinds = HashMap::new();
        let mut inputs = Vec::new();
        let mut sensors = Vec::new();
        let (edges_tx, edges_rx) = mpsc::unbounded_channel();
        let (readings_tx, readings_rx) = mpsc::unbounded_channel();
        for device in devices {
            for entity in &device.entities {
                let key = (device.id.clone(), entity.id.clone());
                kinds.insert(key.clone(), entity.kind);
                match entity.kind {
                    Kind::Switch | Kind::Light | Kind::Button => {
                        let output = Output {
                            spec: entity.clone(),
                            on: entity.safe_on && entity.kind != Kind::Button,
                            brightness: u8::MAX,
                            presses: 0,
                        };
                        drive(gpio.as_ref(), &output)?;
                        let _ = updates.send(Update {
                            device: device.id.clone(),
                            entity: entity.id.clone(),
                            state: state_of(&output),
                        });
                        outputs.insert(key, output);
                    }
                    Kind::BinarySensor => {
                        let level = gpio.input(entity.pin, entity.pull, edges_tx.clone())?;
                        let on = level != entity.invert;
                        let _ = updates.send(Update {
                            device: device.id.clone(),
                            entity: entity.id.clone(),
                            state: State::OnOff(on),
                        });
                        inputs.push(Input {
                            device: device.id.clone(),
                            entity: entity.id.clone(),
                            pin: entity.pin,
                            invert: entity.invert,
                            debouncer: Debouncer::new(level, entity.debounce),
                        });
                    }
                    Kind::Sensor => {
                        let value = gpio.analog_input(entity.pin, readings_tx.clone())?;
                        let _ = updates.send(Update {
                            device: device.id.clone(),
                            entity: entity.id.clone(),
                            state: State::Number(value),
                        });
                        sensors.push(Sensor {
                            device: device.id.clone(),
                            entity: entity.id.clone(),
                            channel: entity.pin,
                        });
                    }
                }
            }
        }
        drop((edges_tx, readings_tx));
        if !inputs.is_empty() || !sensors.is_empty() {
            runtime.spawn(watch_inputs(
                Watched { inputs, sensors },
                edges_rx,
                readings_rx,
                updates.clone(),
            ));
        }
        Ok(GpioDevices {
            inner: Arc::new(Inner {
                gpio,
                runtime,
                outputs: Mutex::new(outputs),
                kinds,
                updates,
            }),
        })
    }

    fn outputs(&self) -> MutexGuard<'_, HashMap<(String, String), Output>> {
        self.inner.outputs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks `payload` as a command for `device`/`entity`, drives the pin, sends the new
    /// state and returns it. A button's press sends `ON`, and `OFF` when its pulse ends.
    pub fn command(
        &self,
        device: &str,
        entity: &str,
        payload: &[u8],
    ) -> Result<State, DeviceError> {
        let key = (device.to_owned(), entity.to_owned());
        let Some(&kind) = self.inner.kinds.get(&key) else {
            return Err(if self.inner.kinds.keys().any(|(d, _)| d == device) {
                DeviceError::UnknownEntity {
                    device: device.to_owned(),
                    entity: entity.to_owned(),
                }
            } else {
                DeviceError::UnknownDevice(device.to_owned())
            });
        };
        let command = parse_command(kind, payload)?;
        let (state, pulse) = {
            let mut outputs = self.outputs();
            let Some(output) = outputs.get_mut(&key) else {
                return Err(CommandError::NotCommandable(kind).into());
            };
            let mut next = output.clone();
            match command {
                Command::Set(on) => next.on = on,
                Command::Toggle => next.on = !next.on,
                // Brightness 0 is off; the level to come back on at is kept.
                Command::Light {
                    brightness: Some(0),
                    ..
                } => next.on = false,
                Command::Light { on, brightness } => {
                    if let Some(b) = brightness {
                        next.brightness = b;
                    }
                    next.on = on.unwrap_or(brightness.is_some() || next.on);
                }
                Command::Press => {
                    next.on = true;
                    next.presses = next.presses.wrapping_add(1);
                }
            }
            drive(self.inner.gpio.as_ref(), &next)?;
            *output = next;
            let state = state_of(output);
            // Sent under the lock, so that updates go out in the order the pins changed.
            self.send(device, entity, state);
            let pulse = (kind == Kind::Button).then_some((output.spec.pulse, output.presses));
            (state, pulse)
        };
        if let Some((pulse, press)) = pulse {
            let devices = self.clone();
            let (device, entity) = key;
            self.inner.runtime.spawn(async move {
                tokio::time::sleep(pulse).await;
                devices.release(&device, &entity, press);
            });
        }
        Ok(state)
    }

    /// Ends the pulse of a button's press number `press`; a later press has its own.
    fn release(&self, device: &str, entity: &str, press: u64) {
        let mut outputs = self.outputs();
        let Some(output) = outputs.get_mut(&(device.to_owned(), entity.to_owned())) else {
            return;
        };
        if output.presses != press {
            return;
        }
        output.on = false;
        match drive(self.inner.gpio.as_ref(), output) {
            Ok(()) => self.send(device, entity, state_of(output)),
            Err(e) => tracing::warn!(device, entity, error = %e, "could not end a button's pulse"),
        }
    }

    /// Puts every output in its safe state (at shutdown), in device and entity order;
    /// reports the first failure after trying them all.
    pub fn safe_state(&self) -> Result<(), DeviceError> {
        let mut first = None;
        let mut outputs = self.outputs();
        let mut sorted: Vec<_> = outputs.iter_mut().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for ((device, entity), output) in sorted {
            output.on = output.spec.safe_on && output.spec.kind != Kind::Button;
            match drive(self.inner.gpio.as_ref(), output) {
                Ok(()) => self.send(device, entity, state_of(output)),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), |e| Err(e.into()))
    }

    fn send(&self, device: &str, entity: &str, state: State) {
        let _ = self.inner.updates.send(Update {
            device: device.to_owned(),
            entity: entity.to_owned(),
            state,
        });
    }
}

/// The tokio runtime the devices' tasks run on (serial devices' too).
pub(crate) fn runtime() -> Result<tokio::runtime::Handle, DeviceError> {
    tokio::runtime::Handle::try_current().map_err(|_| DeviceError::NoRuntime)
}

/// Sets an output's pin to what it holds (inverted if so configured).
fn drive(gpio: &dyn Gpio, output: &Output) -> Result<(), GpioError> {
    let spec = &output.spec;
    match spec.kind {
        Kind::Light => {
            let duty = if output.on {
                f64::from(output.brightness) / 255.0
            } else {
                0.0
            };
            gpio.pwm(spec.pin, if spec.invert { 1.0 - duty } else { duty })
        }
        _ => gpio.output(spec.pin, output.on != spec.invert),
    }
}

/// An output's state payload.
fn state_of(output: &Output) -> State {
    match output.spec.kind {
        Kind::Light => State::Light {
            on: output.on,
            brightness: output.brightness,
        },
        _ => State::OnOff(output.on),
    }
}

/// A watched input.
struct Input {
    device: String,
    entity: String,
    pin: u8,
    invert: bool,
    debouncer: Debouncer,
}

/// A watched analog input.
struct Sensor {
    device: String,
    entity: String,
    channel: u8,
}

/// Everything [`watch_inputs`] watches.
struct Watched {
    inputs: Vec<Input>,
    sensors: Vec<Sensor>,
}

/// Debounces every input's edges and sends each settled change, and sends every sensor
/// reading; ends when the backend drops both channels or nobody takes the updates.
async fn watch_inputs(
    watched: Watched,
    mut edges: mpsc::UnboundedReceiver<Edge>,
    mut readings: mpsc::UnboundedReceiver<Reading>,
    updates: UnboundedSender<Update>,
) {
    let Watched {
        mut inputs,
        sensors,
    } = watched;
    let mut wake: HashMap<u8, std::time::Instant> = HashMap::new();
    let (mut edges_open, mut readings_open) = (true, true);
    loop {
        if !edges_open && !readings_open && wake.is_empty() {
            return;
        }
        let next = wake.values().min().copied();
        let timer = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let steps: Vec<(usize, Step)> = tokio::select! {
            reading = readings.recv(), if readings_open => {
                let Some(reading) = reading else {
                    readings_open = false;
                    continue;
                };
                for sensor in sensors.iter().filter(|s| s.channel == reading.channel) {
                    let update = Update {
                        device: sensor.device.clone(),
                        entity: sensor.entity.clone(),
                        state: State::Number(reading.value),
                    };
                    if updates.send(update).is_err() {
                        return;
                    }
                }
                continue;
            }
            edge = edges.recv(), if edges_open => {
                let Some(edge) = edge else {
                    edges_open = false;
                    continue;
                };
                // The runtime's clock, not the edge's own stamp, so that the timers below
                // and the debouncer agree (and tests can pause time).
                let at = tokio::time::Instant::now().into_std();
                inputs
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, i)| i.pin == edge.pin)
                    .map(|(n, i)| (n, i.debouncer.edge(edge.high, at)))
                    .collect()
            }
            () = timer => {
                let now = tokio::time::Instant::now().into_std();
                inputs
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, i)| wake.contains_key(&i.pin))
                    .map(|(n, i)| (n, i.debouncer.settle(now)))
                    .collect()
            }
        };
        for (n, step) in steps {
            let input = &inputs[n];
            match step {
                Step::Changed(level) => {
                    wake.remove(&input.pin);
                    if updates
                        .send(Update {
                            device: input.device.clone(),
                            entity: input.entity.clone(),
                            state: State::OnOff(level != input.invert),
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                Step::WakeAt(at) => {
                    wake.insert(input.pin, at);
                }
                Step::Idle => {
                    wake.remove(&input.pin);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpio::SimGpio;

    fn entity(id: &str, kind: Kind, pin: u8) -> EntitySpec {
        EntitySpec {
            id: id.into(),
            kind,
            pin,
            invert: false,
            debounce: Duration::ZERO,
            pull: Pull::Off,
            pulse: Duration::from_millis(50),
            safe_on: false,
        }
    }

    fn start(
        entities: Vec<EntitySpec>,
    ) -> (GpioDevices, Arc<SimGpio>, mpsc::UnboundedReceiver<Update>) {
        let sim = Arc::new(SimGpio::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let devices = GpioDevices::start(
            &[DeviceSpec {
                id: "porch".into(),
                entities,
            }],
            sim.clone(),
            tx,
        )
        .unwrap();
        (devices, sim, rx)
    }

    #[tokio::test]
    async fn outputs_start_safe_follow_commands_and_refuse_bad_ones() {
        let relay = EntitySpec {
            invert: true,
            safe_on: false,
            ..entity("relay", Kind::Switch, 4)
        };
        let (devices, sim, mut rx) = start(vec![relay, entity("lamp", Kind::Light, 18)]);
        // Inverted relay, safe off: the pin is high.
        assert_eq!(sim.level(4), Some(true));
        assert_eq!(rx.recv().await.unwrap().state, State::OnOff(false));
        assert_eq!(
            rx.recv().await.unwrap().state.payload(),
            r#"{"state":"OFF","brightness":255}"#
        );

        assert_eq!(
            devices.command("porch", "relay", b"ON").unwrap(),
            State::OnOff(true)
        );
        assert_eq!(sim.level(4), Some(false));
        devices
            .command("porch", "lamp", br#"{"state":"ON","brightness":51}"#)
            .unwrap();
        assert_eq!(sim.duty(18), Some(0.2));
        // Brightness 0 is off, and ON comes back at the level before.
        devices
            .command("porch", "lamp", br#"{"brightness":0}"#)
            .unwrap();
        assert_eq!(sim.duty(18), Some(0.0));
        devices.command("porch", "lamp", b"ON").unwrap();
        assert_eq!(sim.duty(18), Some(0.2));

        let refused = [
            devices
                .command("porch", "lamp", br#"{"brightness":300}"#)
                .unwrap_err(),
            devices.command("porch", "relay", b"maybe").unwrap_err(),
            devices.command("garage", "relay", b"ON").unwrap_err(),
            devices.command("porch", "fan", b"ON").unwrap_err(),
        ];
        let labels: Vec<&str> = refused.iter().map(DeviceError::label).collect();
        assert_eq!(
            labels,
            [
                "out_of_range",
                "bad_payload",
                "unknown_device",
                "unknown_entity"
            ]
        );
        assert_eq!(sim.duty(18), Some(0.2), "a refused command changes nothing");

        devices.safe_state().unwrap();
        assert_eq!((sim.level(4), sim.duty(18)), (Some(true), Some(0.0)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_button_pulses_for_its_time() {
        let (devices, sim, mut rx) = start(vec![entity("bell", Kind::Button, 5)]);
        assert_eq!(rx.recv().await.unwrap().state, State::OnOff(false));
        devices.command("porch", "bell", b"PRESS").unwrap();
        assert_eq!(sim.level(5), Some(true));
        assert_eq!(rx.recv().await.unwrap().state, State::OnOff(true));
        assert_eq!(rx.recv().await.unwrap().state, State::OnOff(false));
        assert_eq!(sim.level(5), Some(false));

        // A second press during the first one's pulse gets its whole pulse.
        devices.command("porch", "bell", b"PRESS").unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        devices.command("porch", "bell", b"PRESS").unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            sim.level(5),
            Some(true),
            "the first press's timer ended the second pulse"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(sim.level(5), Some(false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bouncing_input_makes_one_state_change() {
        let door = EntitySpec {
            debounce: Duration::from_millis(20),
            pull: Pull::Up,
            invert: true,
            ..entity("door", Kind::BinarySensor, 17)
        };
        let (_devices, sim, mut rx) = start(vec![door]);
        // Pulled up and inverted: reads high, which is off (closed contact opens to low).
        assert_eq!(rx.recv().await.unwrap().state, State::OnOff(false));
        for level in [false, true, false, true, false] {
            sim.drive(17, level).unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let update = rx.recv().await.unwrap();
        assert_eq!(
            (update.entity.as_str(), update.state),
            ("door", State::OnOff(true))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "one change for the whole bounce");
    }

    #[tokio::test]
    async fn a_sensor_follows_its_analog_input() {
        let sim = Arc::new(SimGpio::default());
        sim.set_analog(2, 19.5);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _devices = GpioDevices::start(
            &[DeviceSpec {
                id: "attic".into(),
                entities: vec![entity("temperature", Kind::Sensor, 2)],
            }],
            sim.clone(),
            tx,
        )
        .unwrap();
        assert_eq!(rx.recv().await.unwrap().state, State::Number(19.5));
        sim.set_analog(2, 20.25);
        let update = rx.recv().await.unwrap();
        assert_eq!(
            (update.entity.as_str(), update.state),
            ("temperature", State::Number(20.25))
        );
    }
}
