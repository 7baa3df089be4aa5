//! `ingest`: parse the configuration, run until SIGTERM or ctrl-c.

fn main() -> std::process::ExitCode {
    shared::service::start("ingest", ingest::app::run)
}
