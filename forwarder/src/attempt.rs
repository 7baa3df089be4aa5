//! One delivery attempt of one message, run as its own task by the account's
//! lane: wait for one of the process's delivery slots, sign and POST the
//! exact stored bytes, then settle the message by the CRM's answer (ack,
//! terminate into the dead letters, or hand it back to the server with the
//! delay of its next retry) and publish the outcome. The lane learns how it
//! was settled and whether the CRM answered at all, for the breaker.
//!
//! The outcome is published before the ack, so a server that has the ack
//! has the outcome too: a crash in between can repeat a delivery (same
//! `webhook-id`) but never leave it unrecorded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use shared::ids::AccountId;
use shared::model::CrmWebhookUrl;
use shared::signing::SigningKeys;
use shared::subjects::Outcome;
use shared::wire::{ConversationHold, DeliveryOutcome};
use tracing::Instrument as _;

use crate::crm::Answer;
use crate::lane::LaneContext;
use shared::observe::Throughput;

/// An attempt on a message whose ack timer was restarted (or started) this
/// recently does not restart it again.
const FRESH_ENOUGH: Duration = Duration::from_secs(1);

/// A message a lane holds: received, not yet settled.
pub struct Held {
    pub message: jetstream::Message,
    pub message_id: String,
    pub conversation_id: String,
    /// Its sequence in the inbound stream: the order of the conversation.
    pub stream_sequence: u64,
    /// JetStream's delivery count: also the outcome's attempt number, so
    /// every attempt of a publication has a number of its own.
    pub delivered: u32,
    /// When it entered the stream.
    pub published: DateTime<Utc>,
    /// When its ack timer was last restarted.
    pub fresh_since: Instant,
}

impl Held {
    /// Restarts the message's ack timer.
    pub async fn keep(&mut self) {
        let _ = self.message.ack_with(AckKind::Progress).await;
        self.fresh_since = Instant::now();
    }
}

/// Where the account's messages go, as its routing says now.
pub enum Target {
    Crm {
        url: CrmWebhookUrl,
        secret: SigningKeys,
    },
    /// The account is disabled, or its routing cannot be used: each message
    /// becomes a dead letter with this reason.
    Refuse(&'static str),
}

/// What the CRM's answer means for the account's breaker.
#[derive(Debug)]
pub enum Verdict {
    /// It answered: 2xx, or a refusal it means (4xx other than 408 and 429).
    Answered,
    /// It failed the way a down or overloaded CRM fails.
    Failed(String),
    /// Neither (a rate limit, or no request was made).
    Neither,
}

/// How the attempt left the message.
pub enum Settled {
    /// Acked.
    Delivered,
    /// Terminated: a dead letter.
    Dead,
    /// Handed back to the server until `hold.retry_at`; its conversation is
    /// held behind it (the hold is already stored).
    Retrying(ConversationHold),
    /// A probe of a paused account failed: the lane keeps the message, and
    /// the failure is not counted against it.
    ProbeFailed(Box<Held>),
}

/// What the lane gets back.
pub struct Finished {
    pub conversation_id: String,
    pub stream_sequence: u64,
    pub probe: bool,
    pub settled: Settled,
    pub verdict: Verdict,
}

/// The message's attempt and what the lane knows about it.
pub struct Job {
    pub account: AccountId,
    pub held: Held,
    pub target: Arc<Target>,
    /// The conversation's hold when it is this message's: its failures so far.
    pub hold: Option<ConversationHold>,
    /// Where the 24 h retry limit starts (the end of a pause, if later than
    /// the message).
    pub retry_window_start: DateTime<Utc>,
    /// A probe of a paused account.
    pub probe: bool,
}

pub async fn run(ctx: Arc<LaneContext>, job: Job) -> Finished {
    let span = tracing::info_span!(
        "deliver",
        message_id = %job.held.message_id,
        account_id = %job.account,
        attempt = job.held.delivered,
        probe = job.probe,
    );
    attempt(ctx, job).instrument(span).await
}

async fn attempt(ctx: Arc<LaneContext>, mut job: Job) -> Finished {
    let answer = match job.target.as_ref() {
        Target::Refuse(reason) => Answer::Reject {
            status: None,
            reason: (*reason).to_owned(),
        },
        Target::Crm { url, secret } => {
            // Slots are shared by every account of the process, first come
            // first served; the ack timer keeps running while we wait.
            let permit = loop {
                tokio::select! {
                    p = ctx.slots.clone().acquire_owned() => break p.ok(),
                    _ = tokio::time::sleep(ctx.ack_wait / 3) => job.held.keep().await,
                }
            };
            // Restart the ack timer: the attempt gets the whole ack wait
            // (the CRM's timeout and 10 s). Not for a message whose timer
            // started under a second ago (most first attempts): it has
            // nine of those ten seconds left, and each message is one
            // acknowledgement fewer for nats-server.
            if job.held.fresh_since.elapsed() >= FRESH_ENOUGH {
                job.held.keep().await;
            }
            let gauge = metrics::gauge!("router_forwarder_in_flight");
            gauge.increment(1.0);
            let started = Instant::now();
            let answer = ctx
                .crm
                .deliver(
                    url,
                    secret,
                    &job.held.message_id,
                    job.held.message.payload.clone(),
                )
                .await;
            metrics::histogram!("router_forwarder_attempt_seconds")
                .record(started.elapsed().as_secs_f64());
            gauge.decrement(1.0);
            drop(permit);
            answer
        }
    };
    let verdict = verdict(&answer);
    let conversation_id = job.held.conversation_id.clone();
    let stream_sequence = job.held.stream_sequence;
    let probe = job.probe;
    let settled = settle(&ctx, job, answer).await;
    Finished {
        conversation_id,
        stream_sequence,
        probe,
        settled,
        verdict,
    }
}

fn verdict(answer: &Answer) -> Verdict {
    match answer {
        Answer::Delivered { .. }
        | Answer::Reject {
            status: Some(_), ..
        } => Verdict::Answered,
        Answer::Reject { status: None, .. } => Verdict::Neither,
        Answer::Retry {
            status: Some(429), ..
        } => Verdict::Neither,
        Answer::Retry { reason, .. } => Verdict::Failed(reason.clone()),
    }
}

async fn settle(ctx: &LaneContext, job: Job, answer: Answer) -> Settled {
    let Job {
        account,
        held,
        hold,
        retry_window_start,
        probe,
        ..
    } = job;
    let (outcome, status_code, error, ack, settled) = match answer {
        Answer::Delivered { status } => {
            tracing::info!(status, "delivered");
            (Outcome::Delivered, Some(status), None, AckKind::Ack, None)
        }
        Answer::Reject { status, reason } => {
            tracing::error!(reason = %reason, "delivery refused; dead-lettered");
            (Outcome::Dead, status, Some(reason), AckKind::Term, None)
        }
        Answer::Retry { .. } if probe => {
            tracing::warn!("probe failed; the account stays paused");
            Throughput::add(&ctx.throughput.errors, 1);
            return Settled::ProbeFailed(Box::new(held));
        }
        Answer::Retry {
            status,
            reason,
            retry_after,
        } => {
            let now = Utc::now();
            let failures = hold.as_ref().map_or(0, |h| h.failures) + 1;
            let age = (now - retry_window_start).to_std().unwrap_or_default();
            match ctx.schedule.next_retry(failures, age, retry_after) {
                Some(delay) => {
                    tracing::warn!(reason = %reason, retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
                    let new_hold = ConversationHold {
                        message_id: held.message_id.clone(),
                        stream_sequence: held.stream_sequence,
                        failures,
                        retry_at: now + chrono::TimeDelta::from_std(delay).unwrap_or_default(),
                        first_failed_at: hold.as_ref().map_or(now, |h| h.first_failed_at),
                    };
                    (
                        Outcome::Retrying,
                        status,
                        Some(reason),
                        AckKind::Nak(Some(delay)),
                        Some(new_hold),
                    )
                }
                None => {
                    tracing::error!(reason = %reason, "delivery failed; retries exhausted, dead-lettered");
                    (Outcome::Dead, status, Some(reason), AckKind::Term, None)
                }
            }
        }
    };
    metrics::counter!("router_forwarder_deliveries_total", "outcome" => outcome.as_str())
        .increment(1);
    match outcome {
        Outcome::Delivered => Throughput::add(&ctx.throughput.sent, 1),
        _ => Throughput::add(&ctx.throughput.errors, 1),
    }
    // The conversation's hold changes before the message is settled: a
    // crash in between leaves at worst a hold for a message that comes back
    // anyway, never a later message overtaking a failing one.
    let hold_key = crate::lane::hold_key(&account, &held.conversation_id);
    match &settled {
        Some(new_hold) => store_hold(ctx, &hold_key, new_hold).await,
        None if hold.is_some() => {
            if let Err(e) = ctx.holds.delete(&hold_key).await {
                tracing::warn!(error = %e, "conversation hold not removed; it expires on its own");
            }
        }
        None => {}
    }
    let recorded = publish_outcome(ctx, &account, &held, outcome, status_code, error).await;
    let acked = match ack {
        // Wait for the server's confirmation: once it has the ack, no
        // forwarder is handed this message again.
        AckKind::Ack | AckKind::Term => held.message.double_ack_with(ack).await,
        other => held.message.ack_with(other).await,
    };
    if let Err(e) = acked {
        tracing::warn!(error = %e, "ack not confirmed; JetStream may redeliver (same webhook-id)");
    }
    if let Some(pending) = recorded {
        match tokio::time::timeout(Duration::from_secs(5), pending).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "delivery outcome not stored by JetStream"),
            Err(_) => tracing::warn!("delivery outcome not acknowledged by JetStream"),
        }
    }
    match (outcome, settled) {
        (_, Some(hold)) => Settled::Retrying(hold),
        (Outcome::Delivered, None) => Settled::Delivered,
        _ => Settled::Dead,
    }
}

/// Writes a conversation's hold, retrying briefly: it is what keeps the
/// conversation's later messages behind this one.
async fn store_hold(ctx: &LaneContext, key: &str, hold: &ConversationHold) {
    let Ok(value) = serde_json::to_vec(hold) else {
        return;
    };
    let value = Bytes::from(value);
    for wait in [0, 200, 1000] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        match ctx.holds.put(key, value.clone()).await {
            Ok(_) => return,
            Err(e) => tracing::warn!(error = %e, "conversation hold not stored; trying again"),
        }
    }
    tracing::error!(
        "conversation hold not stored: this forwarder keeps the order, another may not"
    );
}

/// Writes the outcome event; returns JetStream's pending acknowledgement.
async fn publish_outcome(
    ctx: &LaneContext,
    account: &AccountId,
    held: &Held,
    outcome: Outcome,
    status_code: Option<u16>,
    error: Option<String>,
) -> Option<async_nats::jetstream::context::PublishAckFuture> {
    let event = DeliveryOutcome {
        message_id: held.message_id.clone(),
        account_id: account.to_string(),
        outcome,
        inbound_sequence: held.stream_sequence,
        attempt: held.delivered,
        status_code,
        error,
        at: Utc::now(),
    };
    let body = serde_json::to_vec(&event).ok()?;
    let publish = PublishMessage::build()
        .payload(body.into())
        .message_id(format!(
            "{}-{}-{}-{}",
            held.message_id,
            held.stream_sequence,
            held.delivered,
            outcome.as_str()
        ));
    let subject = ctx.subjects.delivery(outcome, account);
    match ctx.js.send_publish(subject, publish).await {
        Ok(pending) => Some(pending),
        Err(e) => {
            tracing::warn!(error = %e, "delivery outcome not published");
            None
        }
    }
}
