//! firmware-bridge: the hardware a node drives — GPIO pins through rppal and serial devices
//! through tokio-serial — turned into devices with MQTT state and command topics.
//!
//! Each module, without I/O of its own except the GPIO backends and the serial ports:
//! - `jsonl`: line-delimited JSON for custom firmware, and `firmata`: Firmata, the protocol
//!   of the StandardFirmata sketch; codecs that never panic on any input (property-tested);
//! - `codec`: how both report bad input ([`codec::Malformed`]);
//! - `entity`: the entity kinds, their state payloads and the checking of commands;
//! - `debounce`: a pure debouncer for digital inputs;
//! - `gpio`: the GPIO backend trait, with rppal on a Raspberry Pi and simulated pins (and
//!   analog inputs) elsewhere;
//! - `device`: GPIO devices at run time: safe states, checked commands, button pulses,
//!   debounced and inverted inputs, sensors, every state sent as an update;
//! - `serial`: serial devices at run time, over either protocol, reopened with backoff when
//!   unplugged.
//!
//! The node (`gateway/src/devices.rs`) reads the devices from its config and turns their
//! updates and availability into MQTT topics, and MQTT commands into calls here.

pub mod codec;
pub mod debounce;
pub mod device;
pub mod entity;
pub mod firmata;
pub mod gpio;
pub mod jsonl;
pub mod serial;
