//! Seals account secrets on their way into any store and opens them on the
//! way out (`ROUTER_ENCRYPTION_KEY`), so the database never holds a webhook
//! secret or access token in the clear and the stores stay unaware of it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shared::secrets::{self, SecretBox};
use shared::wire::DeliveryOutcome;

use super::{
    AccountRow, DeadLetterFilter, DynStore, MessageRow, NewMessage, OutboxEntry, SaveOutcome,
    Store, StoreError,
};

pub struct SealedStore {
    pub inner: DynStore,
    pub key: Option<SecretBox>,
}

impl SealedStore {
    fn seal(&self, row: &AccountRow) -> AccountRow {
        let key = self.key.as_ref();
        let mut sealed = row.clone();
        sealed.webhook_secret = secrets::seal(key, &row.webhook_secret);
        sealed.instagram_access_token = row
            .instagram_access_token
            .as_deref()
            .map(|t| secrets::seal(key, t));
        sealed
    }

    fn open(&self, mut row: AccountRow) -> Result<AccountRow, StoreError> {
        let key = self.key.as_ref();
        row.webhook_secret = secrets::open(key, &row.webhook_secret)?;
        row.instagram_access_token = row
            .instagram_access_token
            .as_deref()
            .map(|t| secrets::open(key, t))
            .transpose()?;
        Ok(row)
    }
}

#[async_trait]
impl Store for SealedStore {
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

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn delete_account(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.delete_account(id).await
    }

    async fn save_message(&self, message: &NewMessage) -> Result<SaveOutcome, StoreError> {
        self.inner.save_message(message).await
    }

    async fn pending_outbox(&self, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        self.inner.pending_outbox(limit).await
    }

    async fn remove_from_outbox(&self, message_ids: &[String]) -> Result<(), StoreError> {
        self.inner.remove_from_outbox(message_ids).await
    }

    async fn count_publish_failure(&self, message_id: &str) -> Result<(), StoreError> {
        self.inner.count_publish_failure(message_id).await
    }

    async fn outbox_backlog(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        self.inner.outbox_backlog().await
    }

    async fn record_outcome(&self, outcome: &DeliveryOutcome) -> Result<bool, StoreError> {
        self.inner.record_outcome(outcome).await
    }

    async fn get_message(&self, id: &str) -> Result<Option<MessageRow>, StoreError> {
        self.inner.get_message(id).await
    }

    async fn list_messages(
        &self,
        account_id: &str,
        conversation_id: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        self.inner
            .list_messages(account_id, conversation_id, after, limit)
            .await
    }

    async fn list_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        self.inner.list_dead_letters(filter, after, limit).await
    }

    async fn replay_dead_letter(&self, message_id: &str) -> Result<bool, StoreError> {
        self.inner.replay_dead_letter(message_id).await
    }

    async fn discard_dead_letter(&self, message_id: &str) -> Result<bool, StoreError> {
        self.inner.discard_dead_letter(message_id).await
    }

    async fn mark_deleted(
        &self,
        account_id: &str,
        mid: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.mark_deleted(account_id, mid, at).await
    }

    async fn confirm_echo(
        &self,
        account_id: &str,
        mid: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.inner.confirm_echo(account_id, mid, at).await
    }

    async fn finish_send(&self, message_id: &str, mid: &str) -> Result<bool, StoreError> {
        self.inner.finish_send(message_id, mid).await
    }

    async fn abandon_send(&self, message_id: &str) -> Result<(), StoreError> {
        self.inner.abandon_send(message_id).await
    }

    async fn send_in_flight(
        &self,
        account_id: &str,
        recipient_id: &str,
    ) -> Result<bool, StoreError> {
        self.inner.send_in_flight(account_id, recipient_id).await
    }

    async fn release_outbox(&self, message_id: &str, payload: &[u8]) -> Result<(), StoreError> {
        self.inner.release_outbox(message_id, payload).await
    }

    async fn claim_auto_reply(
        &self,
        account_id: &str,
        conversation_id: &str,
        now: DateTime<Utc>,
        cooldown_secs: i64,
    ) -> Result<bool, StoreError> {
        self.inner
            .claim_auto_reply(account_id, conversation_id, now, cooldown_secs)
            .await
    }

    async fn release_auto_reply(
        &self,
        account_id: &str,
        conversation_id: &str,
    ) -> Result<(), StoreError> {
        self.inner
            .release_auto_reply(account_id, conversation_id)
            .await
    }
}
