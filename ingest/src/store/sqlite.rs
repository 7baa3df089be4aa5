//! The SQLite store: one file, WAL mode, a small pool. The default for a
//! single ingest; several ingests need PostgreSQL. The statements are in
//! [`super::sql`]; what is SQLite's own is here.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::model::DeliveryStatus;
use shared::wire::DeliveryOutcome;
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::sql::{
    INSERTED, MESSAGE_COLUMNS, MessageRowParts, ReplayRow, SAVE_CHUNK, Turn, TurnQuery, WriteTx,
    is_unique_violation, keep_prepared, message_rows, outbox_rows, push_outcome_rows,
    runs_of_distinct_messages, saved_outcomes, storable_text,
};
use super::{
    AccountRow, DeadLetterFilter, MessageRow, NewMessage, OutboxEntry, SaveOutcome, StoreError,
};

pub struct SqliteStore {
    /// The connections that read.
    pool: SqlitePool,
    /// The one connection write transactions run on.
    writes: SqlitePool,
    /// One write transaction at a time: waiting here is a queue, where
    /// SQLite's own busy handler sleeps up to 100 ms between tries.
    writer: Arc<tokio::sync::Mutex<()>>,
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
        // One connection writes (one write transaction at a time anyway),
        // always the same one; two read. Each keeps its own page cache (up
        // to 2 MiB) and prepared statements: with eight, ingest's peak
        // memory under load was 11 MiB higher, for no throughput. In WAL
        // mode a connection empties its whole page cache when it finds that
        // another one has written since its last read, so only a connection
        // that did every write itself keeps its cache warm: writes taken
        // from a shared pool read their pages again from the file (30 reads
        // a message at 500 a second). A file cannot hang up: no ping before
        // each use (one more trip to SQLite's thread for every statement
        // run on the pool, and for every save).
        let writes = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writes).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            writes,
            writer: Arc::default(),
        })
    }

    /// Waits for the process's write turn, then takes SQLite's write lock
    /// at the start: a deferred transaction that reads and then writes can
    /// fail with SQLITE_BUSY instead of waiting.
    async fn begin_write(&self) -> Result<WriteTx<Sqlite>, sqlx::Error> {
        let turn = self.writer.clone().lock_owned().await;
        let tx = self.writes.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTx::new(tx, Some(turn)))
    }

    /// The write turn's transaction: `BEGIN IMMEDIATE` in front of its first
    /// query and `COMMIT` after its last, two trips to SQLite's thread fewer.
    async fn begin_turn(&self) -> Result<WriteTx<Sqlite>, sqlx::Error> {
        let turn = self.writer.clone().lock_owned().await;
        let conn = self.writes.acquire().await?;
        Ok(WriteTx::in_queries(conn, "BEGIN IMMEDIATE;\n", Some(turn)))
    }

    /// One ingest publishes from an SQLite file, so a plain read will do.
    /// It runs on the writing connection, between write turns: that
    /// connection's page cache holds the rows just saved, where a reading
    /// connection would find its cache emptied by every save and read the
    /// outbox's pages from the file again.
    ///
    /// The limit is a cast, not a bare `$2`: SQLite (3.51, as bundled) plans a
    /// bound `LIMIT` as the constant it holds and marks the statement to be
    /// compiled again whenever that parameter is bound, which sqlx does on
    /// every run. This query runs after every save; at 500 saves a second
    /// recompiling it was a tenth of ingest's CPU.
    async fn lease_outbox(&self, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT o.message_id, o.nats_msg_id, o.subject, o.payload, o.created_at,
                    EXISTS (SELECT 1 FROM outbox later
                            WHERE later.account_id = o.account_id
                              AND later.conversation_id = o.conversation_id
                              AND later.sequence > o.sequence) AS has_next
             FROM outbox o
             WHERE (o.hold_until IS NULL OR o.hold_until <= $1)
               AND NOT EXISTS (
                   SELECT 1 FROM outbox earlier
                   WHERE earlier.account_id = o.account_id
                     AND earlier.conversation_id = o.conversation_id
                     AND earlier.sequence < o.sequence)
             ORDER BY o.created_at, o.message_id LIMIT CAST($2 AS INTEGER)",
        )
        .bind(Utc::now())
        .bind(i64::from(limit))
        .fetch_all(&self.writes)
        .await?)
    }
}

impl SqliteStore {
    const TURN_QUERY: TurnQuery = TurnQuery::Statements;
}

impl_sql_store!(SqliteStore, Sqlite);
