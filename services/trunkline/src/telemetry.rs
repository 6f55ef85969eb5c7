//! Logging set-up: `tracing` to stderr, text for humans or JSON for log shippers.
//!
//! Installed once, first thing after the configuration loads, so that every later event —
//! including start-up failures — goes through the same filter and format.

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `rust_log`, when given, replaces `log.level` (so a
/// developer can raise verbosity without touching the config).
pub fn init(log: &LogConfig, rust_log: Option<String>) -> anyhow::Result<()> {
    let filter = filter(log, rust_log)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|err| anyhow::anyhow!("cannot install the log subscriber: {err}"))
}

/// Builds the filter, naming the source of a bad directive.
fn filter(log: &LogConfig, rust_log: Option<String>) -> anyhow::Result<EnvFilter> {
    match rust_log {
        Some(directive) => EnvFilter::builder()
            .parse(&directive)
            .with_context(|| format!("RUST_LOG: invalid filter {directive:?}")),
        None => EnvFilter::builder()
            .parse(&log.level)
            .with_context(|| format!("log.level: invalid filter {:?}", log.level)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_and_errors_name_source() {
        let log = LogConfig::default();
        assert_eq!(filter(&log, None).unwrap().to_string(), "info");
        assert_eq!(
            filter(&log, Some("debug".into())).unwrap().to_string(),
            "debug"
        );
        let err = filter(&log, Some("info,==".into())).unwrap_err();
        assert!(format!("{err:#}").contains("RUST_LOG"), "{err:#}");
    }
}
