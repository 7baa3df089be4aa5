//! Keeps the accounts key-value bucket in step with the database: the
//! forwarder reads each account's CRM URL, secret and status from there and
//! never from the database.
//!
//! An account change is written to the bucket at once when NATS is up; if
//! that fails the account is remembered and retried, and a full
//! reconciliation runs at start and every minute.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt as _;
use shared::wire::AccountRouting;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::store::AccountRow;

const RECONCILE_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct RoutingSync {
    /// Accounts whose change has not reached the bucket yet.
    dirty: Mutex<HashSet<String>>,
    wakeup: Notify,
}

/// The bucket entry: the secret sealed like in the database.
fn routing_of(state: &AppState, row: &AccountRow) -> AccountRouting {
    let key = state.config.common.router_encryption_key.as_ref();
    AccountRouting {
        account_id: row.id.clone(),
        crm_webhook_url: row.crm_webhook_url.clone(),
        webhook_secret: shared::secrets::seal(key, &row.webhook_secret),
        status: row.status.clone(),
        max_in_flight: row.max_in_flight.and_then(|n| u32::try_from(n).ok()),
        deliveries_paused: row.deliveries_paused_at.is_some(),
        deliveries_resumed_at: row.deliveries_resumed_at,
    }
}

impl RoutingSync {
    /// Called after an account was written: pushes it to the bucket now,
    /// or leaves it for the background task when NATS is unreachable.
    pub async fn account_changed(&self, state: &AppState, account_id: &str) {
        let pushed =
            tokio::time::timeout(Duration::from_secs(2), sync_one(state, account_id)).await;
        if !matches!(pushed, Ok(Ok(()))) {
            tracing::warn!(account_id, "account routing not yet in NATS; will retry");
            self.dirty.lock().unwrap().insert(account_id.to_owned());
            self.wakeup.notify_one();
        }
    }

    /// The background task: full reconciliation at start and every minute,
    /// and retries of changes that could not be pushed.
    pub async fn run(&self, state: &AppState, shutdown: CancellationToken) {
        let mut reconciled = false;
        loop {
            if !reconciled {
                match reconcile_all(state).await {
                    Ok(n) => {
                        tracing::info!(
                            accounts = n,
                            "accounts bucket reconciled with the database"
                        );
                        reconciled = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "accounts bucket reconciliation failed"),
                }
            }
            let pending: Vec<String> = self.dirty.lock().unwrap().drain().collect();
            for id in pending {
                if let Err(e) = sync_one(state, &id).await {
                    tracing::warn!(account_id = %id, error = %e, "account routing sync failed");
                    self.dirty.lock().unwrap().insert(id);
                }
            }
            let retry = if reconciled && self.dirty.lock().unwrap().is_empty() {
                RECONCILE_EVERY
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep(retry) => { reconciled = false; }
            }
        }
    }
}

async fn sync_one(state: &AppState, account_id: &str) -> anyhow::Result<()> {
    let kv = state
        .nats
        .accounts()
        .ok_or_else(|| anyhow::anyhow!("NATS not set up yet"))?;
    match state.store.get_account(account_id).await? {
        Some(row) => {
            kv.put(
                account_id,
                serde_json::to_vec(&routing_of(state, &row))?.into(),
            )
            .await?;
        }
        None => kv.delete(account_id).await?,
    }
    Ok(())
}

/// Writes every account to the bucket and removes keys of deleted accounts.
async fn reconcile_all(state: &AppState) -> anyhow::Result<usize> {
    let kv = state
        .nats
        .accounts()
        .ok_or_else(|| anyhow::anyhow!("NATS not set up yet"))?;
    let mut known = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = state.store.list_accounts(cursor.as_deref(), 500).await?;
        let Some(last) = page.last() else { break };
        cursor = Some(last.id.clone());
        for row in &page {
            kv.put(&row.id, serde_json::to_vec(&routing_of(state, row))?.into())
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
