//! Pulling one account's consumer as a pinned client, a few messages at a
//! time. The server gives the messages of a pinned-client consumer to one
//! puller only (it answers the first request with a `Nats-Pin-Id`, and later
//! requests must carry it), which is what keeps an account's conversations
//! in order while several forwarders run.
//!
//! async-nats offers pinned pulling only as an endless stream that keeps
//! requesting on its own; a lane must ask for exactly as many messages as it
//! has room for, and must be able to finish its last request before it hands
//! the account over. So this is the JetStream pull request itself: one
//! request at a time, each answered on a reply subject of its own under one
//! subscription, so a late status for an old request is recognised.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::{StatusCode, Subscriber};
use futures::StreamExt as _;
use serde::Serialize;
use tokio::time::Instant;

/// Why a pull request ended without messages.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// 409: the consumer is at its ack-pending limit, deleted, or moving.
    #[error("the server ended the pull request: {0}")]
    Refused(String),
    #[error("no JetStream answered the pull request")]
    NoResponders,
    #[error("pull request failed: {0}")]
    Other(String),
}

#[derive(Serialize)]
struct PullRequest<'a> {
    batch: usize,
    /// Nanoseconds.
    expires: u128,
    group: &'a str,
    /// The pin this client holds, once it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

pub struct PinnedPull {
    context: jetstream::Context,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    subject: String,
    group: String,
    /// Replies of every request arrive under this prefix (`<inbox>.<n>`).
    inbox: String,
    subscriber: Subscriber,
    /// The `Nats-Pin-Id` the server gave us; `None` until pinned again.
    pin: Option<String>,
    /// The open request: its number, messages still due, and when it is
    /// over even if the server's "expired" status never comes.
    open: Option<(u64, usize, Instant)>,
    requests: u64,
}

impl PinnedPull {
    pub async fn new(
        context: jetstream::Context,
        stream: &str,
        consumer: &str,
        group: &str,
    ) -> anyhow::Result<Self> {
        let client = context.client();
        let inbox = client.new_inbox();
        let subscriber = client.subscribe(format!("{inbox}.*")).await?;
        Ok(Self {
            context,
            subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            group: group.to_owned(),
            inbox,
            subscriber,
            pin: None,
            open: None,
            requests: 0,
        })
    }

    /// Whether a request is open (its messages may still come).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Asks for up to `batch` messages, waiting at most `expires` for them.
    pub async fn request(&mut self, batch: usize, expires: Duration) -> anyhow::Result<()> {
        debug_assert!(batch > 0 && self.open.is_none());
        self.requests += 1;
        let body = serde_json::to_vec(&PullRequest {
            batch,
            expires: expires.as_nanos(),
            group: &self.group,
            id: self.pin.as_deref(),
        })?;
        let reply = format!("{}.{}", self.inbox, self.requests);
        self.context
            .client()
            .publish_with_reply(self.subject.clone(), reply, body.into())
            .await?;
        // The server answers "expired" at `expires`; a margin covers a lost answer.
        let over = Instant::now() + expires + Duration::from_secs(2);
        self.open = Some((self.requests, batch, over));
        Ok(())
    }

    /// The next message of the open request, or `Ok(None)` once the request
    /// has ended. Cancel-safe: nothing is lost when the future is dropped.
    pub async fn next(&mut self) -> Result<Option<jetstream::Message>, PullError> {
        loop {
            let Some((number, _, over)) = self.open else {
                return Ok(None);
            };
            let message = tokio::select! {
                m = self.subscriber.next() => m,
                _ = tokio::time::sleep_until(over) => {
                    self.open = None;
                    return Ok(None);
                }
            };
            let Some(message) = message else {
                self.open = None;
                return Err(PullError::Other("subscription closed".into()));
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    if let Some(pin) = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(async_nats::header::NATS_PIN_ID))
                    {
                        self.pin = Some(pin.as_str().to_owned());
                    }
                    if let Some((_, due, _)) = self.open.as_mut() {
                        *due = due.saturating_sub(1);
                        if *due == 0 {
                            self.open = None;
                        }
                    }
                    return Ok(Some(jetstream::Message {
                        message,
                        context: self.context.clone(),
                    }));
                }
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(status) => {
                    // A status ends the request it answers; one for an
                    // older request (answered late) changes nothing.
                    let answers = message
                        .subject
                        .as_str()
                        .rsplit('.')
                        .next()
                        .and_then(|n| n.parse::<u64>().ok());
                    if answers != Some(number) {
                        continue;
                    }
                    self.open = None;
                    let description = message.description.unwrap_or_default();
                    return match status {
                        StatusCode::TIMEOUT => Ok(None),
                        StatusCode::NOT_FOUND if !description.contains("Consumer") => Ok(None),
                        StatusCode::PIN_ID_MISMATCH => {
                            // Pinned to someone else, or our pin expired: ask
                            // again without one and wait our turn.
                            self.pin = None;
                            Ok(None)
                        }
                        StatusCode::REQUEST_TERMINATED => Err(PullError::Refused(description)),
                        StatusCode::NO_RESPONDERS => Err(PullError::NoResponders),
                        other => Err(PullError::Other(format!("{other} {description}"))),
                    };
                }
            }
        }
    }
}
