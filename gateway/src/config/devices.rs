//! `[gpio]` and `[[devices]]`: the hardware a node drives, read from the file into
//! [`DeviceSettings`] and checked with positions like the rest of the config. Which keys an
//! entity takes depends on its kind and on whether its device hangs off the node's GPIO or a
//! serial port; a key that does not apply is an error, not silently ignored.

use std::collections::HashMap;
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use roost_firmware_bridge::entity::Kind;
use roost_firmware_bridge::gpio::{Backend, Pull};
use roost_firmware_bridge::serial::Protocol;
use serde::Deserialize;
use toml::Spanned;

use super::{is_valid_id, parse_duration, Validator, ID_RULE};

/// A button's pulse when the file gives none.
pub const DEFAULT_PULSE: Duration = Duration::from_millis(300);
/// A binary sensor's debounce when the file gives none: long enough for a contact's bounce,
/// short enough that a press feels immediate.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(20);
/// StandardFirmata's baud rate.
pub const FIRMATA_BAUD: u32 = 57_600;
/// The example sketch's baud rate for line-delimited JSON.
pub const JSON_LINES_BAUD: u32 = 115_200;

/// BCM numbers of the pins on a Raspberry Pi's 40-pin header.
const GPIO_PINS: RangeInclusive<i64> = 0..=27;
/// Channels of the simulated ADC a GPIO sensor reads.
const ANALOG_CHANNELS: RangeInclusive<i64> = 0..=7;
/// Firmata's pin numbers.
const FIRMATA_PINS: RangeInclusive<i64> = 0..=127;
const BAUD_RANGE: RangeInclusive<i64> = 300..=4_000_000;
/// Pulses and debounce windows are at most this long.
const MAX_TIMING: Duration = Duration::from_secs(60);
const NAME_MAX_LEN: usize = 64;
const UNIT_MAX_LEN: usize = 16;

/// `[gpio]`: which GPIO backend the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpioSettings {
    /// `gpio.backend`: `auto` (rppal on a Raspberry Pi, simulated elsewhere), `rppal` or
    /// `simulated`.
    pub backend: Backend,
}

/// One `[[devices]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSettings {
    /// `id`: unique on the node; in its topics and state keys.
    pub id: String,
    /// `name`: what people see; the id when not given.
    pub name: String,
    /// Where it hangs off the node.
    pub attachment: Attachment,
    /// `entities`: at least one.
    pub entities: Vec<EntitySettings>,
}

/// Where a device hangs off its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// The node's GPIO header (no `serial` key).
    Gpio,
    /// The board simulated for the demo devices, whatever `gpio.backend` says.
    DemoBoard,
    /// A serial port (`serial = { port, protocol, baud }`).
    Serial {
        /// `port`: the device path.
        port: String,
        /// `protocol`: `json_lines` or `firmata`.
        protocol: Protocol,
        /// `baud`: 57600 for Firmata and 115200 for JSON lines when not given.
        baud: u32,
    },
}

/// One entity of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitySettings {
    /// `id`: unique in the device; in its topics; a JSON-lines device's channel name.
    pub id: String,
    /// `name`: what people see; the id when not given.
    pub name: String,
    /// `kind`.
    pub kind: Kind,
    /// `pin`: a BCM pin (GPIO), an analog channel (a GPIO sensor), or a board pin (Firmata);
    /// 0 for JSON lines, which has none.
    pub pin: u8,
    /// `invert` (GPIO, not sensors): a low pin means on.
    pub invert: bool,
    /// `pull` (GPIO binary sensors): `off`, `up` or `down`.
    pub pull: Pull,
    /// `debounce` (GPIO binary sensors).
    pub debounce: Duration,
    /// `pulse` (buttons).
    pub pulse: Duration,
    /// `safe_state` (GPIO switches and lights): `on` or `off`, at start and at shutdown.
    pub safe_on: bool,
    /// `unit` (sensors): the unit of the reading, e.g. `°C`.
    pub unit: Option<String>,
}

impl EntitySettings {
    /// An entity of `kind` with every optional key at its default.
    pub fn new(id: &str, kind: Kind, pin: u8) -> EntitySettings {
        EntitySettings {
            id: id.to_owned(),
            name: id.to_owned(),
            kind,
            pin,
            invert: false,
            pull: Pull::Off,
            debounce: DEFAULT_DEBOUNCE,
            pulse: DEFAULT_PULSE,
            safe_on: false,
            unit: None,
        }
    }
}

// === raw file structs ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GpioConfig {
    backend: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceConfig {
    id: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    serial: Option<Spanned<SerialConfig>>,
    #[serde(default)]
    entities: Vec<Spanned<EntityConfig>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialConfig {
    port: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    // Signed so that a negative number gets a range error with a position.
    baud: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityConfig {
    id: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    pin: Option<Spanned<i64>>,
    invert: Option<Spanned<bool>>,
    pull: Option<Spanned<String>>,
    debounce: Option<Spanned<String>>,
    pulse: Option<Spanned<String>>,
    safe_state: Option<Spanned<String>>,
    unit: Option<Spanned<String>>,
}

// === validation ===

impl GpioConfig {
    pub(super) fn validate(self, v: &mut Validator<'_>) -> GpioSettings {
        let backend = match self.backend {
            None => Backend::Auto,
            Some(raw) => match raw.get_ref().as_str() {
                "auto" => Backend::Auto,
                "rppal" => Backend::Rppal,
                "simulated" => Backend::Simulated,
                other => {
                    v.error(
                        Some(raw.span()),
                        format!(
                            "gpio.backend {other:?} must be \"auto\", \"rppal\" or \"simulated\""
                        ),
                    );
                    Backend::Auto
                }
            },
        };
        GpioSettings { backend }
    }
}

/// What is already taken across the node's devices, for duplicate reports.
#[derive(Default)]
struct Taken {
    devices: HashMap<String, Range<usize>>,
    /// GPIO pins and analog channels: (is analog, number) → who and where.
    gpio: HashMap<(bool, u8), (String, Range<usize>)>,
    ports: HashMap<String, Range<usize>>,
}

/// Checks every `[[devices]]` entry; `reserved` are ids the node uses itself (the demo
/// devices, when on), `backend` the GPIO backend the node's GPIO devices are on.
pub(super) fn validate(
    v: &mut Validator<'_>,
    raw: Vec<Spanned<DeviceConfig>>,
    reserved: &[&str],
    backend: Backend,
) -> Vec<DeviceSettings> {
    let mut taken = Taken::default();
    raw.into_iter()
        .enumerate()
        .filter_map(|(n, entry)| validate_device(v, &mut taken, n, entry, reserved, backend))
        .collect()
}

fn validate_device(
    v: &mut Validator<'_>,
    taken: &mut Taken,
    n: usize,
    entry: Spanned<DeviceConfig>,
    reserved: &[&str],
    backend: Backend,
) -> Option<DeviceSettings> {
    let span = entry.span();
    let DeviceConfig {
        id,
        name,
        serial,
        entities,
    } = entry.into_inner();
    let Some(id) = id else {
        v.error(Some(span), format!("devices[{n}] has no id"));
        return None;
    };
    let where_ = format!("device {:?}", id.get_ref());
    let mut ok = check_id(v, &id, &format!("devices[{n}].id"));
    if ok {
        if let Some(first) = taken.devices.get(id.get_ref()) {
            let message = format!("{where_} is already defined at {}", v.describe(first));
            v.error(Some(id.span()), message);
            ok = false;
        } else if reserved.contains(&id.get_ref().as_str()) {
            v.error(
                Some(id.span()),
                format!("{where_}: the id is taken by a demo device ([demo] enabled = true)"),
            );
            ok = false;
        } else {
            taken.devices.insert(id.get_ref().clone(), id.span());
        }
    }
    let name = check_name(v, name, &where_, id.get_ref());
    // A serial block whose protocol is unknown leaves its entities unchecked: what they may
    // hold depends on it.
    let (attachment, shape) = match serial {
        None => (Some(Attachment::Gpio), Some(Attachment::Gpio)),
        Some(raw) => validate_serial(v, taken, &where_, raw),
    };
    if entities.is_empty() {
        v.error(
            Some(span),
            format!("{where_} has no entities; give it at least one"),
        );
        ok = false;
    }
    let mut ids: HashMap<String, Range<usize>> = HashMap::new();
    let mut firmata_pins: HashMap<u8, Range<usize>> = HashMap::new();
    let mut checked = Vec::with_capacity(entities.len());
    let shape = shape?;
    for (m, entity) in entities.into_iter().enumerate() {
        let context = EntityContext {
            device: id.get_ref(),
            where_: &where_,
            index: m,
            attachment: &shape,
            simulated: backend == Backend::Simulated,
        };
        match validate_entity(v, &context, entity) {
            Some((entity, id_span, pin_span)) => {
                if let Some(first) = ids.get(&entity.id) {
                    let message = format!(
                        "{where_}: entity {:?} is already defined at {}",
                        entity.id,
                        v.describe(first)
                    );
                    v.error(Some(id_span), message);
                    ok = false;
                    continue;
                }
                ids.insert(entity.id.clone(), id_span);
                if let Some(pin_span) = pin_span {
                    ok &= claim_pin(v, taken, &mut firmata_pins, &context, &entity, pin_span);
                }
                checked.push(entity);
            }
            None => ok = false,
        }
    }
    let attachment = attachment?;
    ok.then(|| DeviceSettings {
        id: id.into_inner(),
        name,
        attachment,
        entities: checked,
    })
}

/// Where an entity is, for its checks and messages.
struct EntityContext<'a> {
    device: &'a str,
    where_: &'a str,
    index: usize,
    attachment: &'a Attachment,
    /// Whether a GPIO entity would be on a simulated board.
    simulated: bool,
}

/// Records the pin an entity uses; a pin used twice is an error at the second use. GPIO
/// pins and analog channels are unique on the node, a Firmata board's pins in its device.
fn claim_pin(
    v: &mut Validator<'_>,
    taken: &mut Taken,
    firmata_pins: &mut HashMap<u8, Range<usize>>,
    context: &EntityContext<'_>,
    entity: &EntitySettings,
    span: Range<usize>,
) -> bool {
    let first = match context.attachment {
        Attachment::Gpio | Attachment::DemoBoard => {
            let analog = entity.kind == Kind::Sensor;
            let slot = (analog, entity.pin);
            if let Some((who, first)) = taken.gpio.get(&slot) {
                Some(format!("{who} at {}", v.describe(first)))
            } else {
                let who = format!("{}/{}", context.device, entity.id);
                taken.gpio.insert(slot, (who, span.clone()));
                None
            }
        }
        Attachment::Serial { .. } => match firmata_pins.get(&entity.pin) {
            Some(first) => Some(format!("another entity at {}", v.describe(first))),
            None => {
                firmata_pins.insert(entity.pin, span.clone());
                None
            }
        },
    };
    match first {
        None => true,
        Some(by) => {
            let what = if entity.kind == Kind::Sensor && context.attachment == &Attachment::Gpio {
                "analog channel"
            } else {
                "pin"
            };
            v.error(
                Some(span),
                format!(
                    "{}, entity {:?}: {what} {} is already used by {by}",
                    context.where_, entity.id, entity.pin
                ),
            );
            false
        }
    }
}

/// The serial attachment when it is valid, and the shape its entities are checked against
/// (the protocol, with a placeholder port) when at least the protocol is known.
fn validate_serial(
    v: &mut Validator<'_>,
    taken: &mut Taken,
    where_: &str,
    raw: Spanned<SerialConfig>,
) -> (Option<Attachment>, Option<Attachment>) {
    let span = raw.span();
    let SerialConfig {
        port,
        protocol,
        baud,
    } = raw.into_inner();
    let port = match port {
        None => {
            v.error(
                Some(span.clone()),
                format!("{where_}: serial has no port (e.g. port = \"/dev/ttyACM0\")"),
            );
            None
        }
        Some(p) if p.get_ref().trim().is_empty() => {
            v.error(
                Some(p.span()),
                format!("{where_}: serial.port must not be empty"),
            );
            None
        }
        Some(p) => {
            if let Some(first) = taken.ports.get(p.get_ref()) {
                let message = format!(
                    "{where_}: serial.port {:?} is already used at {}",
                    p.get_ref(),
                    v.describe(first)
                );
                v.error(Some(p.span()), message);
                None
            } else {
                taken.ports.insert(p.get_ref().clone(), p.span());
                Some(p.into_inner())
            }
        }
    };
    let protocol = match protocol {
        None => {
            v.error(
                Some(span),
                format!("{where_}: serial has no protocol (\"json_lines\" or \"firmata\")"),
            );
            None
        }
        Some(p) => match p.get_ref().as_str() {
            "json_lines" => Some(Protocol::JsonLines),
            "firmata" => Some(Protocol::Firmata),
            other => {
                v.error(
                    Some(p.span()),
                    format!(
                        "{where_}: serial.protocol {other:?} must be \"json_lines\" or \"firmata\""
                    ),
                );
                None
            }
        },
    };
    let default_baud = match protocol {
        Some(Protocol::JsonLines) => JSON_LINES_BAUD,
        _ => FIRMATA_BAUD,
    };
    let baud = match baud {
        None => Some(default_baud),
        Some(b) => match u32::try_from(*b.get_ref()) {
            Ok(baud) if BAUD_RANGE.contains(b.get_ref()) => Some(baud),
            _ => {
                v.error(
                    Some(b.span()),
                    format!(
                        "{where_}: serial.baud {} must be between {} and {}",
                        b.get_ref(),
                        BAUD_RANGE.start(),
                        BAUD_RANGE.end()
                    ),
                );
                None
            }
        },
    };
    let shape = protocol.map(|protocol| Attachment::Serial {
        port: String::new(),
        protocol,
        baud: default_baud,
    });
    let attachment = match (port, protocol, baud) {
        (Some(port), Some(protocol), Some(baud)) => Some(Attachment::Serial {
            port,
            protocol,
            baud,
        }),
        _ => None,
    };
    (attachment, shape)
}

/// Checks one entity; returns it with the spans of its id and (when it has one) its pin.
fn validate_entity(
    v: &mut Validator<'_>,
    context: &EntityContext<'_>,
    raw: Spanned<EntityConfig>,
) -> Option<(EntitySettings, Range<usize>, Option<Range<usize>>)> {
    let span = raw.span();
    let EntityConfig {
        id,
        name,
        kind,
        mut pin,
        mut invert,
        mut pull,
        mut debounce,
        mut pulse,
        mut safe_state,
        mut unit,
    } = raw.into_inner();
    let where_ = context.where_;
    let Some(id) = id else {
        v.error(
            Some(span),
            format!("{where_}: entities[{}] has no id", context.index),
        );
        return None;
    };
    let mut ok = check_id(v, &id, &format!("{where_}: entity id"));
    let at = format!("{where_}, entity {:?}", id.get_ref());
    let name = check_name(v, name, &at, id.get_ref());
    let kind_span = kind.as_ref().map_or(id.span(), Spanned::span);
    let kind = match kind {
        None => {
            v.error(
                Some(id.span()),
                format!("{at} has no kind (switch, binary_sensor, sensor, light or button)"),
            );
            return None;
        }
        Some(k) => match Kind::parse(k.get_ref()) {
            Some(kind) => kind,
            None => {
                v.error(
                    Some(k.span()),
                    format!(
                        "{at}: kind {:?} must be switch, binary_sensor, sensor, light or button",
                        k.get_ref()
                    ),
                );
                return None;
            }
        },
    };
    let gpio = !matches!(context.attachment, Attachment::Serial { .. });
    let json_lines = matches!(
        context.attachment,
        Attachment::Serial {
            protocol: Protocol::JsonLines,
            ..
        }
    );

    // A key that does not apply to this kind or attachment is an error at the key (and its
    // value is not checked as well).
    let gpio_only = "applies only to GPIO entities";
    let binary_only = "applies only to binary_sensor entities";
    if !gpio {
        ok &= refuse(v, &at, "invert", &mut invert, gpio_only);
        ok &= refuse(v, &at, "pull", &mut pull, gpio_only);
        ok &= refuse(v, &at, "debounce", &mut debounce, gpio_only);
        ok &= refuse(v, &at, "safe_state", &mut safe_state, gpio_only);
    } else {
        if kind == Kind::Sensor {
            ok &= refuse(v, &at, "invert", &mut invert, "does not apply to a sensor");
        }
        if kind != Kind::BinarySensor {
            ok &= refuse(v, &at, "pull", &mut pull, binary_only);
            ok &= refuse(v, &at, "debounce", &mut debounce, binary_only);
        }
        if !matches!(kind, Kind::Switch | Kind::Light) {
            ok &= refuse(
                v,
                &at,
                "safe_state",
                &mut safe_state,
                "applies only to switch and light entities (a button is always off at rest)",
            );
        }
    }
    if kind != Kind::Button {
        ok &= refuse(
            v,
            &at,
            "pulse",
            &mut pulse,
            "applies only to button entities",
        );
    }
    if kind != Kind::Sensor {
        ok &= refuse(v, &at, "unit", &mut unit, "applies only to sensor entities");
    }
    if json_lines {
        ok &= refuse(
            v,
            &at,
            "pin",
            &mut pin,
            "does not apply to a json_lines device (its entities are matched by id)",
        );
    }
    if gpio && kind == Kind::Sensor && !context.simulated {
        v.error(
            Some(kind_span),
            format!(
                "{at}: a GPIO sensor reads an analog input, which only the simulated board has \
                 (gpio.backend = \"simulated\"); on a Raspberry Pi, read it through a serial \
                 board (a Firmata board's analog pins)"
            ),
        );
        ok = false;
    }

    let mut pin_span = None;
    let mut pin_number = 0;
    if !json_lines {
        let (range, what) = match (gpio, kind) {
            (true, Kind::Sensor) => (ANALOG_CHANNELS, "an analog channel"),
            (true, _) => (GPIO_PINS, "a BCM pin number"),
            (false, _) => (FIRMATA_PINS, "a Firmata pin number"),
        };
        match pin {
            None => {
                v.error(
                    Some(id.span()),
                    format!(
                        "{at} has no pin ({what}, {}-{})",
                        range.start(),
                        range.end()
                    ),
                );
                ok = false;
            }
            Some(p) => match u8::try_from(*p.get_ref()) {
                Ok(n) if range.contains(p.get_ref()) => {
                    pin_number = n;
                    pin_span = Some(p.span());
                }
                _ => {
                    v.error(
                        Some(p.span()),
                        format!(
                            "{at}: pin {} must be {what}, {}-{}",
                            p.get_ref(),
                            range.start(),
                            range.end()
                        ),
                    );
                    ok = false;
                }
            },
        }
    }

    let pull = match pull {
        None => Pull::Off,
        Some(p) => match p.get_ref().as_str() {
            "off" => Pull::Off,
            "up" => Pull::Up,
            "down" => Pull::Down,
            other => {
                v.error(
                    Some(p.span()),
                    format!("{at}: pull {other:?} must be \"off\", \"up\" or \"down\""),
                );
                ok = false;
                Pull::Off
            }
        },
    };
    let safe_on = match safe_state {
        None => false,
        Some(s) => match s.get_ref().as_str() {
            "off" => false,
            "on" => true,
            other => {
                v.error(
                    Some(s.span()),
                    format!("{at}: safe_state {other:?} must be \"on\" or \"off\""),
                );
                ok = false;
                false
            }
        },
    };
    let mut timing = |key: &str, raw: Option<Spanned<String>>, default, zero_ok| match raw {
        None => default,
        Some(raw) => match parse_duration(raw.get_ref()) {
            Ok(d) if d <= MAX_TIMING && (zero_ok || !d.is_zero()) => d,
            Ok(_) => {
                let least = if zero_ok { "0ms" } else { "1ms" };
                v.error(
                    Some(raw.span()),
                    format!(
                        "{at}: {key} {:?} must be between {least} and 60s",
                        raw.get_ref()
                    ),
                );
                ok = false;
                default
            }
            Err(why) => {
                v.error(
                    Some(raw.span()),
                    format!(
                        "{at}: {key} {:?} is not a valid duration: {why}",
                        raw.get_ref()
                    ),
                );
                ok = false;
                default
            }
        },
    };
    let debounce = timing("debounce", debounce, DEFAULT_DEBOUNCE, true);
    let pulse = timing("pulse", pulse, DEFAULT_PULSE, false);
    let unit = match unit {
        None => None,
        Some(u) if u.get_ref().is_empty() || u.get_ref().chars().count() > UNIT_MAX_LEN => {
            v.error(
                Some(u.span()),
                format!(
                    "{at}: unit {:?} must be 1-{UNIT_MAX_LEN} characters",
                    u.get_ref()
                ),
            );
            ok = false;
            None
        }
        Some(u) => Some(u.into_inner()),
    };
    let id_span = id.span();
    ok.then(|| {
        (
            EntitySettings {
                id: id.into_inner(),
                name,
                kind,
                pin: pin_number,
                invert: invert.is_some_and(Spanned::into_inner),
                pull,
                debounce,
                pulse,
                safe_on,
                unit,
            },
            id_span,
            pin_span,
        )
    })
}

/// Reports `raw`, when given, as `key` that does not apply (`why`), and drops it so that its
/// value is not checked as well; returns whether the key was absent.
fn refuse<T>(
    v: &mut Validator<'_>,
    at: &str,
    key: &str,
    raw: &mut Option<Spanned<T>>,
    why: &str,
) -> bool {
    match raw.take() {
        Some(raw) => {
            v.error(Some(raw.span()), format!("{at}: {key} {why}"));
            false
        }
        None => true,
    }
}

fn check_id(v: &mut Validator<'_>, raw: &Spanned<String>, key: &str) -> bool {
    let ok = is_valid_id(raw.get_ref());
    if !ok {
        v.error(
            Some(raw.span()),
            format!("{key} {:?} {ID_RULE}", raw.get_ref()),
        );
    }
    ok
}

/// A display name: 1-64 characters, no control characters; `fallback` when not given.
fn check_name(
    v: &mut Validator<'_>,
    raw: Option<Spanned<String>>,
    at: &str,
    fallback: &str,
) -> String {
    let Some(raw) = raw else {
        return fallback.to_owned();
    };
    let text = raw.get_ref();
    if text.trim().is_empty()
        || text.chars().count() > NAME_MAX_LEN
        || text.chars().any(char::is_control)
    {
        v.error(
            Some(raw.span()),
            format!("{at}: name {text:?} must be 1-{NAME_MAX_LEN} characters with no control characters"),
        );
        return fallback.to_owned();
    }
    raw.into_inner()
}
