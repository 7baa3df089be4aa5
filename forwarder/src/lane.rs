//! A lane: one account's deliveries, run by the one forwarder that serves
//! the account. It pulls the account's own consumer (as the pinned client),
//! keeps each conversation in stream order, starts at most the account's
//! `max_in_flight` attempts at once, and runs the account's circuit breaker.
//!
//! - **Order.** A conversation has at most one message in an attempt. When
//!   an attempt fails and the message goes back to the server to wait for
//!   its retry, the conversation gets a *hold* (in the holds bucket): its
//!   later messages stay in the lane, in stream order, and none starts until
//!   the held message is back (the server returns a message waiting for a
//!   retry before any new one) and delivered or dead. The hold outlives a
//!   crash or hand-over, so the next lane keeps the conversation waiting too.
//! - **Room.** The lane asks the server for only as many messages as it can
//!   start soon (twice its cap); messages behind a running or held message of
//!   their conversation do not count, so other conversations go on. The
//!   account's consumer bounds them all (1000 unacknowledged). Messages the
//!   lane holds get their ack timer restarted, so the server never hands them
//!   out again.
//! - **Pause.** While the breaker is open or an operator paused the
//!   account, nothing starts but, for the breaker, one probe at a time.
//!
//! Architecture invariant: only the lane that owns an account (see
//! [`crate::fleet`]) writes its holds and its health entry.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, AckKind, kv};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde::Deserialize;
use shared::ids::AccountId;
use shared::model::AccountStatus;
use shared::secrets::SecretBox;
use shared::signing::{SigningKeys, WebhookSecret};
use shared::subjects::Subjects;
use shared::wire::fields;
use shared::wire::{
    ALERT_DELIVERIES_PAUSED, ALERT_DELIVERIES_RESUMED, AccountRouting, ConversationHold, CrmAlert,
    DeliveryHealth, HealthState,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::attempt::{self, Finished, Held, Job, Settled, Target, Verdict};
use crate::breaker::{Breaker, BreakerSettings, Change};
use crate::crm::CrmClient;
use crate::pull::PinnedPull;
use crate::retry::RetrySchedule;
use shared::observe::Throughput;

/// How long one pull request waits for messages: also the longest a lane
/// that hands its account over waits for its last request to end.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How often held messages are looked at (ack timers, probes, metrics).
const TICK: Duration = Duration::from_secs(1);
/// How often a lane that cannot open its account's secret tries again.
const RECHECK: Duration = Duration::from_secs(10);

/// What every lane of the process shares.
pub struct LaneContext {
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub inbound: jetstream::stream::Stream,
    pub holds: kv::Store,
    pub health: kv::Store,
    pub crm: CrmClient,
    pub schedule: RetrySchedule,
    /// Opens webhook secrets sealed with `ROUTER_ENCRYPTION_KEY`.
    pub key: Option<SecretBox>,
    /// `FORWARDER_CONCURRENCY` delivery slots for all accounts, first come
    /// first served.
    pub slots: Arc<Semaphore>,
    pub throughput: Arc<Throughput>,
    /// Deliveries in flight per account unless it sets `max_in_flight`.
    pub default_in_flight: u32,
    /// The most an account may set (`ROUTER_ACCOUNT_IN_FLIGHT_MAX`).
    pub max_in_flight: u32,
    pub breaker: BreakerSettings,
    pub ack_wait: Duration,
    pub crm_timeout: Duration,
    /// Each lane's consumer figures, summed for `/metrics` and stats.
    pub backlog: std::sync::Mutex<HashMap<String, ConsumerFigures>>,
}

#[derive(Clone, Copy, Default)]
pub struct ConsumerFigures {
    pub pending: u64,
    pub ack_pending: u64,
    pub redelivered: u64,
}

/// How a lane begins.
pub struct LaneStart {
    /// Where a consumer created now starts in the stream.
    pub deliver_policy: DeliverPolicy,
    /// The account's previous forwarder vanished without handing it over:
    /// release its pin now rather than after the server's timeout.
    pub unpin: bool,
    /// And wait this long before pulling, so that everything the vanished
    /// forwarder held is back on the server and arrives in order.
    pub wait: Duration,
}

/// The fields of an inbound message a lane schedules by.
#[derive(Deserialize)]
struct Envelope {
    message_id: String,
    account_id: String,
    conversation_id: String,
}

#[derive(Default)]
struct Conversation {
    /// Messages not yet started, in stream order.
    waiting: VecDeque<Held>,
    /// The stream sequence of the message in an attempt now.
    running: Option<u64>,
    /// In the lane's ready list.
    ready: bool,
}

pub struct Lane {
    ctx: Arc<LaneContext>,
    account: AccountId,
    consumer: String,
    routing: watch::Receiver<Option<Arc<AccountRouting>>>,
    pull: Option<PinnedPull>,
    conversations: HashMap<String, Conversation>,
    /// Conversations whose first waiting message may start, in turn.
    ready: VecDeque<String>,
    running: usize,
    /// Messages waiting in `conversations`.
    waiting: usize,
    holds: HashMap<String, ConversationHold>,
    breaker: Breaker,
    /// Where the account's messages go, while the routing stays the same.
    target: Option<Result<Arc<Target>, String>>,
    /// When `target` was worked out: a failure is looked at again later.
    target_at: Instant,
    /// No pulling before this (a hand-over wait, or a back-off after an error).
    pull_after: Instant,
    done_tx: mpsc::UnboundedSender<Finished>,
    done_rx: mpsc::UnboundedReceiver<Finished>,
    /// The state this lane counts itself under in `/metrics`.
    counted_as: Option<HealthState>,
    /// The previous lane's holds and breaker were read (with the first message).
    state_taken_over: bool,
    figures_at: Instant,
}

impl Lane {
    pub fn new(
        ctx: Arc<LaneContext>,
        account: AccountId,
        routing: watch::Receiver<Option<Arc<AccountRouting>>>,
    ) -> Self {
        let consumer = ctx.subjects.account_consumer(&account);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let breaker = Breaker::new(ctx.breaker, None, Utc::now());
        Self {
            ctx,
            account,
            consumer,
            routing,
            pull: None,
            conversations: HashMap::new(),
            ready: VecDeque::new(),
            running: 0,
            waiting: 0,
            holds: HashMap::new(),
            breaker,
            target: None,
            target_at: Instant::now(),
            pull_after: Instant::now(),
            done_tx,
            done_rx,
            counted_as: None,
            state_taken_over: false,
            figures_at: Instant::now(),
        }
    }

    /// Serves the account until `stop`, then hands it back: the last pull
    /// request ends, attempts in flight finish, what is held goes back to
    /// the server in stream order, and the pin is released for the next
    /// forwarder.
    pub async fn run(mut self, start: LaneStart, stop: CancellationToken) {
        if !self.begin(&start, &stop).await {
            self.count_as(None);
            return;
        }
        tracing::info!(account_id = %self.account, consumer = %self.consumer, "serving account");
        loop {
            self.start_attempts().await;
            self.pull_more().await;
            let wake = self.next_wake();
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(done) = self.done_rx.recv() => self.finished(done).await,
                changed = self.routing.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.routing_changed().await;
                }
                next = next_pulled(&mut self.pull) => self.pulled(next).await,
                _ = tokio::time::sleep_until(wake) => self.tick().await,
            }
        }
        self.hand_back().await;
        self.count_as(None);
        self.ctx
            .backlog
            .lock()
            .unwrap()
            .remove(self.account.as_str());
    }

    /// Sets up the consumer and the pull. False when stopped first.
    async fn begin(&mut self, start: &LaneStart, stop: &CancellationToken) -> bool {
        let mut backoff = shared::shutdown::Backoff::default();
        while let Err(e) = self.set_up(start).await {
            tracing::warn!(account_id = %self.account, error = %e, "account consumer set-up failed; retrying");
            if !backoff.wait(stop).await {
                return false;
            }
        }
        self.pull_after = Instant::now() + start.wait;
        if !start.wait.is_zero() {
            tracing::info!(account_id = %self.account, wait_secs = start.wait.as_secs(), "taking over from a forwarder that stopped answering; waiting for its messages to come back");
        }
        self.count_as(Some(self.breaker.state()));
        true
    }

    async fn set_up(&mut self, start: &LaneStart) -> anyhow::Result<()> {
        let config = shared::jetstream::account_consumer_config(
            &self.ctx.subjects,
            &self.account,
            self.ctx.ack_wait,
            start.deliver_policy,
        );
        match self.ctx.inbound.consumer_info(&self.consumer).await {
            Ok(info) => {
                // Keep where it is in the stream; bring the rest up to date.
                let mut config = config;
                config.deliver_policy = info.config.deliver_policy;
                self.ctx.inbound.update_consumer(config).await?;
            }
            Err(_) => {
                self.ctx.inbound.create_consumer(config).await?;
            }
        }
        if self.pull.is_none() {
            self.pull = Some(
                PinnedPull::new(
                    self.ctx.js.clone(),
                    &self.ctx.subjects.inbound_stream(),
                    &self.consumer,
                    shared::jetstream::DELIVERY_GROUP,
                )
                .await?,
            );
        }
        if start.unpin {
            let _ = self
                .ctx
                .inbound
                .unpin_consumer(&self.consumer, shared::jetstream::DELIVERY_GROUP)
                .await;
        }
        Ok(())
    }

    /// Reads what the account's previous lane left: its conversation holds
    /// and its breaker. Read with the first message: the server gives it
    /// only once the previous lane has handed everything back, so by then
    /// its last holds are written. Until then nothing has started.
    async fn take_over_state(&mut self) -> anyhow::Result<()> {
        self.holds = self.load_holds().await?;
        let stored = match self.ctx.health.get(self.account.as_str()).await? {
            Some(bytes) => serde_json::from_slice::<DeliveryHealth>(&bytes).ok(),
            None => None,
        };
        self.breaker = Breaker::new(self.ctx.breaker, stored, Utc::now());
        self.count_as(Some(self.breaker.state()));
        self.apply_routing().await;
        Ok(())
    }

    async fn load_holds(&self) -> anyhow::Result<HashMap<String, ConversationHold>> {
        let prefix = format!("{}.", self.account);
        let mut holds = HashMap::new();
        let mut keys = self.ctx.holds.keys().await?;
        while let Some(key) = keys.next().await {
            let key = key?;
            if !key.starts_with(&prefix) {
                continue;
            }
            if let Some(bytes) = self.ctx.holds.get(&key).await?
                && let Ok(hold) = serde_json::from_slice::<ConversationHold>(&bytes)
                && let Some(conversation) = self.conversation_of_hold(&key, &hold).await
            {
                holds.insert(conversation, hold);
            }
        }
        Ok(holds)
    }

    /// A hold's conversation: its key names it, unless the id needed hashing,
    /// then the held message itself tells.
    async fn conversation_of_hold(&self, key: &str, hold: &ConversationHold) -> Option<String> {
        let tail = key.split_once('.')?.1;
        if !tail.starts_with(HASHED) {
            return Some(tail.to_owned());
        }
        let message = self
            .ctx
            .inbound
            .get_raw_message(hold.stream_sequence)
            .await
            .ok()?;
        let envelope: Envelope = serde_json::from_slice(&message.payload).ok()?;
        Some(envelope.conversation_id)
    }

    fn cap(&self) -> usize {
        let routing = self.routing.borrow();
        let wanted = routing
            .as_ref()
            .and_then(|r| r.max_in_flight)
            .unwrap_or(self.ctx.default_in_flight);
        wanted.clamp(1, self.ctx.max_in_flight) as usize
    }

    fn operator_paused(&self) -> bool {
        self.routing
            .borrow()
            .as_ref()
            .is_none_or(|r| r.deliveries_paused)
    }

    /// Where messages go now; `Err` while they cannot go anywhere (the
    /// secret cannot be opened), which stops the lane without using any
    /// message's retries.
    fn target(&mut self) -> Result<Arc<Target>, String> {
        match &self.target {
            Some(Ok(target)) => return Ok(target.clone()),
            Some(Err(why)) if self.target_at.elapsed() < RECHECK => return Err(why.clone()),
            _ => {}
        }
        self.target_at = Instant::now();
        let target = self
            .routing
            .borrow()
            .as_ref()
            .map(|r| resolve(&self.ctx, r));
        let target = target.unwrap_or_else(|| Err("the account has no routing".into()));
        if let Err(why) = &target {
            tracing::error!(account_id = %self.account, "{why}");
        }
        self.target = Some(target.clone());
        target
    }

    /// Starts what may start: while not paused, the first waiting message of
    /// ready conversations up to the cap; while the breaker is open, one
    /// probe once it is due and nothing else runs.
    async fn start_attempts(&mut self) {
        if self.ready.is_empty() || self.operator_paused() {
            return;
        }
        let probe = self.breaker.is_paused();
        let room = if probe {
            usize::from(self.running == 0 && self.breaker.probe_due(Utc::now()))
        } else {
            self.cap().saturating_sub(self.running)
        };
        if room == 0 {
            return;
        }
        let Ok(target) = self.target() else {
            return;
        };
        for _ in 0..room {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(conversation) = self.conversations.get_mut(&id) else {
                continue;
            };
            conversation.ready = false;
            if self.held_back(&id) {
                continue; // defensive: a held conversation is never made ready
            }
            let conversation = self.conversations.get_mut(&id).expect("just seen");
            let Some(held) = conversation.waiting.pop_front() else {
                continue;
            };
            conversation.running = Some(held.stream_sequence);
            self.waiting -= 1;
            self.running += 1;
            let hold = self
                .holds
                .get(&id)
                .filter(|h| h.message_id == held.message_id)
                .cloned();
            let job = Job {
                account: self.account.clone(),
                retry_window_start: self.breaker.retry_window_start(held.published),
                held,
                target: target.clone(),
                hold,
                probe,
            };
            let (ctx, done) = (self.ctx.clone(), self.done_tx.clone());
            tokio::spawn(async move {
                let _ = done.send(attempt::run(ctx, job).await);
            });
        }
    }

    /// Opens a pull request when there is room and none is open.
    async fn pull_more(&mut self) {
        let want = self.wanted();
        let Some(pull) = self.pull.as_mut() else {
            return;
        };
        if want == 0 || pull.is_open() || Instant::now() < self.pull_after {
            return;
        }
        if let Err(e) = pull.request(want, PULL_EXPIRES).await {
            tracing::warn!(account_id = %self.account, error = %e, "pull request not sent");
            self.pull_after = Instant::now() + Duration::from_secs(1);
        }
    }

    /// How many more messages to ask for.
    fn wanted(&self) -> usize {
        if self.operator_paused() || matches!(self.target, Some(Err(_))) {
            return 0;
        }
        if self.breaker.is_paused() {
            // Only something to probe with, once the probe is due.
            let idle = self.running == 0 && self.ready.is_empty();
            return usize::from(idle && self.breaker.probe_due(Utc::now()));
        }
        // Messages behind a running or held one are not counted: a held
        // message must be able to come back however many wait behind it.
        let lookahead = 2 * self.cap();
        lookahead.saturating_sub(self.ready.len() + self.running)
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(30);
        if self.waiting > 0 || self.running > 0 || !self.holds.is_empty() {
            wake = wake.min(Instant::now() + TICK);
        }
        if self.pull_after > Instant::now() {
            wake = wake.min(self.pull_after);
        }
        if let Some(at) = self.breaker.next_probe_at() {
            let until = (at - Utc::now()).to_std().unwrap_or_default();
            wake = wake.min(Instant::now() + until);
        }
        wake
    }

    async fn pulled(&mut self, next: Result<Option<jetstream::Message>, crate::pull::PullError>) {
        match next {
            Ok(Some(message)) => {
                if !self.state_taken_over {
                    match self.take_over_state().await {
                        Ok(()) => self.state_taken_over = true,
                        Err(e) => {
                            // Not without the holds: give it back and try again.
                            tracing::warn!(account_id = %self.account, error = %e, "conversation holds not read; retrying");
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                            self.pull_after = Instant::now() + Duration::from_secs(1);
                            return;
                        }
                    }
                }
                self.accept(message).await
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(account_id = %self.account, error = %e, "pulling the account's consumer failed; retrying");
                self.pull_after = Instant::now() + Duration::from_secs(1);
                if matches!(e, crate::pull::PullError::Refused(ref why) if why.contains("Consumer Deleted"))
                {
                    let start = LaneStart {
                        deliver_policy: DeliverPolicy::All,
                        unpin: false,
                        wait: Duration::ZERO,
                    };
                    self.state_taken_over = false;
                    if let Err(e) = self.set_up(&start).await {
                        tracing::warn!(account_id = %self.account, error = %e, "account consumer not recreated");
                    }
                }
            }
        }
    }

    /// Takes a message into its conversation's place in stream order. A held
    /// message that is back before its retry time goes back to wait.
    async fn accept(&mut self, message: jetstream::Message) {
        let Some(mut held) = read(message, &self.account) else {
            return;
        };
        Throughput::add(&self.ctx.throughput.received, 1);
        let id = held.conversation_id.clone();
        if let Some(hold) = self.holds.get(&id) {
            let now = Utc::now();
            if hold.message_id == held.message_id {
                if hold.retry_at > now + chrono::TimeDelta::seconds(1) {
                    // Back early (a crash or hand-over): not due yet.
                    let early = (hold.retry_at - now).to_std().unwrap_or_default();
                    let _ = held.message.ack_with(AckKind::Nak(Some(early))).await;
                    return;
                }
            } else if hold.stream_sequence < held.stream_sequence {
                metrics::counter!("router_forwarder_held_back_total").increment(1);
            }
        }
        held.fresh_since = std::time::Instant::now();
        let conversation = self.conversations.entry(id.clone()).or_default();
        if conversation.running == Some(held.stream_sequence) {
            return; // already in an attempt: a stale redelivery
        }
        match conversation
            .waiting
            .binary_search_by_key(&held.stream_sequence, |h| h.stream_sequence)
        {
            Ok(i) => conversation.waiting[i] = held, // redelivered: newer handle
            Err(i) => {
                conversation.waiting.insert(i, held);
                self.waiting += 1;
            }
        }
        self.refresh(&id);
    }

    /// Puts a conversation in the ready list when its first waiting message
    /// may start: nothing of it running, and not held behind a message that
    /// is away on the server.
    fn refresh(&mut self, id: &str) {
        if self.held_back(id) {
            return;
        }
        let Some(conversation) = self.conversations.get_mut(id) else {
            return;
        };
        if !conversation.waiting.is_empty() && conversation.running.is_none() && !conversation.ready
        {
            conversation.ready = true;
            self.ready.push_back(id.to_owned());
        }
    }

    /// Whether a conversation's first waiting message is behind its held
    /// message, which is away on the server.
    fn held_back(&self, id: &str) -> bool {
        let front = self
            .conversations
            .get(id)
            .and_then(|c| c.waiting.front())
            .map(|h| h.stream_sequence);
        match (self.holds.get(id), front) {
            (Some(hold), Some(front)) => hold.stream_sequence < front,
            _ => false,
        }
    }

    /// Whether the held message of a conversation is in this lane.
    fn has(&self, conversation: &str, hold: &ConversationHold) -> bool {
        self.conversations.get(conversation).is_some_and(|c| {
            c.running == Some(hold.stream_sequence)
                || c.waiting
                    .iter()
                    .any(|h| h.stream_sequence == hold.stream_sequence)
        })
    }

    /// A hold whose message should long have come back (the server returns
    /// it before any new message): it was settled by a forwarder that could
    /// not remove the hold. Not judged while nothing is pulled (paused).
    fn stale(&self, hold: &ConversationHold, now: DateTime<Utc>) -> bool {
        let grace = self.ctx.ack_wait * 3 + Duration::from_secs(60);
        !self.breaker.is_paused()
            && !self.operator_paused()
            && hold.retry_at + chrono::TimeDelta::from_std(grace).unwrap_or_default() < now
    }

    /// Releases holds whose message is not coming back, so the messages
    /// behind them can go.
    async fn release_stale_holds(&mut self) {
        let now = Utc::now();
        let stale: Vec<String> = self
            .holds
            .iter()
            .filter(|(id, hold)| self.stale(hold, now) && !self.has(id, hold))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(hold) = self.holds.remove(&id) {
                tracing::warn!(account_id = %self.account, held_message = %hold.message_id, "conversation hold outlived its message; released");
            }
            let _ = self.ctx.holds.delete(hold_key(&self.account, &id)).await;
            self.refresh(&id);
        }
    }

    async fn finished(&mut self, done: Finished) {
        self.running -= 1;
        let id = done.conversation_id;
        let conversation = self.conversations.entry(id.clone()).or_default();
        conversation.running = None;
        match done.settled {
            Settled::Delivered | Settled::Dead => {
                if self
                    .holds
                    .get(&id)
                    .is_some_and(|h| h.stream_sequence == done.stream_sequence)
                {
                    self.holds.remove(&id);
                }
            }
            Settled::Retrying(hold) => {
                // The rest of the conversation waits here until it is back.
                self.holds.insert(id.clone(), hold);
            }
            Settled::ProbeFailed(held) => {
                conversation.waiting.push_front(*held);
                self.waiting += 1;
            }
        }
        let now = Utc::now();
        let change = match done.verdict {
            Verdict::Answered => self.breaker.answered(now, done.probe),
            Verdict::Failed(reason) => self.breaker.failed(now, &reason, done.probe),
            Verdict::Neither => Change::None,
        };
        self.apply(change).await;
        if self
            .conversations
            .get(&id)
            .is_some_and(|c| c.waiting.is_empty())
        {
            self.conversations.remove(&id);
        } else {
            self.refresh(&id);
        }
    }

    /// Persists and announces what the breaker decided.
    async fn apply(&mut self, change: Change) {
        let alert = match &change {
            Change::None => return,
            Change::Failed | Change::Healed => None,
            Change::Paused => {
                let h = self.breaker.health();
                tracing::warn!(
                    account_id = %self.account,
                    failures = h.consecutive_failures,
                    last_error = h.last_error.as_deref().unwrap_or(""),
                    "deliveries paused: the CRM keeps failing; probing it"
                );
                Some(CrmAlert {
                    event: ALERT_DELIVERIES_PAUSED.into(),
                    account_id: self.account.to_string(),
                    at: h.since,
                    cause: "circuit_breaker".into(),
                    consecutive_failures: Some(h.consecutive_failures),
                    last_error: h.last_error.clone(),
                    next_probe_at: h.next_probe_at,
                    paused_since: None,
                })
            }
            Change::Resumed {
                cause,
                paused_since,
            } => {
                tracing::info!(account_id = %self.account, cause, "deliveries resumed");
                // An operator's resume is announced by ingest, which took it.
                (*cause != "operator").then(|| CrmAlert {
                    event: ALERT_DELIVERIES_RESUMED.into(),
                    account_id: self.account.to_string(),
                    at: Utc::now(),
                    cause: (*cause).into(),
                    consecutive_failures: None,
                    last_error: None,
                    next_probe_at: None,
                    paused_since: Some(*paused_since),
                })
            }
        };
        self.count_as(Some(self.breaker.state()));
        if let Ok(value) = serde_json::to_vec(self.breaker.health())
            && let Err(e) = self
                .ctx
                .health
                .put(self.account.as_str(), value.into())
                .await
        {
            tracing::warn!(account_id = %self.account, error = %e, "delivery health not stored");
        }
        if let Some(alert) = alert {
            shared::jetstream::publish_crm_alert(
                &self.ctx.js,
                &self.ctx.subjects,
                &self.account,
                &alert,
            )
            .await;
        }
    }

    async fn routing_changed(&mut self) {
        self.target = None;
        self.apply_routing().await;
    }

    /// An operator's resume also ends a pause of the breaker that began
    /// before it.
    async fn apply_routing(&mut self) {
        let resumed_at = self
            .routing
            .borrow_and_update()
            .as_ref()
            .filter(|r| !r.deliveries_paused)
            .and_then(|r| r.deliveries_resumed_at);
        if let Some(at) = resumed_at {
            let change = self.breaker.operator_resumed(at);
            self.apply(change).await;
        }
    }

    async fn tick(&mut self) {
        if !self.holds.is_empty() {
            self.release_stale_holds().await;
        }
        // Held messages keep their place: restart ack timers before they run out.
        let refresh = self.ctx.ack_wait / 3;
        for conversation in self.conversations.values_mut() {
            for held in conversation.waiting.iter_mut() {
                if held.fresh_since.elapsed() >= refresh {
                    held.keep().await;
                }
            }
        }
        if self.figures_at.elapsed() >= Duration::from_secs(5) {
            self.figures_at = Instant::now();
            if let Ok(info) = self.ctx.inbound.consumer_info(&self.consumer).await {
                self.ctx.backlog.lock().unwrap().insert(
                    self.account.to_string(),
                    ConsumerFigures {
                        pending: info.num_pending,
                        ack_pending: info.num_ack_pending as u64,
                        redelivered: info.num_redelivered as u64,
                    },
                );
            }
        }
    }

    async fn hand_back(&mut self) {
        // The last request's messages still come: take them in.
        while self.pull.as_ref().is_some_and(PinnedPull::is_open) {
            match next_pulled(&mut self.pull).await {
                Ok(Some(message)) => self.accept(message).await,
                Ok(None) => {}
                Err(_) => break,
            }
        }
        let deadline = Instant::now() + self.ctx.crm_timeout + Duration::from_secs(5);
        while self.running > 0 {
            tokio::select! {
                Some(done) = self.done_rx.recv() => self.finished(done).await,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(account_id = %self.account, "deliveries still running; JetStream redelivers them");
                    break;
                }
            }
        }
        let mut held: Vec<Held> = self
            .conversations
            .drain()
            .flat_map(|(_, c)| c.waiting)
            .collect();
        held.sort_by_key(|h| h.stream_sequence);
        for h in &held {
            let _ = h.message.ack_with(AckKind::Nak(None)).await;
        }
        self.waiting = 0;
        let _ = self
            .ctx
            .inbound
            .unpin_consumer(&self.consumer, shared::jetstream::DELIVERY_GROUP)
            .await;
        tracing::info!(account_id = %self.account, handed_back = held.len(), "account handed back");
    }

    /// Counts this lane under its breaker state in `/metrics`.
    fn count_as(&mut self, state: Option<HealthState>) {
        if self.counted_as == state {
            return;
        }
        if let Some(old) = self.counted_as {
            metrics::gauge!("router_forwarder_accounts", "state" => old.as_str()).decrement(1.0);
        }
        if let Some(new) = state {
            metrics::gauge!("router_forwarder_accounts", "state" => new.as_str()).increment(1.0);
        }
        self.counted_as = state;
    }
}

/// The next message of the lane's open pull request; pending while none is open.
async fn next_pulled(
    pull: &mut Option<PinnedPull>,
) -> Result<Option<jetstream::Message>, crate::pull::PullError> {
    match pull {
        Some(pull) if pull.is_open() => pull.next().await,
        _ => std::future::pending().await,
    }
}

/// Reads what a lane needs from a message; one it cannot read, or one that
/// names another account than its subject (forged: it would be signed with
/// this account's secret), is terminated: it could never be delivered.
fn read(message: jetstream::Message, account: &AccountId) -> Option<Held> {
    let (stream_sequence, delivered, published) = match message.info() {
        Ok(info) => (
            info.stream_sequence,
            info.delivered.max(1) as u32,
            DateTime::from_timestamp_nanos(info.published.unix_timestamp_nanos() as i64),
        ),
        Err(_) => {
            tracing::error!(subject = %message.subject, "message without JetStream metadata dropped");
            return None;
        }
    };
    match serde_json::from_slice::<Envelope>(&message.payload) {
        Ok(e) if e.account_id != account.as_str() => {
            tracing::error!(subject = %message.subject, account_id = %account, stream_sequence, "inbound message naming another account terminated");
            metrics::counter!("router_forwarder_refused_messages_total", "reason" => "account_mismatch").increment(1);
            tokio::spawn(async move {
                let _ = message.ack_with(AckKind::Term).await;
            });
            None
        }
        Ok(e) => Some(Held {
            message,
            message_id: e.message_id,
            conversation_id: e.conversation_id,
            stream_sequence,
            delivered,
            published,
            fresh_since: std::time::Instant::now(),
        }),
        Err(e) => {
            tracing::error!(subject = %message.subject, error = %e, "unreadable inbound message terminated");
            tokio::spawn(async move {
                let _ = message.ack_with(AckKind::Term).await;
            });
            None
        }
    }
}

/// Where an account's messages go, from its routing.
fn resolve(ctx: &LaneContext, routing: &AccountRouting) -> Result<Arc<Target>, String> {
    if routing.status == AccountStatus::Disabled {
        return Ok(Arc::new(Target::Refuse("account_disabled")));
    }
    let open = |stored: &str, field: &str| -> Result<String, String> {
        if ctx.key.is_some() && !shared::secrets::is_sealed(stored) {
            return Err(
                "the account's webhook secret in the accounts bucket is not sealed although \
                 ROUTER_ENCRYPTION_KEY is set: refused (ingest seals every value it writes)"
                    .into(),
            );
        }
        let context = shared::secrets::context(&routing.account_id, field);
        shared::secrets::open(ctx.key.as_ref(), stored, &context).map_err(|e| {
            format!(
                "cannot read the account's webhook secret ({e}); set ROUTER_ENCRYPTION_KEY as on ingest"
            )
        })
    };
    let current = open(&routing.webhook_secret, fields::WEBHOOK_SECRET)?;
    let Ok(current) = WebhookSecret::parse(&current) else {
        return Ok(Arc::new(Target::Refuse("invalid_secret")));
    };
    // The previous secret only adds a signature: one that cannot be read
    // is left out rather than holding up the account.
    let previous = match (
        &routing.previous_webhook_secret,
        routing.previous_secret_until,
    ) {
        (Some(stored), Some(until)) => open(stored, fields::PREVIOUS_WEBHOOK_SECRET)
            .ok()
            .and_then(|s| WebhookSecret::parse(&s).ok())
            .map(|secret| (secret, until)),
        _ => None,
    };
    Ok(Arc::new(Target::Crm {
        url: routing.crm_webhook_url.clone(),
        secret: SigningKeys { current, previous },
    }))
}

/// Marks a conversation id that had to be hashed to be a bucket key.
const HASHED: &str = "h_";

/// The holds-bucket key of a conversation: `<account>.<conversation id>`, or
/// a hash of the id when it has characters a key cannot.
pub fn hold_key(account: &AccountId, conversation_id: &str) -> String {
    let plain = !conversation_id.starts_with(HASHED)
        && !conversation_id.is_empty()
        && conversation_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'=');
    if plain {
        format!("{account}.{conversation_id}")
    } else {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(conversation_id.as_bytes());
        format!("{account}.{HASHED}{}", hex::encode(&digest[..16]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_become_bucket_keys() {
        let acc = AccountId::parse("acc_1").unwrap();
        assert_eq!(hold_key(&acc, "conv_123_456"), "acc_1.conv_123_456");
        let odd = hold_key(&acc, "conv_1 2/3");
        assert!(odd.starts_with("acc_1.h_") && odd.len() == "acc_1.h_".len() + 32);
        assert_ne!(hold_key(&acc, "h_abc"), "acc_1.h_abc");
    }
}
