//! The `roost` node as a library: everything the binary wires together, exposed so that
//! integration tests and helper programs can use the same code.

pub mod config;
pub mod state;
