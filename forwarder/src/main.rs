//! `forwarder`: parse the configuration, run until SIGTERM or ctrl-c.

fn main() -> std::process::ExitCode {
    shared::service::start("forwarder", forwarder::run)
}
