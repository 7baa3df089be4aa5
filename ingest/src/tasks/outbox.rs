//! The outbox publisher: every saved message has an outbox row until
//! JetStream acknowledges its publish. Rows are published oldest first with
//! `Nats-Msg-Id` = message id, so a republish after a crash or a lost ack is
//! dropped by the stream's duplicate window instead of making a second copy.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use futures::FutureExt;
use futures::future::join_all;
use shared::observe::Throughput;
use shared::shutdown::{Backoff, nap};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::nats::NatsLink;
use crate::store::{GroupCommit, MessageStore};

const BATCH: u32 = 256;
/// Batches whose outbox removal may be unfinished while the next is published.
const MAX_REMOVALS: usize = 4;
/// How often the outbox is looked at without a wake-up.
const TICK: Duration = Duration::from_secs(1);

/// What the publisher uses: the outbox, NATS, and the wake-up a save rings.
#[derive(Clone)]
pub struct Publisher {
    pub messages: Arc<dyn MessageStore>,
    /// Removals share the next save's transaction.
    pub writes: GroupCommit,
    pub nats: Arc<NatsLink>,
    pub wakeup: Arc<Notify>,
    pub throughput: Arc<Throughput>,
    /// Refusals of one message before it is set aside (`INGEST_PUBLISH_ATTEMPTS`).
    pub publish_attempts: u32,
}

impl Publisher {
    /// Publishes what is pending until nothing more is ready or a publish
    /// fails. Returns how many messages JetStream acknowledged.
    ///
    /// A batch's outbox rows are removed while the next batch is published:
    /// the removal waits for the writer's next transaction, and publishing
    /// no longer waits with it. Until it is committed, its rows still come
    /// back from the outbox and are skipped here; the rows behind them in
    /// their conversations are not returned until then, so order holds.
    pub async fn publish_pending(&self) -> anyhow::Result<usize> {
        let state = self;
        if state.nats.accounts().is_none() {
            anyhow::bail!("NATS not set up yet");
        }
        let mut published = 0;
        let mut removing = Removals::default();
        loop {
            removing.reap().await?;
            if removing.running.len() >= MAX_REMOVALS {
                removing.wait_oldest().await?;
            }
            // Rows being removed may come back (not from PostgreSQL, which
            // leases what it returns): room for them, and every row that is
            // not one of them is published now, since a leased row left
            // behind would wait out its lease.
            let limit = BATCH + removing.ids.len() as u32;
            // This read sees every save committed before it: a wake-up rung
            // for one of them (its webhook's answer rings it once committed,
            // often while the publisher is busy) would only end the next
            // wait at once, for a read that finds nothing new.
            let _ = state.wakeup.notified().now_or_never();
            let mut batch = state.messages.pending_outbox(limit).await?;
            // Fewer rows than asked for, none with a row queued behind it:
            // nothing more is ready, and asking again would find nothing (at
            // a steady load, a second query for every message). A row saved
            // meanwhile wakes the publisher anew.
            let drained = batch.len() < limit as usize && !batch.iter().any(|entry| entry.has_next);
            batch.retain(|entry| !removing.ids.contains(&entry.message_id));
            if batch.is_empty() {
                if removing.is_empty() {
                    return Ok(published);
                }
                removing.wait_oldest().await?;
                continue;
            }
            let mut acks = Vec::with_capacity(batch.len());
            // Publishes JetStream (or the client, for one over the server's
            // size limit) refused: the message id and why.
            let mut refused: Vec<(String, String)> = Vec::new();
            for entry in &batch {
                let publish = PublishMessage::build()
                    .payload(entry.payload.clone().into())
                    .message_id(entry.nats_msg_id.as_deref().unwrap_or(&entry.message_id));
                match state
                    .nats
                    .js
                    .send_publish(entry.subject.clone(), publish)
                    .await
                {
                    Ok(ack) => acks.push((entry.message_id.clone(), ack)),
                    Err(e) => {
                        tracing::warn!(message_id = %entry.message_id, error = %e, "publish failed");
                        refused.push((entry.message_id.clone(), e.to_string()));
                        // Two in a row: the connection, not the message.
                        if refused.len() >= 2 && acks.is_empty() {
                            break;
                        }
                    }
                }
            }
            let started = std::time::Instant::now();
            let results = join_all(
                acks.into_iter()
                    .map(|(id, ack)| async move { (id, ack.await) }),
            )
            .await;
            let mut done = Vec::with_capacity(results.len());
            for (id, result) in results {
                match result {
                    Ok(_) => done.push(id),
                    Err(e) => refused.push((id, e.to_string())),
                }
            }
            metrics::histogram!("router_ingest_publish_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("router_ingest_published_total").increment(done.len() as u64);
            Throughput::add(&state.throughput.sent, done.len() as u64);
            if done.len() < batch.len() {
                let failed = (batch.len() - done.len()) as u64;
                metrics::counter!("router_ingest_publish_failures_total").increment(failed);
                Throughput::add(&state.throughput.errors, failed);
            }
            published += done.len();
            let stopped_early = done.len() < batch.len();
            removing.start(&state.writes, done);
            if !refused.is_empty() || stopped_early {
                removing.wait_all().await?;
            }
            if !refused.is_empty() {
                state.count_refusals(&refused).await;
            }
            if let Some((id, e)) = refused.first() {
                anyhow::bail!("publish of {id} not acknowledged: {e}");
            }
            if stopped_early {
                anyhow::bail!("publishing stopped early");
            }
            if drained && !removing.wait_all_unless_woken(&state.wakeup).await? {
                // This call's removals are committed before it returns, so
                // the next one never sees their rows again. A save that
                // wakes the publisher meanwhile is published at once.
                return Ok(published);
            }
        }
    }
}

/// Outbox removals on their way to the database, oldest first.
#[derive(Default)]
struct Removals {
    ids: std::collections::HashSet<String>,
    running: std::collections::VecDeque<(Vec<String>, RemovalTask)>,
}

type RemovalTask = tokio::task::JoinHandle<Result<(), crate::store::StoreError>>;

impl Removals {
    fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    fn start(&mut self, writes: &GroupCommit, message_ids: Vec<String>) {
        if message_ids.is_empty() {
            return;
        }
        self.ids.extend(message_ids.iter().cloned());
        let writes = writes.clone();
        let removal = message_ids.clone();
        let task = tokio::spawn(async move { writes.remove_from_outbox(removal).await });
        self.running.push_back((message_ids, task));
    }

    /// Forgets the removals that are done; fails if one failed.
    async fn reap(&mut self) -> anyhow::Result<()> {
        while self
            .running
            .front()
            .is_some_and(|(_, task)| task.is_finished())
        {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    /// Forgets the oldest removal, its rows included, and hands back its task.
    fn pop_oldest(&mut self) -> Option<RemovalTask> {
        let (message_ids, task) = self.running.pop_front()?;
        for id in &message_ids {
            self.ids.remove(id);
        }
        Some(task)
    }

    async fn wait_oldest(&mut self) -> anyhow::Result<()> {
        if let Some(task) = self.pop_oldest() {
            task.await??;
        }
        Ok(())
    }

    async fn wait_all(&mut self) -> anyhow::Result<()> {
        while !self.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    /// Waits for every removal, unless `wakeup` comes first (then `true`,
    /// the removals still on their way).
    async fn wait_all_unless_woken(&mut self, wakeup: &Notify) -> anyhow::Result<bool> {
        while let Some((_, oldest)) = self.running.front_mut() {
            tokio::select! {
                // A task's handle is awaited by reference: a wake-up leaves
                // it in place, to be awaited later.
                done = oldest => {
                    self.pop_oldest();
                    done??;
                }
                () = wakeup.notified() => return Ok(true),
            }
        }
        Ok(false)
    }
}

impl Publisher {
    /// Counts refused publishes against their messages, but only while
    /// JetStream answers (a refusal while NATS is down says nothing about
    /// the message); a message refused `publish_attempts` times is set
    /// aside as a dead letter, so it no longer holds up the outbox or the
    /// rest of its conversation.
    async fn count_refusals(&self, refused: &[(String, String)]) {
        if self.nats.js.query_account().await.is_err() {
            return;
        }
        for (id, error) in refused {
            let Ok(attempts) = self.messages.count_publish_failure(id).await else {
                continue;
            };
            if attempts < i64::from(self.publish_attempts) {
                continue;
            }
            match self
                .messages
                .set_aside_unpublishable(id, "publish_refused")
                .await
            {
                Ok(true) => {
                    metrics::counter!("router_ingest_publish_set_aside_total").increment(1);
                    tracing::error!(message_id = %id, attempts, error = %error, "JetStream keeps refusing this message; set aside as a dead letter (publish_refused)");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(message_id = %id, error = %e, "could not set aside an unpublishable message")
                }
            }
        }
    }

    /// Runs until shutdown: publishes when woken by a save, and every second in
    /// case a wake-up was missed or NATS came back; backs off while publishing
    /// fails.
    pub async fn run(self, shutdown: CancellationToken) {
        let state = &self;
        let mut failures = 0u32;
        let mut backoff = Backoff::default();
        loop {
            // Stopping mid-publish is safe: rows stay until acknowledged, and a
            // republish is dropped by the stream's duplicate window.
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = state.publish_pending() => r,
            };
            match result {
                Ok(n) => {
                    if n > 0 {
                        tracing::debug!(published = n, "outbox published");
                    }
                    if failures > 0 {
                        tracing::info!("outbox publishing recovered");
                    }
                    failures = 0;
                    backoff.reset();
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(error = %e, failures, "outbox publish failed; messages stay saved and will be retried");
                    }
                }
            }
            let go_on = if failures == 0 {
                nap(&shutdown, TICK, &state.wakeup).await
            } else {
                backoff.wait(&shutdown).await
            };
            if !go_on {
                return;
            }
        }
    }

    /// Records the outbox's size and age every second until shutdown, from
    /// the start and whether or not NATS answers: the backlog is what grows
    /// while NATS is down, and the alert on it must see that.
    pub async fn watch_backlog(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => self.record_backlog().await,
            }
        }
    }

    /// Outbox size and age, for `/metrics` and the stats summary (a COUNT
    /// over the outbox, so once a second, not per save).
    async fn record_backlog(&self) {
        let state = self;
        if let Ok((count, oldest)) = state.messages.outbox_backlog().await {
            let age = oldest.map_or(0.0, |t| {
                (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
            });
            metrics::gauge!("router_ingest_outbox_backlog").set(count as f64);
            metrics::gauge!("router_ingest_outbox_oldest_age_seconds").set(age);
            state
                .throughput
                .pending
                .store(count.max(0) as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// On shutdown: one last bounded attempt to publish what is saved. Whatever
    /// is left stays in the outbox and is published by the next start.
    pub async fn flush(&self, within: Duration) {
        match tokio::time::timeout(within, self.publish_pending()).await {
            Ok(Ok(n)) => tracing::info!(published = n, "outbox flushed"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "outbox not fully flushed; the rest is published at next start")
            }
            Err(_) => tracing::warn!("outbox flush timed out; the rest is published at next start"),
        }
    }
}
