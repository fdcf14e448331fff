//! firmware-bridge: the hardware a node drives — GPIO pins through rppal and serial devices
//! through tokio-serial — turned into devices with MQTT state and command topics.
//!
//! Built so far: the two serial protocols, as codecs that do no I/O and never panic on any
//! input (property-tested):
//! - `jsonl`: line-delimited JSON for custom firmware;
//! - `firmata`: Firmata, the protocol of the StandardFirmata sketch;
//! - `codec`: how both report bad input ([`codec::Malformed`]).
//!
//! The device model, the GPIO backends and the serial ports that use them come next; until
//! then the demo devices of `roost` with no arguments are plain MQTT topics in
//! `gateway/src/demo.rs`.

pub mod codec;
pub mod firmata;
pub mod jsonl;
