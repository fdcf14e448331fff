//! The kinds of entity a device has (switch, binary_sensor, sensor, light, button), the
//! payloads of their state topics, and the checking of commands sent to their command
//! topics. The payloads are Home Assistant's defaults for each kind, so discovery configs
//! need no templates. Pure: no I/O, no clock.

use serde::{Deserialize, Serialize};

/// What an entity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An output that is on or off (a relay).
    Switch,
    /// An input that is on or off (a button, a PIR, a reed contact).
    BinarySensor,
    /// A numeric reading with a unit.
    Sensor,
    /// An output with on/off and a brightness (PWM).
    Light,
    /// A momentary output: pressed, it pulses for a set time.
    Button,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Switch,
        Kind::BinarySensor,
        Kind::Sensor,
        Kind::Light,
        Kind::Button,
    ];

    /// The kind's name, as in configs, topics and Home Assistant: `switch`, `binary_sensor`,
    /// `sensor`, `light`, `button`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Switch => "switch",
            Kind::BinarySensor => "binary_sensor",
            Kind::Sensor => "sensor",
            Kind::Light => "light",
            Kind::Button => "button",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether it has a command topic.
    pub fn takes_commands(self) -> bool {
        matches!(self, Kind::Switch | Kind::Light | Kind::Button)
    }
}

/// An entity's state, as published on its state topic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    /// A switch, binary sensor or button: `ON` or `OFF`.
    OnOff(bool),
    /// A sensor reading, published as its number.
    Number(f64),
    /// A light: `{"state":"ON","brightness":128}` (Home Assistant's JSON schema).
    Light {
        /// On or off.
        on: bool,
        /// 0-255, kept while off.
        brightness: u8,
    },
}

impl State {
    /// The state topic's payload.
    pub fn payload(&self) -> String {
        match self {
            State::OnOff(on) => on_off(*on).to_owned(),
            State::Number(n) => format!("{n}"),
            State::Light { on, brightness } => {
                format!(r#"{{"state":"{}","brightness":{brightness}}}"#, on_off(*on))
            }
        }
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "ON"
    } else {
        "OFF"
    }
}

/// A checked command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Switch on or off.
    Set(bool),
    /// Switch to the other state.
    Toggle,
    /// A light: on or off (absent: leave as is, or on if only a brightness is given) and a
    /// brightness (absent: leave as is).
    Light {
        /// On or off.
        on: Option<bool>,
        /// 0-255.
        brightness: Option<u8>,
    },
    /// Press a button.
    Press,
}

/// Why a command was refused; the node logs it and counts it by [`CommandError::label`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The entity has no command topic (a sensor).
    #[error("a {} takes no commands", .0.as_str())]
    NotCommandable(Kind),
    /// The payload is not one the entity understands.
    #[error("payload {payload:?} is not a {kind} command: {expected}", kind = kind.as_str())]
    BadPayload {
        /// The entity's kind.
        kind: Kind,
        /// The payload, cut to 64 bytes.
        payload: String,
        /// What would be understood.
        expected: &'static str,
    },
    /// A number outside its range.
    #[error("{field} {value} is out of range 0-{max}")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// The value given.
        value: i64,
        /// The largest allowed.
        max: i64,
    },
}

impl CommandError {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            CommandError::NotCommandable(_) => "not_commandable",
            CommandError::BadPayload { .. } => "bad_payload",
            CommandError::OutOfRange { .. } => "out_of_range",
        }
    }
}

/// A light command in Home Assistant's JSON schema.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LightJson {
    state: Option<String>,
    brightness: Option<i64>,
}

/// Checks `payload` as a command for an entity of `kind`.
///
/// - switch: `ON`, `OFF`, `TOGGLE`, `1`, `0`, `true`, `false` (any case, whitespace ignored);
/// - light: the same words, or `{"state":"ON","brightness":0-255}` (either field optional);
/// - button: `PRESS` (or an empty payload).
pub fn parse_command(kind: Kind, payload: &[u8]) -> Result<Command, CommandError> {
    let text = std::str::from_utf8(payload).unwrap_or("").trim();
    let bad = |expected| CommandError::BadPayload {
        kind,
        payload: String::from_utf8_lossy(&payload[..payload.len().min(64)]).into_owned(),
        expected,
    };
    let word = |text: &str| match text.to_ascii_uppercase().as_str() {
        "ON" | "1" | "TRUE" => Some(Command::Set(true)),
        "OFF" | "0" | "FALSE" => Some(Command::Set(false)),
        "TOGGLE" => Some(Command::Toggle),
        _ => None,
    };
    match kind {
        Kind::BinarySensor | Kind::Sensor => Err(CommandError::NotCommandable(kind)),
        Kind::Switch => word(text).ok_or_else(|| bad("ON, OFF or TOGGLE")),
        Kind::Button => match text.to_ascii_uppercase().as_str() {
            "" | "PRESS" => Ok(Command::Press),
            _ => Err(bad("PRESS")),
        },
        Kind::Light => {
            if let Some(command) = word(text) {
                return Ok(command);
            }
            const EXPECTED: &str = r#"ON, OFF, TOGGLE or {"state":"ON","brightness":0-255}"#;
            let json: LightJson = serde_json::from_str(text).map_err(|_| bad(EXPECTED))?;
            let on = match json
                .state
                .as_deref()
                .map(str::to_ascii_uppercase)
                .as_deref()
            {
                None => None,
                Some("ON") => Some(true),
                Some("OFF") => Some(false),
                Some(_) => return Err(bad(EXPECTED)),
            };
            let brightness = match json.brightness {
                None => None,
                Some(b) => Some(u8::try_from(b).map_err(|_| CommandError::OutOfRange {
                    field: "brightness",
                    value: b,
                    max: 255,
                })?),
            };
            if on.is_none() && brightness.is_none() {
                return Err(bad(EXPECTED));
            }
            Ok(Command::Light { on, brightness })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_and_button_words() {
        assert_eq!(
            parse_command(Kind::Switch, b" on\n"),
            Ok(Command::Set(true))
        );
        assert_eq!(parse_command(Kind::Switch, b"0"), Ok(Command::Set(false)));
        assert_eq!(parse_command(Kind::Switch, b"Toggle"), Ok(Command::Toggle));
        assert!(matches!(
            parse_command(Kind::Switch, b"maybe"),
            Err(CommandError::BadPayload { .. })
        ));
        assert_eq!(parse_command(Kind::Button, b"PRESS"), Ok(Command::Press));
        assert_eq!(parse_command(Kind::Button, b""), Ok(Command::Press));
        assert!(parse_command(Kind::Button, b"ON").is_err());
        assert_eq!(
            parse_command(Kind::Sensor, b"ON"),
            Err(CommandError::NotCommandable(Kind::Sensor))
        );
        assert_eq!(
            parse_command(Kind::Switch, &[0xFF, 0xFE]).map_err(|e| e.label()),
            Err("bad_payload")
        );
    }

    #[test]
    fn light_commands_and_ranges() {
        assert_eq!(
            parse_command(Kind::Light, br#"{"state":"ON","brightness":200}"#),
            Ok(Command::Light {
                on: Some(true),
                brightness: Some(200)
            })
        );
        assert_eq!(
            parse_command(Kind::Light, br#"{"brightness":0}"#),
            Ok(Command::Light {
                on: None,
                brightness: Some(0)
            })
        );
        assert_eq!(parse_command(Kind::Light, b"OFF"), Ok(Command::Set(false)));
        assert_eq!(
            parse_command(Kind::Light, br#"{"state":"ON","brightness":256}"#),
            Err(CommandError::OutOfRange {
                field: "brightness",
                value: 256,
                max: 255
            })
        );
        for bad in [
            &br#"{"state":"DIM"}"#[..],
            br#"{}"#,
            br#"{"colour":"red"}"#,
            b"[1]",
        ] {
            assert!(parse_command(Kind::Light, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn state_payloads() {
        assert_eq!(State::OnOff(true).payload(), "ON");
        assert_eq!(State::Number(21.5).payload(), "21.5");
        assert_eq!(State::Number(-3.0).payload(), "-3");
        assert_eq!(
            State::Light {
                on: false,
                brightness: 40
            }
            .payload(),
            r#"{"state":"OFF","brightness":40}"#
        );
        assert_eq!(Kind::parse("binary_sensor"), Some(Kind::BinarySensor));
        assert!(Kind::Light.takes_commands() && !Kind::Sensor.takes_commands());
    }
}
