//! The delivery loop. All forwarder processes share one durable pull
//! consumer, so JetStream hands each message to exactly one of them at a
//! time. Each message is signed, POSTed, and then acked (2xx), nak'ed with a
//! delay (retry) or terminated (dead letter); the outcome is published on
//! `<prefix>.delivery.<outcome>.<account_id>`.
//!
//! Architecture invariant: the forwarder needs NATS and nothing else. The
//! account's URL, secret and status come from the accounts bucket.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind, kv};
use futures::StreamExt as _;
use shared::ids::AccountId;
use shared::signing::WebhookSecret;
use shared::subjects::{Outcome, Subjects};
use shared::wire::{AccountRouting, DeliveryOutcome, InboundMessageWebhook};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::ForwarderConfig;
use crate::crm::{Answer, CrmClient};
use crate::retry::RetrySchedule;
use shared::observe::Throughput;

/// How long a message for an account missing from the bucket waits before
/// it is looked up again (the bucket may lag an account's creation).
const UNROUTABLE_DELAY: Duration = Duration::from_secs(2);

/// How long one pull request waits for messages; also the longest a
/// shutdown waits for an open pull to end.
const FETCH_WAIT: Duration = Duration::from_secs(3);

/// Which delivery of which publication of a message this is.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    /// JetStream's delivery count: 1 for the first attempt.
    number: u32,
    /// The message's sequence in the inbound stream (a replay gets a new one).
    inbound_sequence: u64,
    /// Unix seconds when the message entered the stream; after 24 h no retry.
    published_at: i64,
}

struct Worker {
    js: jetstream::Context,
    accounts: kv::Store,
    subjects: Subjects,
    crm: CrmClient,
    schedule: RetrySchedule,
    throughput: Arc<Throughput>,
    /// Opens webhook secrets sealed with `ROUTER_ENCRYPTION_KEY`.
    key: Option<shared::secrets::SecretBox>,
}

/// The consumer's settings. `ack_wait` is above the CRM timeout, and each
/// attempt starts with a progress ack, so a slow CRM never makes JetStream
/// hand the message to another forwarder while the attempt is running;
/// after a crash, the message comes back within `ack_wait`.
pub fn consumer_config(config: &ForwarderConfig) -> pull::Config {
    let subjects = &config.common.router_subject_prefix;
    pull::Config {
        durable_name: Some(subjects.forwarder_consumer()),
        description: Some("Delivers inbound messages to CRMs; shared by every forwarder".into()),
        filter_subject: subjects.inbound_all(),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.crm_timeout() + Duration::from_secs(10),
        max_deliver: -1,
        max_ack_pending: 1000,
        ..Default::default()
    }
}

/// Runs until `shutdown`: then stops fetching, lets deliveries in flight
/// finish (bounded by the CRM timeout), and returns.
pub async fn run(
    config: ForwarderConfig,
    client: async_nats::Client,
    throughput: Arc<Throughput>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let subjects = config.common.router_subject_prefix.clone();
    let js = jetstream::new(client);
    let Some(shared::jetstream::Ready {
        inbound: stream,
        accounts,
    }) = shared::jetstream::set_up_until_ready(&js, &subjects, &shutdown).await
    else {
        return Ok(());
    };
    let consumer: jetstream::consumer::PullConsumer =
        stream.create_consumer(consumer_config(&config)).await?;
    let concurrency = config.forwarder_concurrency as usize;
    tracing::info!(
        stream = %subjects.inbound_stream(),
        consumer = %subjects.forwarder_consumer(),
        concurrency,
        "forwarder consuming"
    );

    let worker = Arc::new(Worker {
        js: js.clone(),
        accounts,
        subjects,
        crm: CrmClient::new(config.crm_timeout(), config.crm_allow_private_networks)?,
        schedule: config.forwarder_retry_schedule.clone(),
        throughput: throughput.clone(),
        key: config.common.router_encryption_key.clone(),
    });
    tokio::spawn(watch_consumer(
        consumer.clone(),
        throughput.clone(),
        shutdown.clone(),
    ));
    let slots = Arc::new(Semaphore::new(concurrency));
    let in_flight = TaskTracker::new();
    // Pull only as many messages as there are free slots, so a message is
    // never held without being worked on: at shutdown there is nothing
    // buffered to lose time over, only deliveries in flight.
    while !shutdown.is_cancelled() {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p?,
        };
        let wanted = 1 + slots.available_permits();
        let mut batch = match consumer
            .batch()
            .max_messages(wanted)
            .expires(FETCH_WAIT)
            .messages()
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "fetching from the consumer failed; retrying");
                drop(first);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        let mut first = Some(first);
        // Read the batch to its end even when shutting down: a message the
        // server already sent is handed straight back rather than left to
        // time out.
        while let Some(next) = batch.next().await {
            let message = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "fetch interrupted");
                    break;
                }
            };
            if shutdown.is_cancelled() {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                continue;
            }
            let permit = match first.take() {
                Some(p) => p,
                None => slots.clone().acquire_owned().await?,
            };
            let worker = worker.clone();
            Throughput::add(&worker.throughput.received, 1);
            in_flight.spawn(async move {
                let gauge = metrics::gauge!("router_forwarder_in_flight");
                gauge.increment(1.0);
                worker.handle(message).await;
                gauge.decrement(1.0);
                drop(permit);
            });
        }
    }
    in_flight.close();
    let bound = config.crm_timeout() + Duration::from_secs(5);
    if tokio::time::timeout(bound, in_flight.wait()).await.is_err() {
        tracing::warn!("deliveries still running at shutdown; JetStream redelivers them");
    }
    tracing::info!("forwarder stopped");
    Ok(())
}

impl Worker {
    async fn handle(&self, message: jetstream::Message) {
        let Ok(info) = message.info() else {
            tracing::error!(subject = %message.subject, "message without JetStream metadata dropped");
            return;
        };
        let attempt = Attempt {
            number: info.delivered.max(1) as u32,
            inbound_sequence: info.stream_sequence,
            published_at: info.published.unix_timestamp(),
        };
        let webhook: InboundMessageWebhook = match serde_json::from_slice(&message.payload) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(subject = %message.subject, error = %e, "unreadable inbound message terminated");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let span = tracing::info_span!(
            "deliver",
            message_id = %webhook.message_id,
            account_id = %webhook.account_id,
            attempt = attempt.number
        );
        self.deliver(message, webhook, attempt)
            .instrument(span)
            .await;
    }

    async fn deliver(
        &self,
        message: jetstream::Message,
        webhook: InboundMessageWebhook,
        attempt: Attempt,
    ) {
        let answer = match self.routing(&webhook.account_id).await {
            Ok(Some(routing)) if routing.status != "disabled" => {
                let secret = match shared::secrets::open(self.key.as_ref(), &routing.webhook_secret)
                {
                    Ok(secret) => secret,
                    Err(e) => {
                        // A configuration fault: keep the message and retry.
                        tracing::error!(error = %e, "cannot read the account's webhook secret; set ROUTER_ENCRYPTION_KEY as on ingest");
                        String::new()
                    }
                };
                match WebhookSecret::parse(&secret) {
                    Ok(secret) => {
                        // Restart the ack timer: the attempt gets the whole ack wait.
                        let _ = message.ack_with(AckKind::Progress).await;
                        let started = std::time::Instant::now();
                        let answer = self
                            .crm
                            .deliver(
                                &routing.crm_webhook_url,
                                &secret,
                                &webhook.message_id,
                                message.payload.clone(),
                            )
                            .await;
                        metrics::histogram!("router_forwarder_attempt_seconds")
                            .record(started.elapsed().as_secs_f64());
                        answer
                    }
                    Err(_) if secret.is_empty() => Answer::Retry {
                        status: None,
                        reason: "secret_unreadable".into(),
                        retry_after: None,
                    },
                    Err(_) => Answer::Reject {
                        status: None,
                        reason: "invalid_secret".into(),
                    },
                }
            }
            Ok(Some(_)) => Answer::Reject {
                status: None,
                reason: "account_disabled".into(),
            },
            Ok(None) => Answer::Retry {
                status: None,
                reason: "account_not_routable".into(),
                retry_after: Some(UNROUTABLE_DELAY),
            },
            Err(e) => {
                tracing::warn!(error = %e, "accounts bucket unavailable");
                Answer::Retry {
                    status: None,
                    reason: "routing_unavailable".into(),
                    retry_after: Some(UNROUTABLE_DELAY),
                }
            }
        };

        let age = Duration::from_secs(
            (chrono::Utc::now().timestamp() - attempt.published_at).max(0) as u64,
        );
        let (outcome, status_code, error, ack) = match answer {
            Answer::Delivered { status } => {
                tracing::info!(status, "delivered");
                (Outcome::Delivered, Some(status), None, AckKind::Ack)
            }
            Answer::Retry {
                status,
                reason,
                retry_after,
            } => match self.schedule.next_retry(attempt.number, age, retry_after) {
                Some(delay) => {
                    tracing::warn!(reason = %reason, retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
                    (
                        Outcome::Retrying,
                        status,
                        Some(reason),
                        AckKind::Nak(Some(delay)),
                    )
                }
                None => {
                    tracing::error!(reason = %reason, "delivery failed; retries exhausted, dead-lettered");
                    (Outcome::Dead, status, Some(reason), AckKind::Term)
                }
            },
            Answer::Reject { status, reason } => {
                tracing::error!(reason = %reason, "delivery refused; dead-lettered");
                (Outcome::Dead, status, Some(reason), AckKind::Term)
            }
        };
        metrics::counter!("router_forwarder_deliveries_total", "outcome" => outcome.as_str())
            .increment(1);
        match outcome {
            Outcome::Delivered => Throughput::add(&self.throughput.sent, 1),
            _ => Throughput::add(&self.throughput.errors, 1),
        }
        // The outcome is written to the connection before the ack, so if the
        // server has the ack it has the outcome too: a crash in between can
        // repeat a delivery (same webhook-id) but never leave its status
        // unrecorded.
        let recorded = self
            .publish_outcome(&webhook, outcome, attempt, status_code, error)
            .await;
        let acked = match ack {
            // Wait for the server's confirmation: once it has the ack, no
            // forwarder is handed this message again.
            AckKind::Ack | AckKind::Term => message.double_ack_with(ack).await,
            other => message.ack_with(other).await,
        };
        if let Err(e) = acked {
            tracing::warn!(error = %e, "ack not confirmed; JetStream may redeliver (same webhook-id)");
        }
        if let Some(pending) = recorded {
            match tokio::time::timeout(Duration::from_secs(5), pending).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "delivery outcome not stored by JetStream")
                }
                Err(_) => tracing::warn!("delivery outcome not acknowledged by JetStream"),
            }
        }
    }

    async fn routing(&self, account_id: &str) -> anyhow::Result<Option<AccountRouting>> {
        match self.accounts.get(account_id).await? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Writes the outcome event; returns JetStream's pending acknowledgement.
    async fn publish_outcome(
        &self,
        webhook: &InboundMessageWebhook,
        outcome: Outcome,
        attempt: Attempt,
        status_code: Option<u16>,
        error: Option<String>,
    ) -> Option<async_nats::jetstream::context::PublishAckFuture> {
        let account = AccountId::parse(&webhook.account_id).ok()?;
        let event = DeliveryOutcome {
            message_id: webhook.message_id.clone(),
            account_id: webhook.account_id.clone(),
            outcome,
            inbound_sequence: attempt.inbound_sequence,
            attempt: attempt.number,
            status_code,
            error,
            at: chrono::Utc::now(),
        };
        let body = serde_json::to_vec(&event).ok()?;
        let publish = PublishMessage::build()
            .payload(body.into())
            .message_id(format!(
                "{}-{}-{}-{}",
                webhook.message_id,
                attempt.inbound_sequence,
                attempt.number,
                outcome.as_str()
            ));
        let subject = self.subjects.delivery(outcome, &account);
        match self.js.send_publish(subject, publish).await {
            Ok(pending) => Some(pending),
            Err(e) => {
                tracing::warn!(error = %e, "delivery outcome not published");
                None
            }
        }
    }
}

/// Every few seconds: the consumer's backlog and redeliveries, for
/// `/metrics` and the stats summary (`nats consumer report` shows the same).
async fn watch_consumer(
    mut consumer: jetstream::consumer::PullConsumer,
    throughput: Arc<Throughput>,
    shutdown: CancellationToken,
) {
    loop {
        if let Ok(info) = consumer.info().await {
            metrics::gauge!("router_forwarder_consumer_pending").set(info.num_pending as f64);
            metrics::gauge!("router_forwarder_consumer_ack_pending")
                .set(info.num_ack_pending as f64);
            metrics::gauge!("router_forwarder_consumer_redelivered")
                .set(info.num_redelivered as f64);
            throughput
                .pending
                .store(info.num_pending, std::sync::atomic::Ordering::Relaxed);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
