//! The statements both databases run, written once. sqlx's SQLite driver
//! takes the same `$N` placeholders as PostgreSQL, so each method below is
//! compiled once per backend by [`impl_sql_store!`]. A backend supplies only
//! what really differs, as inherent methods:
//!
//! - `begin_write()`: the transaction every read-then-write runs in
//!   (SQLite: one writer at a time, in the process, and `BEGIN IMMEDIATE`);
//! - `lease_outbox(limit)`: the outbox read (PostgreSQL leases rows with
//!   `FOR UPDATE SKIP LOCKED` so several ingests never publish the same one);
//! - `push_rows`, `push_in`, `keep_prepared`: how a multi-row statement's
//!   rows ([`Column`]s) and a list of ids are sent, and whether the
//!   statement is kept prepared (SQLite: a parameter for each value, kept
//!   prepared up to eight rows; PostgreSQL: the same up to eight rows, an
//!   array a column beyond, always kept prepared);
//! - `TURN_QUERY`: how a write turn's statements go as one query
//!   ([`TurnQuery`]: several statements on SQLite, CTEs on PostgreSQL);
//! - `reads_outbox_in_turn`, `push_outbox_read`, `keep_outbox_read`: whether a
//!   write turn also reads the outbox for the publisher's next read, how,
//!   and where it keeps what it read (SQLite, under a light load; never on
//!   PostgreSQL);
//! - `claim_until`, `hand_over`: whether a write turn claims its new outbox
//!   rows for this ingest's publisher, and hands them over in memory
//!   (PostgreSQL, whose publisher would otherwise lease each one; never on
//!   SQLite, where the outbox read above does that job);
//! - `turn_changes`, `remember_counters` and a `counters` field
//!   ([`KnownCounters`]): the conversations' counters as the process last
//!   wrote them, so that a write turn numbers its events without reading
//!   them first (it reads those it does not know, outside any transaction);
//!   its statement checks each one, since on PostgreSQL several ingests may
//!   number in one conversation.
//!
//! Opening and migrations are in `sqlite.rs` and `postgres.rs`.

use super::kept::KeptGuard;

/// The message columns the API reads, in [`super::MessageRow`]'s order.
pub(super) const MESSAGE_COLUMNS: &str =
    "id, account_id, event, instagram_message_id, direction, conversation_id,
    sender_id, recipient_id, message_type, sent_at, created_at, delivery_status,
    delivery_attempts, last_error, last_status_code, delivered_at, dead_at, replays, deleted_at,
    edited_at, sequence";

/// The transaction a backend's `begin_write` opens, with the backend's own
/// write lock when it has one (SQLite: one writer at a time, queued in the
/// process instead of in SQLite's sleeping busy handler).
pub(super) struct WriteTx<DB: sqlx::Database> {
    conn: TxConn<DB>,
    _turn: Option<WriteTurn>,
}

/// A backend's hold on its one write turn, for as long as the transaction
/// lives; when it ends, `ended` counts one more (SQLite's checkpointer
/// watches it, and starts right after a write).
pub(super) struct WriteTurn {
    _lock: tokio::sync::OwnedMutexGuard<()>,
    ended: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl WriteTurn {
    pub(super) fn new(
        lock: tokio::sync::OwnedMutexGuard<()>,
        ended: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    ) -> Self {
        Self { _lock: lock, ended }
    }
}

impl Drop for WriteTurn {
    fn drop(&mut self) {
        self.ended
            .send_modify(|ended| *ended = ended.wrapping_add(1));
    }
}

enum TxConn<DB: sqlx::Database> {
    /// Begun and committed by sqlx, each a trip to the database.
    Sqlx(sqlx::Transaction<'static, DB>),
    /// Begun by the first query's own text and committed by the last's (see
    /// [`WriteTx::in_queries`]).
    InQueries(InQueries<DB>),
    /// Begun only when asked for; until then each statement commits by
    /// itself (see [`WriteTx::on_demand`]).
    OnDemand(InQueries<DB>),
}

struct InQueries<DB: sqlx::Database> {
    conn: KeptGuard<DB>,
    begin: &'static str,
    begun: bool,
    /// Committed or rolled back.
    ended: bool,
}

impl<DB: sqlx::Database> Drop for InQueries<DB> {
    /// A transaction left open (an early return, an error, a caller gone)
    /// is rolled back before the connection's next use; one ended leaves
    /// the connection ready for it. A statement that was to commit by
    /// itself and did not end well hands the connection back to its pool.
    fn drop(&mut self) {
        if self.ended {
            self.conn.keep();
        } else if self.begun {
            self.conn.keep_rolling_back();
        }
    }
}

impl<DB: sqlx::Database> WriteTx<DB> {
    pub(super) fn new(tx: sqlx::Transaction<'static, DB>, turn: Option<WriteTurn>) -> Self {
        Self {
            conn: TxConn::Sqlx(tx),
            _turn: turn,
        }
    }

    /// A transaction whose `begin` statement is sent in front of the first
    /// query ([`Self::begin_sql`]) and whose `COMMIT` after the last
    /// ([`Self::commit_sql`]), so a write turn takes two trips to the
    /// database's thread instead of four (SQLite runs several statements in
    /// one query; each trip is a hand-off to its thread and back).
    pub(super) fn in_queries(
        conn: KeptGuard<DB>,
        begin: &'static str,
        turn: Option<WriteTurn>,
    ) -> Self {
        Self {
            conn: TxConn::InQueries(InQueries {
                conn,
                begin,
                begun: false,
                ended: false,
            }),
            _turn: turn,
        }
    }

    /// A transaction begun only if [`Self::begin_now`] is called: a write
    /// turn that is one statement (PostgreSQL's, when its counters are
    /// known) runs without `BEGIN` and `COMMIT`, two trips to the database
    /// fewer, and is still all or nothing. Until then its query commits by
    /// itself ([`Self::commits_in_query`]).
    pub(super) fn on_demand(
        conn: KeptGuard<DB>,
        begin: &'static str,
        turn: Option<WriteTurn>,
    ) -> Self {
        Self {
            conn: TxConn::OnDemand(InQueries {
                conn,
                begin,
                begun: false,
                ended: false,
            }),
            _turn: turn,
        }
    }

    /// Begins a transaction asked for on demand, before a second statement;
    /// nothing for the others, which have begun (or will, in their query).
    pub(super) async fn begin_now(&mut self) -> Result<(), sqlx::Error>
    where
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    {
        if let TxConn::OnDemand(q) = &mut self.conn
            && !q.begun
        {
            sqlx::Executor::execute(&mut *q.conn, q.begin).await?;
            q.begun = true;
        }
        Ok(())
    }

    /// What the next query starts with: the transaction's `begin` the first
    /// time, for one begun in queries; nothing otherwise.
    pub(super) fn begin_sql(&mut self) -> &'static str {
        match &mut self.conn {
            TxConn::InQueries(q) if !q.begun => {
                q.begun = true;
                q.begin
            }
            _ => "",
        }
    }

    /// What the last query ends with: `COMMIT` for a transaction committed in
    /// queries. Every statement before it must then fail rather than skip a
    /// row: an error stops the query before its `COMMIT`.
    pub(super) fn commit_sql(&self) -> &'static str {
        match &self.conn {
            TxConn::InQueries(_) => ";\nCOMMIT",
            TxConn::Sqlx(_) | TxConn::OnDemand(_) => "",
        }
    }

    /// Whether the last query commits: by its own text
    /// ([`Self::commit_sql`]), or by itself, as the only statement of a
    /// transaction on demand that has not begun.
    pub(super) fn commits_in_query(&self) -> bool {
        match &self.conn {
            TxConn::InQueries(_) => true,
            TxConn::OnDemand(q) => !q.begun,
            TxConn::Sqlx(_) => false,
        }
    }

    /// Commits; for a transaction committed in queries, only records that
    /// the last query (which ended with [`Self::commit_sql`]) succeeded.
    pub(super) async fn commit(self) -> Result<(), sqlx::Error>
    where
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    {
        match self.conn {
            TxConn::Sqlx(tx) => tx.commit().await,
            TxConn::InQueries(mut q) => {
                q.ended = true;
                Ok(())
            }
            TxConn::OnDemand(mut q) => {
                if q.begun {
                    sqlx::Executor::execute(&mut *q.conn, "COMMIT").await?;
                }
                q.ended = true;
                Ok(())
            }
        }
    }

    /// Rolls back, keeping the connection: sqlx's transaction for its pool,
    /// the others for the kept connection's next use ([`KeptGuard::keep`]).
    pub(super) async fn rollback(self) -> Result<(), sqlx::Error>
    where
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    {
        match self.conn {
            TxConn::Sqlx(tx) => tx.rollback().await,
            TxConn::InQueries(mut q) | TxConn::OnDemand(mut q) => {
                if q.begun {
                    sqlx::Executor::execute(&mut *q.conn, "ROLLBACK").await?;
                }
                q.ended = true;
                Ok(())
            }
        }
    }
}

impl<DB: sqlx::Database> std::ops::Deref for WriteTx<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        match &self.conn {
            TxConn::Sqlx(tx) => tx,
            TxConn::InQueries(q) | TxConn::OnDemand(q) => &q.conn,
        }
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for WriteTx<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match &mut self.conn {
            TxConn::Sqlx(tx) => tx,
            TxConn::InQueries(q) => {
                debug_assert!(
                    q.begun,
                    "a query outside the transaction: call begin_sql first"
                );
                &mut q.conn
            }
            TxConn::OnDemand(q) => &mut q.conn,
        }
    }
}

/// A message text as both databases can hold it: PostgreSQL's text refuses
/// NUL (U+0000), so it is stored as U+FFFD on both. The CRM receives the
/// original text (the payload is stored as bytes).
pub(super) fn storable_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}").into()
    } else {
        text.into()
    }
}

/// An event's key as the refused-events table holds it: a hash, since the
/// key came from Meta and may hold what the database refused.
pub(super) fn event_hash(event_key: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(event_key.as_bytes()))
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// What a replay needs of a dead letter: subject, payload, replay count, and
/// its conversation and place in it.
pub(super) type ReplayRow = Option<(String, Vec<u8>, i64, String, String, Option<i64>)>;

/// The most events in one multi-row statement: 18 parameters each stays far
/// below both databases' limits.
pub(super) const SAVE_CHUNK: usize = 256;

/// The outbox's condition for a message row inserted by an earlier
/// statement of the same transaction.
pub(super) const INSERTED: &str = "EXISTS (SELECT 1 FROM messages WHERE id = v.column1)";

/// How a backend sends a write turn's statements after the counters as one
/// query: one trip to the database instead of one per statement.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum TurnQuery {
    /// Several statements, run one after the other (SQLite).
    Statements,
    /// One statement of data-modifying CTEs (PostgreSQL runs one statement
    /// per query with parameters). Every part sees the tables as they were
    /// before the statement, so a part that needs another part's rows reads
    /// that part's `RETURNING`, and no row may be changed by two parts.
    Ctes,
}

/// A write turn being written as one query; each part that returns rows
/// returns `(kind, id)`.
pub(super) struct Turn<DB: sqlx::Database> {
    pub(super) query: sqlx::QueryBuilder<DB>,
    form: TurnQuery,
    parts: usize,
    /// The CTEs whose rows the statement returns.
    returning: Vec<String>,
}

fn part_name(n: usize) -> String {
    format!("part{n}")
}

impl<DB: sqlx::Database> Turn<DB>
where
    DB::Arguments: Default,
{
    /// A turn whose query starts with `begin` (see [`WriteTx::begin_sql`]).
    pub(super) fn new(form: TurnQuery, begin: &str) -> Self {
        let start = match form {
            TurnQuery::Statements => "",
            TurnQuery::Ctes => "WITH ",
        };
        Self {
            query: sqlx::QueryBuilder::new(format!("{begin}{start}")),
            form,
            parts: 0,
            returning: Vec::new(),
        }
    }

    /// Starts the next part; its name is how later parts read its rows.
    pub(super) fn part(&mut self) -> String {
        let name = part_name(self.parts);
        match self.form {
            TurnQuery::Statements if self.parts > 0 => {
                self.query.push(";\n");
            }
            TurnQuery::Statements => {}
            TurnQuery::Ctes => {
                if self.parts > 0 {
                    self.query.push(",\n");
                }
                self.query.push(format!("{name} AS ("));
            }
        }
        self.parts += 1;
        name
    }

    /// Ends a part whose rows, if any (`returning`), only later parts read.
    pub(super) fn end(&mut self, returning: Option<&str>) {
        if let Some(returning) = returning {
            self.query.push(" RETURNING ").push(returning);
        }
        if self.form == TurnQuery::Ctes {
            self.query.push(")");
        }
    }

    /// Ends the part being written, whose rows the caller reads as
    /// `(kind, id)`.
    pub(super) fn end_returning(&mut self, returning: &str) {
        self.end(Some(returning));
        if self.form == TurnQuery::Ctes {
            self.returning.push(part_name(self.parts - 1));
        }
    }

    /// Whether the parts see each other's writes.
    pub(super) fn in_order(&self) -> bool {
        self.form == TurnQuery::Statements
    }

    /// The query, ready to run.
    pub(super) fn finish(&mut self) -> &mut sqlx::QueryBuilder<DB> {
        if self.form == TurnQuery::Ctes {
            let select: Vec<String> = self
                .returning
                .iter()
                .map(|name| format!("SELECT kind, id FROM {name}"))
                .collect();
            if select.is_empty() {
                self.query.push("\nSELECT '' AS kind, '' AS id WHERE false");
            } else {
                self.query.push("\n").push(select.join(" UNION ALL "));
            }
        }
        &mut self.query
    }
}

/// A conversation's counter: its last sequence and when its customer last
/// wrote (for the reply windows).
pub(super) type Counter = (i64, Option<chrono::DateTime<chrono::Utc>>);

/// The conversations' counters as this process's last write turns committed
/// them: the next turn numbers its events from these, without first reading
/// them (one trip to the database fewer), if no other write transaction of
/// this process has begun since the last turn that committed. Its query
/// still checks each value before it changes it, so a counter another
/// process moved fails the turn instead of giving a number twice.
pub(super) struct KnownCounters(std::sync::Mutex<Known>);

struct Known {
    /// The store's count of write transactions begun when the last turn that
    /// committed began.
    changes: u64,
    /// By account and conversation (`account` NUL `conversation`).
    counters: hashlink::LruCache<String, Counter>,
}

/// The most conversations whose counters are kept (about 100 bytes each).
const KNOWN_COUNTERS: usize = 4096;

fn counter_key(account: &str, conversation: &str) -> String {
    format!("{account}\0{conversation}")
}

impl KnownCounters {
    pub(super) fn new() -> Self {
        Self(std::sync::Mutex::new(Known {
            changes: 0,
            counters: hashlink::LruCache::new(KNOWN_COUNTERS),
        }))
    }

    /// The counters kept, if they are still current: only this turn's own
    /// start (at `changes`) has counted as a change since the last turn that
    /// committed. Otherwise they are forgotten.
    fn current(&self, changes: u64) -> std::sync::MutexGuard<'_, Known> {
        let mut known = self.0.lock().expect("not poisoned");
        if known.changes + 1 != changes {
            known.counters.clear();
        }
        known
    }

    /// Each conversation's counter before the turn begun at `changes`, if
    /// all are known.
    pub(super) fn all(&self, changes: u64, conversations: &[Conversation]) -> Option<Vec<Counter>> {
        let mut known = self.current(changes);
        conversations
            .iter()
            .map(|(account, conversation, _, _)| {
                known
                    .counters
                    .get(&counter_key(account, conversation))
                    .copied()
            })
            .collect()
    }

    /// Keeps the counters a committed turn left, from the turn that began
    /// at `changes`.
    pub(super) fn remember<'a>(
        &self,
        changes: u64,
        counters: impl Iterator<Item = ((&'a str, &'a str), Counter)>,
    ) {
        let mut known = self.current(changes);
        known.changes = changes;
        for ((account, conversation), counter) in counters {
            known
                .counters
                .insert(counter_key(account, conversation), counter);
        }
    }

    /// The counter kept for a conversation, if any.
    #[cfg(test)]
    pub(super) fn kept(&self, account: &str, conversation: &str) -> Option<i64> {
        let mut known = self.0.lock().expect("not poisoned");
        known
            .counters
            .get(&counter_key(account, conversation))
            .map(|c| c.0)
    }

    /// Puts a wrong value in place of a conversation's kept counter.
    #[cfg(test)]
    pub(super) fn corrupt(&self, account: &str, conversation: &str, last: i64) {
        let mut known = self.0.lock().expect("not poisoned");
        if let Some(c) = known.counters.get_mut(&counter_key(account, conversation)) {
            c.0 = last;
        }
    }
}

/// A conversation a chunk numbers in: account, conversation, how many of
/// the chunk's events it publishes, the latest time its customer wrote.
pub(super) type Conversation<'a> = (&'a str, &'a str, i64, Option<chrono::DateTime<chrono::Utc>>);

/// Who takes numbers in a chunk of new events: each conversation once, with
/// how many of its events are published and the latest time its customer
/// wrote among them (the events that open a reply window), and each event's
/// conversation when it is numbered or opens a window.
pub(super) struct Counting<'a> {
    pub(super) conversations: Vec<Conversation<'a>>,
    pub(super) which: std::collections::HashMap<(&'a str, &'a str), usize>,
    places: Vec<Option<usize>>,
}

/// A chunk of new events numbered: each one's sequence (when it is
/// published) and payload (when it has one), and each conversation's
/// counter after the chunk, in [`Counting::conversations`]' order.
pub(super) struct Numbered<'a> {
    pub(super) sequences: Vec<Option<i64>>,
    pub(super) payloads: Vec<Option<Vec<u8>>>,
    pub(super) counters: Vec<((&'a str, &'a str), Counter)>,
}

/// The outbox rows a write turn claims for its own ingest's publisher as it
/// inserts them ([`WriteTx`]'s backend decides whether it does): each
/// conversation's first row in the turn, unless held, and only if the
/// outbox holds no earlier row of its conversation (the query checks).
#[derive(Default)]
pub(super) struct Claims {
    /// The turn's first row of each conversation, as the publisher reads it.
    candidates: Vec<(String, String, super::OutboxEntry)>,
    /// How many rows of each conversation the turn inserts.
    rows: std::collections::HashMap<(String, String), usize>,
    /// The ids the query claimed.
    claimed: std::collections::HashSet<String>,
    /// The query inserted a row it did not claim: only a lease finds it.
    pub(super) queued: bool,
}

impl Claims {
    /// Adds a statement's outbox rows; for each, whether it may be claimed.
    pub(super) fn add(
        &mut self,
        rows: &[(&super::NewMessage, i64, &Vec<u8>)],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Vec<bool> {
        rows.iter()
            .map(|(m, _, payload)| {
                let key = (m.account_id.clone(), m.conversation_id.clone());
                let count = self.rows.entry(key.clone()).or_default();
                *count += 1;
                let first = *count == 1 && m.hold_until.is_none();
                if first {
                    self.candidates.push((
                        key.0,
                        key.1,
                        super::OutboxEntry {
                            message_id: m.id.clone(),
                            nats_msg_id: None,
                            subject: m.subject.clone(),
                            payload: (*payload).clone(),
                            created_at: now,
                            has_next: false,
                        },
                    ));
                }
                first
            })
            .collect()
    }

    pub(super) fn claimed(&mut self, id: String) {
        self.claimed.insert(id);
    }

    /// The rows claimed, as the publisher reads them, oldest first; and
    /// whether a row was left for a lease.
    pub(super) fn into_entries(self) -> (Vec<super::OutboxEntry>, bool) {
        let queued = self.queued;
        let mut entries = Vec::with_capacity(self.claimed.len());
        for (account, conversation, mut entry) in self.candidates {
            if !self.claimed.contains(&entry.message_id) {
                continue;
            }
            entry.has_next = self.rows[&(account, conversation)] > 1;
            entries.push(entry);
        }
        (entries, queued)
    }
}

impl<'a> Counting<'a> {
    pub(super) fn of(chunk: &'a [super::NewMessage]) -> Self {
        // Each conversation's counter moves once, by its number of
        // published events; they take the numbers in their order here.
        let mut conversations: Vec<Conversation> = Vec::new();
        let mut which = std::collections::HashMap::new();
        let places = chunk
            .iter()
            .map(|m| {
                let opens = m.opens_reply_window();
                if !(m.publish || opens) {
                    return None;
                }
                let key = (m.account_id.as_str(), m.conversation_id.as_str());
                let i = *which.entry(key).or_insert_with(|| {
                    conversations.push((key.0, key.1, 0, None));
                    conversations.len() - 1
                });
                let c = &mut conversations[i];
                if opens {
                    c.3 = c.3.max(Some(m.sent_at));
                }
                m.publish.then(|| {
                    c.2 += 1;
                    i
                })
            })
            .collect();
        Self {
            conversations,
            which,
            places,
        }
    }

    /// The counters after the chunk, from their values before it, as the
    /// counters' statement sets them (a time the customer wrote only moves
    /// forward).
    pub(super) fn after(&self, before: &[Counter]) -> Vec<Counter> {
        self.conversations
            .iter()
            .zip(before)
            .map(|((_, _, count, wrote), (last, was))| (last + count, (*was).max(*wrote)))
            .collect()
    }

    /// Numbers the chunk's events from the counters after it.
    pub(super) fn numbered(
        self,
        chunk: &'a [super::NewMessage],
        after: Vec<Counter>,
    ) -> Numbered<'a> {
        let mut next: Vec<i64> = self
            .conversations
            .iter()
            .zip(&after)
            .map(|((_, _, count, _), (last, _))| last - count + 1)
            .collect();
        let sequences: Vec<Option<i64>> = self
            .places
            .iter()
            .map(|place| {
                place.map(|i| {
                    next[i] += 1;
                    next[i] - 1
                })
            })
            .collect();
        let payloads = chunk
            .iter()
            .zip(&sequences)
            .map(|(m, n)| {
                let key = (m.account_id.as_str(), m.conversation_id.as_str());
                let wrote_at = self.which.get(&key).and_then(|&i| after[i].1);
                m.payload(n.map(|n| n as u64), wrote_at)
            })
            .collect();
        let counters = self
            .conversations
            .iter()
            .map(|(account, conversation, _, _)| (*account, *conversation))
            .zip(after)
            .collect();
        Numbered {
            sequences,
            payloads,
            counters,
        }
    }
}

/// The items whose flag in `flags` is `flag`, in order.
pub(super) fn picked<T: Copy>(all: &[T], flags: &[bool], flag: bool) -> Vec<T> {
    all.iter()
        .zip(flags)
        .filter(|(_, f)| **f == flag)
        .map(|(item, _)| *item)
        .collect()
}

/// A new event's row: the event, its sequence and its payload.
pub(super) type MessageRowParts<'a> = (&'a super::NewMessage, Option<i64>, Option<&'a Vec<u8>>);

/// New events' rows: each with its sequence and payload.
pub(super) fn message_rows<'a>(
    chunk: &'a [super::NewMessage],
    sequences: &[Option<i64>],
    payloads: &'a [Option<Vec<u8>>],
) -> Vec<MessageRowParts<'a>> {
    chunk
        .iter()
        .zip(sequences)
        .zip(payloads)
        .map(|((m, n), p)| (m, *n, p.as_ref()))
        .collect()
}

/// The outbox rows of the new events that are published.
pub(super) fn outbox_rows<'a>(
    chunk: &'a [super::NewMessage],
    sequences: &[Option<i64>],
    payloads: &'a [Option<Vec<u8>>],
) -> Vec<(&'a super::NewMessage, i64, &'a Vec<u8>)> {
    chunk
        .iter()
        .zip(sequences)
        .zip(payloads)
        .filter_map(|((m, n), p)| Some((m, (*n)?, p.as_ref()?)))
        .collect()
}

/// What saving new events answers: each one's sequence.
pub(super) fn saved_outcomes(
    sequences: &[Option<i64>],
) -> impl Iterator<Item = super::SaveOutcome> + '_ {
    sequences.iter().map(|n| super::SaveOutcome::Saved {
        sequence: n.map(|n| n as u64),
    })
}

/// Consecutive runs of at most [`SAVE_CHUNK`] outcomes, each of different
/// messages.
pub(super) fn runs_of_distinct_messages(
    outcomes: &[shared::wire::DeliveryOutcome],
) -> Vec<&[shared::wire::DeliveryOutcome]> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut seen = std::collections::HashSet::new();
    for (i, o) in outcomes.iter().enumerate() {
        if i - start == SAVE_CHUNK || !seen.insert(o.message_id.as_str()) {
            runs.push(&outcomes[start..i]);
            start = i;
            seen.clear();
            seen.insert(o.message_id.as_str());
        }
    }
    if start < outcomes.len() {
        runs.push(&outcomes[start..]);
    }
    runs
}

/// One column of a multi-row statement's rows: every row's value, in order.
/// A backend's `push_rows` sends them as it takes them best (SQLite a
/// parameter for each value, PostgreSQL an array for each column).
pub(super) enum Column<'a> {
    Text(Vec<&'a str>),
    OptText(Vec<Option<&'a str>>),
    Int(Vec<i64>),
    OptInt(Vec<Option<i64>>),
    Time(Vec<chrono::DateTime<chrono::Utc>>),
    OptTime(Vec<Option<chrono::DateTime<chrono::Utc>>>),
    Bytes(Vec<&'a [u8]>),
    OptBytes(Vec<Option<&'a [u8]>>),
    Bool(Vec<bool>),
}

impl Column<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Column::Text(v) => v.len(),
            Column::OptText(v) => v.len(),
            Column::Int(v) => v.len(),
            Column::OptInt(v) => v.len(),
            Column::Time(v) => v.len(),
            Column::OptTime(v) => v.len(),
            Column::Bytes(v) => v.len(),
            Column::OptBytes(v) => v.len(),
            Column::Bool(v) => v.len(),
        }
    }
}

/// Where a backend's `push_rows` puts a statement's rows.
#[derive(Clone, Copy)]
pub(super) enum Rows<'n> {
    /// As the rows of an `INSERT INTO t (…)`.
    Insert,
    /// As a `FROM` item `v` whose columns are `column1`, `column2`, …
    Numbered,
    /// As a `FROM` item `v` whose columns have these names.
    Named(&'n [&'n str]),
}

/// Rows as a `VALUES` list, a parameter for each value; named columns as
/// `SELECT … UNION ALL SELECT …` (a `VALUES` list cannot name its columns
/// in SQLite).
pub(super) fn push_values_rows<DB: sqlx::Database>(
    query: &mut sqlx::QueryBuilder<DB>,
    columns: &[Column<'_>],
    rows: Rows<'_>,
) where
    for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> Option<i64>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> chrono::DateTime<chrono::Utc>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> Option<chrono::DateTime<chrono::Utc>>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> &'a [u8]: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> Option<&'a [u8]>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    for<'a> bool: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let count = columns.first().map_or(0, Column::len);
    let names = match rows {
        Rows::Insert => None,
        Rows::Numbered => {
            query.push("(");
            None
        }
        Rows::Named(names) => {
            query.push("(");
            Some(names)
        }
    };
    if names.is_none() {
        query.push("VALUES ");
    }
    for i in 0..count {
        match (i, names) {
            (0, None) => query.push("("),
            (_, None) => query.push(", ("),
            (0, Some(_)) => query.push("SELECT "),
            (_, Some(_)) => query.push(" UNION ALL SELECT "),
        };
        for (j, column) in columns.iter().enumerate() {
            if j > 0 {
                query.push(", ");
            }
            match column {
                Column::Text(v) => query.push_bind(v[i]),
                Column::OptText(v) => query.push_bind(v[i]),
                Column::Int(v) => query.push_bind(v[i]),
                Column::OptInt(v) => query.push_bind(v[i]),
                Column::Time(v) => query.push_bind(v[i]),
                Column::OptTime(v) => query.push_bind(v[i]),
                Column::Bytes(v) => query.push_bind(v[i]),
                Column::OptBytes(v) => query.push_bind(v[i]),
                Column::Bool(v) => query.push_bind(v[i]),
            };
            if let Some(names) = names {
                query.push(" AS ").push(names[j]);
            }
        }
        if names.is_none() {
            query.push(")");
        }
    }
    if !matches!(rows, Rows::Insert) {
        query.push(") AS v");
    }
}

/// The names of [`outcome_columns`], in their order.
pub(super) const OUTCOME_NAMES: &[&str] = &[
    "message_id",
    "inbound_seq",
    "attempt",
    "outcome",
    "status_code",
    "error",
    "at",
];

/// Outcomes as the columns [`OUTCOME_NAMES`] names.
pub(super) fn outcome_columns(outcomes: &[shared::wire::DeliveryOutcome]) -> Vec<Column<'_>> {
    vec![
        Column::Text(outcomes.iter().map(|o| o.message_id.as_str()).collect()),
        Column::Int(outcomes.iter().map(|o| o.inbound_sequence as i64).collect()),
        Column::Int(outcomes.iter().map(|o| i64::from(o.attempt)).collect()),
        Column::Text(outcomes.iter().map(|o| o.outcome.as_str()).collect()),
        Column::OptInt(
            outcomes
                .iter()
                .map(|o| o.status_code.map(i64::from))
                .collect(),
        ),
        Column::OptText(outcomes.iter().map(|o| o.error.as_deref()).collect()),
        Column::Time(outcomes.iter().map(|o| o.at).collect()),
    ]
}

/// Binds every column of an account, in the order of the accounts table:
/// `$1` id, `$2` name, `$3` instagram_account_id, `$4` crm_webhook_url,
/// `$5` auto_reply_text, `$6` status, `$7` instagram_access_token, `$8`
/// webhook_secret, `$9` created_at, `$10` updated_at, `$11` events, `$12`
/// auto_reply_cooldown_secs, `$13` max_in_flight, `$14`
/// deliveries_paused_at, `$15` deliveries_resumed_at, `$16`
/// previous_webhook_secret, `$17` previous_secret_until, `$18`
/// comment_auto_reply_text, `$19` token_set_at, `$20` token_expires_at,
/// `$21` token_refresh_attempted_at, `$22` credentials_state, `$23`
/// credentials_error.
macro_rules! bind_account {
    ($query:expr, $a:expr) => {{
        let a: &$crate::store::AccountRow = $a;
        $query
            .bind(&a.id)
            .bind(&a.name)
            .bind(&a.instagram_account_id)
            .bind(a.crm_webhook_url.as_str())
            .bind(&a.auto_reply_text)
            .bind(a.status.as_str())
            .bind(&a.instagram_access_token)
            .bind(&a.webhook_secret)
            .bind(a.created_at)
            .bind(a.updated_at)
            .bind(a.events.to_stored())
            .bind(a.auto_reply_cooldown_secs)
            .bind(a.max_in_flight)
            .bind(a.deliveries_paused_at)
            .bind(a.deliveries_resumed_at)
            .bind(&a.previous_webhook_secret)
            .bind(a.previous_secret_until)
            .bind(&a.comment_auto_reply_text)
            .bind(a.token_set_at)
            .bind(a.token_expires_at)
            .bind(a.token_refresh_attempted_at)
            .bind(a.credentials_state.as_str())
            .bind(&a.credentials_error)
    }};
}

/// Implements the three store traits for a backend type (on database `$db`)
/// with a `pool` field and the inherent methods the module's header lists.
macro_rules! impl_sql_store {
    ($store:ty, $db:ty) => {
#[async_trait::async_trait]
impl $crate::store::AccountStore for $store {
    async fn insert_account(&self, a: &AccountRow) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO accounts (id, name, instagram_account_id, crm_webhook_url, auto_reply_text,
                status, instagram_access_token, webhook_secret, created_at, updated_at, events,
                auto_reply_cooldown_secs, max_in_flight, deliveries_paused_at, deliveries_resumed_at,
                previous_webhook_secret, previous_secret_until, comment_auto_reply_text,
                token_set_at, token_expires_at, token_refresh_attempted_at, credentials_state,
                credentials_error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                $19, $20, $21, $22, $23)",
        );
        bind_account!(insert, a)
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
        Ok(sqlx::query_as("SELECT * FROM accounts WHERE id = $1")
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
            sqlx::query_as("SELECT * FROM accounts WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn update_account(&self, a: &AccountRow) -> Result<bool, StoreError> {
        // The parameters of the insert; the id and creation fields do not change.
        let update = sqlx::query(
            "UPDATE accounts SET name = $2, crm_webhook_url = $4, auto_reply_text = $5, status = $6,
                instagram_access_token = $7, webhook_secret = $8, updated_at = $10, events = $11,
                auto_reply_cooldown_secs = $12, max_in_flight = $13, deliveries_paused_at = $14,
                deliveries_resumed_at = $15, previous_webhook_secret = $16, previous_secret_until = $17,
                comment_auto_reply_text = $18, token_set_at = $19, token_expires_at = $20,
                token_refresh_attempted_at = $21, credentials_state = $22, credentials_error = $23
             WHERE id = $1",
        );
        let done = bind_account!(update, a)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_token_refresh(
        &self,
        id: &str,
        token_set_at: Option<DateTime<Utc>>,
        last_attempt: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE accounts SET token_refresh_attempted_at = $4
             WHERE id = $1 AND token_set_at IS NOT DISTINCT FROM $2
               AND token_refresh_attempted_at IS NOT DISTINCT FROM $3",
        )
        .bind(id)
        .bind(token_set_at)
        .bind(last_attempt)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_credentials(
        &self,
        id: &str,
        token_set_at: Option<DateTime<Utc>>,
        c: &$crate::store::CredentialsChange,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE accounts SET
                instagram_access_token = COALESCE($3, instagram_access_token),
                token_set_at = CASE WHEN $3 IS NULL THEN token_set_at ELSE $7 END,
                token_expires_at = COALESCE($4, token_expires_at),
                credentials_state = $5, credentials_error = $6, updated_at = $7,
                status = CASE WHEN $5 = 'invalid' AND status = 'active'
                    THEN 'credentials_invalid' ELSE status END
             WHERE id = $1 AND token_set_at IS NOT DISTINCT FROM $2",
        )
        .bind(id)
        .bind(token_set_at)
        .bind(&c.token)
        .bind(c.expires_at)
        .bind(c.state.as_str())
        .bind(&c.error)
        .bind(c.at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_account(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM accounts WHERE id = $1")
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
            sqlx::query_as("SELECT * FROM accounts WHERE instagram_account_id = $1")
                .bind(instagram_account_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

impl $store {
    /// The counter kept for a conversation, if any.
    #[cfg(test)]
    pub(crate) fn counter_kept(&self, account: &str, conversation: &str) -> Option<i64> {
        self.counters.kept(account, conversation)
    }

    /// Inserts message rows, each with its place in its conversation and
    /// its payload; a redelivered event is skipped. Returns how many were new.
    async fn insert_messages(
        tx: &mut WriteTx<$db>,
        rows: &[MessageRowParts<'_>],
        now: DateTime<Utc>,
    ) -> Result<usize, sqlx::Error> {
        let mut insert = sqlx::QueryBuilder::new("");
        Self::push_messages(&mut insert, rows, now, true);
        let done = insert
            .build()
            .persistent(Self::keep_prepared(rows.len()))
            .execute(&mut **tx)
            .await?;
        Ok(done.rows_affected() as usize)
    }

    /// The statement that inserts new events' rows. With `skip_saved` an
    /// event saved before (a redelivery) is left out, else it fails the
    /// statement.
    fn push_messages(
        insert: &mut sqlx::QueryBuilder<$db>,
        rows: &[MessageRowParts<'_>],
        now: DateTime<Utc>,
        skip_saved: bool,
    ) {
        insert.push(
            "INSERT INTO messages (id, account_id, event, event_key, instagram_message_id, direction,
                conversation_id, sender_id, recipient_id, message_type, text, attachments, sent_at,
                created_at, subject, payload, delivery_status, sequence) ",
        );
        let texts: Vec<Option<std::borrow::Cow<'_, str>>> = rows
            .iter()
            .map(|(m, _, _)| m.text.as_deref().map(storable_text))
            .collect();
        let text = |f: fn(&NewMessage) -> &str| Column::Text(rows.iter().map(|(m, _, _)| f(m)).collect());
        let columns = [
            text(|m| &m.id),
            text(|m| &m.account_id),
            text(|m| m.event.as_str()),
            text(|m| &m.event_key),
            text(|m| &m.instagram_message_id),
            text(|m| m.direction.as_str()),
            text(|m| &m.conversation_id),
            text(|m| &m.sender_id),
            text(|m| &m.recipient_id),
            text(|m| &m.message_type),
            Column::OptText(texts.iter().map(|t| t.as_deref()).collect()),
            text(|m| &m.attachments),
            Column::Time(rows.iter().map(|(m, _, _)| m.sent_at).collect()),
            Column::Time(vec![now; rows.len()]),
            text(|m| &m.subject),
            Column::OptBytes(rows.iter().map(|(_, _, p)| p.map(Vec::as_slice)).collect()),
            text(|m| {
                if m.publish {
                    DeliveryStatus::Pending.as_str()
                } else {
                    DeliveryStatus::Skipped.as_str()
                }
            }),
            Column::OptInt(rows.iter().map(|(_, n, _)| *n).collect()),
        ];
        Self::push_rows(insert, &columns, Rows::Insert);
        if skip_saved {
            insert.push(" ON CONFLICT (account_id, event_key) DO NOTHING");
        }
    }

    /// The statement that puts published messages in the outbox; one whose
    /// row was not inserted (a redelivery) is left out, by `saved_rows`, a
    /// condition on `v.column1`, the message id.
    ///
    /// With `claim`, a write turn's claim ([`Claims`]): each row marked
    /// in its list is claimed until its time (an SQL expression) if no
    /// earlier row of its conversation is in the outbox. The statement sees
    /// the outbox as it was before it, and an earlier row of the
    /// conversation is committed or waited for by then (its counter is
    /// locked by the turn).
    fn push_outbox(
        outbox: &mut sqlx::QueryBuilder<$db>,
        published: &[(&NewMessage, i64, &Vec<u8>)],
        now: DateTime<Utc>,
        saved_rows: &str,
        claim: Option<(&str, &[bool])>,
    ) {
        outbox.push(
            "INSERT INTO outbox (message_id, subject, payload, created_at, hold_until,
                account_id, conversation_id, sequence",
        );
        if let Some((until, _)) = claim {
            outbox.push(format!(
                ", claimed_until)
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6,
                    v.column7, v.column8,
                    CASE WHEN v.column9 AND NOT EXISTS (
                        SELECT 1 FROM outbox earlier
                        WHERE earlier.account_id = v.column6
                          AND earlier.conversation_id = v.column7)
                    THEN {until} END FROM "
            ));
        } else {
            outbox.push(") SELECT * FROM ");
        }
        let text = |f: fn(&NewMessage) -> &str| {
            Column::Text(published.iter().map(|(m, _, _)| f(m)).collect())
        };
        let mut columns = vec![
            text(|m| &m.id),
            text(|m| &m.subject),
            Column::Bytes(published.iter().map(|(_, _, p)| p.as_slice()).collect()),
            Column::Time(vec![now; published.len()]),
            Column::OptTime(published.iter().map(|(m, _, _)| m.hold_until).collect()),
            text(|m| &m.account_id),
            text(|m| &m.conversation_id),
            Column::Int(published.iter().map(|(_, n, _)| *n).collect()),
        ];
        if let Some((_, marked)) = claim {
            columns.push(Column::Bool(marked.to_vec()));
        }
        Self::push_rows(outbox, &columns, Rows::Numbered);
        outbox.push(" WHERE ").push(saved_rows);
    }

    /// Sets the counters of a turn numbered from memory, each only if it
    /// still holds both values the turn numbered from: on PostgreSQL
    /// another ingest may have taken numbers in the conversation, or moved
    /// the time its customer last wrote (on SQLite only a bug could). A
    /// stale one fails the statement (a null `last_sequence`), so the whole
    /// turn, and its events are saved one by one. As a PostgreSQL CTE it
    /// returns nothing, and no other part reads the counters.
    fn push_counters(
        query: &mut sqlx::QueryBuilder<$db>,
        conversations: &[Conversation],
        before: &[Counter],
        after: &[Counter],
    ) {
        query.push(
            "UPDATE conversations SET
                 last_sequence = CASE
                     WHEN conversations.last_sequence = v.column3
                      AND conversations.customer_wrote_at IS NOT DISTINCT FROM v.column6
                     THEN v.column4 END,
                 customer_wrote_at = v.column5
             FROM ",
        );
        let columns = [
            Column::Text(conversations.iter().map(|c| c.0).collect()),
            Column::Text(conversations.iter().map(|c| c.1).collect()),
            Column::Int(before.iter().map(|c| c.0).collect()),
            Column::Int(after.iter().map(|c| c.0).collect()),
            Column::OptTime(after.iter().map(|c| c.1).collect()),
            Column::OptTime(before.iter().map(|c| c.1).collect()),
        ];
        Self::push_rows(query, &columns, Rows::Numbered);
        query.push(
            "
             WHERE conversations.account_id = v.column1
               AND conversations.conversation_id = v.column2",
        );
    }

    /// The `INSERT` that gives conversations their counters. As a write
    /// turn's part, for conversations its read did not find, it fails on one
    /// another writer has given a counter since; [`Self::number_in`] adds to
    /// it what to do with a conversation that has one.
    fn push_new_counters(
        query: &mut sqlx::QueryBuilder<$db>,
        conversations: &[Conversation],
        after: &[Counter],
    ) {
        query.push(
            "INSERT INTO conversations (account_id, conversation_id, last_sequence, customer_wrote_at) ",
        );
        let columns = [
            Column::Text(conversations.iter().map(|c| c.0).collect()),
            Column::Text(conversations.iter().map(|c| c.1).collect()),
            Column::Int(after.iter().map(|c| c.0).collect()),
            Column::OptTime(after.iter().map(|c| c.1).collect()),
        ];
        Self::push_rows(query, &columns, Rows::Insert);
    }

    /// The statement that deletes published messages' outbox rows.
    fn push_removal(delete: &mut sqlx::QueryBuilder<$db>, message_ids: &[String]) {
        delete.push("DELETE FROM outbox WHERE message_id ");
        Self::push_in(delete, message_ids);
    }

    /// Saves events with three statements per [`SAVE_CHUNK`] of them (the
    /// conversations' counters, the messages, the outbox) instead of three
    /// each: on a busy ingest a statement's trip to the database, not its
    /// work, is what the writer waits on. `None`, with nothing written, when
    /// one of them is already saved: the one-by-one path then numbers the
    /// others without a gap.
    async fn save_new_together(
        &self,
        messages: &[NewMessage],
    ) -> Result<Option<Vec<SaveOutcome>>, StoreError> {
        let mut tx = self.begin_write().await?;
        let outcomes = Self::save_new_in(&mut tx, messages).await?;
        if outcomes.is_some() {
            tx.commit().await?;
        }
        Ok(outcomes)
    }

    /// [`Self::save_new_together`] in the caller's transaction; on `None`
    /// the caller rolls it back.
    async fn save_new_in(
        tx: &mut WriteTx<$db>,
        messages: &[NewMessage],
    ) -> Result<Option<Vec<SaveOutcome>>, StoreError> {
        let now = Utc::now();
        let mut outcomes = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(SAVE_CHUNK) {
            let Numbered {
                sequences,
                payloads,
                ..
            } = Self::number_in(tx, chunk, Counting::of(chunk)).await?;
            let rows = message_rows(chunk, &sequences, &payloads);
            let inserted = Self::insert_messages(tx, &rows, now).await?;
            if inserted < chunk.len() {
                return Ok(None);
            }
            let published = outbox_rows(chunk, &sequences, &payloads);
            if !published.is_empty() {
                let mut outbox = sqlx::QueryBuilder::new("");
                Self::push_outbox(&mut outbox, &published, now, INSERTED, None);
                outbox
                    .build()
                    .persistent(Self::keep_prepared(published.len()))
                    .execute(&mut **tx)
                    .await?;
            }
            outcomes.extend(saved_outcomes(&sequences));
        }
        Ok(Some(outcomes))
    }

    /// Numbers new events in their conversations, with one statement for
    /// all of them, and builds their payloads: each event's sequence (when
    /// it is published) and payload (when it has one), and each
    /// conversation's counter as the statement left it. `counting` is
    /// [`Counting::of`] the chunk.
    async fn number_in<'a>(
        tx: &mut WriteTx<$db>,
        chunk: &'a [NewMessage],
        counting: Counting<'a>,
    ) -> Result<Numbered<'a>, StoreError> {
        let mut after = vec![(0, None); counting.conversations.len()];
        if !counting.conversations.is_empty() {
            // The counters, then the turn's query: two statements.
            tx.begin_now().await?;
            // Each conversation's counter as if it were new, added to the
            // one the database holds if it is not.
            let mut counters = sqlx::QueryBuilder::new(tx.begin_sql());
            let as_new = counting.after(&after);
            Self::push_new_counters(&mut counters, &counting.conversations, &as_new);
            counters.push(
                " ON CONFLICT (account_id, conversation_id)
                 DO UPDATE SET last_sequence = conversations.last_sequence + excluded.last_sequence,
                     customer_wrote_at = CASE
                         WHEN conversations.customer_wrote_at IS NULL
                           OR conversations.customer_wrote_at < excluded.customer_wrote_at
                         THEN excluded.customer_wrote_at ELSE conversations.customer_wrote_at END
                 RETURNING account_id, conversation_id, last_sequence, customer_wrote_at",
            );
            let lasts: Vec<(String, String, i64, Option<DateTime<Utc>>)> = counters
                .build_query_as()
                .persistent(Self::keep_prepared(counting.conversations.len()))
                .fetch_all(&mut **tx)
                .await?;
            for (account, conversation, last, wrote_at) in lasts {
                let i = counting.which[&(account.as_str(), conversation.as_str())];
                after[i] = (last, wrote_at);
            }
        }
        Ok(counting.numbered(chunk, after))
    }

    /// The conversations' counters as the database holds them, in
    /// `counting`'s order; `None` for a conversation it has no row for yet.
    /// A plain read, in no transaction of its own (on SQLite it opens the
    /// write turn's): the turn's query checks each value it changes.
    async fn read_counters(
        tx: &mut WriteTx<$db>,
        counting: &Counting<'_>,
    ) -> Result<Vec<Option<Counter>>, StoreError> {
        let conversations = &counting.conversations;
        let mut read = sqlx::QueryBuilder::new(format!(
            "{}SELECT conversations.account_id, conversations.conversation_id, last_sequence,
                 customer_wrote_at
             FROM ",
            tx.begin_sql()
        ));
        let columns = [
            Column::Text(conversations.iter().map(|c| c.0).collect()),
            Column::Text(conversations.iter().map(|c| c.1).collect()),
        ];
        Self::push_rows(&mut read, &columns, Rows::Numbered);
        read.push(
            " JOIN conversations ON conversations.account_id = v.column1
               AND conversations.conversation_id = v.column2",
        );
        let found: Vec<(String, String, i64, Option<DateTime<Utc>>)> = read
            .build_query_as()
            .persistent(Self::keep_prepared(conversations.len()))
            .fetch_all(&mut **tx)
            .await?;
        let mut before = vec![None; conversations.len()];
        for (account, conversation, last, wrote_at) in found {
            let i = counting.which[&(account.as_str(), conversation.as_str())];
            before[i] = Some((last, wrote_at));
        }
        Ok(before)
    }

    /// Deletes the outbox rows of published messages.
    async fn remove_in(tx: &mut WriteTx<$db>, message_ids: &[String]) -> Result<(), StoreError> {
        for chunk in message_ids.chunks(SAVE_CHUNK) {
            let mut delete = sqlx::QueryBuilder::new("");
            Self::push_removal(&mut delete, chunk);
            delete
                .build()
                .persistent(Self::keep_prepared(chunk.len()))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// [`MessageStore::write_together`] in four trips to the database: its
    /// transaction, the conversations' counters (the payloads need their
    /// numbers), every other write of the turn as one query ([`TurnQuery`]),
    /// and the commit. On SQLite, `BEGIN` and `COMMIT` ride in the other
    /// two, a small turn ends with the outbox read the publisher makes next,
    /// and the counters are not read when the process knows them: most turns
    /// are one trip. At a few hundred messages a second, each trip (a
    /// wake-up on each side) cost more than the statement's own work.
    async fn write_in_one_query(
        &self,
        messages: &[NewMessage],
        published: &[String],
        outcomes: &[DeliveryOutcome],
        runs: &[&[DeliveryOutcome]],
    ) -> Result<Option<(Vec<SaveOutcome>, Vec<bool>)>, StoreError> {
        let now = Utc::now();
        let mut tx = self.begin_turn().await?;
        let changes = self.turn_changes();
        let read_outbox = Self::reads_outbox_in_turn(messages.len()).then_some(changes);
        // The counters as this process last wrote them, when it knows them
        // all, or else as a plain read finds them: the turn then numbers its
        // events itself, and its query sets the counters, checking each
        // one's value first (a conversation the read did not find is
        // inserted, and fails the turn if another writer inserted it since).
        // No transaction is held open across trips for the counters: on
        // PostgreSQL a turn is at most a read and one statement, where
        // `BEGIN`, the counters' upsert, the turn and `COMMIT` were four trips
        // with its write turn held (every conversation's first message since
        // ingest started, 7% of the bench's).
        let counting = (messages.len() <= SAVE_CHUNK).then(|| Counting::of(messages));
        let before = match counting.as_ref().filter(|c| !c.conversations.is_empty()) {
            None => None,
            Some(c) => Some(match self.counters.all(changes, &c.conversations) {
                Some(known) => known.into_iter().map(Some).collect(),
                None => Self::read_counters(&mut tx, c).await?,
            }),
        };
        let mut numbered = Vec::new();
        let mut turn = match (counting, before) {
            (Some(counting), Some(before)) => {
                let found: Vec<bool> = before.iter().map(Option::is_some).collect();
                let before: Vec<Counter> = before.into_iter().map(Option::unwrap_or_default).collect();
                let after = counting.after(&before);
                let mut turn = Turn::<$db>::new(Self::TURN_QUERY, tx.begin_sql());
                let all = &counting.conversations;
                if found.contains(&true) {
                    turn.part();
                    Self::push_counters(
                        &mut turn.query,
                        &picked(all, &found, true),
                        &picked(&before, &found, true),
                        &picked(&after, &found, true),
                    );
                    turn.end(None);
                }
                if found.contains(&false) {
                    turn.part();
                    Self::push_new_counters(
                        &mut turn.query,
                        &picked(all, &found, false),
                        &picked(&after, &found, false),
                    );
                    turn.end(None);
                }
                numbered.push(counting.numbered(messages, after));
                turn
            }
            (mut counting, _) => {
                for chunk in messages.chunks(SAVE_CHUNK) {
                    let counting = counting.take().unwrap_or_else(|| Counting::of(chunk));
                    numbered.push(Self::number_in(&mut tx, chunk, counting).await?);
                }
                Turn::<$db>::new(Self::TURN_QUERY, tx.begin_sql())
            }
        };
        let mut saved = Vec::with_capacity(messages.len());
        // The rows this turn may claim for this ingest's publisher: each
        // conversation's first, if not held, until this time (see
        // `claim_until`).
        let claiming = self.claim_until();
        let mut claims = Claims::default();
        for (chunk, Numbered { sequences, payloads, .. }) in
            messages.chunks(SAVE_CHUNK).zip(&numbered)
        {
            let rows = turn.part();
            // A redelivered event has no new row, so no outbox row: the turn
            // is rolled back and the caller saves each event on its own. In
            // a turn committed by its own query, its insert fails instead.
            let skip_saved = !tx.commits_in_query();
            Self::push_messages(
                &mut turn.query,
                &message_rows(chunk, sequences, payloads),
                now,
                skip_saved,
            );
            turn.end_returning("'saved' AS kind, id");
            let to_publish = outbox_rows(chunk, sequences, payloads);
            if !to_publish.is_empty() {
                let inserted = if turn.in_order() {
                    INSERTED.to_owned()
                } else {
                    format!("v.column1 IN (SELECT id FROM {rows})")
                };
                turn.part();
                if let Some(until) = claiming {
                    let firsts = claims.add(&to_publish, now);
                    let claim = Some((until, firsts.as_slice()));
                    Self::push_outbox(&mut turn.query, &to_publish, now, &inserted, claim);
                    turn.end_returning(
                        "CASE WHEN claimed_until IS NULL THEN 'queued' ELSE 'claimed' END AS kind,
                         message_id AS id",
                    );
                } else {
                    Self::push_outbox(&mut turn.query, &to_publish, now, &inserted, None);
                    turn.end(None);
                }
            }
            saved.extend(saved_outcomes(sequences));
        }
        for chunk in published.chunks(SAVE_CHUNK) {
            turn.part();
            Self::push_removal(&mut turn.query, chunk);
            turn.end(None);
        }
        for run in runs {
            let attempts = turn.part();
            Self::push_attempts(&mut turn.query, run);
            let counted_apart = !turn.in_order();
            turn.end(counted_apart.then_some("message_id"));
            turn.part();
            Self::push_states(&mut turn.query, run, counted_apart.then_some(attempts.as_str()));
            turn.end_returning("'known' AS kind, messages.id");
        }
        if read_outbox.is_some() {
            turn.part();
            Self::push_outbox_read(&mut turn.query, now);
            turn.end(None);
        }
        let largest = messages.len().max(published.len()).max(outcomes.len());
        turn.finish().push(tx.commit_sql());
        let rows = match turn
            .query
            .build()
            .persistent(Self::keep_prepared(largest))
            .fetch_all(&mut *tx)
            .await
        {
            Ok(rows) => rows,
            // A redelivered event in a turn committed by its own query: the
            // query stopped before its COMMIT.
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let mut inserted = 0;
        let mut known = std::collections::HashSet::new();
        // The outbox's rows are only a shortcut for the publisher (on
        // SQLite the turn is committed by now): one it cannot read means no
        // shortcut, never a failed turn.
        let mut outbox = Some(Vec::new());
        for row in &rows {
            let kind: &str = sqlx::Row::try_get(row, "kind")?;
            match kind {
                "saved" => inserted += 1,
                "known" => {
                    known.insert(sqlx::Row::try_get::<String, _>(row, "id")?);
                }
                "claimed" => claims.claimed(sqlx::Row::try_get::<String, _>(row, "id")?),
                "queued" => claims.queued = true,
                _ => {
                    let entry = <OutboxEntry as sqlx::FromRow<_>>::from_row(row).ok();
                    outbox = outbox.zip(entry).map(|(mut rows, entry)| {
                        rows.push(entry);
                        rows
                    });
                }
            }
        }
        if inserted < messages.len() {
            return Ok(None);
        }
        let known = outcomes
            .iter()
            .map(|o| known.contains(o.message_id.as_str()))
            .collect();
        tx.commit().await?;
        if let (Some(changes), Some(outbox)) = (read_outbox, outbox) {
            self.keep_outbox_read(changes, outbox);
        }
        self.hand_over(claims, published);
        let counters = numbered.into_iter().flat_map(|n| n.counters);
        self.remember_counters(changes, counters);
        Ok(Some((saved, known)))
    }
}

#[async_trait::async_trait]
impl $crate::store::IdempotencyStore for $store {
    async fn claim_key(
        &self,
        account_id: &str,
        key: &str,
        request_hash: &str,
        now: DateTime<Utc>,
        expired_before: DateTime<Utc>,
        abandoned_before: DateTime<Utc>,
    ) -> Result<$crate::store::KeyClaim, StoreError> {
        use $crate::store::KeyClaim;
        let claimed: Option<DateTime<Utc>> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (account_id, idempotency_key, request_hash, started_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (account_id, idempotency_key) DO UPDATE SET
                 request_hash = excluded.request_hash, started_at = excluded.started_at,
                 status = NULL, response = NULL
             WHERE idempotency_keys.started_at < $5
                OR (idempotency_keys.status IS NULL AND idempotency_keys.started_at < $6)
             RETURNING started_at",
        )
        .bind(account_id)
        .bind(key)
        .bind(request_hash)
        .bind(now)
        .bind(expired_before)
        .bind(abandoned_before)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(started_at) = claimed {
            return Ok(KeyClaim::Claimed(started_at));
        }
        let held: Option<(String, Option<i64>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT request_hash, status, response FROM idempotency_keys
             WHERE account_id = $1 AND idempotency_key = $2",
        )
        .bind(account_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match held {
            Some((hash, _, _)) if hash != request_hash => KeyClaim::OtherRequest,
            Some((_, Some(status), Some(response))) => KeyClaim::Answered { status, response },
            // Still running (or freed a moment ago: the caller retries).
            _ => KeyClaim::InProgress,
        })
    }

    async fn answer_key(
        &self,
        account_id: &str,
        key: &str,
        started_at: DateTime<Utc>,
        status: i64,
        response: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $4, response = $5
             WHERE account_id = $1 AND idempotency_key = $2 AND started_at = $3",
        )
        .bind(account_id)
        .bind(key)
        .bind(started_at)
        .bind(status)
        .bind(response)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release_key(
        &self,
        account_id: &str,
        key: &str,
        started_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM idempotency_keys
             WHERE account_id = $1 AND idempotency_key = $2 AND started_at = $3 AND status IS NULL",
        )
        .bind(account_id)
        .bind(key)
        .bind(started_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn forget_keys(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE started_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[async_trait::async_trait]
impl $crate::store::TokenStore for $store {
    async fn insert_token(&self, t: &$crate::store::TokenRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, account_id, name, token_hash, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&t.id)
        .bind(&t.account_id)
        .bind(&t.name)
        .bind(&t.token_hash)
        .bind(t.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_tokens(
        &self,
        account_id: &str,
    ) -> Result<Vec<$crate::store::TokenRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, account_id, name, token_hash, created_at FROM api_tokens
             WHERE account_id = $1 ORDER BY id",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn delete_token(&self, account_id: &str, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM api_tokens WHERE account_id = $1 AND id = $2")
            .bind(account_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<$crate::store::TokenRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, account_id, name, token_hash, created_at FROM api_tokens
             WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?)
    }
}

#[async_trait::async_trait]
impl $crate::store::MessageStore for $store {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn save_messages(&self, messages: &[NewMessage]) -> Result<Vec<SaveOutcome>, StoreError> {
        // Several events that are all new: a few statements for all of them.
        if messages.len() > 1
            && let Some(outcomes) = self.save_new_together(messages).await?
        {
            return Ok(outcomes);
        }
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        let mut outcomes = Vec::with_capacity(messages.len());
        for m in messages {
        // A published event is numbered first, so its row is written once
        // with its place in the conversation; a redelivery gives the number
        // back. The counter row stays locked until commit (the whole file on
        // SQLite), so nobody else takes a number in between, and another
        // ingest saving the same conversation gets the next one after this
        // event is in the outbox. A skipped event is never numbered.
        let opens = m.opens_reply_window();
        let (sequence, customer_wrote_at) = if m.publish || opens {
            let (n, wrote): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
                "INSERT INTO conversations (account_id, conversation_id, last_sequence, customer_wrote_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (account_id, conversation_id)
                 DO UPDATE SET last_sequence = conversations.last_sequence + excluded.last_sequence,
                     customer_wrote_at = CASE
                         WHEN conversations.customer_wrote_at IS NULL
                           OR conversations.customer_wrote_at < excluded.customer_wrote_at
                         THEN excluded.customer_wrote_at ELSE conversations.customer_wrote_at END
                 RETURNING last_sequence, customer_wrote_at",
            )
            .bind(&m.account_id)
            .bind(&m.conversation_id)
            .bind(i64::from(m.publish))
            .bind(opens.then_some(m.sent_at))
            .fetch_one(&mut *tx)
            .await?;
            (m.publish.then_some(n), wrote)
        } else {
            (None, None)
        };
        let payload = m
            .payload(sequence.map(|n| n as u64), customer_wrote_at)
            .unwrap_or_default();
        let row = (m, sequence, m.webhook.is_some().then_some(&payload));
        let inserted = Self::insert_messages(&mut tx, &[row], now).await?;
        if inserted == 0 {
            if sequence.is_some() {
                sqlx::query(
                    "UPDATE conversations SET last_sequence = last_sequence - 1
                     WHERE account_id = $1 AND conversation_id = $2",
                )
                .bind(&m.account_id)
                .bind(&m.conversation_id)
                .execute(&mut *tx)
                .await?;
            }
            outcomes.push(SaveOutcome::Duplicate);
            continue;
        }
        let Some(sequence) = sequence else {
            outcomes.push(SaveOutcome::Saved { sequence: None });
            continue;
        };
        sqlx::query(
            "INSERT INTO outbox (message_id, subject, payload, created_at, hold_until,
                account_id, conversation_id, sequence)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&m.id)
        .bind(&m.subject)
        .bind(&payload)
        .bind(now)
        .bind(m.hold_until)
        .bind(&m.account_id)
        .bind(&m.conversation_id)
        .bind(sequence)
        .execute(&mut *tx)
        .await?;
        outcomes.push(SaveOutcome::Saved {
            sequence: Some(sequence as u64),
        });
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn pending_outbox(&self, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        self.lease_outbox(limit).await
    }

    async fn remove_from_outbox(&self, message_ids: &[String]) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        Self::remove_in(&mut tx, message_ids).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn write_together(
        &self,
        messages: &[NewMessage],
        published: &[String],
        outcomes: &[DeliveryOutcome],
    ) -> Result<Option<(Vec<SaveOutcome>, Vec<bool>)>, StoreError> {
        // A message's outcomes in two runs would change its row twice in
        // one statement of CTEs; such a turn goes statement by statement.
        let runs = runs_of_distinct_messages(outcomes);
        if Self::TURN_QUERY == TurnQuery::Statements || runs.len() <= 1 {
            return self
                .write_in_one_query(messages, published, outcomes, &runs)
                .await;
        }
        let mut tx = self.begin_write().await?;
        let saved = if messages.is_empty() {
            Vec::new()
        } else {
            match Self::save_new_in(&mut tx, messages).await? {
                Some(saved) => saved,
                None => return Ok(None),
            }
        };
        Self::remove_in(&mut tx, published).await?;
        let known = Self::record_in(&mut tx, outcomes).await?;
        tx.commit().await?;
        Ok(Some((saved, known)))
    }

    async fn count_publish_failure(&self, message_id: &str) -> Result<i64, StoreError> {
        let attempts: Option<i64> = sqlx::query_scalar(
            "UPDATE outbox SET publish_attempts = publish_attempts + 1 WHERE message_id = $1
             RETURNING publish_attempts",
        )
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(attempts.unwrap_or(0))
    }

    async fn set_aside_unpublishable(
        &self,
        message_id: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let removed = sqlx::query("DELETE FROM outbox WHERE message_id = $1")
            .bind(message_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE messages SET delivery_status = 'dead', dead_at = $2, last_error = $3
             WHERE id = $1",
        )
        .bind(message_id)
        .bind(Utc::now())
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn count_refusal(
        &self,
        kept: &$crate::store::KeptEvent,
        error_code: &str,
        limit: u32,
    ) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(kept).map_err(|e| sqlx::Error::Encode(e.into()))?;
        let set_aside: bool = sqlx::query_scalar(
            "INSERT INTO refused_events (message_id, account_id, event_hash, kept, attempts,
                 error_code, first_refused_at, last_refused_at, set_aside_at)
             VALUES ($1, $2, $3, $4, 1, $5, $6, $6, CASE WHEN $7 <= 1 THEN $6 END)
             ON CONFLICT (account_id, event_hash) DO UPDATE SET
                 attempts = CASE WHEN refused_events.set_aside_at IS NULL
                     THEN refused_events.attempts + 1 ELSE refused_events.attempts END,
                 error_code = excluded.error_code,
                 last_refused_at = excluded.last_refused_at,
                 set_aside_at = COALESCE(refused_events.set_aside_at,
                     CASE WHEN refused_events.attempts + 1 >= $7 THEN excluded.last_refused_at END)
             RETURNING set_aside_at IS NOT NULL",
        )
        .bind(&kept.webhook.message_id)
        .bind(&kept.webhook.account_id)
        .bind(super::sql::event_hash(&kept.event_key))
        .bind(bytes)
        .bind(error_code)
        .bind(Utc::now())
        .bind(i64::from(limit))
        .fetch_one(&self.pool)
        .await?;
        Ok(set_aside)
    }

    async fn list_refused(
        &self,
        account_id: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<$crate::store::RefusedRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT message_id, account_id, kept, attempts, error_code, first_refused_at, set_aside_at
             FROM refused_events
             WHERE set_aside_at IS NOT NULL AND ($1 IS NULL OR account_id = $1) AND message_id > $2
             ORDER BY message_id LIMIT $3",
        )
        .bind(account_id)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn get_refused(
        &self,
        message_id: &str,
    ) -> Result<Option<$crate::store::RefusedRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT message_id, account_id, kept, attempts, error_code, first_refused_at, set_aside_at
             FROM refused_events WHERE message_id = $1 AND set_aside_at IS NOT NULL",
        )
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn refused_again(&self, message_id: &str, error_code: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE refused_events SET attempts = attempts + 1, error_code = $2, last_refused_at = $3
             WHERE message_id = $1",
        )
        .bind(message_id)
        .bind(error_code)
        .bind(Utc::now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn forget_refused(&self, message_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM refused_events WHERE message_id = $1")
            .bind(message_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn outbox_backlog(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        Ok(
            sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM outbox")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn get_message(&self, id: &str) -> Result<Option<MessageRow>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1"
        ));
        Ok(sqlx::query_as(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn list_messages(
        &self,
        account_id: &str,
        conversation_id: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE account_id = $1 AND ($2 IS NULL OR conversation_id = $2) AND id > $3
             ORDER BY id LIMIT $4"
        ));
        Ok(sqlx::query_as(sql)
            .bind(account_id)
            .bind(conversation_id)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Every dead letter has its `dead_at`; saying so lets either database
    /// walk the index of messages set aside (`messages_set_aside`: dead
    /// letters and discarded ones only, so neither a save nor a delivery
    /// outcome touches it).
    async fn list_dead_letters(
        &self,
        f: &DeadLetterFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE delivery_status = 'dead' AND dead_at IS NOT NULL
               AND ($1 IS NULL OR account_id = $1)
               AND ($2 IS NULL OR dead_at >= $2)
               AND ($3 IS NULL OR dead_at < $3)
               AND id > $4
             ORDER BY id LIMIT $5"
        ));
        Ok(sqlx::query_as(sql)
            .bind(&f.account_id)
            .bind(f.since)
            .bind(f.until)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn replay_dead_letter(&self, message_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let row: ReplayRow = sqlx::query_as(
            "UPDATE messages SET delivery_status = 'pending', dead_at = NULL, replays = replays + 1
             WHERE id = $1 AND delivery_status = 'dead' AND payload IS NOT NULL
             RETURNING subject, payload, replays, account_id, conversation_id, sequence",
        )
        .bind(message_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((subject, payload, replays, account_id, conversation_id, sequence)) = row else {
            return Ok(false);
        };
        sqlx::query(
            "INSERT INTO outbox (message_id, nats_msg_id, subject, payload, created_at,
                account_id, conversation_id, sequence)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (message_id) DO UPDATE SET nats_msg_id = excluded.nats_msg_id",
        )
        .bind(message_id)
        .bind(format!("{message_id}-replay-{replays}"))
        .bind(subject)
        .bind(payload)
        .bind(Utc::now())
        .bind(account_id)
        .bind(conversation_id)
        .bind(sequence)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn discard_dead_letter(&self, message_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE messages SET delivery_status = 'discarded' WHERE id = $1 AND delivery_status = 'dead'",
        )
        .bind(message_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn find_comment(
        &self,
        account_id: &str,
        comment_id: &str,
    ) -> Result<Option<(String, String, DateTime<Utc>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT sender_id, conversation_id, sent_at FROM messages
             WHERE account_id = $1 AND event_key = $2",
        )
        .bind(account_id)
        .bind(format!("comment:{comment_id}"))
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn claim_private_reply(
        &self,
        account_id: &str,
        comment_id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO private_replies (account_id, comment_id, claimed_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(account_id)
        .bind(comment_id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_private_reply(
        &self,
        account_id: &str,
        comment_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM private_replies WHERE account_id = $1 AND comment_id = $2")
            .bind(account_id)
            .bind(comment_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_edited(
        &self,
        account_id: &str,
        mid: &str,
        at: DateTime<Utc>,
        text: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE messages SET edited_at = $1, text = $4
             WHERE account_id = $2 AND event_key = $3 AND (edited_at IS NULL OR edited_at < $1)",
        )
        .bind(at)
        .bind(account_id)
        .bind(mid)
        .bind(text.map(storable_text))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn mark_deleted(
        &self,
        account_id: &str,
        mid: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE messages SET deleted_at = $1
             WHERE account_id = $2 AND event_key = $3 AND deleted_at IS NULL",
        )
        .bind(at)
        .bind(account_id)
        .bind(mid)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn confirm_echo(
        &self,
        account_id: &str,
        mid: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE messages SET sent_at = $1
             WHERE account_id = $2 AND event_key = $3 AND event = 'message.sent'",
        )
        .bind(at)
        .bind(account_id)
        .bind(mid)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_send(&self, message_id: &str, mid: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE messages SET event_key = $1, instagram_message_id = $1 WHERE id = $2",
        )
        .bind(mid)
        .bind(message_id)
        .execute(&self.pool)
        .await;
        match done {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn abandon_send(&self, message_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM messages WHERE id = $1 AND event_key LIKE 'pending:%'")
            .bind(message_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn send_in_flight(
        &self,
        account_id: &str,
        recipient_id: &str,
    ) -> Result<bool, StoreError> {
        let cutoff = Utc::now() - chrono::Duration::seconds(60);
        let found = sqlx::query(
            "SELECT 1 FROM messages
             WHERE account_id = $1 AND recipient_id = $2 AND event = 'message.sent'
               AND event_key LIKE 'pending:%' AND created_at > $3",
        )
        .bind(account_id)
        .bind(recipient_id)
        .bind(cutoff)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn release_outbox(
        &self,
        message_id: &str,
        username: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let held: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT payload FROM outbox WHERE message_id = $1")
                .bind(message_id)
                .fetch_optional(&mut *tx)
                .await?;
        // Published already (its hold ran out): nothing to add it to.
        let Some(held) = held else {
            return Ok(());
        };
        let payload = match serde_json::from_slice::<shared::wire::InboundMessageWebhook>(&held) {
            Ok(mut webhook) => {
                webhook.sender_username = username.map(str::to_owned);
                serde_json::to_vec(&webhook).map_err(|e| sqlx::Error::Encode(e.into()))?
            }
            Err(_) => held,
        };
        sqlx::query("UPDATE outbox SET payload = $1, hold_until = NULL WHERE message_id = $2")
            .bind(&payload)
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE messages SET payload = $1 WHERE id = $2")
            .bind(&payload)
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_auto_reply(
        &self,
        account_id: &str,
        conversation_id: &str,
        now: DateTime<Utc>,
        cooldown_secs: i64,
    ) -> Result<bool, StoreError> {
        let cutoff = now - chrono::Duration::seconds(cooldown_secs);
        let done = sqlx::query(
            "INSERT INTO auto_replies (account_id, conversation_id, sent_at) VALUES ($1, $2, $3)
             ON CONFLICT (account_id, conversation_id)
             DO UPDATE SET sent_at = excluded.sent_at WHERE auto_replies.sent_at <= $4",
        )
        .bind(account_id)
        .bind(conversation_id)
        .bind(now)
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_auto_reply(
        &self,
        account_id: &str,
        conversation_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM auto_replies WHERE account_id = $1 AND conversation_id = $2")
            .bind(account_id)
            .bind(conversation_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

}

#[async_trait::async_trait]
impl $crate::store::OutcomeStore for $store {
    /// Records outcomes in one transaction, two statements for each run of
    /// outcomes of different messages (so a message's outcomes still apply
    /// in their order): each attempt is added unless its message is gone
    /// (its account was deleted); the message's attempt count is updated
    /// always, and its state only when the outcome is newer than the one
    /// recorded and the message is not delivered or discarded. Says, for
    /// each outcome, whether its message is known.
    async fn record_outcomes(&self, outcomes: &[DeliveryOutcome]) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.begin_write().await?;
        let known = <$store>::record_in(&mut tx, outcomes).await?;
        tx.commit().await?;
        Ok(known)
    }
}

impl $store {
    /// [`OutcomeStore::record_outcomes`] in the caller's transaction.
    async fn record_in(
        tx: &mut WriteTx<$db>,
        outcomes: &[DeliveryOutcome],
    ) -> Result<Vec<bool>, StoreError> {
        let mut known_messages = Vec::with_capacity(outcomes.len());
        for chunk in runs_of_distinct_messages(outcomes) {
            let mut attempts = sqlx::QueryBuilder::new("");
            Self::push_attempts(&mut attempts, chunk);
            attempts
                .build()
                .persistent(Self::keep_prepared(chunk.len()))
                .execute(&mut **tx)
                .await?;
            let mut states = sqlx::QueryBuilder::new("");
            Self::push_states(&mut states, chunk, None);
            states.push(" RETURNING messages.id");
            let updated: std::collections::HashSet<String> = states
                .build_query_scalar()
                .persistent(Self::keep_prepared(chunk.len()))
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .collect();
            known_messages.extend(chunk.iter().map(|o| updated.contains(&o.message_id)));
        }
        Ok(known_messages)
    }

    /// The statement that adds outcomes as attempts, unless their message
    /// is gone (its account was deleted).
    fn push_attempts(attempts: &mut sqlx::QueryBuilder<$db>, run: &[DeliveryOutcome]) {
        attempts.push(
            "INSERT INTO delivery_attempts (message_id, inbound_seq, attempt, outcome, status_code, error, at)
             SELECT v.message_id, v.inbound_seq, v.attempt, v.outcome, v.status_code, v.error, v.at FROM ",
        );
        Self::push_rows(attempts, &outcome_columns(run), Rows::Named(OUTCOME_NAMES));
        attempts.push(
            " WHERE EXISTS (SELECT 1 FROM messages WHERE id = v.message_id)
             ON CONFLICT DO NOTHING",
        );
    }

    /// The statement that updates messages from outcomes of different
    /// messages: the attempt count always, the state when the outcome is
    /// newer than the one recorded. `new_attempts` names the part that
    /// added the attempts, when this statement cannot see them.
    fn push_states(
        states: &mut sqlx::QueryBuilder<$db>,
        run: &[DeliveryOutcome],
        new_attempts: Option<&str>,
    ) {
        states.push(
            "UPDATE messages SET
                delivery_attempts = (SELECT COUNT(*) FROM delivery_attempts WHERE message_id = messages.id)",
        );
        if let Some(new) = new_attempts {
            states.push(format!(
                " + (SELECT COUNT(*) FROM {new} WHERE {new}.message_id = messages.id)"
            ));
        }
        states.push(
            ",
                delivery_status = CASE WHEN (delivery_status NOT IN ('delivered', 'discarded') AND (last_inbound_seq < v.inbound_seq OR (last_inbound_seq = v.inbound_seq AND last_attempt < v.attempt))) THEN v.outcome ELSE delivery_status END,
                last_error = CASE WHEN (delivery_status NOT IN ('delivered', 'discarded') AND (last_inbound_seq < v.inbound_seq OR (last_inbound_seq = v.inbound_seq AND last_attempt < v.attempt))) AND v.outcome <> 'delivered' THEN v.error ELSE last_error END,
                last_status_code = CASE WHEN (delivery_status NOT IN ('delivered', 'discarded') AND (last_inbound_seq < v.inbound_seq OR (last_inbound_seq = v.inbound_seq AND last_attempt < v.attempt))) THEN v.status_code ELSE last_status_code END,
                delivered_at = CASE WHEN (delivery_status NOT IN ('delivered', 'discarded') AND (last_inbound_seq < v.inbound_seq OR (last_inbound_seq = v.inbound_seq AND last_attempt < v.attempt))) AND v.outcome = 'delivered' THEN v.at ELSE delivered_at END,
                dead_at = CASE WHEN (delivery_status NOT IN ('delivered', 'discarded') AND (last_inbound_seq < v.inbound_seq OR (last_inbound_seq = v.inbound_seq AND last_attempt < v.attempt))) THEN (CASE WHEN v.outcome = 'dead' THEN v.at ELSE NULL END)
                    ELSE dead_at END,
                last_inbound_seq = CASE WHEN (delivery_status NOT IN ('delivered', 'discarded') AND (last_inbound_seq < v.inbound_seq OR (last_inbound_seq = v.inbound_seq AND last_attempt < v.attempt))) THEN v.inbound_seq ELSE last_inbound_seq END,
                last_attempt = CASE WHEN (delivery_status NOT IN ('delivered', 'discarded') AND (last_inbound_seq < v.inbound_seq OR (last_inbound_seq = v.inbound_seq AND last_attempt < v.attempt))) THEN v.attempt ELSE last_attempt END
             FROM ",
        );
        Self::push_rows(states, &outcome_columns(run), Rows::Named(OUTCOME_NAMES));
        states.push(" WHERE messages.id = v.message_id");
    }
}
    };
}
