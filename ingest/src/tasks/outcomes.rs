//! Records what the forwarders report: every attempt's outcome arrives on
//! `<prefix>.delivery.<outcome>.<account_id>` and is stored on the message
//! (status, attempt count, last error, delivery time). Several ingests share
//! one durable consumer; recording an outcome twice is harmless.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt as _;
use shared::shutdown::Backoff;
use shared::subjects::Subjects;
use shared::wire::DeliveryOutcome;
use tokio_util::sync::CancellationToken;

use crate::nats::NatsLink;
use crate::store::GroupCommit;

/// The most outcomes recorded in one transaction.
const BATCH: usize = 256;

/// What the recorder uses: the outcome store and the delivery stream.
pub struct Recorder {
    /// Outcomes share the next save's transaction.
    pub writes: GroupCommit,
    pub nats: Arc<NatsLink>,
    pub subjects: Subjects,
}

/// Consumes outcomes until shutdown, reconnecting after any failure.
pub async fn run(recorder: Recorder, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = consume(&recorder, &mut backoff) => r,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "delivery outcome consumer stopped; restarting");
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

async fn consume(state: &Recorder, backoff: &mut Backoff) -> anyhow::Result<()> {
    let stream = state
        .nats
        .js
        .get_stream(state.subjects.delivery_stream())
        .await?;
    let config = shared::jetstream::outcome_consumer(&state.subjects);
    let consumer: PullConsumer = stream.create_consumer(config).await?;
    // What has arrived is recorded together: one transaction for many.
    let mut batches = consumer.messages().await?.ready_chunks(BATCH);
    while let Some(batch) = batches.next().await {
        let mut readable = Vec::with_capacity(batch.len());
        for message in batch {
            let message = message?;
            match serde_json::from_slice::<DeliveryOutcome>(&message.payload) {
                Ok(outcome) => readable.push((message, outcome)),
                Err(e) => {
                    tracing::warn!(subject = %message.subject, error = %e, "unreadable delivery outcome dropped");
                    let _ = message.ack_with(AckKind::Term).await;
                }
            }
        }
        backoff.reset();
        let (messages, outcomes): (Vec<_>, Vec<_>) = readable.into_iter().unzip();
        match state.writes.record_outcomes(outcomes.clone()).await {
            Ok(known) => {
                for (outcome, known) in outcomes.iter().zip(known) {
                    if !known {
                        tracing::debug!(message_id = %outcome.message_id, "outcome for an unknown message ignored");
                    }
                }
                for message in messages {
                    let _ = message.ack().await;
                }
            }
            Err(e) => {
                tracing::warn!(outcomes = outcomes.len(), error = %e, "could not record outcomes; will retry");
                for message in messages {
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
            }
        }
    }
    anyhow::bail!("outcome stream ended")
}
