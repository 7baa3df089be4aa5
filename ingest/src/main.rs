//! `ingest`: parse the configuration, run until SIGTERM or ctrl-c.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::service::main("ingest", ingest::app::run).await
}
