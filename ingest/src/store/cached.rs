//! The account of each webhook, from memory: every webhook names its
//! Instagram account, and looking it up in the database (and opening its
//! sealed secrets) was a tenth of ingest's CPU under load. A found account
//! is kept for [`FRESH_FOR`]; any account write through this ingest empties
//! the cache, so its own changes apply at once, and a change made through
//! another ingest (PostgreSQL, several ingests) applies within that time.
//! An unknown account is never kept: a webhook for an account created a
//! moment ago on another ingest must find it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hashlink::LruCache;

use chrono::{DateTime, Utc};

use super::{AccountRow, AccountStore, CredentialsChange, StoreError};

/// How long a looked-up account is used without asking the database again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Accounts kept at most (the least recently used go first).
const CAPACITY: usize = 10_000;

pub struct CachedAccounts {
    pub inner: Arc<dyn AccountStore>,
    by_instagram_id: Mutex<LruCache<String, (Instant, AccountRow)>>,
    /// Counts this ingest's account writes: a lookup that a write overtook
    /// may have read the old row, and is not kept.
    writes: AtomicU64,
}

impl CachedAccounts {
    pub fn new(inner: Arc<dyn AccountStore>) -> Self {
        Self {
            inner,
            by_instagram_id: Mutex::new(LruCache::new(CAPACITY)),
            writes: AtomicU64::new(0),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<String, (Instant, AccountRow)>> {
        // A panic while holding the lock leaves nothing half-written.
        self.by_instagram_id
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn forget_all(&self) {
        let mut cache = self.cache();
        self.writes.fetch_add(1, Ordering::SeqCst);
        cache.clear();
    }
}

#[async_trait]
impl AccountStore for CachedAccounts {
    async fn insert_account(&self, account: &AccountRow) -> Result<(), StoreError> {
        let result = self.inner.insert_account(account).await;
        self.forget_all();
        result
    }

    async fn update_account(&self, account: &AccountRow) -> Result<bool, StoreError> {
        let result = self.inner.update_account(account).await;
        self.forget_all();
        result
    }

    async fn claim_token_refresh(
        &self,
        id: &str,
        token_set_at: Option<DateTime<Utc>>,
        last_attempt: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // Only the attempt's time changes, which no webhook reads.
        self.inner
            .claim_token_refresh(id, token_set_at, last_attempt, now)
            .await
    }

    async fn record_credentials(
        &self,
        id: &str,
        token_set_at: Option<DateTime<Utc>>,
        change: &CredentialsChange,
    ) -> Result<bool, StoreError> {
        let result = self
            .inner
            .record_credentials(id, token_set_at, change)
            .await;
        self.forget_all();
        result
    }

    async fn get_account(&self, id: &str) -> Result<Option<AccountRow>, StoreError> {
        self.inner.get_account(id).await
    }

    async fn account_by_instagram_id(
        &self,
        instagram_account_id: &str,
    ) -> Result<Option<AccountRow>, StoreError> {
        if let Some((at, row)) = self.cache().get(instagram_account_id)
            && at.elapsed() < FRESH_FOR
        {
            return Ok(Some(row.clone()));
        }
        let writes = self.writes.load(Ordering::SeqCst);
        let found = self
            .inner
            .account_by_instagram_id(instagram_account_id)
            .await?;
        let mut cache = self.cache();
        match &found {
            Some(row) if self.writes.load(Ordering::SeqCst) == writes => {
                cache.insert(
                    instagram_account_id.to_owned(),
                    (Instant::now(), row.clone()),
                );
            }
            _ => {
                cache.remove(instagram_account_id);
            }
        }
        Ok(found)
    }

    async fn list_accounts(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AccountRow>, StoreError> {
        self.inner.list_accounts(after, limit).await
    }

    async fn delete_account(&self, id: &str) -> Result<bool, StoreError> {
        let result = self.inner.delete_account(id).await;
        self.forget_all();
        result
    }
}

#[cfg(test)]
mod tests {
    use shared::model::AccountStatus;

    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn own_writes_apply_at_once_and_another_ingests_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let db: Arc<dyn AccountStore> = Arc::new(SqliteStore::open(&url).await.unwrap());
        let cached = CachedAccounts::new(db.clone());
        let ig = "17841400000000001";
        assert!(cached.account_by_instagram_id(ig).await.unwrap().is_none());

        // Created elsewhere (another ingest): found at once, nothing negative kept.
        let mut row = AccountRow::example("acc_1", ig);
        db.insert_account(&row).await.unwrap();
        let found = cached.account_by_instagram_id(ig).await.unwrap().unwrap();
        assert_eq!(found.status, AccountStatus::Active);

        // Disabled through this ingest: the next webhook sees it.
        row.status = AccountStatus::Disabled;
        assert!(cached.update_account(&row).await.unwrap());
        let found = cached.account_by_instagram_id(ig).await.unwrap().unwrap();
        assert_eq!(found.status, AccountStatus::Disabled);

        // Enabled through another ingest: seen once the kept copy is stale.
        row.status = AccountStatus::Active;
        assert!(db.update_account(&row).await.unwrap());
        let kept = cached.account_by_instagram_id(ig).await.unwrap().unwrap();
        assert_eq!(kept.status, AccountStatus::Disabled, "kept for a moment");
        tokio::time::sleep(FRESH_FOR + Duration::from_millis(50)).await;
        let found = cached.account_by_instagram_id(ig).await.unwrap().unwrap();
        assert_eq!(found.status, AccountStatus::Active);

        // Deleted through this ingest: unknown at once.
        assert!(cached.delete_account("acc_1").await.unwrap());
        assert!(cached.account_by_instagram_id(ig).await.unwrap().is_none());
    }
}
