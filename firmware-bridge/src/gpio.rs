//! GPIO behind one small trait, [`Gpio`], with two backends: [`RppalGpio`] drives a
//! Raspberry Pi's pins through rppal, and [`SimGpio`] simulates pins in memory for every
//! other machine and for tests (its inputs are driven by [`SimGpio::drive`], its outputs read
//! back by [`SimGpio::level`] and [`SimGpio::duty`], its analog inputs set by
//! [`SimGpio::set_analog`]). [`open`] picks one as the config says. Pins are BCM numbers.
//! Inputs report each edge, undebounced, on a channel; debouncing is `debounce.rs`'s job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

/// Software PWM frequency for lights driven by [`Gpio::pwm`].
pub const PWM_HZ: f64 = 200.0;

/// Where the board tells its model.
const MODEL_FILE: &str = "/proc/device-tree/model";

/// An input's pull resistor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pull {
    /// None: the circuit sets the level.
    #[default]
    Off,
    /// Pulled up: a button to ground reads low when pressed.
    Up,
    /// Pulled down.
    Down,
}

/// A level change on an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// The pin.
    pub pin: u8,
    /// The level after the edge.
    pub high: bool,
    /// When it was seen.
    pub at: Instant,
}

/// A new value on an analog input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The ADC channel.
    pub channel: u8,
    /// Its value now.
    pub value: f64,
}

/// Why a GPIO operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// The backend cannot be used on this machine (no Raspberry Pi, no permission).
    #[error("GPIO backend {backend} is not available: {reason}")]
    Unavailable {
        /// `rppal` or `simulated`.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// One pin cannot be used as asked (in use, not on this board, used as the other
    /// direction already).
    #[error("GPIO pin {pin}: {reason}")]
    Pin {
        /// The pin.
        pin: u8,
        /// Why.
        reason: String,
    },
}

/// A board's pins.
pub trait Gpio: Send + Sync {
    /// The backend's name, for logs and `/health`: `rppal` or `simulated`.
    fn backend(&self) -> &'static str;
    /// Makes `pin` an output (on first use) and sets it.
    fn output(&self, pin: u8, high: bool) -> Result<(), GpioError>;
    /// Makes `pin` an output (on first use) driven by software PWM at [`PWM_HZ`] with `duty`
    /// (0.0 to 1.0, clamped).
    fn pwm(&self, pin: u8, duty: f64) -> Result<(), GpioError>;
    /// Makes `pin` an input with `pull` and sends every edge on it to `edges`; returns its
    /// level now.
    fn input(&self, pin: u8, pull: Pull, edges: UnboundedSender<Edge>) -> Result<bool, GpioError>;
    /// Watches ADC `channel`, sending each change of its value to `changes`; returns its value
    /// now. Only the simulated backend has analog inputs: a Raspberry Pi's header has no ADC
    /// (read analog sensors through a serial board, such as Firmata's analog pins).
    fn analog_input(
        &self,
        channel: u8,
        changes: UnboundedSender<Reading>,
    ) -> Result<f64, GpioError>;
}

/// Which backend a node uses (`gpio.backend` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// rppal on a Raspberry Pi, simulated elsewhere.
    #[default]
    Auto,
    /// rppal; fails anywhere but on a Raspberry Pi.
    Rppal,
    /// Simulated pins.
    Simulated,
}

/// Whether this machine is a Raspberry Pi, by its device-tree model.
pub fn is_raspberry_pi() -> bool {
    std::fs::read_to_string(MODEL_FILE).is_ok_and(|model| model.contains("Raspberry Pi"))
}

/// An open backend; `simulated` is the same pins as [`SimGpio`], for driving its inputs.
pub struct Opened {
    /// The pins.
    pub gpio: Arc<dyn Gpio>,
    /// The simulated backend's own handle, when it is the one open.
    pub simulated: Option<Arc<SimGpio>>,
}

/// Opens the backend `backend` asks for. A simulated backend comes with its handle, so the
/// caller can drive its inputs (tests, the demo devices, the simulation hook).
pub fn open(backend: Backend) -> Result<Opened, GpioError> {
    let rppal = match backend {
        Backend::Auto => is_raspberry_pi(),
        Backend::Rppal => true,
        Backend::Simulated => false,
    };
    if rppal {
        Ok(Opened {
            gpio: Arc::new(RppalGpio::open()?),
            simulated: None,
        })
    } else {
        let sim = Arc::new(SimGpio::default());
        Ok(Opened {
            gpio: sim.clone(),
            simulated: Some(sim),
        })
    }
}

/// One simulated pin.
#[derive(Debug)]
enum SimPin {
    /// An output: its level, and its PWM duty if PWM drives it.
    Output { high: bool, duty: Option<f64> },
    /// An input: its level, and where its edges go.
    Input {
        high: bool,
        edges: UnboundedSender<Edge>,
    },
}

/// One simulated analog input: its value, and where its changes go once watched.
#[derive(Debug, Default)]
struct SimAnalog {
    value: f64,
    changes: Option<UnboundedSender<Reading>>,
}

/// Pins in memory.
#[derive(Debug, Default)]
pub struct SimGpio {
    pins: Mutex<HashMap<u8, SimPin>>,
    analog: Mutex<HashMap<u8, SimAnalog>>,
}

impl SimGpio {
    fn pins(&self) -> MutexGuard<'_, HashMap<u8, SimPin>> {
        // A poisoned lock means a panic elsewhere; the map itself is still consistent.
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drives the simulated input `pin` to `high`, as a wire would; an edge goes out if the
    /// level changes. Fails if `pin` is not an input.
    pub fn drive(&self, pin: u8, high: bool) -> Result<(), GpioError> {
        let mut pins = self.pins();
        match pins.get_mut(&pin) {
            Some(SimPin::Input { high: level, edges }) => {
                if *level != high {
                    *level = high;
                    // A closed channel means nobody watches the input any more.
                    let _ = edges.send(Edge {
                        pin,
                        high,
                        at: Instant::now(),
                    });
                }
                Ok(())
            }
            _ => Err(GpioError::Pin {
                pin,
                reason: "not a simulated input".into(),
            }),
        }
    }

    /// Sets the simulated analog input `channel` to `value`, as a sensor would; the change
    /// goes out if the channel is watched and the value differs. A channel not yet watched
    /// keeps the value for when it is.
    pub fn set_analog(&self, channel: u8, value: f64) {
        let mut analog = self.analog.lock().unwrap_or_else(|e| e.into_inner());
        let input = analog.entry(channel).or_default();
        if input.value != value {
            input.value = value;
            if let Some(changes) = &input.changes {
                // A closed channel means nobody watches the input any more.
                let _ = changes.send(Reading { channel, value });
            }
        }
    }

    /// The value of analog input `channel` (0 until set).
    pub fn analog(&self, channel: u8) -> f64 {
        let analog = self.analog.lock().unwrap_or_else(|e| e.into_inner());
        analog.get(&channel).map_or(0.0, |a| a.value)
    }

    /// The level of input `pin`, if it is one.
    pub fn input_level(&self, pin: u8) -> Option<bool> {
        match self.pins().get(&pin) {
            Some(SimPin::Input { high, .. }) => Some(*high),
            _ => None,
        }
    }

    /// The level of output `pin`, if it is one.
    pub fn level(&self, pin: u8) -> Option<bool> {
        match self.pins().get(&pin) {
            Some(SimPin::Output { high, .. }) => Some(*high),
            _ => None,
        }
    }

    /// The PWM duty of output `pin`, if PWM drives it.
    pub fn duty(&self, pin: u8) -> Option<f64> {
        match self.pins().get(&pin) {
            Some(SimPin::Output { duty, .. }) => *duty,
            _ => None,
        }
    }

    fn set_output(&self, pin: u8, high: bool, duty: Option<f64>) -> Result<(), GpioError> {
        let mut pins = self.pins();
        if let Some(SimPin::Input { .. }) = pins.get(&pin) {
            return Err(GpioError::Pin {
                pin,
                reason: "already an input".into(),
            });
        }
        pins.insert(pin, SimPin::Output { high, duty });
        Ok(())
    }
}

impl Gpio for SimGpio {
    fn backend(&self) -> &'static str {
        "simulated"
    }

    fn output(&self, pin: u8, high: bool) -> Result<(), GpioError> {
        self.set_output(pin, high, None)
    }

    fn pwm(&self, pin: u8, duty: f64) -> Result<(), GpioError> {
        let duty = duty.clamp(0.0, 1.0);
        self.set_output(pin, duty > 0.0, Some(duty))
    }

    fn input(&self, pin: u8, pull: Pull, edges: UnboundedSender<Edge>) -> Result<bool, GpioError> {
        let mut pins = self.pins();
        if let Some(SimPin::Output { .. }) = pins.get(&pin) {
            return Err(GpioError::Pin {
                pin,
                reason: "already an output".into(),
            });
        }
        // An unconnected input reads as its pull says; a pulled-up one is high.
        let high = match pins.get(&pin) {
            Some(SimPin::Input { high, .. }) => *high,
            _ => pull == Pull::Up,
        };
        pins.insert(pin, SimPin::Input { high, edges });
        Ok(high)
    }

    fn analog_input(
        &self,
        channel: u8,
        changes: UnboundedSender<Reading>,
    ) -> Result<f64, GpioError> {
        let mut analog = self.analog.lock().unwrap_or_else(|e| e.into_inner());
        let input = analog.entry(channel).or_default();
        input.changes = Some(changes);
        Ok(input.value)
    }
}

/// A pin rppal has handed out.
enum RppalPin {
    Output(rppal::gpio::OutputPin),
    /// Held so that its interrupt keeps reporting edges (dropping it stops them and gives
    /// the pin back).
    Input {
        _held: rppal::gpio::InputPin,
    },
}

/// A Raspberry Pi's pins through rppal (the GPIO character device).
pub struct RppalGpio {
    gpio: rppal::gpio::Gpio,
    pins: Mutex<HashMap<u8, RppalPin>>,
}

impl RppalGpio {
    /// Opens the Pi's GPIO; fails on any other machine, or without access to the GPIO
    /// device (the `gpio` group).
    pub fn open() -> Result<RppalGpio, GpioError> {
        let gpio = rppal::gpio::Gpio::new().map_err(|e| GpioError::Unavailable {
            backend: "rppal",
            reason: e.to_string(),
        })?;
        Ok(RppalGpio {
            gpio,
            pins: Mutex::new(HashMap::new()),
        })
    }

    fn pins(&self) -> MutexGuard<'_, HashMap<u8, RppalPin>> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on `pin` as an output, making it one on first use at level `first` (rppal's
    /// plain `into_output` would keep whatever level the pin had, and an active-low relay
    /// could click on for an instant).
    fn with_output(
        &self,
        pin: u8,
        first: bool,
        f: impl FnOnce(&mut rppal::gpio::OutputPin) -> Result<(), rppal::gpio::Error>,
    ) -> Result<(), GpioError> {
        let pin_err = |reason: String| GpioError::Pin { pin, reason };
        let mut pins = self.pins();
        if let std::collections::hash_map::Entry::Vacant(slot) = pins.entry(pin) {
            let raw = self.gpio.get(pin).map_err(|e| pin_err(e.to_string()))?;
            let output = if first {
                raw.into_output_high()
            } else {
                raw.into_output_low()
            };
            slot.insert(RppalPin::Output(output));
        }
        match pins.get_mut(&pin) {
            Some(RppalPin::Output(output)) => f(output).map_err(|e| pin_err(e.to_string())),
            _ => Err(pin_err("already an input".into())),
        }
    }
}

impl Gpio for RppalGpio {
    fn backend(&self) -> &'static str {
        "rppal"
    }

    fn output(&self, pin: u8, high: bool) -> Result<(), GpioError> {
        self.with_output(pin, high, |output| {
            output.clear_pwm()?;
            if high {
                output.set_high();
            } else {
                output.set_low();
            }
            Ok(())
        })
    }

    fn pwm(&self, pin: u8, duty: f64) -> Result<(), GpioError> {
        self.with_output(pin, false, |output| {
            output.set_pwm_frequency(PWM_HZ, duty.clamp(0.0, 1.0))
        })
    }

    fn input(&self, pin: u8, pull: Pull, edges: UnboundedSender<Edge>) -> Result<bool, GpioError> {
        let pin_err = |reason: String| GpioError::Pin { pin, reason };
        let mut pins = self.pins();
        if pins.contains_key(&pin) {
            return Err(pin_err("already in use".into()));
        }
        let raw = self.gpio.get(pin).map_err(|e| pin_err(e.to_string()))?;
        let mut input = match pull {
            Pull::Off => raw.into_input(),
            Pull::Up => raw.into_input_pullup(),
            Pull::Down => raw.into_input_pulldown(),
        };
        input
            .set_async_interrupt(rppal::gpio::Trigger::Both, None, move |event| {
                // rppal calls this on its own thread; a closed channel means nobody watches.
                let _ = edges.send(Edge {
                    pin,
                    high: event.trigger == rppal::gpio::Trigger::RisingEdge,
                    at: Instant::now(),
                });
            })
            .map_err(|e| pin_err(e.to_string()))?;
        let high = input.is_high();
        pins.insert(pin, RppalPin::Input { _held: input });
        Ok(high)
    }

    fn analog_input(
        &self,
        channel: u8,
        _changes: UnboundedSender<Reading>,
    ) -> Result<f64, GpioError> {
        Err(GpioError::Pin {
            pin: channel,
            reason: "a Raspberry Pi has no analog inputs; read the sensor through a serial board (Firmata's analog pins)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_pins_behave_like_wires() {
        let sim = SimGpio::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        assert!(sim.input(17, Pull::Up, tx).unwrap());
        sim.drive(17, true).unwrap();
        assert!(rx.try_recv().is_err(), "no edge without a change");
        sim.drive(17, false).unwrap();
        let edge = rx.try_recv().unwrap();
        assert_eq!((edge.pin, edge.high), (17, false));

        sim.output(4, true).unwrap();
        assert_eq!(sim.level(4), Some(true));
        sim.pwm(18, 1.5).unwrap();
        assert_eq!(sim.duty(18), Some(1.0));
        sim.pwm(18, 0.0).unwrap();
        assert_eq!((sim.level(18), sim.duty(18)), (Some(false), Some(0.0)));

        assert!(sim.drive(4, true).is_err(), "an output cannot be driven");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        assert!(sim.input(4, Pull::Off, tx).is_err());
        assert!(sim.output(17, true).is_err());

        sim.set_analog(0, 20.5);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        assert_eq!(sim.analog_input(0, tx).unwrap(), 20.5);
        sim.set_analog(0, 20.5);
        assert!(rx.try_recv().is_err(), "no reading without a change");
        sim.set_analog(0, 21.0);
        assert_eq!(
            rx.try_recv().unwrap(),
            Reading {
                channel: 0,
                value: 21.0
            }
        );
        assert_eq!(sim.analog(0), 21.0);
    }

    #[test]
    fn the_simulated_backend_is_chosen_off_a_pi() {
        let opened = open(Backend::Simulated).unwrap();
        assert_eq!(opened.gpio.backend(), "simulated");
        assert!(opened.simulated.is_some());
        if !is_raspberry_pi() {
            assert_eq!(open(Backend::Auto).unwrap().gpio.backend(), "simulated");
            assert!(matches!(
                open(Backend::Rppal),
                Err(GpioError::Unavailable { .. })
            ));
        }
    }
}
