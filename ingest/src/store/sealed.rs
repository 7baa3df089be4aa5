//! Seals account secrets on their way into any store and opens them on the
//! way out (`ROUTER_ENCRYPTION_KEY`), so the database never holds a webhook
//! secret or access token in the clear and the stores stay unaware of it.
//! Each value is bound to its account and field.

use std::sync::Arc;

use async_trait::async_trait;
use shared::secrets::{self, SecretBox, context};
use shared::wire::fields;

use chrono::{DateTime, Utc};

use super::{AccountRow, AccountStore, CredentialsChange, StoreError};

/// Wraps the accounts part only: no other row holds a secret.
pub struct SealedAccounts {
    pub inner: Arc<dyn AccountStore>,
    pub key: Option<SecretBox>,
}

impl SealedAccounts {
    fn seal(&self, row: &AccountRow) -> AccountRow {
        let key = self.key.as_ref();
        let seal = |field: &str, value: &str| secrets::seal(key, value, &context(&row.id, field));
        let mut sealed = row.clone();
        sealed.webhook_secret = seal(fields::WEBHOOK_SECRET, &row.webhook_secret);
        sealed.previous_webhook_secret = row
            .previous_webhook_secret
            .as_deref()
            .map(|s| seal(fields::PREVIOUS_WEBHOOK_SECRET, s));
        sealed.instagram_access_token = row
            .instagram_access_token
            .as_deref()
            .map(|t| seal(fields::INSTAGRAM_ACCESS_TOKEN, t));
        sealed
    }

    fn open(&self, mut row: AccountRow) -> Result<AccountRow, StoreError> {
        let key = self.key.as_ref();
        let id = row.id.clone();
        let open = |field: &str, value: &str| secrets::open(key, value, &context(&id, field));
        row.webhook_secret = open(fields::WEBHOOK_SECRET, &row.webhook_secret)?;
        row.previous_webhook_secret = row
            .previous_webhook_secret
            .as_deref()
            .map(|s| open(fields::PREVIOUS_WEBHOOK_SECRET, s))
            .transpose()?;
        row.instagram_access_token = row
            .instagram_access_token
            .as_deref()
            .map(|t| open(fields::INSTAGRAM_ACCESS_TOKEN, t))
            .transpose()?;
        Ok(row)
    }

    /// Seals again, with the current key, every stored secret that an older
    /// key (`ROUTER_ENCRYPTION_KEY_PREVIOUS`) or the format before key ids
    /// sealed, or that is plaintext while a key is set. Returns how many
    /// accounts were rewritten; one that cannot be opened is left as it is
    /// and logged (its reads fail the same way).
    pub async fn reseal_all(&self) -> Result<usize, StoreError> {
        let key = self.key.as_ref();
        let mut resealed = 0;
        let mut cursor: Option<String> = None;
        loop {
            let page = self.inner.list_accounts(cursor.as_deref(), 500).await?;
            let Some(last) = page.last() else {
                return Ok(resealed);
            };
            cursor = Some(last.id.clone());
            for stored in page {
                let stale = [
                    Some(stored.webhook_secret.as_str()),
                    stored.previous_webhook_secret.as_deref(),
                    stored.instagram_access_token.as_deref(),
                ]
                .into_iter()
                .flatten()
                .any(|value| secrets::needs_reseal(key, value));
                if !stale {
                    continue;
                }
                let id = stored.id.clone();
                match self.open(stored) {
                    Ok(row) => {
                        self.inner.update_account(&self.seal(&row)).await?;
                        resealed += 1;
                    }
                    Err(e) => {
                        tracing::error!(account_id = %id, error = %e, "account secrets cannot be opened; not re-sealed")
                    }
                }
            }
        }
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
        let mut sealed = change.clone();
        sealed.token = change.token.as_deref().map(|t| {
            secrets::seal(
                self.key.as_ref(),
                t,
                &context(id, fields::INSTAGRAM_ACCESS_TOKEN),
            )
        });
        self.inner
            .record_credentials(id, token_set_at, &sealed)
            .await
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
