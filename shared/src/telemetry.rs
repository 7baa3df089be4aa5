//! Logging set-up: readable text by default, JSON lines with `LOG_FORMAT=json`.
//! `RUST_LOG` narrows or widens what is logged (default `info`, with
//! async-nats's own lines from `warn`: it logs every connection event at
//! INFO without the server; [`crate::jetstream::connect`] logs them with it).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// What is logged when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,async_nats=warn";

pub fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
