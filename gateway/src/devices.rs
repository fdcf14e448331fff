//! The node's devices at run time: the GPIO boards (the node's header through the configured
//! backend, and the demo devices' simulated board), the serial devices, and everything they
//! show of themselves: retained state and availability topics, command topics, device states
//! in the replicated store (`devices/<node>/<device>/<entity>`), the simulation hook of the
//! HTTP API, and their metrics. Outputs go to their safe state at start and at [`Devices::stop`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use roost_broker::{BrokerClient, Message, Subscription};
use roost_firmware_bridge::codec::Malformed;
use roost_firmware_bridge::device::{DeviceError, DeviceSpec, EntitySpec, GpioDevices, Update};
use roost_firmware_bridge::entity::{parse_command, Kind, State};
use roost_firmware_bridge::gpio::{self, GpioError, SimGpio};
use roost_firmware_bridge::serial::{self, Event, SerialDevice, SerialEntity, SerialSpec};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Attachment, DeviceSettings, EntitySettings, GpioSettings, NodeId};
use crate::demo;
use crate::replication::Replicated;
use crate::state::{Key, Namespace};
use crate::telemetry::registered;
use crate::topics::Topics;

/// At most one log line per device for malformed serial input in this long; the rest are
/// counted and summed up in the next line.
const MALFORMED_LOG_EVERY: Duration = Duration::from_secs(10);

/// What [`Devices::start`] needs.
pub struct Setup {
    /// The node's in-process MQTT client.
    pub client: BrokerClient,
    /// Where device states are kept.
    pub state: Replicated,
    /// Topic names.
    pub topics: Topics,
    /// This node.
    pub node: NodeId,
    /// The GPIO backend for the devices on the node's header.
    pub gpio: GpioSettings,
    /// Every device: the configured ones and the demo's.
    pub devices: Vec<DeviceSettings>,
}

/// Why the devices could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// The command topics could not be subscribed.
    #[error("device command topics: {0}")]
    Broker(#[from] roost_broker::Error),
    /// The metrics could not be registered.
    #[error("device metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A serial device's task could not start.
    #[error("serial device: {0}")]
    Serial(#[from] DeviceError),
}

/// Why the simulation hook refused a request.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// No such device on this node, or no such entity in the device.
    #[error(transparent)]
    Unknown(DeviceError),
    /// The entity is on real hardware or a serial port.
    #[error("{0:?} is not on a simulated board")]
    NotSimulated(String),
    /// The input does not fit the entity's kind.
    #[error("{0}")]
    WrongInput(&'static str),
    /// The simulated pin refused.
    #[error(transparent)]
    Gpio(#[from] GpioError),
}

/// What the simulation hook sets on a simulated input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SimInput {
    /// A binary sensor's pin level (before `invert`), as the wire would drive it.
    Level(bool),
    /// A sensor's analog reading.
    Value(f64),
}

/// A simulated entity's pin as the hook reads it back.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SimPin {
    /// The pin (an analog channel for a sensor).
    pub pin: u8,
    /// The pin's level, for digital pins that have one.
    pub level: Option<bool>,
    /// The PWM duty, for a light.
    pub duty: Option<f64>,
    /// The analog value, for a sensor.
    pub value: Option<f64>,
}

/// A device state as kept in the replicated store.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct StoredState<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    on: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    brightness: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
}

/// The devices' metrics.
#[derive(Clone)]
struct Metrics {
    commands: IntCounter,
    command_errors: IntCounterVec,
    updates: IntCounter,
    store_errors: IntCounter,
    available: IntGaugeVec,
    malformed: IntCounterVec,
    disconnects: IntCounterVec,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            registered(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        Ok(Metrics {
            commands: registered(
                registry,
                IntCounter::new(
                    "roost_device_commands_total",
                    "Device commands accepted from MQTT",
                )?,
            )?,
            command_errors: counter_vec(
                "roost_device_command_errors_total",
                "Device commands refused, by reason",
                &["reason"],
            )?,
            updates: registered(
                registry,
                IntCounter::new(
                    "roost_device_state_updates_total",
                    "Entity states published",
                )?,
            )?,
            store_errors: registered(
                registry,
                IntCounter::new(
                    "roost_device_store_errors_total",
                    "Entity states that could not be written to the state store",
                )?,
            )?,
            available: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "roost_device_available",
                        "1 while the device can be reached, else 0",
                    ),
                    &["device"],
                )?,
            )?,
            malformed: counter_vec(
                "roost_serial_malformed_total",
                "Malformed input skipped from serial devices, by device and kind",
                &["device", "reason"],
            )?,
            disconnects: counter_vec(
                "roost_serial_disconnects_total",
                "Times a serial device's port failed (unplugged, reset)",
                &["device"],
            )?,
        })
    }
}

/// How commands reach a device.
enum Route {
    /// Through GPIO board number `n`.
    Board(usize),
    /// Through its serial port.
    Serial(SerialDevice),
    /// Nowhere: its board could not start (the reason).
    Down(String),
}

/// A GPIO board that started.
struct Board {
    devices: GpioDevices,
    /// The simulated pins, when the board is simulated.
    sim: Option<Arc<SimGpio>>,
}

/// The node's devices; cheap to clone.
#[derive(Clone)]
pub struct Devices {
    inner: Arc<Shared>,
}

struct Shared {
    boards: Vec<Board>,
    routes: HashMap<String, Route>,
    /// Every entity by (device, entity).
    entities: HashMap<(String, String), EntitySettings>,
    /// Asks the runner to stop; it answers once the safe states and `offline` are out.
    stop: mpsc::Sender<oneshot::Sender<()>>,
    /// Every device, and whether it can be reached now.
    available: std::sync::Mutex<HashMap<String, bool>>,
}

/// How many devices a node has and how many can be reached, for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceCounts {
    /// Devices on this node.
    pub total: usize,
    /// Of those, the ones that can be reached now.
    pub available: usize,
}

impl Devices {
    /// Starts every device: GPIO boards with their outputs in their safe states, serial
    /// devices' tasks, the command subscription, and the runner that publishes states and
    /// availability until [`Devices::stop`] (or `token`). A GPIO board that cannot open (no
    /// access to the Pi's GPIO, a pin in use) leaves its devices unavailable, logged; the
    /// node runs on.
    pub async fn start(
        setup: Setup,
        registry: &Registry,
        tracker: &TaskTracker,
        token: CancellationToken,
    ) -> Result<Devices, DevicesError> {
        let metrics = Metrics::register(registry)?;
        let (updates_tx, updates_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut boards = Vec::new();
        let mut routes = HashMap::new();
        let mut entities = HashMap::new();
        let mut available = HashMap::new();

        for device in &setup.devices {
            for entity in &device.entities {
                entities.insert((device.id.clone(), entity.id.clone()), entity.clone());
            }
        }

        for demo_board in [false, true] {
            let on_board: Vec<&DeviceSettings> = setup
                .devices
                .iter()
                .filter(|d| match d.attachment {
                    Attachment::Gpio => !demo_board,
                    Attachment::DemoBoard => demo_board,
                    Attachment::Serial { .. } => false,
                })
                .collect();
            if on_board.is_empty() {
                continue;
            }
            let opened = if demo_board {
                let sim = Arc::new(SimGpio::default());
                demo::prepare(&sim);
                Ok(gpio::Opened {
                    gpio: sim.clone(),
                    simulated: Some(sim),
                })
            } else {
                gpio::open(setup.gpio.backend)
            };
            let specs: Vec<DeviceSpec> = on_board.iter().map(|d| gpio_spec(d)).collect();
            let started = opened.map_err(DeviceError::from).and_then(|opened| {
                let devices = GpioDevices::start(&specs, opened.gpio, updates_tx.clone())?;
                Ok(Board {
                    devices,
                    sim: opened.simulated,
                })
            });
            let ids: Vec<&str> = on_board.iter().map(|d| d.id.as_str()).collect();
            match started {
                Ok(board) => {
                    tracing::info!(devices = ?ids, backend = if board.sim.is_some() { "simulated" } else { "rppal" }, "GPIO devices running");
                    if demo_board {
                        if let Some(sim) = &board.sim {
                            tracker.spawn(demo::weather(sim.clone(), token.child_token()));
                        }
                    }
                    for id in &ids {
                        routes.insert((*id).to_owned(), Route::Board(boards.len()));
                        available.insert((*id).to_owned(), true);
                    }
                    boards.push(board);
                }
                Err(e) => {
                    tracing::error!(devices = ?ids, error = %e, "GPIO devices cannot start; they stay unavailable");
                    for id in &ids {
                        routes.insert((*id).to_owned(), Route::Down(e.to_string()));
                        available.insert((*id).to_owned(), false);
                    }
                }
            }
        }

        for device in &setup.devices {
            let Attachment::Serial {
                port,
                protocol,
                baud,
            } = &device.attachment
            else {
                continue;
            };
            let spec = SerialSpec {
                id: device.id.clone(),
                port: port.clone(),
                baud: *baud,
                protocol: *protocol,
                entities: device
                    .entities
                    .iter()
                    .map(|e| SerialEntity {
                        id: e.id.clone(),
                        kind: e.kind,
                        pin: e.pin,
                        pulse: e.pulse,
                    })
                    .collect(),
            };
            let handle = SerialDevice::start(
                spec,
                serial::open_port,
                events_tx.clone(),
                token.child_token(),
            )?;
            routes.insert(device.id.clone(), Route::Serial(handle));
            // Until its port opens.
            available.insert(device.id.clone(), false);
        }
        drop(events_tx);

        let commands = setup
            .client
            .subscribe(&setup.topics.entity_commands(&setup.node))
            .await?;
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let devices = Devices {
            inner: Arc::new(Shared {
                boards,
                routes,
                entities,
                stop: stop_tx,
                available: std::sync::Mutex::new(HashMap::new()),
            }),
        };
        let runner = Runner {
            devices: devices.clone(),
            client: setup.client,
            state: setup.state,
            topics: setup.topics,
            node: setup.node,
            metrics,
            malformed_logs: HashMap::new(),
        };
        tracker.spawn(runner.run(
            available,
            Inputs {
                updates: updates_rx,
                events: events_rx,
                commands,
                stop: stop_rx,
            },
            token,
        ));
        Ok(devices)
    }

    /// Puts every output in its safe state and publishes it, and marks every device
    /// `offline` (in id order); returns once that is out (or at once if the runner has already stopped).
    pub async fn stop(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.inner.stop.send(done_tx).await.is_ok() {
            let _ = done_rx.await;
        }
    }

    /// How many devices there are, and how many can be reached now.
    pub fn counts(&self) -> DeviceCounts {
        let counts = self.lock_available();
        DeviceCounts {
            total: counts.len(),
            available: counts.values().filter(|up| **up).count(),
        }
    }

    fn lock_available(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        // A poisoned lock means a panic elsewhere; the map itself is still consistent.
        self.inner
            .available
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The simulated board and the entity `device`/`entity` is on.
    fn simulated(
        &self,
        device: &str,
        entity: &str,
    ) -> Result<(&SimGpio, &EntitySettings), SimError> {
        let Some(route) = self.inner.routes.get(device) else {
            return Err(SimError::Unknown(DeviceError::UnknownDevice(
                device.to_owned(),
            )));
        };
        let Some(settings) = self
            .inner
            .entities
            .get(&(device.to_owned(), entity.to_owned()))
        else {
            return Err(SimError::Unknown(DeviceError::UnknownEntity {
                device: device.to_owned(),
                entity: entity.to_owned(),
            }));
        };
        let sim = match route {
            Route::Board(n) => self.inner.boards.get(*n).and_then(|b| b.sim.as_deref()),
            Route::Serial(_) | Route::Down(_) => None,
        };
        let sim = sim.ok_or_else(|| SimError::NotSimulated(device.to_owned()))?;
        Ok((sim, settings))
    }

    /// Drives a simulated input as its wire would: a binary sensor's pin level, or a
    /// sensor's analog value.
    pub fn simulate(&self, device: &str, entity: &str, input: SimInput) -> Result<(), SimError> {
        let (sim, settings) = self.simulated(device, entity)?;
        match (settings.kind, input) {
            (Kind::BinarySensor, SimInput::Level(high)) => Ok(sim.drive(settings.pin, high)?),
            (Kind::Sensor, SimInput::Value(value)) => {
                sim.set_analog(settings.pin, value);
                Ok(())
            }
            (Kind::BinarySensor, SimInput::Value(_)) => Err(SimError::WrongInput(
                "a binary_sensor's pin takes a level: {\"level\": true}",
            )),
            (Kind::Sensor, SimInput::Level(_)) => Err(SimError::WrongInput(
                "a sensor takes a value: {\"value\": 21.5}",
            )),
            _ => Err(SimError::WrongInput(
                "outputs are driven by their command topic; read them back with GET",
            )),
        }
    }

    /// Reads back a simulated entity's pin.
    pub fn probe(&self, device: &str, entity: &str) -> Result<SimPin, SimError> {
        let (sim, settings) = self.simulated(device, entity)?;
        let pin = settings.pin;
        Ok(match settings.kind {
            Kind::Sensor => SimPin {
                pin,
                level: None,
                duty: None,
                value: Some(sim.analog(pin)),
            },
            Kind::BinarySensor => SimPin {
                pin,
                level: sim.input_level(pin),
                duty: None,
                value: None,
            },
            Kind::Switch | Kind::Light | Kind::Button => SimPin {
                pin,
                level: sim.level(pin),
                duty: sim.duty(pin),
                value: None,
            },
        })
    }
}

/// The firmware-bridge spec of a GPIO device.
fn gpio_spec(device: &DeviceSettings) -> DeviceSpec {
    DeviceSpec {
        id: device.id.clone(),
        entities: device
            .entities
            .iter()
            .map(|e| EntitySpec {
                id: e.id.clone(),
                kind: e.kind,
                pin: e.pin,
                invert: e.invert,
                debounce: e.debounce,
                pull: e.pull,
                pulse: e.pulse,
                safe_on: e.safe_on,
            })
            .collect(),
    }
}

/// What the runner listens to.
struct Inputs {
    updates: mpsc::UnboundedReceiver<Update>,
    events: mpsc::UnboundedReceiver<Event>,
    commands: Subscription,
    stop: mpsc::Receiver<oneshot::Sender<()>>,
}

/// Malformed input from one device since its last log line.
struct MalformedLog {
    last: Instant,
    suppressed: u64,
}

/// Publishes states and availability, and takes commands, in one task.
struct Runner {
    devices: Devices,
    client: BrokerClient,
    state: Replicated,
    topics: Topics,
    node: NodeId,
    metrics: Metrics,
    malformed_logs: HashMap<String, MalformedLog>,
}

impl Runner {
    async fn run(
        mut self,
        available: HashMap<String, bool>,
        mut inputs: Inputs,
        token: CancellationToken,
    ) {
        for (device, online) in available {
            self.set_available(&device, online).await;
        }
        loop {
            tokio::select! {
                biased;
                () = token.cancelled() => return,
                Some(done) = inputs.stop.recv() => {
                    self.stop(&mut inputs).await;
                    let _ = done.send(());
                    return;
                }
                Some(update) = inputs.updates.recv() => self.publish_state(update).await,
                Some(event) = inputs.events.recv() => self.on_event(event).await,
                Some(message) = inputs.commands.recv() => self.command(&message),
            }
        }
    }

    async fn stop(&mut self, inputs: &mut Inputs) {
        for board in &self.devices.inner.boards {
            if let Err(e) = board.devices.safe_state() {
                tracing::error!(error = %e, "could not put every output in its safe state");
            }
        }
        while let Ok(update) = inputs.updates.try_recv() {
            self.publish_state(update).await;
        }
        let mut ids: Vec<String> = self.devices.inner.routes.keys().cloned().collect();
        ids.sort();
        for device in ids {
            self.set_available(&device, false).await;
        }
    }

    async fn publish_state(&mut self, update: Update) {
        let topic = self
            .topics
            .entity_state(&self.node, &update.device, &update.entity);
        // Not waited on to reach the broker's file: the node publishes every state again at
        // start (outputs' safe states, inputs as read, serial devices as they report).
        if let Err(e) = self
            .client
            .publish_unsynced(&topic, update.state.payload(), true)
            .await
        {
            tracing::warn!(%topic, error = %e, "could not publish an entity's state");
            return;
        }
        self.metrics.updates.inc();
        let Some(settings) = self
            .devices
            .inner
            .entities
            .get(&(update.device.clone(), update.entity.clone()))
        else {
            return;
        };
        let stored = stored_state(settings, update.state);
        let key = Key::new(
            Namespace::Devices,
            format!("{}/{}/{}", self.node, update.device, update.entity),
        );
        let written = match key {
            Ok(key) => self
                .state
                .put(&key, &stored)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            self.metrics.store_errors.inc();
            tracing::warn!(device = %update.device, entity = %update.entity, error = %e, "could not keep an entity's state in the store");
        }
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::State(update) => self.publish_state(update).await,
            Event::Available { device, online } => {
                if !online {
                    self.metrics.disconnects.with_label_values(&[&device]).inc();
                }
                self.set_available(&device, online).await;
            }
            Event::Malformed { device, error } => self.malformed(&device, &error),
        }
    }

    async fn set_available(&mut self, device: &str, online: bool) {
        self.devices
            .lock_available()
            .insert(device.to_owned(), online);
        self.metrics
            .available
            .with_label_values(&[device])
            .set(i64::from(online));
        let topic = self.topics.device_availability(&self.node, device);
        let payload = if online { "online" } else { "offline" };
        if let Err(e) = self.client.publish_unsynced(&topic, payload, true).await {
            tracing::warn!(%topic, error = %e, "could not publish a device's availability");
        }
    }

    /// Logs malformed input at most once per [`MALFORMED_LOG_EVERY`] per device (a device
    /// at the wrong baud rate sends nothing else), and counts every one.
    fn malformed(&mut self, device: &str, error: &Malformed) {
        self.metrics
            .malformed
            .with_label_values(&[device, error.label()])
            .inc();
        let now = Instant::now();
        match self.malformed_logs.get_mut(device) {
            Some(log) if now.duration_since(log.last) < MALFORMED_LOG_EVERY => {
                log.suppressed += 1;
            }
            Some(log) => {
                tracing::warn!(device, error = %error, more_since_last_line = log.suppressed, "malformed serial input skipped (wrong baud rate or protocol?)");
                log.last = now;
                log.suppressed = 0;
            }
            None => {
                tracing::warn!(device, error = %error, "malformed serial input skipped (wrong baud rate or protocol?)");
                self.malformed_logs.insert(
                    device.to_owned(),
                    MalformedLog {
                        last: now,
                        suppressed: 0,
                    },
                );
            }
        }
    }

    /// Why a command for a device that cannot be reached now is refused: a command that is
    /// wrong in itself is refused for that, the rest as `unavailable` (`why`).
    fn unreachable(&self, device: &str, entity: &str, payload: &[u8], why: &str) -> Refusal {
        let key = (device.to_owned(), entity.to_owned());
        match self.devices.inner.entities.get(&key) {
            None => Refusal::Device(DeviceError::UnknownEntity {
                device: key.0,
                entity: key.1,
            }),
            Some(settings) => match parse_command(settings.kind, payload) {
                Err(e) => Refusal::Device(e.into()),
                Ok(_) => Refusal::Unavailable(why.to_owned()),
            },
        }
    }

    /// Checks and routes a command; a refused one gets a log line and a metric.
    fn command(&self, message: &Message) {
        let Some((device, entity)) = self.topics.command_target(&self.node, &message.topic) else {
            return;
        };
        let outcome = match self.devices.inner.routes.get(device) {
            None => Err(Refusal::Device(DeviceError::UnknownDevice(
                device.to_owned(),
            ))),
            Some(Route::Down(why)) => Err(self.unreachable(device, entity, &message.payload, why)),
            Some(Route::Serial(serial)) => {
                let online = self
                    .devices
                    .lock_available()
                    .get(device)
                    .copied()
                    .unwrap_or(false);
                if online {
                    serial
                        .command(entity, &message.payload)
                        .map_err(Refusal::Device)
                } else {
                    let why = "its serial port is not connected";
                    Err(self.unreachable(device, entity, &message.payload, why))
                }
            }
            Some(Route::Board(n)) => match self.devices.inner.boards.get(*n) {
                Some(board) => board
                    .devices
                    .command(device, entity, &message.payload)
                    .map(drop)
                    .map_err(Refusal::Device),
                None => Err(Refusal::Unavailable("no such board".into())),
            },
        };
        match outcome {
            Ok(()) => self.metrics.commands.inc(),
            Err(refusal) => {
                let shown =
                    String::from_utf8_lossy(&message.payload[..message.payload.len().min(64)]);
                tracing::warn!(device, entity, payload = %shown, error = %refusal, "command refused");
                self.metrics
                    .command_errors
                    .with_label_values(&[refusal.label()])
                    .inc();
            }
        }
    }
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// The device or the command itself.
    #[error(transparent)]
    Device(DeviceError),
    /// The device cannot be reached now.
    #[error("the device is unavailable: {0}")]
    Unavailable(String),
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Refusal::Device(e) => e.label(),
            Refusal::Unavailable(_) => "unavailable",
        }
    }
}

/// An entity's state as the store keeps it: `{"kind":"switch","on":true}`,
/// `{"kind":"light","on":true,"brightness":128}`, `{"kind":"sensor","value":21.5,"unit":"°C"}`.
fn stored_state(entity: &EntitySettings, state: State) -> StoredState<'_> {
    let blank = StoredState {
        kind: entity.kind.as_str(),
        on: None,
        brightness: None,
        value: None,
        unit: None,
    };
    match state {
        State::OnOff(on) => StoredState {
            on: Some(on),
            ..blank
        },
        State::Light { on, brightness } => StoredState {
            on: Some(on),
            brightness: Some(brightness),
            ..blank
        },
        State::Number(value) => StoredState {
            value: Some(value),
            unit: entity.unit.as_deref(),
            ..blank
        },
    }
}
