//! The whole `main` of a service, the same for ingest and the forwarder:
//! parse the settings (a bad one exits 2 with a one-line message), install
//! the TLS provider, log as configured, run until SIGTERM or ctrl-c.

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::CommonConfig;

/// A service's settings, which hold the common ones.
pub trait ServiceConfig: clap::Parser {
    fn common(&self) -> &CommonConfig;
}

/// Binds the address of the setting `setting` (`INGEST_ADDR`, say); the
/// error names both when it is taken.
pub async fn listen(
    setting: &str,
    addr: std::net::SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {setting} {addr}: {e}"))
}

/// Runs the service `name` with `run`; a failure is logged and exits 1.
pub async fn main<C, Fut>(
    name: &'static str,
    run: impl FnOnce(C, CancellationToken) -> Fut,
) -> ExitCode
where
    C: ServiceConfig,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config: C = crate::config::parse_or_exit(name);
    crate::install_crypto_provider();
    crate::telemetry::init_logging(config.common().log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::shutdown::on_signal(shutdown.clone()));
    match run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, on stderr with the other log lines.
            tracing::error!("{name} failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
