//! forwarder's settings: each an environment variable and a command-line flag.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shared::config::{CommonConfig, parse_duration};

use crate::retry::RetrySchedule;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "forwarder",
    version,
    about = "Delivers inbound Instagram messages from NATS to each account's CRM webhook, signed"
)]
pub struct ForwarderConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address of the forwarder's /healthz and /metrics.
    #[arg(long, env = "FORWARDER_METRICS_ADDR", default_value = "127.0.0.1:9091")]
    pub forwarder_metrics_addr: SocketAddr,

    /// Delays before each retry, comma-separated; its length is the number of retries.
    #[arg(long, env = "FORWARDER_RETRY_SCHEDULE", default_value = "10s,1m,10m,1h,6h", value_parser = parse_schedule)]
    pub forwarder_retry_schedule: RetrySchedule,

    /// Deliveries in flight at once in this process, all accounts together;
    /// accounts waiting for a slot are served in turn.
    #[arg(long, env = "FORWARDER_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub forwarder_concurrency: u32,

    /// Deliveries in flight at once for one account, unless the account sets
    /// its own `max_in_flight`.
    #[arg(long, env = "FORWARDER_ACCOUNT_IN_FLIGHT", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub forwarder_account_in_flight: u32,

    /// Failed attempts in a row (timeouts, connection errors, 408, 5xx) that
    /// pause an account's deliveries.
    #[arg(long, env = "FORWARDER_BREAKER_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub forwarder_breaker_failures: u32,

    /// How long a paused account waits before its first probe delivery; the
    /// wait doubles after each failed probe.
    #[arg(long, env = "FORWARDER_BREAKER_PROBE_INTERVAL", default_value = "10s", value_parser = parse_positive_duration)]
    pub forwarder_breaker_probe_interval: Duration,

    /// The longest wait between two probes of a paused account.
    #[arg(long, env = "FORWARDER_BREAKER_MAX_PROBE_INTERVAL", default_value = "5m", value_parser = parse_positive_duration)]
    pub forwarder_breaker_max_probe_interval: Duration,

    /// Seconds to wait for the CRM's answer.
    #[arg(long, env = "CRM_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub crm_timeout_secs: u64,
}

impl shared::service::ServiceConfig for ForwarderConfig {
    fn common(&self) -> &CommonConfig {
        &self.common
    }
}

impl ForwarderConfig {
    pub fn crm_timeout(&self) -> Duration {
        Duration::from_secs(self.crm_timeout_secs)
    }

    /// How long JetStream waits for an ack before it hands a message out
    /// again: longer than any attempt (each starts with a progress ack).
    pub fn ack_wait(&self) -> Duration {
        self.crm_timeout() + Duration::from_secs(10)
    }
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be longer than zero".into()),
        d => Ok(d),
    }
}

fn parse_schedule(s: &str) -> Result<RetrySchedule, String> {
    let delays = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()?;
    if delays.is_empty() {
        return Err("must list at least one delay, like 10s,1m,10m".into());
    }
    Ok(RetrySchedule::new(delays))
}
