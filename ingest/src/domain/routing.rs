//! Keeps the accounts key-value bucket in step with the database: the
//! forwarder reads each account's CRM URL, secret and status from there and
//! never from the database.
//!
//! An account change is written to the bucket at once when NATS is up; if
//! that fails the account is remembered and retried by the background task
//! (the routing task in `tasks`), which also reconciles the whole bucket at
//! start and every minute.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use shared::secrets::{SecretBox, context, seal};
use shared::wire::AccountRouting;
use shared::wire::fields;
use tokio::sync::Notify;

use crate::nats::NatsLink;
use crate::store::{AccountRow, AccountStore};

pub struct RoutingSync {
    accounts: Arc<dyn AccountStore>,
    nats: Arc<NatsLink>,
    /// Seals the secret in the bucket like in the database.
    key: Option<SecretBox>,
    /// Accounts whose change has not reached the bucket yet.
    dirty: Mutex<HashSet<String>>,
    /// Rung when an account is left for the background task.
    pub wakeup: Notify,
}

impl RoutingSync {
    pub fn new(
        accounts: Arc<dyn AccountStore>,
        nats: Arc<NatsLink>,
        key: Option<SecretBox>,
    ) -> Self {
        Self {
            accounts,
            nats,
            key,
            dirty: Mutex::default(),
            wakeup: Notify::new(),
        }
    }

    /// The bucket entry: the secret sealed like in the database.
    fn routing_of(&self, row: &AccountRow) -> AccountRouting {
        let previous = row.previous_secret(chrono::Utc::now());
        AccountRouting {
            account_id: row.id.clone(),
            crm_webhook_url: row.crm_webhook_url.clone(),
            webhook_secret: seal(
                self.key.as_ref(),
                &row.webhook_secret,
                &context(&row.id, fields::WEBHOOK_SECRET),
            ),
            previous_webhook_secret: previous.map(|(secret, _)| {
                seal(
                    self.key.as_ref(),
                    secret,
                    &context(&row.id, fields::PREVIOUS_WEBHOOK_SECRET),
                )
            }),
            previous_secret_until: previous.map(|(_, until)| until),
            status: row.status,
            max_in_flight: row.max_in_flight.and_then(|n| u32::try_from(n).ok()),
            deliveries_paused: row.deliveries_paused_at.is_some(),
            deliveries_resumed_at: row.deliveries_resumed_at,
        }
    }

    /// Called after an account was written: pushes it to the bucket now,
    /// or leaves it for the background task when NATS is unreachable.
    pub async fn account_changed(&self, account_id: &str) {
        let pushed = tokio::time::timeout(Duration::from_secs(2), self.sync_one(account_id)).await;
        if !matches!(pushed, Ok(Ok(()))) {
            tracing::warn!(account_id, "account routing not yet in NATS; will retry");
            self.dirty.lock().unwrap().insert(account_id.to_owned());
            self.wakeup.notify_one();
        }
    }

    /// Retries the changes that could not be pushed; those that fail again
    /// stay remembered. True when none is left.
    pub async fn push_pending(&self) -> bool {
        let pending: Vec<String> = self.dirty.lock().unwrap().drain().collect();
        for id in pending {
            if let Err(e) = self.sync_one(&id).await {
                tracing::warn!(account_id = %id, error = %e, "account routing sync failed");
                self.dirty.lock().unwrap().insert(id);
            }
        }
        self.dirty.lock().unwrap().is_empty()
    }

    async fn sync_one(&self, account_id: &str) -> anyhow::Result<()> {
        let kv = self
            .nats
            .accounts()
            .ok_or_else(|| anyhow::anyhow!("NATS not set up yet"))?;
        match self.accounts.get_account(account_id).await? {
            Some(row) => {
                kv.put(
                    account_id,
                    serde_json::to_vec(&self.routing_of(&row))?.into(),
                )
                .await?;
            }
            None => kv.delete(account_id).await?,
        }
        Ok(())
    }

    /// Writes every account to the bucket and removes keys of deleted
    /// accounts; returns how many accounts there are.
    pub async fn reconcile_all(&self) -> anyhow::Result<usize> {
        let kv = self
            .nats
            .accounts()
            .ok_or_else(|| anyhow::anyhow!("NATS not set up yet"))?;
        let mut known = BTreeSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.accounts.list_accounts(cursor.as_deref(), 500).await?;
            let Some(last) = page.last() else { break };
            cursor = Some(last.id.clone());
            for row in &page {
                kv.put(&row.id, serde_json::to_vec(&self.routing_of(row))?.into())
                    .await?;
                known.insert(row.id.clone());
            }
        }
        let mut keys = kv.keys().await?;
        while let Some(key) = keys.next().await {
            let key = key?;
            if !known.contains(&key) {
                kv.delete(&key).await?;
            }
        }
        Ok(known.len())
    }
}
