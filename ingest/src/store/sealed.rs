//! Seals account secrets on their way into any store and opens them on the
//! way out (`ROUTER_ENCRYPTION_KEY`), so the database never holds a webhook
//! secret or access token in the clear and the stores stay unaware of it.

use std::sync::Arc;

use async_trait::async_trait;
use shared::secrets::{self, SecretBox};

use super::{AccountRow, AccountStore, StoreError};

/// Wraps the accounts part only: no other row holds a secret.
pub struct SealedAccounts {
    pub inner: Arc<dyn AccountStore>,
    pub key: Option<SecretBox>,
}

impl SealedAccounts {
    fn seal(&self, row: &AccountRow) -> AccountRow {
        let key = self.key.as_ref();
        let mut sealed = row.clone();
        sealed.webhook_secret = secrets::seal(key, &row.webhook_secret);
        sealed.previous_webhook_secret = row
            .previous_webhook_secret
            .as_deref()
            .map(|s| secrets::seal(key, s));
        sealed.instagram_access_token = row
            .instagram_access_token
            .as_deref()
            .map(|t| secrets::seal(key, t));
        sealed
    }

    fn open(&self, mut row: AccountRow) -> Result<AccountRow, StoreError> {
        let key = self.key.as_ref();
        row.webhook_secret = secrets::open(key, &row.webhook_secret)?;
        row.previous_webhook_secret = row
            .previous_webhook_secret
            .as_deref()
            .map(|s| secrets::open(key, s))
            .transpose()?;
        row.instagram_access_token = row
            .instagram_access_token
            .as_deref()
            .map(|t| secrets::open(key, t))
            .transpose()?;
        Ok(row)
    }
}

#[async_trait]
impl AccountStore for SealedAccounts {
    async fn insert_account(&self, account: &AccountRow) -> Result<(), StoreError> {
        self.inner.insert_account(&self.seal(account)).await
    }

    async fn update_account(&self, account: &AccountRow) -> Result<bool, StoreError> {
        self.inner.update_account(&self.seal(account)).await
    }

    async fn get_account(&self, id: &str) -> Result<Option<AccountRow>, StoreError> {
        self.inner
            .get_account(id)
            .await?
            .map(|r| self.open(r))
            .transpose()
    }

    async fn account_by_instagram_id(
        &self,
        instagram_account_id: &str,
    ) -> Result<Option<AccountRow>, StoreError> {
        self.inner
            .account_by_instagram_id(instagram_account_id)
            .await?
            .map(|r| self.open(r))
            .transpose()
    }

    async fn list_accounts(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AccountRow>, StoreError> {
        self.inner
            .list_accounts(after, limit)
            .await?
            .into_iter()
            .map(|r| self.open(r))
            .collect()
    }

    async fn delete_account(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.delete_account(id).await
    }
}
