//! firmware-bridge: the hardware a node drives — GPIO pins through rppal and serial devices
//! through tokio-serial — turned into devices with MQTT state and command topics.
//!
//! Built so far, each without I/O of its own except the GPIO backends:
//! - `jsonl`: line-delimited JSON for custom firmware, and `firmata`: Firmata, the protocol
//!   of the StandardFirmata sketch; codecs that never panic on any input (property-tested);
//! - `codec`: how both report bad input ([`codec::Malformed`]);
//! - `entity`: the entity kinds, their state payloads and the checking of commands;
//! - `debounce`: a pure debouncer for digital inputs;
//! - `gpio`: the GPIO backend trait, with rppal on a Raspberry Pi and simulated pins
//!   elsewhere;
//! - `device`: GPIO devices at run time: safe states, checked commands, button pulses,
//!   debounced and inverted inputs, every state sent as an update;
//! - `serial`: serial devices at run time, over either protocol, reopened with backoff when
//!   unplugged.
//!
//! The devices' config and their MQTT topics come next; until
//! then the demo devices of `roost` with no arguments are plain MQTT topics in
//! `gateway/src/demo.rs`.

pub mod codec;
pub mod debounce;
pub mod device;
pub mod entity;
pub mod firmata;
pub mod gpio;
pub mod jsonl;
pub mod serial;
