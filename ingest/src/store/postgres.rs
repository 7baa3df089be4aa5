//! The PostgreSQL store, for production and for several ingests sharing one
//! database. The statements are in [`super::sql`]; what is PostgreSQL's own
//! is here: the outbox is leased row by row so concurrent publishers never
//! work on the same message.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use shared::model::DeliveryStatus;
use shared::wire::DeliveryOutcome;
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::kept::KeptConnection;
use super::sql::{
    Claims, Column, Conversation, Counter, Counting, INSERTED, KnownCounters, MESSAGE_COLUMNS,
    MessageRowParts, Numbered, OUTCOME_NAMES, ReplayRow, Rows, SAVE_CHUNK, Turn, TurnQuery,
    WriteTx, is_unique_violation, message_rows, outbox_rows, outcome_columns, picked,
    push_values_rows, runs_of_distinct_messages, saved_outcomes, storable_text,
};
use super::{
    AccountRow, DeadLetterFilter, MessageRow, NewMessage, OutboxEntry, SaveOutcome, StoreError,
};

/// The most rows a statement takes as a `VALUES` list (see
/// [`PgStore::push_rows`]).
const ROWS_AS_VALUES: usize = 8;

/// A pooled connection idle this long is checked before it is used.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(10);

pub struct PgStore {
    pool: PgPool,
    /// The outbox publisher's leases: see [`PgStore::lease_outbox`].
    leases: PgPool,
    /// The write turns' connection, kept out of its pool between turns:
    /// see [`PgStore::begin_turn`].
    turns: KeptConnection<Postgres>,
    /// Counts the write transactions this process began: what its kept
    /// counters are good for.
    changes: AtomicU64,
    /// The conversations' counters as this process's write turns left them.
    counters: KnownCounters,
    /// Rows the write turns claimed for the publisher.
    handed: std::sync::Mutex<Handed>,
}

/// How long a write turn claims the rows it hands to its publisher: they
/// are published within milliseconds, or, if this ingest stops first,
/// leased by another (or by it after a restart) once the claim runs out.
const CLAIM: &str = "now() + interval '10 seconds'";
/// A row handed over longer ago than this is left to a lease: its claim
/// may run out before it is published.
const HANDED_FOR: Duration = Duration::from_secs(5);
/// The most rows waiting for the publisher in memory; past it, a turn
/// claims nothing and the rows are leased as before.
const MAX_HANDED: usize = 4096;
/// While the publisher is busy, the outbox is still leased this often:
/// what only a lease finds and nothing announces (a hold run out, another
/// ingest's claim or lease run out) waits at most this long under load.
const LEASE_AT_LEAST_EVERY: Duration = Duration::from_millis(50);
/// For this long after a turn left a row to a lease (or another write ran),
/// each call of the publisher that finds nothing handed over leases: the
/// row may be waiting for the removal of the row before it in its
/// conversation, which the publisher is committing.
const LEASE_WHEN_EMPTY_FOR: Duration = Duration::from_secs(1);

/// The rows this ingest's write turns claimed for its publisher, and when
/// the outbox itself must be leased.
#[derive(Default)]
struct Handed {
    rows: std::collections::VecDeque<(Instant, OutboxEntry)>,
    /// A row only a lease finds may be ready: the last turn inserted one it
    /// did not claim, another write transaction ran, or the last lease
    /// found rows (those behind them may follow).
    lease_due: bool,
    /// When that last happened.
    left_to_lease: Option<Instant>,
    last_lease: Option<Instant>,
}

impl Handed {
    /// A row only a lease finds may be ready now or soon.
    fn lease_soon(&mut self, now: Instant) {
        self.lease_due = true;
        self.left_to_lease = Some(now);
    }

    /// Up to `limit` rows handed over (recent enough), and whether the
    /// outbox must be leased too: when something only a lease finds may be
    /// ready, and at least every [`LEASE_AT_LEAST_EVERY`]. A call that finds
    /// nothing handed over does not lease otherwise: at a steady load the
    /// turns hand every row over, and the publisher is woken once for
    /// several (in a run at 500 messages a second, every lease found nothing).
    fn take(&mut self, limit: usize, now: Instant) -> (Vec<OutboxEntry>, bool) {
        while self
            .rows
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > HANDED_FOR)
        {
            self.rows.pop_front();
        }
        let take = self.rows.len().min(limit);
        let rows: Vec<OutboxEntry> = self.rows.drain(..take).map(|(_, e)| e).collect();
        let since = |at: Option<Instant>| at.map(|at| now.duration_since(at));
        let lease = self.lease_due
            || (rows.is_empty()
                && since(self.left_to_lease).is_some_and(|d| d < LEASE_WHEN_EMPTY_FOR))
            || since(self.last_lease).is_none_or(|d| d >= LEASE_AT_LEAST_EVERY);
        let lease = lease && rows.len() < limit;
        if lease {
            self.lease_due = false;
            self.last_lease = Some(now);
        }
        (rows, lease)
    }
}

/// A pool of at most `size` connections.
fn pool_options(size: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings a connection each time it is taken from the pool: a
        // round trip before every statement and every save. Only a
        // connection idle long enough to have been cut (a restarted server,
        // a proxy's timeout) is pinged; under load none is.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// The publisher's connections: see [`PgStore::lease_outbox`]. A lease
/// keeps one plan, made once per connection, that finds its rows by key
/// however large the outbox grows, as a write turn's do ([`turn_options`]):
/// it walks the outbox by age and probes each row's conversation for an
/// earlier one ([`LEASE`]). Left to PostgreSQL, after five runs it kept a
/// generic plan made from the outbox's statistics of the moment: a table of a
/// handful of rows (as at a steady load, and as the last `ANALYZE` left it)
/// was scanned whole and hash-joined with itself, and kept while the outbox
/// grew (NATS down, then back), that plan took 1.86 s a lease of 100 rows over
/// 200,000 waiting. Planning each lease afresh avoided that but cost 0.2 ms of
/// PostgreSQL's CPU a lease (at 500 messages a second the publisher leased
/// 60 to 370 times a second then; about 20 since it leases only when a row
/// may be waiting for it, [`Handed::take`]).
fn lease_options(options: PgConnectOptions) -> PgConnectOptions {
    options.options([
        ("synchronous_commit", "off"),
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_seqscan", "off"),
    ])
}

/// The write turns' connections: see [`PgStore::begin_turn`]. Each shape of
/// statement is planned once per connection, and every statement of a turn
/// finds its rows by key; so no plan may scan a table whole, which is what
/// PostgreSQL chooses for a table of a handful of rows. Kept while the
/// outbox grows, such a plan read all of it at each removal (19–27 ms a
/// turn with 200,000 rows waiting, against 0.03 ms by its key).
fn turn_options(options: PgConnectOptions) -> PgConnectOptions {
    options.options([
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_seqscan", "off"),
    ])
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = pool_options(16).connect_with(options.clone()).await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let leases = pool_options(2).connect_lazy_with(lease_options(options.clone()));
        let turns = KeptConnection::new(
            pool_options(2).connect_lazy_with(turn_options(options)),
            Some(PING_IF_IDLE_FOR),
        );
        Ok(Self {
            pool,
            leases,
            turns,
            changes: AtomicU64::new(0),
            counters: KnownCounters::new(),
            handed: std::sync::Mutex::default(),
        })
    }

    /// Row locks taken by each statement are enough in PostgreSQL. Counted
    /// as a change: it may move a conversation's counter.
    async fn begin_write(&self) -> Result<WriteTx<Postgres>, sqlx::Error> {
        self.changes.fetch_add(1, Ordering::SeqCst);
        // It may make an outbox row ready (a hold released, a replay).
        self.handed
            .lock()
            .expect("not poisoned")
            .lease_soon(Instant::now());
        Ok(WriteTx::new(self.pool.begin().await?, None))
    }

    /// The write turn's transaction, begun only if the turn takes two
    /// statements that write (a turn of more than [`SAVE_CHUNK`] events,
    /// numbered chunk by chunk): every other turn is one statement of CTEs,
    /// which commits by itself, after a plain read of its conversations'
    /// counters when this ingest does not know them all.
    ///
    /// It runs on connections of its own ([`turn_options`]) that always use
    /// a statement's generic plan, never a read of a whole table. A turn's
    /// rows beyond eight go as arrays ([`Self::push_rows`]), so its few
    /// shapes of statement are each
    /// planned once, as lookups by key for any number of rows. Left to
    /// choose, PostgreSQL planned a statement of arrays again at every run
    /// (a plan for the arrays' actual lengths looks cheaper than the generic
    /// one, which assumes ten rows an array): the very planning the arrays
    /// are there to save.
    ///
    /// One turn at a time (the group commit's writer), on the same
    /// connection, which stays out of the pool between turns
    /// ([`KeptConnection`]).
    async fn begin_turn(&self) -> Result<WriteTx<Postgres>, sqlx::Error> {
        self.changes.fetch_add(1, Ordering::SeqCst);
        Ok(WriteTx::on_demand(self.turns.take().await?, "BEGIN", None))
    }

    /// A write turn never reads the outbox here: each ingest leases what
    /// it publishes, which one turn's read cannot do for another ingest.
    fn reads_outbox_in_turn(_saves: usize) -> bool {
        false
    }

    fn push_outbox_read(_query: &mut sqlx::QueryBuilder<Postgres>, _now: DateTime<Utc>) {}

    fn keep_outbox_read(&self, _changes: u64, _rows: Vec<OutboxEntry>) {}

    /// A write turn claims the first row of each conversation it inserts
    /// (until this time) and hands it to this ingest's publisher, instead of
    /// the publisher leasing it with a statement of its own (a third of
    /// PostgreSQL's CPU for each message at 500 a second); unless too many
    /// wait already.
    fn claim_until(&self) -> Option<&'static str> {
        let handed = self.handed.lock().expect("not poisoned");
        (handed.rows.len() < MAX_HANDED).then_some(CLAIM)
    }

    /// Queues what a committed turn claimed for the publisher, and forgets
    /// what it removed from the outbox (the publisher removes only what it
    /// took, but a handed row must never outlive its outbox row).
    fn hand_over(&self, claims: Claims, removed: &[String]) {
        let (entries, queued) = claims.into_entries();
        let mut handed = self.handed.lock().expect("not poisoned");
        if !removed.is_empty() && !handed.rows.is_empty() {
            let removed: std::collections::HashSet<&str> =
                removed.iter().map(String::as_str).collect();
            handed
                .rows
                .retain(|(_, e)| !removed.contains(e.message_id.as_str()));
        }
        let now = Instant::now();
        handed.rows.extend(entries.into_iter().map(|e| (now, e)));
        if queued {
            handed.lease_soon(now);
        }
    }

    /// What the publisher reads first: the rows handed over, and whether
    /// the outbox must be leased too ([`Handed::take`]).
    fn take_handed(&self, limit: usize) -> (Vec<OutboxEntry>, bool) {
        self.handed
            .lock()
            .expect("not poisoned")
            .take(limit, Instant::now())
    }

    /// The count of changes, read by a write turn right after it begins.
    fn turn_changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Keeps the counters a committed turn left, from the turn that began
    /// at `changes`, each time as PostgreSQL holds it (to the microsecond),
    /// so the next turn's check compares equal values.
    fn remember_counters<'a>(
        &self,
        changes: u64,
        counters: impl Iterator<Item = ((&'a str, &'a str), Counter)>,
    ) {
        let stored = counters.map(|(key, (last, wrote))| {
            let wrote = wrote.map(|at| {
                at.with_nanosecond(at.nanosecond() / 1_000 * 1_000)
                    .unwrap_or(at)
            });
            (key, (last, wrote))
        });
        self.counters.remember(changes, stored);
    }

    /// Leases the rows for a while so another ingest's publisher skips them;
    /// a publisher that dies just lets its lease run out. A row whose
    /// conversation has an earlier one in the outbox (leased or not) waits.
    ///
    /// A lease is committed without waiting for the disk
    /// (`synchronous_commit` off on the publisher's own connections): one
    /// fsync fewer for each message, and the next commit that does wait (the
    /// next save) makes it durable too. One lost in a crash of the server
    /// only makes the row leasable again; it is published again and the
    /// stream drops the copy (its removal, committed later, was lost too).
    ///
    /// The rows to lease are chosen first, as an array: with `IN (SELECT …)`
    /// PostgreSQL planned the update as a hash join over a scan of the whole
    /// table, and the outbox, a row in and a row out per message, holds
    /// thousands of dead rows between two autovacuums (one lease read 678
    /// pages mid-run at 500 messages a second). `= ANY(ARRAY(…))` looks each
    /// one up by its key.
    ///
    /// The rows write turns handed over come first, without a statement.
    async fn lease_outbox(&self, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let (mut rows, lease) = self.take_handed(limit as usize);
        if lease {
            let leased = self.lease_from_table(limit - rows.len() as u32).await?;
            if !leased.is_empty() {
                // More may follow: the rows behind these in their
                // conversations once they are removed, those past the limit.
                let mut handed = self.handed.lock().expect("not poisoned");
                handed.lease_soon(Instant::now());
            }
            rows.extend(leased);
        }
        rows.sort_by(|a, b| (a.created_at, &a.message_id).cmp(&(b.created_at, &b.message_id)));
        Ok(rows)
    }

    async fn lease_from_table(&self, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows: Vec<OutboxEntry> = sqlx::query_as(LEASE)
            .bind(i64::from(limit))
            .fetch_all(&self.leases)
            .await?;
        Ok(rows)
    }
}

/// The outbox's next rows, at most `$1`, each the first of its conversation
/// there, leased for 30 seconds ([`PgStore::lease_outbox`]).
///
/// `OFFSET 0` keeps the check for an earlier row a probe of the
/// conversation's index for each row the walk by age meets: without it
/// PostgreSQL turns the `NOT EXISTS` into an anti join, which a plan made
/// while the outbox held a few rows runs over the whole outbox (the index
/// read in full and kept in memory: 1.79 s for 100 rows over 200,000, even
/// with no table scan allowed).
const LEASE: &str = "UPDATE outbox SET claimed_until = now() + interval '30 seconds'
     WHERE message_id = ANY(ARRAY(
         SELECT o.message_id FROM outbox o
         WHERE (o.hold_until IS NULL OR o.hold_until <= now())
           AND (o.claimed_until IS NULL OR o.claimed_until < now())
           AND NOT EXISTS (
               SELECT 1 FROM outbox earlier
               WHERE earlier.account_id = o.account_id
                 AND earlier.conversation_id = o.conversation_id
                 AND earlier.sequence < o.sequence
               OFFSET 0)
         ORDER BY o.created_at, o.message_id
         LIMIT $1
         FOR UPDATE OF o SKIP LOCKED))
     RETURNING message_id, nats_msg_id, subject, payload, created_at,
         EXISTS (SELECT 1 FROM outbox later
                 WHERE later.account_id = outbox.account_id
                   AND later.conversation_id = outbox.conversation_id
                   AND later.sequence > outbox.sequence) AS has_next";

impl PgStore {
    const TURN_QUERY: TurnQuery = TurnQuery::Ctes;

    /// Every statement is kept prepared: up to [`ROWS_AS_VALUES`] rows its
    /// shapes are few, and beyond, its rows go as one array per column, so
    /// its text no longer depends on how many there are.
    fn keep_prepared(_rows: usize) -> bool {
        true
    }

    /// A few rows as a `VALUES` list, a parameter for each value; more as
    /// `UNNEST` of one array parameter per column. A `VALUES` list of any
    /// length made a statement of a new shape for each count of rows,
    /// planned anew each time: at saturation, planning was a third of
    /// PostgreSQL's CPU. But `UNNEST` of several arrays gathers each array's
    /// values before the first row, which for a row or two cost more than
    /// the planning it saves.
    fn push_rows(query: &mut sqlx::QueryBuilder<Postgres>, columns: &[Column<'_>], rows: Rows<'_>) {
        if columns.first().map_or(0, Column::len) <= ROWS_AS_VALUES {
            push_values_rows(query, columns, rows);
            return;
        }
        if matches!(rows, Rows::Insert) {
            query.push("SELECT * FROM ");
        }
        query.push("UNNEST(");
        for (j, column) in columns.iter().enumerate() {
            if j > 0 {
                query.push(", ");
            }
            match column {
                Column::Text(v) => query.push_bind(v),
                Column::OptText(v) => query.push_bind(v),
                Column::Int(v) => query.push_bind(v),
                Column::OptInt(v) => query.push_bind(v),
                Column::Time(v) => query.push_bind(v),
                Column::OptTime(v) => query.push_bind(v),
                Column::Bytes(v) => query.push_bind(v),
                Column::OptBytes(v) => query.push_bind(v),
                Column::Bool(v) => query.push_bind(v),
            };
        }
        query.push(")");
        match rows {
            Rows::Insert => {}
            Rows::Numbered => {
                let names: Vec<String> =
                    (1..=columns.len()).map(|j| format!("column{j}")).collect();
                query.push(format!(" AS v({})", names.join(", ")));
            }
            Rows::Named(names) => {
                query.push(format!(" AS v({})", names.join(", ")));
            }
        }
    }

    /// `= ANY` of the values, as one array parameter.
    fn push_in(query: &mut sqlx::QueryBuilder<Postgres>, values: &[String]) {
        query.push("= ANY(").push_bind(values).push(")");
    }
}

impl_sql_store!(PgStore, Postgres);

#[cfg(test)]
mod tests {
    use sqlx::{ConnectOptions as _, PgConnection};

    use super::*;
    use crate::store::testing::{drop_postgres_database, postgres_database};

    fn entry(id: &str) -> OutboxEntry {
        OutboxEntry {
            message_id: id.to_owned(),
            nats_msg_id: None,
            subject: "router.inbound.acc_1".to_owned(),
            payload: Vec::new(),
            created_at: Utc::now(),
            has_next: false,
        }
    }

    /// The publisher goes to the outbox table when something only a lease
    /// finds may be ready, and at least every 50 ms; a wake-up that finds
    /// nothing handed over (the turns hand every row over at a steady load)
    /// does not, unless a row was left to a lease in the last second.
    #[test]
    fn the_publisher_leases_only_when_a_row_may_be_waiting_for_it() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // The ids of the rows taken, and whether the call leases.
        let take = |handed: &mut Handed, limit: usize, ms: u64| -> (Vec<String>, bool) {
            let (rows, lease) = handed.take(limit, at(ms));
            (rows.into_iter().map(|e| e.message_id).collect(), lease)
        };
        let none: Vec<String> = Vec::new();
        let mut handed = Handed::default();
        // The first call leases (rows of another ingest, of a past run).
        assert_eq!(take(&mut handed, 256, 0), (none.clone(), true));
        // A turn hands a row over: taken without a lease.
        handed.rows.push_back((at(1), entry("msg_1")));
        assert_eq!(take(&mut handed, 256, 2), (vec!["msg_1".to_owned()], false));
        // Woken again with nothing handed over: nothing to do.
        assert_eq!(take(&mut handed, 256, 3), (none.clone(), false));
        // But the outbox is leased every 50 ms.
        assert_eq!(take(&mut handed, 256, 50), (none.clone(), true));
        assert_eq!(take(&mut handed, 256, 51), (none.clone(), false));

        // A turn leaves a row to a lease (its conversation's row before it
        // is still in the outbox): the next call leases even with a row
        // handed over...
        handed.rows.push_back((at(52), entry("msg_2")));
        handed.lease_soon(at(52));
        assert_eq!(take(&mut handed, 256, 53), (vec!["msg_2".to_owned()], true));
        // ...and, for a second, every call that finds nothing handed over:
        // the row is ready once the publisher's removal of the one before
        // commits.
        assert_eq!(take(&mut handed, 256, 54), (none.clone(), true));
        assert_eq!(take(&mut handed, 256, 60), (none.clone(), true));
        assert_eq!(take(&mut handed, 256, 1_051), (none.clone(), true));
        assert_eq!(take(&mut handed, 256, 1_053), (none.clone(), false));

        // A full batch handed over leases nothing, whatever is due.
        handed.lease_soon(at(1_100));
        for id in ["msg_3", "msg_4"] {
            handed.rows.push_back((at(1_100), entry(id)));
        }
        assert!(!take(&mut handed, 2, 1_101).1);
        // A row handed over too long ago is left to a lease (its claim may
        // run out first).
        handed.rows.push_back((at(1_102), entry("msg_5")));
        assert_eq!(take(&mut handed, 256, 7_000), (none, true));
    }

    /// Outbox rows `from..=to`, without their messages (foreign keys are off
    /// on this connection), over a hundred conversations.
    async fn fill(conn: &mut PgConnection, from: i64, to: i64) {
        sqlx::query(
            "INSERT INTO outbox (message_id, subject, payload, created_at, account_id,
                                 conversation_id, sequence)
             SELECT 'msg_' || g, 'router.inbound.acc_1', decode('00', 'hex'),
                    now() - interval '1 hour' + g * interval '1 ms', 'acc_1',
                    'conv_' || g % 100, g
             FROM generate_series($1::bigint, $2::bigint) g",
        )
        .bind(from)
        .bind(to)
        .execute(conn)
        .await
        .unwrap();
    }

    /// Runs `statement` in a transaction rolled back after, and says how
    /// many of the outbox's rows it read, by scanning the table or through
    /// an index.
    async fn rows_read(
        conn: &mut PgConnection,
        statement: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> i64 {
        // The view counts what this connection did and has not yet reported,
        // earlier transactions included: the difference is this statement's.
        const READS: &str = "SELECT seq_tup_read + idx_tup_fetch
             FROM pg_stat_xact_user_tables WHERE relname = 'outbox'";
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        let before: i64 = sqlx::query_scalar(READS).fetch_one(&mut *tx).await.unwrap();
        statement.execute(&mut *tx).await.unwrap();
        let after: i64 = sqlx::query_scalar(READS).fetch_one(&mut *tx).await.unwrap();
        tx.rollback().await.unwrap();
        after - before
    }

    /// The outbox rows a write turn's removal of one row, as the store
    /// builds it, read.
    async fn removal_reads(conn: &mut PgConnection) -> i64 {
        let mut removal = sqlx::QueryBuilder::new("");
        PgStore::push_removal(&mut removal, &["msg_3".to_owned()]);
        rows_read(conn, removal.build()).await
    }

    /// The outbox rows a lease of 100 rows read.
    async fn lease_reads(conn: &mut PgConnection) -> i64 {
        rows_read(conn, sqlx::query(LEASE).bind(100_i64)).await
    }

    /// Plans made while the outbox held a handful of rows, as at a steady
    /// load and as the last `ANALYZE` saw it, still find rows by their keys
    /// once it holds many (NATS down for a while): neither the publisher's
    /// lease nor a write turn's removal reads the whole table (scanned, or
    /// through an index) or joins it with itself.
    #[tokio::test]
    async fn outbox_statements_find_rows_by_key_when_the_outbox_grows() {
        let Some((admin, url, name)) = postgres_database().await else {
            return;
        };
        drop(PgStore::open(&url).await.unwrap()); // the tables
        let options = PgConnectOptions::from_str(&url).unwrap();
        let mut setup = options.connect().await.unwrap();
        sqlx::query("SET session_replication_role = replica")
            .execute(&mut setup)
            .await
            .unwrap();
        fill(&mut setup, 1, 5).await;
        sqlx::query("ANALYZE outbox")
            .execute(&mut setup)
            .await
            .unwrap();
        let mut turn = turn_options(options.clone()).connect().await.unwrap();
        let mut lease = lease_options(options).connect().await.unwrap();
        // A write turn's plan and a lease's are made here, on five rows, and
        // kept (left to PostgreSQL, a plan is kept after a statement's fifth
        // run): the removal finds its row by key even now.
        assert!(removal_reads(&mut turn).await <= 1);
        for _ in 0..6 {
            lease_reads(&mut lease).await;
        }

        fill(&mut setup, 6, 20_000).await;
        let removal = removal_reads(&mut turn).await;
        assert!(removal <= 1, "a removal read {removal} rows of 20,000");
        // 100 rows, their conversations' next rows and the rows updated.
        let leased = lease_reads(&mut lease).await;
        assert!(leased < 1_000, "a lease read {leased} rows of 20,000");
        drop((turn, lease, setup));
        drop_postgres_database(admin, &name).await;
    }

    /// What a run of outcomes did to the messages table on this connection:
    /// rows updated, and how many of them in place (HOT: a new version of
    /// the row on its page and no new entry in any index).
    async fn updates(conn: &mut PgConnection) -> (i64, i64) {
        sqlx::query_as(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables
             WHERE relname = 'messages'",
        )
        .fetch_one(conn)
        .await
        .unwrap()
    }

    /// A delivery outcome changes its message's status, but no indexed
    /// column: PostgreSQL updates the row in place (HOT), without a new entry
    /// in each of the table's four indexes (at 500 messages a second, 8% of
    /// PostgreSQL's CPU and 14% of its WAL). Only a message set aside gets an
    /// entry, in the dead-letter index.
    #[tokio::test]
    async fn delivery_outcomes_update_their_messages_in_place() {
        let Some((admin, url, name)) = postgres_database().await else {
            return;
        };
        drop(PgStore::open(&url).await.unwrap()); // the tables
        let mut conn = PgConnectOptions::from_str(&url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        sqlx::query("SET session_replication_role = replica")
            .execute(&mut conn)
            .await
            .unwrap();
        let delivered = |i: u64| DeliveryOutcome {
            message_id: format!("msg_{i}"),
            account_id: "acc_1".to_owned(),
            outcome: shared::subjects::Outcome::Delivered,
            inbound_sequence: i,
            attempt: 1,
            status_code: Some(200),
            error: None,
            at: Utc::now(),
        };
        let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
        // As at a steady load: a message saved (a payload of a typical
        // size), then its outcome recorded, forty times.
        for i in 1..=40_u64 {
            sqlx::query(
                "INSERT INTO messages (id, account_id, event_key, instagram_message_id,
                     direction, conversation_id, sender_id, recipient_id, message_type,
                     text, attachments, sent_at, created_at, subject, payload)
                 SELECT 'msg_' || $1, 'acc_1', 'mid_' || $1, 'mid_' || $1, 'inbound',
                     'conv_1', '1', '2', 'text', repeat('x', 80), '[]', now(), now(),
                     'router.inbound.acc_1', decode(repeat('7b', 900), 'hex')",
            )
            .bind(i as i64)
            .execute(&mut *tx)
            .await
            .unwrap();
            let mut states = sqlx::QueryBuilder::new("");
            PgStore::push_states(&mut states, &[delivered(i)], None);
            states.build().execute(&mut *tx).await.unwrap();
        }
        // With the dead-letter index on the status, none was.
        assert_eq!(updates(&mut tx).await, (40, 40), "rows updated, in place");
        tx.rollback().await.unwrap();
        drop(conn);
        drop_postgres_database(admin, &name).await;
    }
}
