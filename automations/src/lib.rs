//! automations: the trigger → condition → action rule engine that runs on the cluster's
//! leader, as a pure library (no I/O of its own; the gateway feeds it states, messages and
//! time through small traits).
//!
//! Empty in this release on purpose: rules need the cluster lease and replicated state, which
//! later releases build first.
