//! Which forwarder serves which account. Every forwarder keeps a heartbeat
//! in the forwarders bucket and watches everyone's; the live forwarders split
//! the accounts by rendezvous hashing (an account goes to the live forwarder
//! whose hash with it is highest), so each computes the same split without
//! asking the others, and when one joins or leaves only its share moves.
//! A forwarder runs a [`Lane`] for each account it owns.
//!
//! Hand-over: a forwarder that no longer owns an account finishes what it
//! started, gives the rest back to the server in order and releases the
//! account's pin; the new owner's pulls wait on standby until then. One that
//! vanished (no heartbeat for [`LIVE_WINDOW`] by the server's clock, no
//! goodbye) is treated as crashed: the new owner releases its pin and waits
//! one ack wait, so that everything it held is back on the server and
//! arrives in stream order.
//!
//! Liveness is judged against this forwarder's own last heartbeat as the
//! server stamped it, so a NATS outage (when nobody's heartbeat arrives)
//! moves no account.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use sha2::Digest as _;
use shared::ids::AccountId;
use shared::wire::AccountRouting;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::lane::{Lane, LaneContext, LaneStart};

/// How often a forwarder renews its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A forwarder whose heartbeat is older than this is gone.
pub const LIVE_WINDOW: Duration = Duration::from_secs(6);

struct Member {
    /// The server's time of its latest heartbeat.
    at: DateTime<Utc>,
    /// It said goodbye: it handed its accounts back before leaving.
    left: bool,
}

struct LaneEntry {
    stop: CancellationToken,
    routing: watch::Sender<Option<Arc<AccountRouting>>>,
}

pub struct Fleet {
    ctx: Arc<LaneContext>,
    accounts_bucket: kv::Store,
    forwarders_bucket: kv::Store,
    /// This forwarder's key in the forwarders bucket.
    me: String,
    /// The server's time of our own latest heartbeat: the clock liveness is
    /// judged by.
    my_at: Option<DateTime<Utc>>,
    members: HashMap<String, Member>,
    accounts: HashMap<String, Arc<AccountRouting>>,
    /// Accounts deleted from the routing bucket whose consumer, holds and
    /// health entry still have to go (by their owner).
    deleted: HashSet<String>,
    /// Each account's owner as last computed.
    owners: HashMap<String, String>,
    lanes: HashMap<String, LaneEntry>,
    tasks: JoinSet<String>,
    /// Where consumers created now start: after the old shared consumer's
    /// position when upgrading from it, else at the stream's start.
    first_start: Option<u64>,
    /// The live forwarders when the accounts were last split.
    last_live: Vec<String>,
    /// Set once the initial state is read: no lane starts before.
    started: bool,
}

impl Fleet {
    pub fn new(
        ctx: Arc<LaneContext>,
        accounts_bucket: kv::Store,
        forwarders_bucket: kv::Store,
        instance: &str,
    ) -> Self {
        let tail = ulid::Ulid::new().to_string().to_lowercase();
        Self {
            ctx,
            accounts_bucket,
            forwarders_bucket,
            me: format!("{instance}-{}", &tail[tail.len() - 6..]),
            my_at: None,
            members: HashMap::new(),
            accounts: HashMap::new(),
            deleted: HashSet::new(),
            owners: HashMap::new(),
            lanes: HashMap::new(),
            tasks: JoinSet::new(),
            first_start: None,
            last_live: Vec::new(),
            started: false,
        }
    }

    /// Serves this forwarder's share of the accounts until `shutdown`, then
    /// hands every account back and says goodbye.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (forwarders, accounts) = (self.forwarders_bucket.clone(), self.accounts_bucket.clone());
        let Some(mut members) = self.watch(&forwarders, true, &shutdown).await else {
            return Ok(());
        };
        let Some(mut routing) = self.watch(&accounts, false, &shutdown).await else {
            return Ok(());
        };
        self.adopt_legacy_consumer().await;
        self.started = true;
        self.rebalance().await;
        tracing::info!(
            forwarder = %self.me,
            accounts = self.accounts.len(),
            serving = self.lanes.len(),
            forwarders = self.live().len(),
            "forwarder consuming"
        );
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut figures = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                entry = routing.next() => match entry {
                    Some(Ok(entry)) => self.routing_entry(entry).await,
                    _ => match self.watch(&accounts, false, &shutdown).await {
                        Some(watch) => routing = watch,
                        None => break,
                    },
                },
                entry = members.next() => match entry {
                    Some(Ok(entry)) => {
                        if self.member_entry(entry) {
                            self.rebalance().await;
                        }
                    }
                    _ => match self.watch(&forwarders, true, &shutdown).await {
                        Some(watch) => members = watch,
                        None => break,
                    },
                },
                Some(ended) = self.tasks.join_next() => {
                    if let Ok(account) = ended {
                        self.lanes.remove(&account);
                    }
                    self.rebalance().await;
                }
                _ = heartbeat.tick() => {
                    self.beat().await;
                    if self.live() != self.last_live {
                        self.rebalance().await;
                    }
                }
                _ = figures.tick() => self.record_figures(),
            }
        }
        for lane in self.lanes.values() {
            lane.stop.cancel();
        }
        while self.tasks.join_next().await.is_some() {}
        let _ = self.forwarders_bucket.delete(&self.me).await;
        tracing::info!(forwarder = %self.me, "every account handed back");
        Ok(())
    }

    /// Opens a watch of a whole bucket and reads its current entries
    /// (our own heartbeat first, for the members); `None` when stopped first.
    async fn watch(
        &mut self,
        bucket: &kv::Store,
        members: bool,
        shutdown: &CancellationToken,
    ) -> Option<kv::Watch> {
        let mut backoff = shared::shutdown::Backoff::default();
        loop {
            let read =
                tokio::time::timeout(Duration::from_secs(30), self.read_bucket(bucket, members));
            let read = tokio::select! {
                _ = shutdown.cancelled() => return None,
                read = read => read,
            };
            match read {
                Ok(Ok(watch)) => return Some(watch),
                Ok(Err(e)) => tracing::warn!(error = %e, "watching a bucket failed; retrying"),
                Err(_) => tracing::warn!("reading a bucket timed out; retrying"),
            }
            if !backoff.wait(shutdown).await {
                return None;
            }
        }
    }

    /// Reads a bucket's current entries into the fleet, and returns the
    /// watch that goes on with each change.
    async fn read_bucket(
        &mut self,
        bucket: &kv::Store,
        members: bool,
    ) -> anyhow::Result<kv::Watch> {
        if members {
            self.beat().await;
        }
        let empty = bucket.status().await?.values() == 0;
        // Every key's current value first, then each change.
        let mut watch = bucket.watch_with_history(">").await?;
        if !empty {
            while let Some(entry) = watch.next().await {
                let entry = entry?;
                let current = entry.seen_current;
                if members {
                    self.member_entry(entry);
                } else {
                    self.routing_entry(entry).await;
                }
                if current {
                    break;
                }
            }
        }
        Ok(watch)
    }

    /// Renews our heartbeat.
    async fn beat(&mut self) {
        let value = serde_json::json!({ "forwarder": self.me, "at": Utc::now() });
        if let Err(e) = self
            .forwarders_bucket
            .put(&self.me, value.to_string().into())
            .await
        {
            tracing::debug!(error = %e, "heartbeat not stored");
        }
    }

    /// Records a heartbeat or a goodbye; true when the live set may have changed.
    fn member_entry(&mut self, entry: kv::Entry) -> bool {
        let at = DateTime::from_timestamp_nanos(entry.created.unix_timestamp_nanos() as i64);
        if entry.key == self.me {
            self.my_at = Some(at);
            return false;
        }
        let left = !matches!(entry.operation, kv::Operation::Put);
        let known = self.members.insert(entry.key, Member { at, left });
        known.is_none_or(|m| m.left != left)
    }

    async fn routing_entry(&mut self, entry: kv::Entry) {
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<AccountRouting>(&entry.value) {
                Ok(routing) => {
                    let routing = Arc::new(routing);
                    self.deleted.remove(&entry.key);
                    if let Some(lane) = self.lanes.get(&entry.key) {
                        lane.routing.send_replace(Some(routing.clone()));
                    }
                    if self.accounts.insert(entry.key.clone(), routing).is_none() && self.started {
                        let live = self.live();
                        self.place(&entry.key, &live);
                    }
                }
                Err(e) => {
                    tracing::error!(account_id = %entry.key, error = %e, "unreadable account routing ignored")
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                self.accounts.remove(&entry.key);
                self.deleted.insert(entry.key.clone());
                if self.started {
                    let live = self.live();
                    self.clear_if_owned(&entry.key, &live).await;
                }
            }
        }
    }

    /// Live forwarders, this one included, sorted.
    fn live(&self) -> Vec<String> {
        let window = chrono::TimeDelta::from_std(LIVE_WINDOW).unwrap_or_default();
        let mut live: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.left && self.my_at.is_none_or(|mine| mine - m.at <= window))
            .map(|(id, _)| id.clone())
            .collect();
        live.push(self.me.clone());
        live.sort();
        live.dedup();
        live
    }

    /// Taking an account over from `previous`: if it stopped without a
    /// goodbye, its pin has to be released, and its held messages come back
    /// within an ack wait of its last heartbeat: how long is left of that.
    fn takeover_wait(&self, previous: &str, live: &[String]) -> Option<Duration> {
        let member = self.members.get(previous)?;
        if member.left || live.iter().any(|l| l == previous) {
            return None;
        }
        let back_by = member.at
            + chrono::TimeDelta::from_std(HEARTBEAT + self.ctx.ack_wait + Duration::from_secs(1))
                .unwrap_or_default();
        let now = self.my_at.unwrap_or_else(Utc::now);
        Some((back_by - now).to_std().unwrap_or_default())
    }

    /// Starts lanes for the accounts we now own, stops the others, and
    /// clears away deleted accounts we own.
    async fn rebalance(&mut self) {
        if !self.started {
            return;
        }
        let live = self.live();
        self.last_live = live.clone();
        let ids: Vec<String> = self.accounts.keys().cloned().collect();
        for account in ids {
            self.place(&account, &live);
        }
        let deleted: Vec<String> = self.deleted.iter().cloned().collect();
        for account in deleted {
            self.clear_if_owned(&account, &live).await;
        }
    }

    /// Serves an account if we own it among the `live` forwarders, and
    /// stops serving it if not.
    fn place(&mut self, account: &str, live: &[String]) {
        let Some(owner) = owner(live, account) else {
            return;
        };
        let previous = self.owners.insert(account.to_owned(), owner.clone());
        if owner == self.me {
            if !self.lanes.contains_key(account) {
                let previous = previous.or_else(|| self.former_owner(account));
                let takeover = previous.and_then(|p| self.takeover_wait(&p, live));
                self.start_lane(account, takeover);
            }
        } else if let Some(lane) = self.lanes.get(account) {
            lane.stop.cancel();
        }
    }

    /// A deleted account: its lane stops, and once it has ended its owner
    /// clears what the account left on NATS.
    async fn clear_if_owned(&mut self, account: &str, live: &[String]) {
        if let Some(lane) = self.lanes.get(account) {
            lane.stop.cancel();
            return; // cleared once the lane has ended
        }
        self.deleted.remove(account);
        self.owners.remove(account);
        if owner(live, account).is_some_and(|o| o == self.me) {
            self.clear_deleted(account).await;
        }
    }

    /// Who served an account before we started: the owner among every
    /// forwarder known, live or not, except us.
    fn former_owner(&self, account: &str) -> Option<String> {
        let known: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.left)
            .map(|(id, _)| id.clone())
            .collect();
        owner(&known, account)
    }

    /// Starts serving an account; `takeover` is set when its previous
    /// forwarder vanished, with what is left of the wait for its messages.
    fn start_lane(&mut self, account: &str, takeover: Option<Duration>) {
        let Ok(id) = AccountId::parse(account) else {
            return;
        };
        let routing = self.accounts.get(account).cloned();
        let (routing_tx, routing_rx) = watch::channel(routing);
        let stop = CancellationToken::new();
        let start = LaneStart {
            deliver_policy: match self.first_start {
                Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
                None => DeliverPolicy::All,
            },
            unpin: takeover.is_some(),
            wait: takeover.unwrap_or_default(),
        };
        let lane = Lane::new(self.ctx.clone(), id, routing_rx);
        let (token, name) = (stop.clone(), account.to_owned());
        self.tasks.spawn(async move {
            lane.run(start, token).await;
            name
        });
        self.lanes.insert(
            account.to_owned(),
            LaneEntry {
                stop,
                routing: routing_tx,
            },
        );
    }

    /// Removes what a deleted account left on NATS: its consumer and health
    /// entry. Its messages stay in the stream, and any holds in the holds
    /// bucket, until they age out.
    async fn clear_deleted(&self, account: &str) {
        let Ok(id) = AccountId::parse(account) else {
            return;
        };
        let consumer = self.ctx.subjects.account_consumer(&id);
        if self.ctx.inbound.delete_consumer(&consumer).await.is_ok() {
            tracing::info!(account_id = %account, "deleted account's consumer removed");
        }
        let _ = self.ctx.health.delete(account).await;
    }

    /// Upgrading from the single consumer every forwarder used to share:
    /// each account's consumer starts where that one stood (a message it
    /// had acked out of order may be delivered once more), then it goes.
    async fn adopt_legacy_consumer(&mut self) {
        let name = self.ctx.subjects.legacy_forwarder_consumer();
        let Ok(info) = self.ctx.inbound.consumer_info(&name).await else {
            return;
        };
        let start_sequence = info.ack_floor.stream_sequence + 1;
        for account in self.accounts.keys() {
            let Ok(id) = AccountId::parse(account) else {
                continue;
            };
            let config = shared::jetstream::account_consumer_config(
                &self.ctx.subjects,
                &id,
                self.ctx.ack_wait,
                DeliverPolicy::ByStartSequence { start_sequence },
            );
            let consumer = self.ctx.subjects.account_consumer(&id);
            if self.ctx.inbound.consumer_info(&consumer).await.is_err()
                && let Err(e) = self.ctx.inbound.create_consumer(config).await
            {
                tracing::warn!(account_id = %account, error = %e, "account consumer not created from the shared one; keeping it");
                return;
            }
        }
        self.first_start = Some(start_sequence);
        let _ = self.ctx.inbound.delete_consumer(&name).await;
        tracing::info!(
            start_sequence,
            "took over from the shared consumer: every account has its own now"
        );
    }

    /// Sums the lanes' consumer figures for `/metrics` and the stats summary.
    fn record_figures(&self) {
        let figures = self.ctx.backlog.lock().unwrap();
        let (pending, ack_pending, redelivered) =
            figures.values().fold((0, 0, 0), |(p, a, r), f| {
                (p + f.pending, a + f.ack_pending, r + f.redelivered)
            });
        metrics::gauge!("router_forwarder_consumer_pending").set(pending as f64);
        metrics::gauge!("router_forwarder_consumer_ack_pending").set(ack_pending as f64);
        metrics::gauge!("router_forwarder_consumer_redelivered").set(redelivered as f64);
        self.ctx
            .throughput
            .pending
            .store(pending, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Rendezvous hashing: the member whose hash with the account is highest.
pub fn owner(members: &[String], account: &str) -> Option<String> {
    members
        .iter()
        .max_by_key(|m| {
            let digest = sha2::Sha256::digest(format!("{m}\n{account}").as_bytes());
            u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("fwd-{i}")).collect()
    }

    #[test]
    fn accounts_spread_over_forwarders_and_only_a_leavers_share_moves() {
        let accounts: Vec<String> = (0..3000).map(|i| format!("acc_{i}")).collect();
        let three = members(3);
        let mut shares = HashMap::new();
        for a in &accounts {
            *shares.entry(owner(&three, a).unwrap()).or_insert(0) += 1;
        }
        for m in &three {
            let share = shares[m];
            assert!((800..1200).contains(&share), "{m} got {share} of 3000");
        }
        let two: Vec<String> = three[..2].to_vec();
        for a in &accounts {
            let before = owner(&three, a).unwrap();
            let after = owner(&two, a).unwrap();
            if before != three[2] {
                assert_eq!(before, after, "{a} moved though its owner stayed");
            }
        }
        assert_eq!(owner(&[], "acc_1"), None);
    }
}
