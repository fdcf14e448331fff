//! The `roost` node as a library: everything the binary wires together, exposed so that
//! integration tests and helper programs use the same code.
//!
//! # Layout
//! - `cli`, `app`: the command line, and one node's start order and shutdown;
//! - `config`: the TOML file, validated into `Settings` with `FILE:LINE:COL` errors;
//! - `state`: the redb state store, one writer with group commit;
//! - `replication`: the store kept in step on every node through retained MQTT;
//! - `cluster`, `topics`: the cluster view (members, leader, term) and every topic name;
//! - `lease`, `coordinator`: the leader lease as a pure state machine, and the task that
//!   runs it over MQTT with heartbeats, membership and cluster events;
//! - `witness`: the link to the witness broker that gives a two-node cluster a third vote;
//! - `http`: `/health`, `/metrics`, the dashboard and its JSON API;
//! - `telemetry`, `logging`: the Prometheus registry and tracing;
//! - `devices`: the node's GPIO and serial devices at run time, on MQTT and in the store;
//! - `demo`: the simulated devices of the no-argument mode;
//! - `status`: the `roost status` command.

pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod demo;
pub mod devices;
pub mod http;
pub mod lease;
pub mod logging;
pub mod replication;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod topics;
pub mod witness;
