//! The PostgreSQL store, for production and for several ingests sharing one
//! database. The statements are in [`super::sql`]; what is PostgreSQL's own
//! is here: the outbox is leased row by row so concurrent publishers never
//! work on the same message.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::model::DeliveryStatus;
use shared::wire::DeliveryOutcome;
use sqlx::Postgres;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::sql::{
    Conversation, Counter, Counting, INSERTED, MESSAGE_COLUMNS, MessageRowParts, Numbered,
    ReplayRow, SAVE_CHUNK, Turn, TurnQuery, WriteTx, is_unique_violation, keep_prepared,
    message_rows, outbox_rows, push_outcome_rows, runs_of_distinct_messages, saved_outcomes,
    storable_text,
};
use super::{
    AccountRow, DeadLetterFilter, MessageRow, NewMessage, OutboxEntry, SaveOutcome, StoreError,
};

/// A pooled connection idle this long is checked before it is used.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(10);

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            // sqlx pings a connection each time it is taken from the pool:
            // a round trip before every statement and every save. Only a
            // connection idle long enough to have been cut (a restarted
            // server, a proxy's timeout) is pinged; under load none is.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Row locks taken by each statement are enough in PostgreSQL.
    async fn begin_write(&self) -> Result<WriteTx<Postgres>, sqlx::Error> {
        Ok(WriteTx::new(self.pool.begin().await?, None))
    }

    /// The write turn's transaction: one statement per query with
    /// parameters, so `BEGIN` and `COMMIT` are trips of their own.
    async fn begin_turn(&self) -> Result<WriteTx<Postgres>, sqlx::Error> {
        self.begin_write().await
    }

    /// A write turn never reads the outbox here: each ingest leases what
    /// it publishes, which one turn's read cannot do for another ingest.
    fn reads_outbox_in_turn(_saves: usize) -> bool {
        false
    }

    fn push_outbox_read(_query: &mut sqlx::QueryBuilder<Postgres>, _now: DateTime<Utc>) {}

    fn keep_outbox_read(&self, _changes: u64, _rows: Vec<OutboxEntry>) {}

    /// Nothing a turn reads is kept here (see the two methods above and
    /// [`Self::COUNTERS_IN_MEMORY`]).
    fn turn_changes(&self) -> u64 {
        0
    }

    fn counters_known(
        &self,
        _changes: u64,
        _conversations: &[Conversation],
    ) -> Option<Vec<Counter>> {
        None
    }

    fn push_counters(
        _query: &mut sqlx::QueryBuilder<Postgres>,
        _conversations: &[Conversation],
        _before: &[Counter],
        _after: &[Counter],
    ) {
    }

    fn remember_counters<'a>(
        &self,
        _changes: u64,
        _counters: impl Iterator<Item = ((&'a str, &'a str), Counter)>,
    ) {
    }

    /// Leases the rows for a while so another ingest's publisher skips them;
    /// a publisher that dies just lets its lease run out. A row whose
    /// conversation has an earlier one in the outbox (leased or not) waits.
    ///
    /// The rows to lease are chosen first, as an array: with `IN (SELECT …)`
    /// PostgreSQL planned the update as a hash join over a scan of the whole
    /// table, and the outbox, a row in and a row out per message, holds
    /// thousands of dead rows between two autovacuums (one lease read 678
    /// pages mid-run at 500 messages a second). `= ANY(ARRAY(…))` looks each
    /// one up by its key.
    async fn lease_outbox(&self, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut rows: Vec<OutboxEntry> = sqlx::query_as(
            "UPDATE outbox SET claimed_until = now() + interval '30 seconds'
             WHERE message_id = ANY(ARRAY(
                 SELECT o.message_id FROM outbox o
                 WHERE (o.hold_until IS NULL OR o.hold_until <= now())
                   AND (o.claimed_until IS NULL OR o.claimed_until < now())
                   AND NOT EXISTS (
                       SELECT 1 FROM outbox earlier
                       WHERE earlier.account_id = o.account_id
                         AND earlier.conversation_id = o.conversation_id
                         AND earlier.sequence < o.sequence)
                 ORDER BY o.created_at, o.message_id
                 LIMIT $1
                 FOR UPDATE OF o SKIP LOCKED))
             RETURNING message_id, nats_msg_id, subject, payload, created_at,
                 EXISTS (SELECT 1 FROM outbox later
                         WHERE later.account_id = outbox.account_id
                           AND later.conversation_id = outbox.conversation_id
                           AND later.sequence > outbox.sequence) AS has_next",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.sort_by(|a, b| (a.created_at, &a.message_id).cmp(&(b.created_at, &b.message_id)));
        Ok(rows)
    }
}

impl PgStore {
    const TURN_QUERY: TurnQuery = TurnQuery::Ctes;
    /// Several ingests may take numbers in one conversation.
    const COUNTERS_IN_MEMORY: bool = false;
}

impl_sql_store!(PgStore, Postgres);
