//! forwarder: takes inbound messages off NATS and delivers them, signed, to
//! each account's CRM webhook, retrying or dead-lettering by the CRM's answer.
//!
//! How the work is laid out: [`fleet`] splits the accounts among the running
//! forwarders; a [`lane`] serves one account (its own consumer, its
//! conversations in order, its cap, its circuit breaker in [`breaker`]);
//! [`attempt`] is one signed POST and what follows from the answer; [`pull`]
//! is the pinned pull request a lane fetches with.
//!
//! Architecture invariants: no database, no ingest API calls. NATS is the
//! only thing a forwarder needs, so any number of them can run anywhere. One
//! account is served by one forwarder at a time, so that no account's
//! failures, slowness or backlog can hold back another's.

pub mod attempt;
pub mod breaker;
pub mod config;
pub mod crm;
pub mod fleet;
pub mod health;
pub mod lane;
pub mod pull;
pub mod retry;

use std::sync::Arc;

use async_nats::jetstream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::breaker::BreakerSettings;
use crate::crm::CrmClient;
use crate::lane::LaneContext;

/// Runs one forwarder process, its health endpoint on
/// `FORWARDER_METRICS_ADDR`, until `shutdown` is cancelled.
pub async fn run(
    config: config::ForwarderConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = config.forwarder_metrics_addr;
    let listener = shared::service::listen("FORWARDER_METRICS_ADDR", addr).await?;
    serve(config, listener, shutdown).await
}

/// Runs one forwarder with its health endpoint on a listener already bound,
/// until `shutdown` is cancelled.
pub async fn serve(
    config: config::ForwarderConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = shared::jetstream::connect(&config.common, "forwarder").await?;
    shared::observe::register(health::METRICS);
    let addr = listener.local_addr()?;
    let health = tokio::spawn(health::serve(listener, client.clone(), shutdown.clone()));
    tracing::info!(%addr, "forwarder health endpoint listening");
    let throughput = Arc::new(shared::observe::Throughput::default());
    let instance = shared::observe::instance_name();
    let subjects = config.common.router_subject_prefix.clone();
    let stats = tokio::spawn(shared::observe::publish_stats(
        client.clone(),
        subjects.stats("forwarder", &instance),
        "forwarder",
        instance.clone(),
        throughput.clone(),
        shutdown.clone(),
    ));

    let js = jetstream::new(client.clone());
    let result = match shared::jetstream::set_up_until_ready(
        &js,
        &subjects,
        shared::jetstream::Role::Forwarder,
        usize::from(config.common.router_stream_replicas),
        &shutdown,
    )
    .await
    {
        None => Ok(()),
        Some(ready) => {
            let ctx = Arc::new(LaneContext {
                js,
                subjects,
                inbound: ready.inbound,
                holds: ready.holds,
                health: ready.health,
                crm: CrmClient::new(
                    config.crm_timeout(),
                    config.common.crm_allow_private_networks,
                )?,
                schedule: config.forwarder_retry_schedule.clone(),
                key: config.common.encryption_keys()?,
                slots: Arc::new(Semaphore::new(config.forwarder_concurrency as usize)),
                throughput,
                default_in_flight: config.forwarder_account_in_flight,
                max_in_flight: config.common.router_account_in_flight_max,
                breaker: BreakerSettings {
                    failures: config.forwarder_breaker_failures,
                    probe_interval: config.forwarder_breaker_probe_interval,
                    max_probe_interval: config.forwarder_breaker_max_probe_interval,
                },
                ack_wait: config.ack_wait(),
                crm_timeout: config.crm_timeout(),
                backlog: Default::default(),
            });
            fleet::Fleet::new(ctx, ready.accounts, ready.forwarders, &instance)
                .run(shutdown.clone())
                .await
        }
    };
    tracing::info!("forwarder stopped");
    shutdown.cancel();
    let _ = stats.await;
    // Bounded: with NATS down a flush would wait for ever.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), client.flush()).await;
    if let Ok(Err(e)) = health.await {
        tracing::warn!(error = %e, "health endpoint failed");
    }
    result
}
