//! The SQLite store: one file, WAL mode, a small pool. The default for a
//! single ingest; several ingests need PostgreSQL. The statements are in
//! [`super::sql`]; what is SQLite's own is here.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::model::DeliveryStatus;
use shared::wire::DeliveryOutcome;
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::kept::KeptConnection;
use super::sql::{
    Claims, Column, Conversation, Counter, Counting, INSERTED, KnownCounters, MESSAGE_COLUMNS,
    MessageRowParts, Numbered, OUTCOME_NAMES, ReplayRow, Rows, SAVE_CHUNK, Turn, TurnQuery,
    WriteTurn, WriteTx, is_unique_violation, message_rows, outbox_rows, outcome_columns, picked,
    push_values_rows, runs_of_distinct_messages, saved_outcomes, storable_text,
};
use super::{
    AccountRow, DeadLetterFilter, MessageRow, NewMessage, OutboxEntry, SaveOutcome, StoreError,
};

pub struct SqliteStore {
    /// The connections that read.
    pool: SqlitePool,
    /// The one connection write transactions run on, kept out of its pool
    /// between them ([`KeptConnection`]); the outbox is read on it too.
    writes: KeptConnection<Sqlite>,
    /// One write transaction at a time: waiting here is a queue, where
    /// SQLite's own busy handler sleeps up to 100 ms between tries.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Counts the transactions that may have changed the database: every
    /// one begun on the writing connection, every commit on the others.
    changes: Arc<AtomicU64>,
    /// Counts the write transactions that ended: the checkpointer watches.
    turn_ended: Arc<tokio::sync::watch::Sender<u64>>,
    /// The outbox as a small write turn left it, read in the turn's own
    /// query; good for the next outbox read while `changes` has not moved.
    outbox_after_turn: std::sync::Mutex<Option<OutboxSnapshot>>,
    /// The conversations' counters as the write turns left them.
    counters: KnownCounters,
}

/// The outbox read at the end of a write turn, before its commit.
struct OutboxSnapshot {
    /// [`SqliteStore::changes`] when the turn began.
    changes: u64,
    rows: Vec<OutboxEntry>,
}

/// A write turn with at most this many saves reads the outbox at its end:
/// under a light load, the publisher reads it right after every save.
const OUTBOX_IN_TURN_SAVES: usize = 8;
/// The most rows that read returns. One with fewer rows is the whole ready
/// outbox, whatever limit the publisher asks for.
const OUTBOX_IN_TURN_ROWS: usize = 64;

/// The outbox read, in two halves around the time a hold must be over by
/// (its end is `LIMIT`, the number follows): which rows are ready (not held
/// back, and first in their conversation) and whether a later row of their
/// conversation waits behind them.
macro_rules! outbox_read {
    (head) => {
        "SELECT o.message_id, o.nats_msg_id, o.subject, o.payload, o.created_at,
                EXISTS (SELECT 1 FROM outbox later
                        WHERE later.account_id = o.account_id
                          AND later.conversation_id = o.conversation_id
                          AND later.sequence > o.sequence) AS has_next,
                'outbox' AS kind
         FROM outbox o
         WHERE (o.hold_until IS NULL OR o.hold_until <= "
    };
    (tail) => {
        ")
           AND NOT EXISTS (
               SELECT 1 FROM outbox earlier
               WHERE earlier.account_id = o.account_id
                 AND earlier.conversation_id = o.conversation_id
                 AND earlier.sequence < o.sequence)
         ORDER BY o.created_at, o.message_id LIMIT "
    };
}

/// How long the WAL grows between two checkpoints of the checkpointer.
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(200);

/// Past this many pages in the WAL (about 40 MiB) the writing connection
/// checkpoints by itself, inside the `COMMIT` that crossed it: a backstop
/// for when the checkpointer falls behind. SQLite's default is 1,000.
const WRITER_CHECKPOINT_PAGES: &str = "10000";

/// SQLite's checkpoints (copying the WAL's pages into the database file,
/// and an fsync of it), on a connection of their own, off the write path.
///
/// Left to the writing connection, a checkpoint runs inside the `COMMIT`
/// that takes the WAL past 1,000 pages, about one write turn in 65 at 500
/// saves a second (a save writes about 15 pages), and that turn's webhooks
/// and those queued behind it waited 1-2 ms more: most of ingest's answer
/// p99 at that rate (README, Performance). Here, [`CHECKPOINT_PAUSE`] after
/// a write, and right after the next write transaction ends (or one more
/// pause later if none comes), a passive checkpoint copies what is
/// committed while the writer goes on: it never blocks a writer or a
/// reader, and the next write transaction after a complete one starts the
/// WAL again from its beginning. An idle store is never woken; it ends
/// with the store (`ended` dropped).
async fn checkpoint_after_writes(pool: SqlitePool, mut ended: tokio::sync::watch::Receiver<u64>) {
    // A write transaction has ended since the last checkpoint.
    while ended.changed().await.is_ok() {
        tokio::time::sleep(CHECKPOINT_PAUSE).await;
        ended.mark_unchanged();
        let _ = tokio::time::timeout(CHECKPOINT_PAUSE, ended.changed()).await;
        ended.mark_unchanged();
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(
                error = %e,
                writer_checkpoint_pages = WRITER_CHECKPOINT_PAGES,
                "sqlite checkpoint failed; the writing connection checkpoints by itself past that many pages"
            );
        }
    }
    pool.close().await;
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
        // run on the pool, and for every save). The writing connection's
        // cache is 1 MiB: the pages a write turn touches again (the indexes'
        // right edges, the outbox, the counters) fit in it, so it reads no
        // more from the file than with 2 (two reads a message at 500 a
        // second either way), and ingest's peak is 1 MiB lower.
        //
        // Its temporary data stays in memory: a write turn runs several
        // statements inside one transaction, so each keeps a statement
        // journal (the original of every page it changes, to undo itself
        // alone), and past 64 KiB (16 pages, which a turn of one save with
        // its removal and outcome already reaches) SQLite spills that journal
        // to a new file in the temp directory, created and unlinked within the
        // turn: 7% of turns at 500 messages a second, three in four at
        // saturation. The journal lives only as long as its statement.
        let writes = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(
                options
                    .clone()
                    .pragma("cache_size", "-1024")
                    .pragma("temp_store", "memory")
                    .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES),
            )
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writes).await?;
        // A write made on a reading connection (a few rare API calls write
        // outside a write transaction) counts as a change too.
        let changes = Arc::new(AtomicU64::new(0));
        let counted = changes.clone();
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                let changes = counted.clone();
                Box::pin(async move {
                    conn.lock_handle().await?.set_commit_hook(move || {
                        changes.fetch_add(1, Ordering::SeqCst);
                        true
                    });
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        let (turn_ended, ended) = tokio::sync::watch::channel(0);
        let checkpoints = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.pragma("cache_size", "-64"))
            .await?;
        tokio::spawn(checkpoint_after_writes(checkpoints, ended));
        Ok(Self {
            pool,
            writes: KeptConnection::new(writes, None),
            writer: Arc::default(),
            changes,
            turn_ended: Arc::new(turn_ended),
            outbox_after_turn: std::sync::Mutex::default(),
            counters: KnownCounters::new(),
        })
    }

    /// The process's write turn, counted as a change: every write
    /// transaction on the writing connection begins here.
    async fn write_lock(&self) -> WriteTurn {
        let lock = self.writer.clone().lock_owned().await;
        self.changes.fetch_add(1, Ordering::SeqCst);
        WriteTurn::new(lock, self.turn_ended.clone())
    }

    /// Waits for the process's write turn, then takes SQLite's write lock
    /// at the start: a deferred transaction that reads and then writes can
    /// fail with SQLITE_BUSY instead of waiting.
    async fn begin_write(&self) -> Result<WriteTx<Sqlite>, sqlx::Error> {
        let turn = self.write_lock().await;
        let conn = self.writes.take().await?;
        let mut tx = WriteTx::on_demand(conn, "BEGIN IMMEDIATE", Some(turn));
        tx.begin_now().await?;
        Ok(tx)
    }

    /// The write turn's transaction: `BEGIN IMMEDIATE` in front of its first
    /// query and `COMMIT` after its last, two trips to SQLite's thread fewer.
    async fn begin_turn(&self) -> Result<WriteTx<Sqlite>, sqlx::Error> {
        let turn = self.write_lock().await;
        let conn = self.writes.take().await?;
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
        if let Some(rows) = self.outbox_read_in_turn(limit) {
            return Ok(rows);
        }
        let mut conn = self.writes.take().await?;
        let rows = sqlx::query_as(concat!(
            outbox_read!(head),
            "$1",
            outbox_read!(tail),
            "CAST($2 AS INTEGER)"
        ))
        .bind(Utc::now())
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        conn.keep();
        Ok(rows)
    }
}

impl SqliteStore {
    const TURN_QUERY: TurnQuery = TurnQuery::Statements;

    /// Whether a multi-row statement of `rows` rows is kept prepared. Under
    /// light load every group is one to a few rows, the same few shapes again
    /// and again, and parsing them was a sixth of ingest's CPU; a larger
    /// group's shape seldom repeats and would crowd the statement cache (100
    /// per connection): it is parsed each time.
    fn keep_prepared(rows: usize) -> bool {
        rows <= 8
    }

    /// Rows as a `VALUES` list, a parameter for each value
    /// ([`push_values_rows`]).
    fn push_rows(query: &mut sqlx::QueryBuilder<Sqlite>, columns: &[Column<'_>], rows: Rows<'_>) {
        push_values_rows(query, columns, rows);
    }

    /// `IN (…)` the values, a parameter each.
    fn push_in(query: &mut sqlx::QueryBuilder<Sqlite>, values: &[String]) {
        query.push("IN (");
        let mut each = query.separated(", ");
        for value in values {
            each.push_bind(value);
        }
        query.push(")");
    }

    /// Whether a write turn with this many saves reads the outbox at its
    /// end.
    fn reads_outbox_in_turn(saves: usize) -> bool {
        (1..=OUTBOX_IN_TURN_SAVES).contains(&saves)
    }

    /// The outbox read at the end of a write turn, in front of its `COMMIT`
    /// (it sees the turn's own writes, and no one else writes meanwhile).
    fn push_outbox_read(query: &mut sqlx::QueryBuilder<Sqlite>, now: DateTime<Utc>) {
        query
            .push(outbox_read!(head))
            .push_bind(now)
            .push(outbox_read!(tail))
            .push(OUTBOX_IN_TURN_ROWS.to_string());
    }

    /// A write turn's outbox read serves the publisher here instead (the
    /// methods above): nothing is claimed.
    fn claim_until(&self) -> Option<&'static str> {
        None
    }

    fn hand_over(&self, _claims: Claims, _removed: &[String]) {}

    /// Whether a write turn's outbox read waits for the next outbox read.
    #[cfg(test)]
    pub(crate) fn outbox_read_kept(&self) -> bool {
        self.outbox_after_turn
            .lock()
            .expect("not poisoned")
            .is_some()
    }

    /// Runs a statement on a reading connection, outside any write turn.
    #[cfg(test)]
    pub(crate) async fn execute_on_reader(&self, sql: &'static str) {
        sqlx::query(sql).execute(&self.pool).await.unwrap();
    }

    fn keep_outbox_read(&self, changes: u64, rows: Vec<OutboxEntry>) {
        *self.outbox_after_turn.lock().expect("not poisoned") =
            Some(OutboxSnapshot { changes, rows });
    }

    /// What the last write turn read of the outbox, if nothing may have
    /// changed since and it answers this limit: the rows that query would
    /// return now, without the trip to SQLite's thread. Taken once.
    fn outbox_read_in_turn(&self, limit: u32) -> Option<Vec<OutboxEntry>> {
        let snapshot = self
            .outbox_after_turn
            .lock()
            .expect("not poisoned")
            .take()?;
        let whole = snapshot.rows.len() < OUTBOX_IN_TURN_ROWS;
        let limit = limit as usize;
        let current = snapshot.changes == self.changes.load(Ordering::SeqCst);
        (current && (whole || limit <= OUTBOX_IN_TURN_ROWS)).then(|| {
            let mut rows = snapshot.rows;
            rows.truncate(limit);
            rows
        })
    }
}

impl SqliteStore {
    /// The count of changes, read by a write turn right after it begins
    /// (under the write turn's lock): what its outbox read and its counters
    /// are good for.
    fn turn_changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Keeps the counters a committed turn left, from the turn that began
    /// at `changes`.
    fn remember_counters<'a>(
        &self,
        changes: u64,
        counters: impl Iterator<Item = ((&'a str, &'a str), Counter)>,
    ) {
        self.counters.remember(changes, counters);
    }

    /// Puts a wrong value in place of a conversation's kept counter.
    #[cfg(test)]
    pub(crate) fn corrupt_counter(&self, account: &str, conversation: &str, last: i64) {
        self.counters.corrupt(account, conversation, last);
    }
}

impl_sql_store!(SqliteStore, Sqlite);

#[cfg(all(
    test,
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod tests {
    use super::*;
    use crate::store::testing::sqlite_url;
    use crate::store::{AccountRow, AccountStore};

    /// Opens a store in `dir` and saves an account, on a thread of its own
    /// where the system call `failing` fails with an I/O error: the
    /// threads the store starts (SQLite's) get the same filter.
    fn open_and_write_where_failing(dir: &tempfile::TempDir, failing: i64) -> Result<(), String> {
        let url = sqlite_url(dir);
        let probe = dir.path().join("probe");
        std::thread::spawn(move || {
            let filter: seccompiler::BpfProgram = seccompiler::SeccompFilter::new(
                [(failing, vec![])].into_iter().collect(),
                seccompiler::SeccompAction::Allow,
                seccompiler::SeccompAction::Errno(libc::EIO as u32),
                std::env::consts::ARCH.try_into().unwrap(),
            )
            .unwrap()
            .try_into()
            .unwrap();
            seccompiler::apply_filter(&filter).unwrap();
            // The filter holds: the call fails outside SQLite too.
            let file = std::fs::File::create(probe).unwrap();
            let synced = if failing == libc::SYS_fsync {
                file.sync_all()
            } else {
                file.sync_data()
            };
            assert_eq!(synced.unwrap_err().raw_os_error(), Some(libc::EIO));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let db = SqliteStore::open(&url).await.map_err(|e| e.to_string())?;
                let account = AccountRow::example("acc_1", "1");
                db.insert_account(&account)
                    .await
                    .map_err(|e| e.to_string())?;
                let saved = db.get_account("acc_1").await.map_err(|e| e.to_string())?;
                assert_eq!(saved.map(|a| a.id).as_deref(), Some("acc_1"));
                Ok(())
            })
        })
        .join()
        .unwrap()
    }

    /// Every commit (the migrations' on the writing connection, a write on
    /// a reading one) is made durable with `fdatasync`, never `fsync`: the
    /// bundled SQLite is built with `HAVE_FDATASYNC` (.cargo/config.toml).
    /// Without it a store cannot even open where `fsync` fails.
    #[test]
    fn commits_sync_with_fdatasync_never_fsync() {
        let dir = tempfile::tempdir().unwrap();
        open_and_write_where_failing(&dir, libc::SYS_fsync).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let refused = open_and_write_where_failing(&dir, libc::SYS_fdatasync).unwrap_err();
        assert!(refused.contains("disk I/O error"), "{refused}");
    }
}
