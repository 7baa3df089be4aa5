//! `forwarder`: parse the configuration, run until SIGTERM or ctrl-c.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::service::main("forwarder", forwarder::run).await
}
