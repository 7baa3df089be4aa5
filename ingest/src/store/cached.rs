//! The account of each webhook, from memory: every webhook names its
//! Instagram account, and looking it up in the database (and opening its
//! sealed secrets) was a tenth of ingest's CPU under load. A found account
//! is kept for [`FRESH_FOR`]; any account write through this ingest empties
//! the cache, so its own changes apply at once, and a change made through
//! another ingest (PostgreSQL, several ingests) applies within that time.
//! An unknown account is never kept: a webhook for an account created a
//! moment ago on another ingest must find it.
//!
//! When a kept account goes stale, the first webhook to find it so reads
//! it again; the others that arrive meanwhile use the stale copy (for up
//! to [`FRESH_FOR`] more) instead of each asking the database too. With
//! 256 webhooks in flight, every account's copy expiring at once sent
//! dozens of identical reads to the database together, and on PostgreSQL
//! the pool opened all 16 connections to serve them.

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

/// A kept account: when it was read, whether a webhook is reading it
/// again, and the row.
struct Kept {
    read_at: Instant,
    refreshing: bool,
    row: AccountRow,
}

pub struct CachedAccounts {
    pub inner: Arc<dyn AccountStore>,
    by_instagram_id: Mutex<LruCache<String, Kept>>,
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

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<String, Kept>> {
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
        if let Some(kept) = self.cache().get_mut(instagram_account_id) {
            let age = kept.read_at.elapsed();
            if age < FRESH_FOR || (kept.refreshing && age < 2 * FRESH_FOR) {
                return Ok(Some(kept.row.clone()));
            }
            // This webhook reads it again; a caller gone before it is done
            // leaves the others the stale copy only until twice FRESH_FOR.
            kept.refreshing = true;
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
                    Kept {
                        read_at: Instant::now(),
                        refreshing: false,
                        row: row.clone(),
                    },
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
    use crate::store::testing::sqlite_url;

    #[tokio::test]
    async fn own_writes_apply_at_once_and_another_ingests_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let db: Arc<dyn AccountStore> =
            Arc::new(SqliteStore::open(&sqlite_url(&dir)).await.unwrap());
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

    /// The real store, whose lookups by Instagram id are counted and wait
    /// while the gate is closed.
    struct Gated {
        inner: Arc<dyn AccountStore>,
        open: tokio::sync::watch::Sender<bool>,
        reads: AtomicU64,
    }

    #[async_trait]
    impl AccountStore for Gated {
        async fn insert_account(&self, account: &AccountRow) -> Result<(), StoreError> {
            self.inner.insert_account(account).await
        }
        async fn get_account(&self, id: &str) -> Result<Option<AccountRow>, StoreError> {
            self.inner.get_account(id).await
        }
        async fn list_accounts(
            &self,
            after: Option<&str>,
            limit: u32,
        ) -> Result<Vec<AccountRow>, StoreError> {
            self.inner.list_accounts(after, limit).await
        }
        async fn update_account(&self, account: &AccountRow) -> Result<bool, StoreError> {
            self.inner.update_account(account).await
        }
        async fn claim_token_refresh(
            &self,
            id: &str,
            token_set_at: Option<DateTime<Utc>>,
            last_attempt: Option<DateTime<Utc>>,
            now: DateTime<Utc>,
        ) -> Result<bool, StoreError> {
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
            self.inner
                .record_credentials(id, token_set_at, change)
                .await
        }
        async fn delete_account(&self, id: &str) -> Result<bool, StoreError> {
            self.inner.delete_account(id).await
        }
        async fn account_by_instagram_id(
            &self,
            instagram_account_id: &str,
        ) -> Result<Option<AccountRow>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let _ = self.open.subscribe().wait_for(|open| *open).await;
            self.inner
                .account_by_instagram_id(instagram_account_id)
                .await
        }
    }

    /// A stale copy is read again by one webhook; the others that come
    /// meanwhile use the stale copy instead of each reading the database,
    /// but never past twice FRESH_FOR, even if that one webhook went away.
    #[tokio::test]
    async fn a_stale_account_is_read_again_once_while_the_others_use_the_copy() {
        use futures::FutureExt as _;

        let dir = tempfile::tempdir().unwrap();
        let db: Arc<dyn AccountStore> =
            Arc::new(SqliteStore::open(&sqlite_url(&dir)).await.unwrap());
        let gated = Arc::new(Gated {
            inner: db.clone(),
            open: tokio::sync::watch::Sender::new(true),
            reads: AtomicU64::new(0),
        });
        let cached = Arc::new(CachedAccounts::new(gated.clone()));
        let ig = "17841400000000001";
        let mut row = AccountRow::example("acc_1", ig);
        db.insert_account(&row).await.unwrap();
        cached.account_by_instagram_id(ig).await.unwrap().unwrap();
        assert_eq!(gated.reads.load(Ordering::SeqCst), 1);

        // Disabled through another ingest; the copy goes stale, and the
        // webhook that reads it again waits on a slow database.
        row.status = AccountStatus::Disabled;
        assert!(db.update_account(&row).await.unwrap());
        tokio::time::sleep(FRESH_FOR + Duration::from_millis(50)).await;
        gated.open.send_replace(false);
        let first = tokio::spawn({
            let cached = cached.clone();
            async move { cached.account_by_instagram_id(ig).await }
        });
        while gated.reads.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        let without_the_database = || async {
            let lookup = cached.account_by_instagram_id(ig);
            tokio::time::timeout(Duration::from_secs(5), lookup)
                .await
                .expect("answered from the kept copy, not waiting on the database")
                .unwrap()
                .unwrap()
        };
        for _ in 0..8 {
            let kept = without_the_database().await;
            assert_eq!(kept.status, AccountStatus::Active, "the stale copy");
        }
        assert_eq!(gated.reads.load(Ordering::SeqCst), 2, "one read again");
        gated.open.send_replace(true);
        let read = first.await.unwrap().unwrap().unwrap();
        assert_eq!(read.status, AccountStatus::Disabled);
        let found = cached.account_by_instagram_id(ig).await.unwrap().unwrap();
        assert_eq!(found.status, AccountStatus::Disabled);
        assert_eq!(gated.reads.load(Ordering::SeqCst), 2);

        // Enabled elsewhere; the webhook that would read it again is gone
        // before its answer: the stale copy serves only until twice FRESH_FOR.
        row.status = AccountStatus::Active;
        assert!(db.update_account(&row).await.unwrap());
        tokio::time::sleep(FRESH_FOR + Duration::from_millis(50)).await;
        gated.open.send_replace(false);
        assert!(cached.account_by_instagram_id(ig).now_or_never().is_none());
        let kept = without_the_database().await;
        assert_eq!(kept.status, AccountStatus::Disabled);
        gated.open.send_replace(true);
        tokio::time::sleep(FRESH_FOR).await;
        let found = cached.account_by_instagram_id(ig).await.unwrap().unwrap();
        assert_eq!(found.status, AccountStatus::Active);
        assert_eq!(gated.reads.load(Ordering::SeqCst), 4);
    }
}
