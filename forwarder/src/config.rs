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

    /// Deliveries in flight at once in this process.
    #[arg(long, env = "FORWARDER_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub forwarder_concurrency: u32,

    /// Seconds to wait for the CRM's answer.
    #[arg(long, env = "CRM_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub crm_timeout_secs: u64,

    /// Allow CRM URLs that resolve to loopback or private addresses.
    #[arg(long, env = "CRM_ALLOW_PRIVATE_NETWORKS", default_value_t = false, action = clap::ArgAction::Set)]
    pub crm_allow_private_networks: bool,
}

impl ForwarderConfig {
    pub fn crm_timeout(&self) -> Duration {
        Duration::from_secs(self.crm_timeout_secs)
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
