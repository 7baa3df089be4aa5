//! `ingest`: parse the configuration, run until SIGTERM or ctrl-c.

use ingest::config::IngestConfig;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config: IngestConfig = shared::config::parse_or_exit("ingest");
    shared::install_crypto_provider();
    shared::telemetry::init_logging(config.common.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(shared::shutdown::on_signal(shutdown.clone()));
    match ingest::app::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("ingest failed: {e:#}");
            eprintln!("ingest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
