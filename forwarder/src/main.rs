//! `forwarder`: parse the configuration, run until SIGTERM or ctrl-c.

use forwarder::config::ForwarderConfig;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config: ForwarderConfig = shared::config::parse_or_exit("forwarder");
    shared::install_crypto_provider();
    shared::telemetry::init_logging(config.common.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(shared::shutdown::on_signal(shutdown.clone()));
    match forwarder::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("forwarder failed: {e:#}");
            eprintln!("forwarder: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
