//! forwarder: takes inbound messages off NATS and delivers them, signed, to
//! each account's CRM webhook, retrying or dead-lettering by the CRM's answer.
//!
//! Architecture invariant: no database, no ingest API calls. NATS is the
//! only thing a forwarder needs, so any number of them can run anywhere.

pub mod config;
pub mod crm;
pub mod health;
pub mod retry;
pub mod worker;

use tokio_util::sync::CancellationToken;

/// Runs one forwarder process until `shutdown` is cancelled.
pub async fn run(
    config: config::ForwarderConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = shared::jetstream::connect(&config.common.nats_url, "forwarder").await?;
    shared::observe::prometheus();
    let health = tokio::spawn(health::serve(
        config.forwarder_metrics_addr,
        client.clone(),
        shutdown.clone(),
    ));
    tracing::info!(addr = %config.forwarder_metrics_addr, "forwarder health endpoint listening");
    let throughput = std::sync::Arc::new(shared::observe::Throughput::default());
    let instance = shared::observe::instance_name();
    let stats = tokio::spawn(shared::observe::publish_stats(
        client.clone(),
        config
            .common
            .router_subject_prefix
            .stats("forwarder", &instance),
        "forwarder",
        instance,
        throughput.clone(),
        shutdown.clone(),
    ));
    let result = worker::run(config, client.clone(), throughput, shutdown.clone()).await;
    shutdown.cancel();
    let _ = stats.await;
    // Bounded: with NATS down a flush would wait for ever.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), client.flush()).await;
    if let Ok(Err(e)) = health.await {
        tracing::warn!(error = %e, "health endpoint failed");
    }
    result
}
