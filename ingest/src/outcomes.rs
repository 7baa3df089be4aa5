//! Records what the forwarders report: every attempt's outcome arrives on
//! `<prefix>.delivery.<outcome>.<account_id>` and is stored on the message
//! (status, attempt count, last error, delivery time). Several ingests share
//! one durable consumer; recording an outcome twice is harmless.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use futures::StreamExt as _;
use shared::wire::DeliveryOutcome;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;

fn consumer_config(state: &AppState) -> pull::Config {
    pull::Config {
        durable_name: Some(state.subjects.outcome_consumer()),
        description: Some("ingest records delivery outcomes on messages".into()),
        filter_subject: state.subjects.delivery_all(),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
        ..Default::default()
    }
}

/// Consumes outcomes until shutdown, reconnecting after any failure.
pub async fn run(state: &AppState, shutdown: CancellationToken) {
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = consume(state) => r,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "delivery outcome consumer stopped; restarting");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn consume(state: &AppState) -> anyhow::Result<()> {
    let stream = state
        .nats
        .js
        .get_stream(state.subjects.delivery_stream())
        .await?;
    let consumer: PullConsumer = stream.create_consumer(consumer_config(state)).await?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let outcome: DeliveryOutcome = match serde_json::from_slice(&message.payload) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "unreadable delivery outcome dropped");
                let _ = message.ack_with(AckKind::Term).await;
                continue;
            }
        };
        match state.store.record_outcome(&outcome).await {
            Ok(known) => {
                if !known {
                    tracing::debug!(message_id = %outcome.message_id, "outcome for an unknown message ignored");
                }
                let _ = message.ack().await;
            }
            Err(e) => {
                tracing::warn!(message_id = %outcome.message_id, error = %e, "could not record outcome; will retry");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }
    anyhow::bail!("outcome stream ended")
}
