//! Persistence behind three small traits (accounts, messages and their
//! outbox, delivery outcomes), so nothing above this layer sees SQL.
//! SQLite is the embedded default, PostgreSQL the production choice (picked
//! by the scheme of `DATABASE_URL`). Both run the same statements, written
//! once in [`sql`]; what really differs (opening, the write transaction,
//! the outbox lease) is in `sqlite.rs` and `postgres.rs`.
//!
//! Rows here are storage shapes, not API objects and not wire types.

// First: the statements both backends implement their traits with.
#[macro_use]
mod sql;
mod cached;
mod group_commit;
mod kept;
mod postgres;
mod sealed;
mod sqlite;
#[cfg(test)]
pub(crate) mod testing {
    //! Databases for the stores' own tests.

    /// The SQLite database file a store's test keeps in `dir`, as a URL
    /// (`t.db`, beside its WAL `t.db-wal`).
    pub(crate) fn sqlite_url(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}/t.db", dir.path().display())
    }

    /// A database of its own on the PostgreSQL server `TEST_DATABASE_URL`
    /// names (as the suite's PostgreSQL half is run): an admin connection,
    /// the database's URL and its name. `None` when the variable is not set.
    pub(crate) async fn postgres_database() -> Option<(sqlx::PgConnection, String, String)> {
        let Ok(server) = std::env::var("TEST_DATABASE_URL") else {
            eprintln!("TEST_DATABASE_URL is not set: not run on PostgreSQL");
            return None;
        };
        let name = format!("ingest_unit_{}", rand::random::<u64>());
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&server)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let mut url = url::Url::parse(&server).unwrap();
        url.set_path(&name);
        Some((admin, url.to_string(), name))
    }

    pub(crate) async fn drop_postgres_database(mut admin: sqlx::PgConnection, name: &str) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shared::model::{
    AccountStatus, CredentialsState, CrmWebhookUrl, DeliveryStatus, Direction, EventSelection,
    MessageEvent,
};
use shared::secrets::SecretBox;
use shared::wire::{DeliveryOutcome, InboundMessageWebhook};

pub use group_commit::GroupCommit;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// One connected Instagram account as stored, secrets included.
#[derive(Clone, sqlx::FromRow)]
pub struct AccountRow {
    pub id: String,
    pub name: String,
    pub instagram_account_id: String,
    pub crm_webhook_url: CrmWebhookUrl,
    pub auto_reply_text: Option<String>,
    /// The private reply sent to each new comment.
    pub comment_auto_reply_text: Option<String>,
    pub status: AccountStatus,
    pub instagram_access_token: Option<String>,
    pub webhook_secret: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The events the CRM receives (stored as `NULL` or a JSON array).
    pub events: EventSelection,
    pub auto_reply_cooldown_secs: i64,
    /// Deliveries in flight at once; `None` for the forwarders' default.
    pub max_in_flight: Option<i64>,
    /// Set while an operator has paused the account's deliveries.
    pub deliveries_paused_at: Option<DateTime<Utc>>,
    /// When an operator last resumed them.
    pub deliveries_resumed_at: Option<DateTime<Utc>>,
    /// The webhook secret before the last rotation, while it still signs.
    pub previous_webhook_secret: Option<String>,
    /// When the previous secret stops signing deliveries.
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// When the current access token was set or last refreshed.
    pub token_set_at: Option<DateTime<Utc>>,
    /// When it expires; `None` until Meta has said (a refresh's answer).
    pub token_expires_at: Option<DateTime<Utc>>,
    /// When a refresh was last tried (at most once a day).
    pub token_refresh_attempted_at: Option<DateTime<Utc>>,
    /// Stored as `valid`, `expiring` or `invalid` (`missing` is derived).
    pub credentials_state: CredentialsState,
    /// Why the credentials are not valid: `meta_190`, `expired`, ...
    pub credentials_error: Option<String>,
}

/// What became of an account's access token, recorded by
/// [`AccountStore::record_credentials`].
#[derive(Clone)]
pub struct CredentialsChange {
    /// A refreshed token (sealed on its way in), which replaces the old one.
    pub token: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub state: CredentialsState,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

impl AccountRow {
    /// Sets a new access token: valid, with its expiry if the caller knows it.
    pub fn set_token(
        &mut self,
        token: String,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) {
        self.instagram_access_token = Some(token);
        self.token_set_at = Some(now);
        self.token_expires_at = expires_at;
        self.token_refresh_attempted_at = None;
        self.credentials_state = CredentialsState::Valid;
        self.credentials_error = None;
    }

    /// `credentials.state` as the API shows it.
    pub fn credentials(&self) -> CredentialsState {
        match &self.instagram_access_token {
            Some(t) if !t.is_empty() => self.credentials_state,
            _ => CredentialsState::Missing,
        }
    }

    /// The previous secret and its end, while its grace period lasts.
    pub fn previous_secret(&self, now: DateTime<Utc>) -> Option<(&str, DateTime<Utc>)> {
        match (&self.previous_webhook_secret, self.previous_secret_until) {
            (Some(secret), Some(until)) if now < until => Some((secret, until)),
            _ => None,
        }
    }
}

impl AccountRow {
    /// A new active account with every setting at its default: every
    /// event, a 24 h auto-reply cooldown, no token, nothing paused.
    pub fn new(
        id: String,
        name: String,
        instagram_account_id: String,
        crm_webhook_url: CrmWebhookUrl,
        webhook_secret: String,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            name,
            instagram_account_id,
            crm_webhook_url,
            auto_reply_text: None,
            comment_auto_reply_text: None,
            status: AccountStatus::Active,
            instagram_access_token: None,
            webhook_secret,
            created_at: now,
            updated_at: now,
            events: EventSelection::Every,
            auto_reply_cooldown_secs: 86_400,
            max_in_flight: None,
            deliveries_paused_at: None,
            deliveries_resumed_at: None,
            previous_webhook_secret: None,
            previous_secret_until: None,
            token_set_at: None,
            token_expires_at: None,
            token_refresh_attempted_at: None,
            credentials_state: CredentialsState::Valid,
            credentials_error: None,
        }
    }
}

#[cfg(test)]
impl AccountRow {
    /// An active account for the store's own tests.
    pub(crate) fn example(id: &str, instagram_account_id: &str) -> Self {
        let mut row = Self::new(
            id.into(),
            "Shop".into(),
            instagram_account_id.into(),
            CrmWebhookUrl::parse("https://crm.example/").unwrap(),
            "whsec_c2VjcmV0".into(),
            Utc::now(),
        );
        row.auto_reply_cooldown_secs = 60;
        row
    }
}

impl std::fmt::Debug for AccountRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountRow")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A message to store, with the outbox entry that publishes it.
#[derive(Clone)]
pub struct NewMessage {
    pub id: String,
    pub account_id: String,
    pub event: MessageEvent,
    /// Recognises a redelivery of the same event (the mid for messages).
    pub event_key: String,
    pub instagram_message_id: String,
    pub direction: Direction,
    pub conversation_id: String,
    pub sender_id: String,
    pub recipient_id: String,
    pub message_type: String,
    pub text: Option<String>,
    /// JSON array of attachments.
    pub attachments: String,
    pub sent_at: DateTime<Utc>,
    /// Where and what to publish once saved: the CRM payload, which gets the
    /// conversation's next `sequence` when it is saved. `None` for records
    /// that are never published (replies sent through the API).
    pub subject: String,
    pub webhook: Option<InboundMessageWebhook>,
    /// False for what the CRM does not receive: saved with status `skipped`.
    pub publish: bool,
    /// Not published before this time (a short wait for enrichment).
    pub hold_until: Option<DateTime<Utc>>,
}

impl NewMessage {
    /// Whether this event opens (or extends) the conversation's reply
    /// window: the customer wrote, tapped a button or came from a referral.
    pub fn opens_reply_window(&self) -> bool {
        self.direction == Direction::Inbound
            && matches!(
                self.event,
                MessageEvent::Received(
                    shared::model::EventKind::MessageReceived
                        | shared::model::EventKind::MessagePostback
                        | shared::model::EventKind::MessageReferral
                )
            )
    }

    /// The body as published: the webhook with its place in the
    /// conversation and the reply windows from the customer's last message.
    pub fn payload(
        &self,
        sequence: Option<u64>,
        customer_wrote_at: Option<DateTime<Utc>>,
    ) -> Option<Vec<u8>> {
        let mut webhook = self.webhook.clone()?;
        webhook.sequence = sequence;
        webhook.set_reply_windows(customer_wrote_at);
        serde_json::to_vec(&webhook).ok()
    }
}

/// What is kept of an event the database kept refusing, to save it again
/// later: everything its [`NewMessage`] is made of, as JSON bytes (no text
/// column can refuse them).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct KeptEvent {
    pub event_key: String,
    pub direction: Direction,
    pub recipient_id: String,
    pub sent_at: DateTime<Utc>,
    pub publish: bool,
    pub webhook: InboundMessageWebhook,
}

impl NewMessage {
    /// The event again, from what was kept, to be published on `subject`.
    pub fn from_kept(kept: KeptEvent, subject: String) -> Result<Self, serde_json::Error> {
        let w = &kept.webhook;
        Ok(Self {
            id: w.message_id.clone(),
            account_id: w.account_id.clone(),
            event: MessageEvent::Received(w.event),
            event_key: kept.event_key,
            instagram_message_id: w.instagram_message_id.clone(),
            direction: kept.direction,
            conversation_id: w.conversation_id.clone(),
            sender_id: w.sender_id.clone(),
            recipient_id: kept.recipient_id,
            message_type: w.message_type.clone(),
            text: w.message.clone(),
            attachments: serde_json::to_string(&w.attachments)?,
            sent_at: kept.sent_at,
            subject,
            publish: kept.publish,
            hold_until: None,
            webhook: Some(kept.webhook),
        })
    }
}

/// An event set aside after the database refused it
/// `INGEST_SAVE_ATTEMPTS` times.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RefusedRow {
    /// The message id it will be saved (and delivered) under.
    pub message_id: String,
    pub account_id: String,
    /// A [`KeptEvent`] as JSON.
    pub kept: Vec<u8>,
    pub attempts: i64,
    /// The database's code for the last refusal (`postgres:<SQLSTATE>`,
    /// `sqlite:<result code>`), never its message, which can quote the row.
    pub error_code: String,
    pub first_refused_at: DateTime<Utc>,
    pub set_aside_at: Option<DateTime<Utc>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Saved; `sequence` is its place in the conversation when it is published.
    Saved { sequence: Option<u64> },
    /// The account already has a message with this Instagram `mid`.
    Duplicate,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OutboxEntry {
    pub message_id: String,
    /// The `Nats-Msg-Id` to publish under: the message id, or a replay's own id.
    pub nats_msg_id: Option<String>,
    pub subject: String,
    pub payload: Vec<u8>,
    pub created_at: DateTime<Utc>,
    /// A later row of its conversation is in the outbox: it is ready once
    /// this one is removed (a conversation's rows go out one by one).
    pub has_next: bool,
}

/// A stored message with its delivery state, as the API lists it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct MessageRow {
    pub id: String,
    pub account_id: String,
    pub event: MessageEvent,
    pub instagram_message_id: String,
    pub direction: Direction,
    pub conversation_id: String,
    pub sender_id: String,
    pub recipient_id: String,
    pub message_type: String,
    pub sent_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub delivery_status: DeliveryStatus,
    pub delivery_attempts: i64,
    pub last_error: Option<String>,
    pub last_status_code: Option<i64>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub dead_at: Option<DateTime<Utc>>,
    pub replays: i64,
    /// When the customer deleted (unsent) it.
    pub deleted_at: Option<DateTime<Utc>>,
    /// When the customer last edited it.
    pub edited_at: Option<DateTime<Utc>>,
    /// Its place in the conversation, for events published to the CRM.
    pub sequence: Option<i64>,
}

/// Which dead letters an operator means.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterFilter {
    pub account_id: Option<String>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("an account with this instagram_account_id already exists")]
    DuplicateInstagramAccount,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Secret(#[from] shared::secrets::SecretError),
}

impl StoreError {
    /// The database's code when it refused a write for what was in it (a
    /// constraint, a value it cannot hold, a trigger): the same write will
    /// be refused again. `None` for a database that is unreachable, busy,
    /// full or failing, where a retry can succeed.
    pub fn refusal_code(&self) -> Option<String> {
        let Self::Database(sqlx::Error::Database(e)) = self else {
            return None;
        };
        if let Some(pg) = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            // Classes 22 (data exception), 23 (integrity constraint), 54
            // (a value over a limit, such as an index row) and P0 (raised
            // by a trigger).
            let code = pg.code();
            return ["22", "23", "54", "P0"]
                .iter()
                .any(|class| code.starts_with(class))
                .then(|| format!("postgres:{code}"));
        }
        let code = e.code()?;
        // SQLite's primary result codes 18 (too big), 19 (constraint, a
        // trigger's RAISE included) and 20 (type mismatch); extended codes
        // carry the primary one in their low byte.
        let primary = code.parse::<u32>().ok()? & 0xff;
        matches!(primary, 18..=20).then(|| format!("sqlite:{code}"))
    }
}

/// Accounts, the only rows that hold secrets: the one part of the store
/// that [`sealed`] wraps.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    async fn insert_account(&self, account: &AccountRow) -> Result<(), StoreError>;
    async fn get_account(&self, id: &str) -> Result<Option<AccountRow>, StoreError>;
    /// Accounts ordered by id, starting after `after`.
    async fn list_accounts(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AccountRow>, StoreError>;
    /// Writes every field of an existing account; false when it is gone.
    async fn update_account(&self, account: &AccountRow) -> Result<bool, StoreError>;
    /// Takes the account's token refresh for now: true for the one caller,
    /// of every ingest, whose view (the token set at `token_set_at`, last
    /// tried at `last_attempt`) is still current.
    async fn claim_token_refresh(
        &self,
        id: &str,
        token_set_at: Option<DateTime<Utc>>,
        last_attempt: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Records what became of the token set at `token_set_at`; false (and
    /// nothing changed) when another token was set since. `invalid` also
    /// turns an active account to `credentials_invalid`.
    async fn record_credentials(
        &self,
        id: &str,
        token_set_at: Option<DateTime<Utc>>,
        change: &CredentialsChange,
    ) -> Result<bool, StoreError>;
    /// Removes the account and its messages; false when there was none.
    async fn delete_account(&self, id: &str) -> Result<bool, StoreError>;
    async fn account_by_instagram_id(
        &self,
        instagram_account_id: &str,
    ) -> Result<Option<AccountRow>, StoreError>;
}

/// Messages, their outbox entries, dead letters and the bookkeeping of
/// replies sent through the API.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// A round trip to the database, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Saves messages and their outbox entries in one transaction, each
    /// unless the account already has a message with the same Instagram id.
    /// Nothing is saved when it fails.
    async fn save_messages(&self, messages: &[NewMessage]) -> Result<Vec<SaveOutcome>, StoreError>;

    /// [`Self::save_messages`] for one message.
    async fn save_message(&self, message: &NewMessage) -> Result<SaveOutcome, StoreError> {
        let mut saved = self.save_messages(std::slice::from_ref(message)).await?;
        Ok(saved.pop().expect("one outcome per message"))
    }

    /// The oldest outbox entries first, at most one per conversation: an
    /// event waits while an earlier one of its conversation is still in the
    /// outbox, so each conversation enters the stream in sequence order.
    async fn pending_outbox(&self, limit: u32) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Called once JetStream acknowledged the publish.
    async fn remove_from_outbox(&self, message_ids: &[String]) -> Result<(), StoreError>;
    /// One write turn: new events (as [`Self::save_messages`]), published
    /// outbox rows (as [`Self::remove_from_outbox`]) and delivery outcomes
    /// (as [`OutcomeStore::record_outcomes`]) in one transaction, so one
    /// commit. `None`, with nothing written, when one of the events is
    /// already saved: the caller then writes each part on its own.
    async fn write_together(
        &self,
        messages: &[NewMessage],
        published: &[String],
        outcomes: &[DeliveryOutcome],
    ) -> Result<Option<(Vec<SaveOutcome>, Vec<bool>)>, StoreError>;
    /// Counts a publish JetStream refused; returns the message's count.
    async fn count_publish_failure(&self, message_id: &str) -> Result<i64, StoreError>;
    /// Takes a message JetStream keeps refusing out of the outbox and makes
    /// it a dead letter with `reason` (replayable like any other); false
    /// when it is no longer in the outbox.
    async fn set_aside_unpublishable(
        &self,
        message_id: &str,
        reason: &str,
    ) -> Result<bool, StoreError>;
    /// Counts one more refusal of an event by the database, keeping what
    /// is needed to save it again the first time; at `limit` refusals the event is
    /// set aside. True when it is set aside (now or before).
    async fn count_refusal(
        &self,
        kept: &KeptEvent,
        error_code: &str,
        limit: u32,
    ) -> Result<bool, StoreError>;
    /// Events set aside, by message id, optionally one account's.
    async fn list_refused(
        &self,
        account_id: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RefusedRow>, StoreError>;
    /// One event set aside.
    async fn get_refused(&self, message_id: &str) -> Result<Option<RefusedRow>, StoreError>;
    /// Records that saving a set-aside event again was refused again.
    async fn refused_again(&self, message_id: &str, error_code: &str) -> Result<(), StoreError>;
    /// Forgets an event set aside (saved again, or discarded); false when
    /// there was none.
    async fn forget_refused(&self, message_id: &str) -> Result<bool, StoreError>;
    /// How many messages wait to be published, and since when the oldest.
    async fn outbox_backlog(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError>;
    /// Adds the sender's username (when found) to a held outbox entry's body
    /// (and the stored copy) and lets it go.
    async fn release_outbox(
        &self,
        message_id: &str,
        username: Option<&str>,
    ) -> Result<(), StoreError>;

    async fn get_message(&self, id: &str) -> Result<Option<MessageRow>, StoreError>;
    /// An account's messages in the order they were saved, optionally one conversation.
    async fn list_messages(
        &self,
        account_id: &str,
        conversation_id: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError>;
    async fn list_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError>;
    /// Puts a dead letter back in the outbox under its own message id; false
    /// when the message is not a dead letter.
    async fn replay_dead_letter(&self, message_id: &str) -> Result<bool, StoreError>;
    /// Marks a dead letter as discarded; false when it is not a dead letter.
    async fn discard_dead_letter(&self, message_id: &str) -> Result<bool, StoreError>;

    /// Records the customer's edit of the message with this mid: its new
    /// text and when (an older edit arriving late changes nothing).
    async fn mark_edited(
        &self,
        account_id: &str,
        mid: &str,
        at: DateTime<Utc>,
        text: Option<&str>,
    ) -> Result<(), StoreError>;
    /// A comment received for the account: its author, conversation and time.
    async fn find_comment(
        &self,
        account_id: &str,
        comment_id: &str,
    ) -> Result<Option<(String, String, DateTime<Utc>)>, StoreError>;
    /// Claims the one private reply Meta allows to a comment; false when
    /// one was sent (or is being sent) already.
    async fn claim_private_reply(
        &self,
        account_id: &str,
        comment_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Gives the claim back after Meta refused the reply.
    async fn release_private_reply(
        &self,
        account_id: &str,
        comment_id: &str,
    ) -> Result<(), StoreError>;
    /// Records that the customer deleted the message with this mid.
    async fn mark_deleted(
        &self,
        account_id: &str,
        mid: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The echo of a message we sent: true (and its time recorded) when a
    /// message with this mid was sent through the API.
    async fn confirm_echo(
        &self,
        account_id: &str,
        mid: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// A reply through the Send API is recorded before Meta is called, with
    /// a `pending:` key; this gives it Meta's mid. False when the mid is
    /// already stored (its echo won the race and was recorded on its own).
    async fn finish_send(&self, message_id: &str, mid: &str) -> Result<bool, StoreError>;
    /// Removes a pending reply that Meta refused.
    async fn abandon_send(&self, message_id: &str) -> Result<(), StoreError>;
    /// Whether a reply to this customer is on its way to Meta right now.
    async fn send_in_flight(
        &self,
        account_id: &str,
        recipient_id: &str,
    ) -> Result<bool, StoreError>;
    /// Claims the conversation's auto-reply if none was sent within the
    /// cooldown; only one caller, across every ingest, gets true.
    async fn claim_auto_reply(
        &self,
        account_id: &str,
        conversation_id: &str,
        now: DateTime<Utc>,
        cooldown_secs: i64,
    ) -> Result<bool, StoreError>;
    /// Gives a claim back after the send failed, so the next message retries.
    async fn release_auto_reply(
        &self,
        account_id: &str,
        conversation_id: &str,
    ) -> Result<(), StoreError>;
}

/// An API token that reaches one account; the token itself is not kept.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub account_id: String,
    pub name: String,
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
}

/// Account-scoped API tokens, looked up by their hash.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    async fn insert_token(&self, token: &TokenRow) -> Result<(), StoreError>;
    /// An account's tokens, oldest first.
    async fn list_tokens(&self, account_id: &str) -> Result<Vec<TokenRow>, StoreError>;
    /// False when the account has no such token.
    async fn delete_token(&self, account_id: &str, id: &str) -> Result<bool, StoreError>;
    async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenRow>, StoreError>;
}

/// What claiming an `Idempotency-Key` came to.
#[derive(Debug)]
pub enum KeyClaim {
    /// The key is this request's: it runs, then records its answer under
    /// this start time.
    Claimed(DateTime<Utc>),
    /// The key's request has finished: its answer, to give again.
    Answered { status: i64, response: Vec<u8> },
    /// The key's request is still running.
    InProgress,
    /// The key was used with another request body.
    OtherRequest,
}

/// `Idempotency-Key`s of API requests that call Meta, per account, with the
/// answer each got, so a repeat gets the same answer without a second call.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims the key for a request whose body hashes to `request_hash`,
    /// unless it is held: a key is free again once it started before
    /// `expired_before`, or, still unanswered, before `abandoned_before`
    /// (its ingest died mid-request).
    async fn claim_key(
        &self,
        account_id: &str,
        key: &str,
        request_hash: &str,
        now: DateTime<Utc>,
        expired_before: DateTime<Utc>,
        abandoned_before: DateTime<Utc>,
    ) -> Result<KeyClaim, StoreError>;
    /// Records the answer of the request that claimed the key at `started_at`.
    async fn answer_key(
        &self,
        account_id: &str,
        key: &str,
        started_at: DateTime<Utc>,
        status: i64,
        response: &[u8],
    ) -> Result<(), StoreError>;
    /// Frees a key whose request may safely run again.
    async fn release_key(
        &self,
        account_id: &str,
        key: &str,
        started_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Forgets keys that started before `before`; returns how many.
    async fn forget_keys(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// What the forwarders report about each delivery attempt.
#[async_trait]
pub trait OutcomeStore: Send + Sync + 'static {
    /// Records delivery attempts' outcomes in one transaction; recording the
    /// same attempt twice changes nothing, and an older outcome never
    /// overwrites a newer one. For each, false when the message is unknown
    /// (its account was deleted).
    async fn record_outcomes(&self, outcomes: &[DeliveryOutcome]) -> Result<Vec<bool>, StoreError>;
}

/// The store as its callers see it: one handle per part, all backed by the
/// same database; only the accounts part seals secrets (and keeps the
/// accounts webhooks name in memory for a moment).
#[derive(Clone)]
pub struct Stores {
    pub accounts: Arc<dyn AccountStore>,
    pub messages: Arc<dyn MessageStore>,
    pub outcomes: Arc<dyn OutcomeStore>,
    pub tokens: Arc<dyn TokenStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Saves of inbound events, outbox removals and delivery outcomes,
    /// committed in groups.
    pub saves: GroupCommit,
}

impl Stores {
    async fn new<S: AccountStore + MessageStore + OutcomeStore + TokenStore + IdempotencyStore>(
        db: S,
        key: Option<SecretBox>,
    ) -> Result<Self, StoreError> {
        let db = Arc::new(db);
        let key_id = key.as_ref().map(|k| k.key_id().to_owned());
        let sealed = sealed::SealedAccounts {
            inner: db.clone(),
            key,
        };
        let resealed = sealed.reseal_all().await?;
        if let (true, Some(key_id)) = (resealed > 0, key_id) {
            tracing::info!(
                accounts = resealed,
                key_id,
                "account secrets re-sealed with the current encryption key"
            );
        }
        Ok(Self {
            accounts: Arc::new(cached::CachedAccounts::new(Arc::new(sealed))),
            messages: db.clone(),
            saves: GroupCommit::start(db.clone(), db.clone()),
            outcomes: db.clone(),
            tokens: db.clone(),
            idempotency: db,
        })
    }
}

/// Opens the store named by `DATABASE_URL`, applies its migrations, and
/// seals account secrets with `key` when there is one.
pub async fn open(database_url: &str, key: Option<SecretBox>) -> anyhow::Result<Stores> {
    // Names the database (never its password) in every failure, in one line.
    let failed = |e: StoreError| {
        anyhow::anyhow!(
            "cannot open the database at DATABASE_URL={}: {e}",
            shared::config::redact(database_url)
        )
    };
    match crate::config::Backend::of(database_url)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL {e}"))?
    {
        crate::config::Backend::Sqlite => {
            let db = SqliteStore::open(database_url).await.map_err(failed)?;
            Stores::new(db, key).await.map_err(failed)
        }
        crate::config::Backend::Postgres => {
            let db = PgStore::open(database_url).await.map_err(failed)?;
            Stores::new(db, key).await.map_err(failed)
        }
    }
}
