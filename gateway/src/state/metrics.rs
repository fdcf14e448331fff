//! The store's Prometheus metrics (`roost_state_*`), registered once per open store.
//! [`Store::open`](super::Store::open) registers them on the node's registry; the writer thread
//! updates them. Nothing here reads or writes the database, and no label carries a key or value.

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

use super::Error;

/// Latency buckets for one write, from the caller's send to its acknowledgement: 0.1 ms (a
/// batch on a fast disk) up to 1 s (an SD card that stalls).
const WRITE_SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Batch size buckets: powers of two up to the writer's batch limit.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Handles on the registered metrics; cloning shares the same series.
#[derive(Clone)]
pub(crate) struct Metrics {
    /// `roost_state_keys`: records in the store (tombstones included) after the last commit.
    pub(crate) keys: IntGauge,
    /// `roost_state_tombstones`: tombstones among them.
    pub(crate) tombstones: IntGauge,
    /// `roost_state_writes_total`: puts and deletes committed.
    pub(crate) writes: IntCounter,
    /// `roost_state_write_seconds`: from a caller's send to its acknowledgement.
    pub(crate) write_seconds: Histogram,
    /// `roost_state_commit_batch_size`: ops per write transaction.
    pub(crate) batch_size: Histogram,
    /// `roost_state_write_errors_total`: puts and deletes that failed.
    pub(crate) write_errors: IntCounter,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    ///
    /// A store reopened on the same registry (after [`Store::close`](super::Store::close))
    /// replaces the series of the previous one instead of failing.
    pub(crate) fn register(registry: &Registry) -> Result<Metrics, Error> {
        let metrics_err = |source| Error::Metrics { source };
        let keys = IntGauge::new(
            "roost_state_keys",
            "Records in the local state store, tombstones included.",
        )
        .map_err(metrics_err)?;
        let writes = IntCounter::new(
            "roost_state_writes_total",
            "State store puts and deletes committed.",
        )
        .map_err(metrics_err)?;
        let write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "roost_state_write_seconds",
                "Time from a state write's submission to its durable acknowledgement.",
            )
            .buckets(WRITE_SECONDS_BUCKETS.to_vec()),
        )
        .map_err(metrics_err)?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "roost_state_commit_batch_size",
                "State store operations per committed write transaction.",
            )
            .buckets(BATCH_SIZE_BUCKETS.to_vec()),
        )
        .map_err(metrics_err)?;
        let tombstones = IntGauge::new(
            "roost_state_tombstones",
            "Deleted keys the state store keeps as tombstones until replication clears them.",
        )
        .map_err(metrics_err)?;
        let write_errors = IntCounter::new(
            "roost_state_write_errors_total",
            "State store puts and deletes that failed.",
        )
        .map_err(metrics_err)?;

        let metrics = Metrics {
            keys,
            tombstones,
            writes,
            write_seconds,
            batch_size,
            write_errors,
        };
        metrics.register_all(registry).map_err(metrics_err)?;
        Ok(metrics)
    }

    fn register_all(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        register_one(registry, &self.keys)?;
        register_one(registry, &self.tombstones)?;
        register_one(registry, &self.writes)?;
        register_one(registry, &self.write_seconds)?;
        register_one(registry, &self.batch_size)?;
        register_one(registry, &self.write_errors)
    }
}

/// Registers `collector`, replacing a collector with the same descriptor left by a previous
/// store on this registry (unregistering matches by descriptor, not by identity).
fn register_one<C>(registry: &Registry, collector: &C) -> Result<(), prometheus::Error>
where
    C: Collector + Clone + 'static,
{
    match registry.register(Box::new(collector.clone())) {
        Err(prometheus::Error::AlreadyReg) => {
            registry.unregister(Box::new(collector.clone()))?;
            registry.register(Box::new(collector.clone()))
        }
        other => other,
    }
}
