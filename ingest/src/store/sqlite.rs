//! The SQLite store: one file, WAL mode, a small pool. The default for a
//! single ingest; several ingests need PostgreSQL.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::{AccountRow, NewMessage, OutboxEntry, SaveOutcome, Store, StoreError};

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        if let Some(dir) = options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_account(&self, a: &AccountRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO accounts (id, name, instagram_account_id, crm_webhook_url, auto_reply_text,
                status, instagram_access_token, webhook_secret, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&a.id)
        .bind(&a.name)
        .bind(&a.instagram_account_id)
        .bind(&a.crm_webhook_url)
        .bind(&a.auto_reply_text)
        .bind(&a.status)
        .bind(&a.instagram_access_token)
        .bind(&a.webhook_secret)
        .bind(a.created_at)
        .bind(a.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::DuplicateInstagramAccount
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    async fn get_account(&self, id: &str) -> Result<Option<AccountRow>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM accounts WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn list_accounts(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AccountRow>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM accounts WHERE id > ? ORDER BY id LIMIT ?")
                .bind(after.unwrap_or(""))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn update_account(&self, a: &AccountRow) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE accounts SET name = ?, crm_webhook_url = ?, auto_reply_text = ?, status = ?,
                instagram_access_token = ?, webhook_secret = ?, updated_at = ?
             WHERE id = ?",
        )
        .bind(&a.name)
        .bind(&a.crm_webhook_url)
        .bind(&a.auto_reply_text)
        .bind(&a.status)
        .bind(&a.instagram_access_token)
        .bind(&a.webhook_secret)
        .bind(a.updated_at)
        .bind(&a.id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_account(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM accounts WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn account_by_instagram_id(
        &self,
        instagram_account_id: &str,
    ) -> Result<Option<AccountRow>, StoreError> {
        Ok(
            sqlx::query_as("SELECT * FROM accounts WHERE instagram_account_id = ?")
                .bind(instagram_account_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn save_message(&self, m: &NewMessage) -> Result<SaveOutcome, StoreError> {
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO messages (id, account_id, instagram_message_id, direction, conversation_id,
                sender_id, recipient_id, message_type, text, attachments, sent_at, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (account_id, instagram_message_id) DO NOTHING",
        )
        .bind(&m.id)
        .bind(&m.account_id)
        .bind(&m.instagram_message_id)
        .bind(m.direction)
        .bind(&m.conversation_id)
        .bind(&m.sender_id)
        .bind(&m.recipient_id)
        .bind(&m.message_type)
        .bind(&m.text)
        .bind(&m.attachments)
        .bind(m.sent_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(SaveOutcome::Duplicate);
        }
        sqlx::query(
            "INSERT INTO outbox (message_id, subject, payload, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&m.id)
        .bind(&m.subject)
        .bind(&m.payload)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(SaveOutcome::Saved)
    }

    async fn pending_outbox(&self, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT message_id, subject, payload, created_at FROM outbox
             ORDER BY created_at, message_id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn remove_from_outbox(&self, message_ids: &[String]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for id in message_ids {
            sqlx::query("DELETE FROM outbox WHERE message_id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn count_publish_failure(&self, message_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET publish_attempts = publish_attempts + 1 WHERE message_id = ?",
        )
        .bind(message_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
