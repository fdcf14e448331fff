//! The node's Prometheus registry: created once at start, handed to every part that has
//! metrics (`Metrics::register(&registry)`), rendered by `GET /metrics`. Also carries the
//! node-wide series: process RSS and CPU, build info, uptime.

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Registers `collector` on `registry` and hands it back, for a part's `Metrics::register`
/// to build and register each series in one expression.
pub fn registered<C>(registry: &Registry, collector: C) -> Result<C, prometheus::Error>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// The registry plus the series the gateway itself owns; cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    /// Every metric of the node.
    registry: Registry,
    /// Seconds since start, refreshed at each scrape.
    uptime: IntGauge,
    /// `roost_http_bad_requests_total{endpoint}`: requests refused for bad input.
    bad_requests: IntCounterVec,
}

impl Telemetry {
    /// A registry with the process collector (as `roost_process_*`) and build info.
    pub fn new(node: &str) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "roost",
            ),
        ))?;
        let info = IntGaugeVec::new(
            Opts::new("roost_build_info", "Version of the running roost, always 1"),
            &["version", "node"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), node])
            .set(1);
        registry.register(Box::new(info))?;
        let uptime = IntGauge::new("roost_uptime_seconds", "Seconds since the node started")?;
        registry.register(Box::new(uptime.clone()))?;
        let bad_requests = IntCounterVec::new(
            Opts::new(
                "roost_http_bad_requests_total",
                "HTTP requests refused with 400 for bad input, by endpoint",
            ),
            &["endpoint"],
        )?;
        registry.register(Box::new(bad_requests.clone()))?;
        Ok(Telemetry {
            registry,
            uptime,
            bad_requests,
        })
    }

    /// Counts a request to `endpoint` refused for bad input.
    pub fn bad_request(&self, endpoint: &str) {
        self.bad_requests.with_label_values(&[endpoint]).inc();
    }

    /// The registry, for parts registering their metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in Prometheus text format.
    pub fn render(&self, uptime_seconds: u64) -> Result<String, prometheus::Error> {
        self.uptime
            .set(i64::try_from(uptime_seconds).unwrap_or(i64::MAX));
        let mut out = Vec::with_capacity(8192);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
