//! The replication's Prometheus metrics (`roost_state_replicated_total`,
//! `roost_state_rejected_total`, ...), registered once at start. Labels carry directions and
//! rejection reasons, never keys or values.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::rules::Rejection;

/// From a write at its origin to its record stored here: 1 ms to 10 s.
const LAG_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Handles on the registered series.
#[derive(Clone)]
pub(crate) struct Metrics {
    /// `roost_state_replicated_total{direction="out"}`: records this node published.
    pub(crate) published: IntCounter,
    /// `roost_state_replicated_total{direction="in"}`: peers' records stored here.
    pub(crate) applied: IntCounter,
    /// `roost_state_rejected_total{reason}`.
    rejected: IntCounterVec,
    /// `roost_state_repairs_total`: state topics this node republished or cleared.
    pub(crate) repairs: IntCounter,
    /// `roost_state_reconciles_total`: anti-entropy passes.
    pub(crate) reconciles: IntCounter,
    /// `roost_state_in_sync`: 1 when `/health` says the store is in sync.
    pub(crate) in_sync: IntGauge,
    /// `roost_state_replication_lag_seconds`: origin's commit to this node's.
    pub(crate) lag: Histogram,
}

impl Metrics {
    /// Creates the series and registers them on `registry`.
    pub(crate) fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let replicated = IntCounterVec::new(
            Opts::new(
                "roost_state_replicated_total",
                "State records published by this node (out) and peers' records stored (in).",
            ),
            &["direction"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "roost_state_rejected_total",
                "Messages on the state topics that were not applied, by reason.",
            ),
            &["reason"],
        )?;
        let repairs = IntCounter::new(
            "roost_state_repairs_total",
            "State topics this node republished or cleared to repair the retained copy.",
        )?;
        let reconciles = IntCounter::new(
            "roost_state_reconciles_total",
            "Anti-entropy passes comparing the store with the retained state topics.",
        )?;
        let in_sync = IntGauge::new(
            "roost_state_in_sync",
            "1 when the state store has caught up with every linked peer, else 0.",
        )?;
        let lag = Histogram::with_opts(
            HistogramOpts::new(
                "roost_state_replication_lag_seconds",
                "Time from a write's commit at its origin to its commit here (origin's clock).",
            )
            .buckets(LAG_BUCKETS.to_vec()),
        )?;
        for reason in Rejection::ALL {
            rejected.with_label_values(&[reason.label()]);
        }
        registry.register(Box::new(replicated.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(repairs.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(in_sync.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        Ok(Metrics {
            published: replicated.with_label_values(&["out"]),
            applied: replicated.with_label_values(&["in"]),
            rejected,
            repairs,
            reconciles,
            in_sync,
            lag,
        })
    }

    /// Counts one rejected message.
    pub(crate) fn reject(&self, reason: Rejection) {
        self.rejected.with_label_values(&[reason.label()]).inc();
    }
}
