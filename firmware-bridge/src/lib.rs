//! firmware-bridge: the hardware a node drives — GPIO pins through rppal and serial devices
//! through tokio-serial — turned into devices with MQTT state and command topics.
//!
//! Empty in this release on purpose: the single-node foundation has no hardware yet, and the
//! demo devices of `roost` with no arguments are plain MQTT topics in `gateway/src/demo.rs`
//! until this crate takes them over as simulated GPIO devices.
