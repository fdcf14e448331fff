//! Structured logs with tracing: the level comes from `RUST_LOG` when set, else from the
//! config's `[log] level`; text for a terminal or the journal, JSON for log shippers.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber; called once, before anything logs.
pub fn init(settings: &LogSettings) {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| settings.level.clone());
    // rumqttd logs every accepted socket at info; keep it to warnings unless asked for.
    let directives = if directives.contains("rumqttd") {
        directives
    } else {
        format!("{directives},rumqttd=warn")
    };
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("roost: log level {directives:?} is not valid ({e}); using info");
        EnvFilter::new("info,rumqttd=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
