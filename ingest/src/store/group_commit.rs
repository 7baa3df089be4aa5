//! Group commit: saves that arrive while another is being written share the
//! next transaction, and so one commit (one fsync) for many webhooks; the
//! outbox's removals and the delivery outcomes share it too. Each
//! caller still gets its answer only after its own rows are committed, so
//! Meta's 200 still means "saved". Under light load a save is written at
//! once, alone; nothing waits for a batch to fill.

use std::sync::Arc;

use shared::wire::DeliveryOutcome;
use tokio::sync::{mpsc, oneshot};

use super::{MessageStore, NewMessage, OutcomeStore, SaveOutcome, StoreError};

/// The most callers served by one transaction.
const MAX_BATCH: usize = 256;

/// How long removals and outcomes wait for a save to share a transaction
/// with. Under steady load one comes within a few milliseconds, so each
/// message costs one commit instead of three (its save, its outbox removal
/// and its outcome each had their own, and a save arriving behind one of
/// the others waited for its fsync). Neither needs to be durable at once: a
/// removal lost in a crash means a republish the stream drops as a
/// duplicate, and an outcome is acknowledged to JetStream only once written.
const CHORES_LINGER: std::time::Duration = std::time::Duration::from_millis(10);

/// Where a saving caller's outcomes go, one per message.
type SaveAnswer = oneshot::Sender<Vec<Result<SaveOutcome, StoreError>>>;

/// One caller's writes. Saves are what Meta's 200 waits on; the outbox
/// publisher's removals and the delivery outcomes ride along in the same
/// transaction, so a busy ingest commits once per turn instead of three times.
enum Work {
    /// Messages saved in order, in the same transaction.
    Save {
        messages: Vec<NewMessage>,
        done: SaveAnswer,
    },
    /// Outbox rows of messages JetStream has acknowledged.
    Remove {
        message_ids: Vec<String>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Delivery outcomes reported by the forwarders.
    Record {
        outcomes: Vec<DeliveryOutcome>,
        done: oneshot::Sender<Result<Vec<bool>, StoreError>>,
    },
}

/// The handle callers write through; the writer task ends with the last one.
#[derive(Clone)]
pub struct GroupCommit {
    saves: mpsc::Sender<Work>,
    /// Removals and outcomes wait in a queue of their own and go into the
    /// very next turn: behind a thousand queued saves, the outbox would
    /// stop draining and every message would wait for it.
    chores: mpsc::Sender<Work>,
}

fn stopped() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

impl GroupCommit {
    pub fn start(store: Arc<dyn MessageStore>, outcomes: Arc<dyn OutcomeStore>) -> Self {
        let (saves, save_queue) = mpsc::channel(4 * MAX_BATCH);
        let (chores, chore_queue) = mpsc::channel(MAX_BATCH);
        tokio::spawn(write(store, outcomes, save_queue, chore_queue));
        Self { saves, chores }
    }

    /// Saves messages in this order, together, in whatever transaction is
    /// next; one outcome per message, once that transaction is committed.
    pub async fn save_all(
        &self,
        messages: Vec<NewMessage>,
    ) -> Vec<Result<SaveOutcome, StoreError>> {
        let count = messages.len();
        let all_stopped = || (0..count).map(|_| Err(stopped())).collect();
        let (done, answer) = oneshot::channel();
        if self
            .saves
            .send(Work::Save { messages, done })
            .await
            .is_err()
        {
            return all_stopped();
        }
        answer.await.unwrap_or_else(|_| all_stopped())
    }

    /// [`MessageStore::remove_from_outbox`], in the next transaction.
    pub async fn remove_from_outbox(&self, message_ids: Vec<String>) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        let work = Work::Remove { message_ids, done };
        self.chores.send(work).await.map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// [`OutcomeStore::record_outcomes`], in the next transaction.
    pub async fn record_outcomes(
        &self,
        outcomes: Vec<DeliveryOutcome>,
    ) -> Result<Vec<bool>, StoreError> {
        let (done, answer) = oneshot::channel();
        let work = Work::Record { outcomes, done };
        self.chores.send(work).await.map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn write(
    store: Arc<dyn MessageStore>,
    recorder: Arc<dyn OutcomeStore>,
    mut save_queue: mpsc::Receiver<Work>,
    mut chore_queue: mpsc::Receiver<Work>,
) {
    let mut batch = Vec::with_capacity(2 * MAX_BATCH);
    loop {
        let first = tokio::select! {
            biased;
            Some(chore) = chore_queue.recv() => chore,
            Some(save) = save_queue.recv() => save,
            else => return,
        };
        let chores_only = !matches!(first, Work::Save { .. });
        batch.push(first);
        // Whatever else is ready joins this turn; nothing waits for more,
        // except chores alone, for a save to ride with.
        if chores_only {
            tokio::select! {
                Some(save) = save_queue.recv() => batch.push(save),
                () = tokio::time::sleep(CHORES_LINGER) => {}
            }
        }
        while batch.len() < MAX_BATCH
            && let Ok(chore) = chore_queue.try_recv()
        {
            batch.push(chore);
        }
        let chores = batch.len();
        while batch.len() < chores + MAX_BATCH
            && let Ok(save) = save_queue.try_recv()
        {
            batch.push(save);
        }
        // Each kind's rows in one list, and each caller's share of it.
        let mut saves = Vec::new();
        let mut messages = Vec::new();
        let mut removals = Vec::new();
        let mut removed = Vec::new();
        let mut records = Vec::new();
        let mut outcomes = Vec::new();
        for work in batch.drain(..) {
            match work {
                Work::Save { messages: m, done } => {
                    saves.push((m.len(), done));
                    messages.extend(m);
                }
                Work::Remove { message_ids, done } => {
                    removals.push((message_ids.len(), done));
                    removed.extend(message_ids);
                }
                Work::Record { outcomes: o, done } => {
                    records.push((o.len(), done));
                    outcomes.extend(o);
                }
            }
        }
        if !messages.is_empty() {
            metrics::histogram!("router_ingest_save_batch_size").record(messages.len() as f64);
        }
        if let Ok(Some((saved, mut known))) =
            store.write_together(&messages, &removed, &outcomes).await
        {
            answer_saves(saves, saved.into_iter().map(Ok).collect());
            for (_, done) in removals {
                let _ = done.send(Ok(()));
            }
            for (size, done) in records {
                let rest = known.split_off(size);
                let _ = done.send(Ok(std::mem::replace(&mut known, rest)));
            }
            continue;
        }
        // Something in the turn was refused (or a message was already
        // saved): each caller's part is written on its own, so one bad
        // write fails only its caller.
        for (mine, done) in shares(&removed, removals) {
            let _ = done.send(store.remove_from_outbox(mine).await);
        }
        for (mine, done) in shares(&outcomes, records) {
            let _ = done.send(recorder.record_outcomes(mine).await);
        }
        if messages.is_empty() {
            continue;
        }
        let saved = match store.save_messages(&messages).await {
            Ok(saved) => saved.into_iter().map(Ok).collect(),
            Err(e) if messages.len() == 1 => vec![Err(e)],
            // One message the database refuses must not fail the others:
            // the batch was rolled back, so each is tried on its own.
            Err(_) => {
                let mut each = Vec::with_capacity(messages.len());
                for message in &messages {
                    each.push(store.save_message(message).await);
                }
                each
            }
        };
        answer_saves(saves, saved);
    }
}

/// Each caller's part of rows gathered in callers' order, with its answer.
fn shares<T, D>(all: &[T], callers: Vec<(usize, D)>) -> impl Iterator<Item = (&[T], D)> {
    let mut rest = all;
    callers.into_iter().map(move |(size, done)| {
        let (mine, after) = rest.split_at(size);
        rest = after;
        (mine, done)
    })
}

/// Hands each saving caller its messages' outcomes, in order.
fn answer_saves(saves: Vec<(usize, SaveAnswer)>, outcomes: Vec<Result<SaveOutcome, StoreError>>) {
    let mut outcomes = outcomes.into_iter();
    for (size, done) in saves {
        let _ = done.send(outcomes.by_ref().take(size).collect());
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use shared::model::{Direction, EventKind};

    use super::*;
    use crate::store::testing::{drop_postgres_database, postgres_database, sqlite_url};
    use crate::store::{AccountRow, AccountStore, SqliteStore};
    use shared::model::MessageEvent;

    async fn save(saves: &GroupCommit, m: NewMessage) -> Result<SaveOutcome, StoreError> {
        saves.save_all(vec![m]).await.pop().expect("one outcome")
    }

    fn message(i: usize, account_id: &str) -> NewMessage {
        NewMessage {
            id: format!("msg_{i:04}"),
            account_id: account_id.to_owned(),
            event: MessageEvent::Received(EventKind::MessageReceived),
            event_key: format!("mid_{i}"),
            instagram_message_id: format!("mid_{i}"),
            direction: Direction::Inbound,
            conversation_id: format!("conv_{}", i % 3),
            sender_id: "1".into(),
            recipient_id: "2".into(),
            message_type: "text".into(),
            text: Some("hello".into()),
            attachments: "[]".into(),
            sent_at: Utc::now(),
            subject: "router.inbound.acc_1".into(),
            webhook: None,
            publish: false,
            hold_until: None,
        }
    }

    #[tokio::test]
    async fn concurrent_saves_share_commits_and_one_refused_save_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(SqliteStore::open(&sqlite_url(&dir)).await.unwrap());
        db.insert_account(&AccountRow::example("acc_1", "1"))
            .await
            .unwrap();
        let saves = GroupCommit::start(db.clone(), db.clone());
        // Message 13 names an account that does not exist: the database
        // refuses it (foreign key), and only it.
        let results = futures::future::join_all((0..40).map(|i| {
            let account = if i == 13 { "acc_missing" } else { "acc_1" };
            save(&saves, message(i, account))
        }))
        .await;
        for (i, result) in results.iter().enumerate() {
            match (i, result) {
                (13, r) => assert!(r.is_err(), "the refused message fails"),
                (_, r) => assert!(
                    matches!(r, Ok(SaveOutcome::Saved { .. })),
                    "message {i}: {r:?}"
                ),
            }
        }
        // Saved for real, and a second save of the same event is a duplicate.
        assert!(db.get_message("msg_0039").await.unwrap().is_some());
        assert!(db.get_message("msg_0013").await.unwrap().is_none());
        assert_eq!(
            save(&saves, message(7, "acc_1")).await.unwrap(),
            SaveOutcome::Duplicate
        );
    }

    fn published(i: usize, conversation: &str) -> NewMessage {
        let mut m = message(i, "acc_1");
        m.conversation_id = conversation.into();
        m.publish = true;
        m.webhook = Some(
            serde_json::from_value(serde_json::json!({
                "event": "message.received",
                "message_id": m.id,
                "account_id": "acc_1",
                "sender_id": "1",
                "message": "hello",
                "message_type": "text",
                "timestamp": "2026-12-01T00:00:00Z",
                "instagram_message_id": m.instagram_message_id,
                "conversation_id": conversation,
            }))
            .unwrap(),
        );
        m
    }

    fn delivered(message_id: &str) -> DeliveryOutcome {
        DeliveryOutcome {
            message_id: message_id.into(),
            account_id: "acc_1".into(),
            outcome: shared::subjects::Outcome::Delivered,
            inbound_sequence: 1,
            attempt: 1,
            status_code: Some(200),
            error: None,
            at: Utc::now(),
        }
    }

    /// A turn is the new events, the outbox removals and the outcomes in
    /// one transaction, one query after the counters; a redelivered event
    /// in it sends the turn down the one-by-one path without a gap in its
    /// conversation's numbers.
    #[tokio::test]
    async fn one_turn_saves_numbers_removes_and_records_and_a_redelivery_leaves_no_gap() {
        let dir = tempfile::tempdir().unwrap();
        one_turn(SqliteStore::open(&sqlite_url(&dir)).await.unwrap()).await;
    }

    /// The same on PostgreSQL, where the turn is one statement of CTEs.
    #[tokio::test]
    async fn one_turn_on_postgresql() {
        let Some((admin, url, name)) = postgres_database().await else {
            return;
        };
        let db = crate::store::PgStore::open(&url).await.unwrap();
        one_turn(db).await;
        drop_postgres_database(admin, &name).await;
    }

    /// Turns of more rows than PostgreSQL takes as a `VALUES` list (it
    /// sends them as one array a column): on both stores every event is
    /// numbered in its conversation's order, values left out stay null, and
    /// a next turn of as many removals and outcomes records them all.
    #[tokio::test]
    async fn large_turns_save_number_remove_and_record_every_row() {
        let dir = tempfile::tempdir().unwrap();
        large_turns(SqliteStore::open(&sqlite_url(&dir)).await.unwrap()).await;
        let Some((admin, url, name)) = postgres_database().await else {
            return;
        };
        large_turns(crate::store::PgStore::open(&url).await.unwrap()).await;
        drop_postgres_database(admin, &name).await;
    }

    async fn large_turns(db: impl MessageStore + AccountStore) {
        db.insert_account(&AccountRow::example("acc_1", "1"))
            .await
            .unwrap();
        let conversation = |i: usize| format!("conv_{}", i % 12);
        // 36 events over 12 conversations; two of them not published (no
        // number, no outbox row), one without text.
        let mut first: Vec<NewMessage> = (0..36).map(|i| published(i, &conversation(i))).collect();
        for i in [7, 20] {
            first[i] = message(i, "acc_1");
            first[i].conversation_id = conversation(i);
        }
        first[5].text = None;
        // Numbered from memory the second time: twelve counters at once.
        let second: Vec<NewMessage> = (36..48).map(|i| published(i, &conversation(i))).collect();
        let mut expected = std::collections::HashMap::new();
        for turn in [&first, &second] {
            let (saved, _) = db.write_together(turn, &[], &[]).await.unwrap().unwrap();
            for (m, outcome) in turn.iter().zip(saved) {
                let want = m.publish.then(|| {
                    let last = expected.entry(m.conversation_id.clone()).or_insert(0);
                    *last += 1;
                    *last
                });
                assert_eq!(outcome, SaveOutcome::Saved { sequence: want }, "{}", m.id);
            }
        }
        let row = db.get_message("msg_0005").await.unwrap().unwrap();
        assert_eq!(row.sequence, Some(1));
        let published_ids: Vec<String> = first
            .iter()
            .chain(&second)
            .filter(|m| m.publish)
            .map(|m| m.id.clone())
            .collect();
        let mut outbox: Vec<String> = db
            .pending_outbox(100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.message_id)
            .collect();
        // One row a conversation is ready at a time: the first of each.
        let mut firsts = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for m in first.iter().filter(|m| m.publish) {
            if seen.insert(m.conversation_id.as_str()) {
                firsts.push(m.id.clone());
            }
        }
        outbox.sort();
        firsts.sort();
        assert_eq!(outbox, firsts);

        // Every published row removed, and an outcome for each, in one turn:
        // every other one a retry without a status code.
        let outcomes: Vec<DeliveryOutcome> = published_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut o = delivered(id);
                if i % 2 == 1 {
                    o.outcome = shared::subjects::Outcome::Retrying;
                    o.status_code = None;
                    o.error = Some("connection refused".into());
                }
                o
            })
            .collect();
        let (_, known) = db
            .write_together(&[], &published_ids, &outcomes)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(known, vec![true; published_ids.len()]);
        assert!(db.pending_outbox(100).await.unwrap().is_empty());
        for (i, id) in published_ids.iter().enumerate() {
            let row = db.get_message(id).await.unwrap().unwrap();
            let status = if i % 2 == 1 {
                shared::model::DeliveryStatus::Retrying
            } else {
                shared::model::DeliveryStatus::Delivered
            };
            assert_eq!(
                (row.delivery_status, row.delivery_attempts),
                (status, 1),
                "{id}"
            );
            assert_eq!(row.last_status_code.is_none(), i % 2 == 1, "{id}");
        }
    }

    /// On PostgreSQL too a turn numbers its events from the counters its
    /// ingest's turns left, in one statement without `BEGIN` and `COMMIT`;
    /// but another ingest may number in the same conversation, or move the
    /// time its customer last wrote, so the statement checks both and a
    /// stale one writes nothing: no number is ever given twice.
    #[tokio::test]
    async fn two_ingests_on_postgresql_never_take_the_same_number_from_memory() {
        let Some((admin, url, name)) = postgres_database().await else {
            return;
        };
        let a = crate::store::PgStore::open(&url).await.unwrap();
        let b = crate::store::PgStore::open(&url).await.unwrap();
        a.insert_account(&AccountRow::example("acc_1", "1"))
            .await
            .unwrap();
        assert_eq!(turn_numbers(&a, &[published(1, "conv_a")]).await, [Some(1)]);
        assert_eq!(a.counter_kept("acc_1", "conv_a"), Some(1));
        assert_eq!(turn_numbers(&a, &[published(2, "conv_a")]).await, [Some(2)]);

        // Another ingest takes the next number: this one's memory is stale.
        assert_eq!(turn_numbers(&b, &[published(3, "conv_a")]).await, [Some(3)]);
        let refused = a.write_together(&[published(4, "conv_a")], &[], &[]).await;
        assert!(refused.is_err(), "{refused:?}");
        assert!(a.get_message("msg_0004").await.unwrap().is_none());
        assert_eq!(turn_numbers(&a, &[published(4, "conv_a")]).await, [Some(4)]);
        assert_eq!(turn_numbers(&a, &[published(5, "conv_a")]).await, [Some(5)]);

        // Another moves the time the customer last wrote, and no number.
        let mut other = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE conversations SET customer_wrote_at = now() WHERE conversation_id = 'conv_a'",
        )
        .execute(&mut other)
        .await
        .unwrap();
        let refused = a.write_together(&[published(6, "conv_a")], &[], &[]).await;
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(turn_numbers(&a, &[published(6, "conv_a")]).await, [Some(6)]);
        drop(other);
        drop((a, b));
        drop_postgres_database(admin, &name).await;
    }

    /// A restarted ingest knows no counter: its first turn reads the
    /// conversations' counters and numbers on from them, gives a
    /// conversation new to the database its first number, and the turn
    /// after that numbers from memory.
    async fn a_turn_reads_the_counters_it_does_not_know(
        first: impl MessageStore + AccountStore,
        restarted: impl MessageStore + AccountStore,
    ) {
        first
            .insert_account(&AccountRow::example("acc_1", "1"))
            .await
            .unwrap();
        let two = [published(1, "conv_a"), published(2, "conv_a")];
        assert_eq!(turn_numbers(&first, &two).await, [Some(1), Some(2)]);
        drop(first);
        let both = [
            published(3, "conv_a"),
            published(4, "conv_new"),
            published(5, "conv_a"),
        ];
        assert_eq!(
            turn_numbers(&restarted, &both).await,
            [Some(3), Some(1), Some(4)]
        );
        let next = [published(6, "conv_new"), published(7, "conv_a")];
        assert_eq!(turn_numbers(&restarted, &next).await, [Some(2), Some(5)]);
    }

    #[tokio::test]
    async fn a_turn_reads_the_counters_it_does_not_know_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&dir);
        a_turn_reads_the_counters_it_does_not_know(
            SqliteStore::open(&url).await.unwrap(),
            SqliteStore::open(&url).await.unwrap(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_turn_reads_the_counters_it_does_not_know_on_postgresql() {
        let Some((admin, url, name)) = postgres_database().await else {
            return;
        };
        a_turn_reads_the_counters_it_does_not_know(
            crate::store::PgStore::open(&url).await.unwrap(),
            crate::store::PgStore::open(&url).await.unwrap(),
        )
        .await;
        drop_postgres_database(admin, &name).await;
    }

    /// A turn reads the counters it does not know without holding a
    /// transaction open: another ingest may give a conversation its first
    /// number between the read and the turn's statement. The statement then
    /// fails on that conversation's key and writes nothing (the group commit
    /// saves its events one by one instead), and no number is given twice.
    #[tokio::test]
    async fn a_conversation_another_ingest_creates_after_the_read_fails_the_turn() {
        let Some((admin, url, name)) = postgres_database().await else {
            return;
        };
        let db = postgres_with_account(&url).await;
        // The other ingest's transaction has numbered conv_a's first event
        // (not committed yet, so the read does not see it).
        let mut other = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::query("BEGIN").execute(&mut other).await.unwrap();
        sqlx::query(
            "INSERT INTO conversations (account_id, conversation_id, last_sequence)
             VALUES ('acc_1', 'conv_a', 1)",
        )
        .execute(&mut other)
        .await
        .unwrap();
        let db = Arc::new(db);
        let turn = tokio::spawn({
            let db = db.clone();
            async move { db.write_together(&[published(1, "conv_a")], &[], &[]).await }
        });
        // The turn has read no counter and now waits on the other's key.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!turn.is_finished());
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        let refused = turn.await.unwrap();
        assert!(matches!(refused, Ok(None)), "{refused:?}");
        assert!(db.get_message("msg_0001").await.unwrap().is_none());
        // Saved one by one, as the group commit does next: number 2.
        let saved = db.save_messages(&[published(1, "conv_a")]).await.unwrap();
        assert_eq!(sequences(&saved), [Some(2)]);
        assert_eq!(
            turn_numbers(&*db, &[published(2, "conv_a")]).await,
            [Some(3)]
        );
        drop(other);
        drop(db);
        drop_postgres_database(admin, &name).await;
    }

    /// On PostgreSQL a write turn hands the first row of a conversation to
    /// its publisher, and leaves the next one, behind a row still in the
    /// outbox, to a lease: the publisher leases it as soon as the turn that
    /// removes the row before it commits, not at its next tick, though it
    /// no longer leases at every wake-up that finds nothing handed over.
    #[tokio::test]
    async fn a_row_left_to_a_lease_is_leased_once_the_row_before_it_is_removed() {
        let Some((admin, url, name)) = postgres_database().await else {
            return;
        };
        let db = postgres_with_account(&url).await;
        for i in [1, 2] {
            let turn = [published(i, "conv_a")];
            db.write_together(&turn, &[], &[]).await.unwrap().unwrap();
        }
        assert_eq!(next_outbox(&db).await, [("msg_0001".to_owned(), false)]);
        assert!(next_outbox(&db).await.is_empty());
        let removal = ["msg_0001".to_owned()];
        db.write_together(&[], &removal, &[])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next_outbox(&db).await, [("msg_0002".to_owned(), false)]);
        drop(db);
        drop_postgres_database(admin, &name).await;
    }

    /// An ingest that starts with rows in the outbox (another one stopped,
    /// its claims ran out; or NATS was down) drains them as fast as they
    /// are removed: once a lease found rows, the rows behind them are leased
    /// as soon as the turn removing them commits, not at the next tick.
    #[tokio::test]
    async fn rows_behind_leased_ones_are_leased_once_those_are_removed() {
        let Some((admin, url, name)) = postgres_database().await else {
            return;
        };
        let stopped = postgres_with_account(&url).await;
        let turn = [published(1, "conv_a"), published(2, "conv_a")];
        stopped
            .write_together(&turn, &[], &[])
            .await
            .unwrap()
            .unwrap();
        drop(stopped);
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::query("UPDATE outbox SET claimed_until = NULL")
            .execute(&mut conn)
            .await
            .unwrap();
        let db = crate::store::PgStore::open(&url).await.unwrap();
        assert_eq!(next_outbox(&db).await, [("msg_0001".to_owned(), true)]);
        let removal = ["msg_0001".to_owned()];
        db.write_together(&[], &removal, &[])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next_outbox(&db).await, [("msg_0002".to_owned(), false)]);
        drop((conn, db));
        drop_postgres_database(admin, &name).await;
    }

    /// The ids and `has_next` of what the publisher reads next.
    async fn next_outbox(db: &impl MessageStore) -> Vec<(String, bool)> {
        let read = db.pending_outbox(300).await.unwrap();
        read.into_iter()
            .map(|e| (e.message_id, e.has_next))
            .collect()
    }

    /// A PostgreSQL store on the database at `url` with the account `acc_1`.
    async fn postgres_with_account(url: &str) -> crate::store::PgStore {
        let db = crate::store::PgStore::open(url).await.unwrap();
        db.insert_account(&AccountRow::example("acc_1", "1"))
            .await
            .unwrap();
        db
    }

    /// An SQLite store in `dir` with the account `acc_1`.
    async fn sqlite_with_account(dir: &tempfile::TempDir) -> SqliteStore {
        let db = SqliteStore::open(&sqlite_url(dir)).await.unwrap();
        db.insert_account(&AccountRow::example("acc_1", "1"))
            .await
            .unwrap();
        db
    }

    /// A small SQLite turn reads the outbox at its end, and the publisher's
    /// next read takes that instead of a trip to SQLite; but only while
    /// nothing has written since, on the writing connection or another.
    #[tokio::test]
    async fn a_turns_outbox_read_is_used_only_while_nothing_has_changed() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_with_account(&dir).await;
        let turn = [
            published(1, "conv_a"),
            published(2, "conv_a"),
            published(3, "conv_b"),
        ];
        db.write_together(&turn, &[], &[]).await.unwrap().unwrap();
        assert!(db.outbox_read_kept());
        // What the turn read is what SQLite answers now: a conversation's
        // first row only, saying that another waits behind it.
        let kept = next_outbox(&db).await;
        assert!(!db.outbox_read_kept(), "taken once");
        let read = next_outbox(&db).await;
        let expected = vec![
            ("msg_0001".to_owned(), true),
            ("msg_0003".to_owned(), false),
        ];
        assert_eq!(kept, expected);
        assert_eq!(read, expected);

        // A removal on the writing connection after the turn.
        db.write_together(&[published(4, "conv_c")], &[], &[])
            .await
            .unwrap()
            .unwrap();
        assert!(db.outbox_read_kept());
        db.remove_from_outbox(&["msg_0001".to_owned(), "msg_0004".to_owned()])
            .await
            .unwrap();
        let expected = vec![
            ("msg_0002".to_owned(), false),
            ("msg_0003".to_owned(), false),
        ];
        assert_eq!(next_outbox(&db).await, expected);

        // A write on a reading connection after the turn.
        db.write_together(&[published(5, "conv_d")], &[], &[])
            .await
            .unwrap()
            .unwrap();
        assert!(db.outbox_read_kept());
        db.execute_on_reader("DELETE FROM outbox WHERE message_id IN ('msg_0003', 'msg_0005')")
            .await;
        let expected = vec![("msg_0002".to_owned(), false)];
        assert_eq!(next_outbox(&db).await, expected);

        // A turn with more saves than a light load brings reads nothing.
        let busy: Vec<_> = (10..19).map(|i| published(i, "conv_e")).collect();
        db.write_together(&busy, &[], &[]).await.unwrap().unwrap();
        assert!(!db.outbox_read_kept());
    }

    fn sequences(saved: &[SaveOutcome]) -> Vec<Option<u64>> {
        saved
            .iter()
            .map(|s| match s {
                SaveOutcome::Saved { sequence } => *sequence,
                SaveOutcome::Duplicate => None,
            })
            .collect()
    }

    /// Saves `messages` in one turn; their sequences.
    async fn turn_numbers(db: &impl MessageStore, messages: &[NewMessage]) -> Vec<Option<u64>> {
        let (saved, _) = db
            .write_together(messages, &[], &[])
            .await
            .unwrap()
            .unwrap();
        sequences(&saved)
    }

    /// The sequence in the payload the outbox holds for a message that is
    /// first in its conversation's outbox.
    async fn payload_sequence(db: &SqliteStore, message_id: &str) -> serde_json::Value {
        let outbox = db.pending_outbox(300).await.unwrap();
        let entry = outbox.iter().find(|e| e.message_id == message_id).unwrap();
        let payload: serde_json::Value = serde_json::from_slice(&entry.payload).unwrap();
        payload["sequence"].clone()
    }

    /// On SQLite a write turn numbers its events from the counters the turns
    /// before it left, without reading them first; but only while nothing
    /// else has written, and a kept counter that is not SQLite's fails the
    /// turn before its commit.
    #[tokio::test]
    async fn a_turn_numbers_from_the_last_turns_counters_only_while_nothing_else_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_with_account(&dir).await;
        let two = [published(1, "conv_a"), published(2, "conv_a")];
        assert_eq!(turn_numbers(&db, &two).await, [Some(1), Some(2)]);
        assert_eq!(db.counter_kept("acc_1", "conv_a"), Some(2));
        // From memory, beside a conversation it does not know yet (which
        // sends the turn to SQLite's counters, and is kept after it).
        let both = [published(3, "conv_a"), published(4, "conv_b")];
        assert_eq!(turn_numbers(&db, &both).await, [Some(3), Some(1)]);
        assert_eq!(db.counter_kept("acc_1", "conv_b"), Some(1));
        assert_eq!(
            turn_numbers(&db, &[published(5, "conv_b"), published(6, "conv_a")]).await,
            [Some(2), Some(4)]
        );
        assert_eq!(db.counter_kept("acc_1", "conv_a"), Some(4));
        db.remove_from_outbox(&["msg_0001".into(), "msg_0002".into(), "msg_0003".into()])
            .await
            .unwrap();
        assert_eq!(payload_sequence(&db, "msg_0006").await, 4);

        // A write transaction outside the turns (the one-by-one path).
        let saved = db.save_messages(&[published(7, "conv_a")]).await.unwrap();
        assert_eq!(sequences(&saved), [Some(5)]);
        assert_eq!(
            turn_numbers(&db, &[published(8, "conv_a")]).await,
            [Some(6)]
        );

        // A write on a reading connection.
        db.execute_on_reader(
            "UPDATE conversations SET last_sequence = last_sequence + 10
             WHERE conversation_id = 'conv_a'",
        )
        .await;
        assert_eq!(
            turn_numbers(&db, &[published(9, "conv_a")]).await,
            [Some(17)]
        );

        // A kept counter SQLite does not hold (only a bug could do this):
        // the turn writes nothing, and the next one reads SQLite's.
        db.corrupt_counter("acc_1", "conv_a", 3);
        let refused = db
            .write_together(&[published(10, "conv_a")], &[], &[])
            .await;
        assert!(refused.is_err(), "{refused:?}");
        assert!(db.get_message("msg_0010").await.unwrap().is_none());
        assert_eq!(
            turn_numbers(&db, &[published(10, "conv_a")]).await,
            [Some(18)]
        );
        assert_eq!(db.counter_kept("acc_1", "conv_a"), Some(18));
    }

    async fn one_turn(db: impl MessageStore + AccountStore) {
        db.insert_account(&AccountRow::example("acc_1", "1"))
            .await
            .unwrap();
        let first = [published(1, "conv_a"), published(2, "conv_b")];
        let (saved, known) = db.write_together(&first, &[], &[]).await.unwrap().unwrap();
        assert_eq!(
            saved,
            [1, 1].map(|n| SaveOutcome::Saved { sequence: Some(n) })
        );
        assert!(known.is_empty());

        // msg_0001 was published (its outbox row goes) and delivered; an
        // outcome for a message that is gone is recorded as unknown.
        let second = [published(3, "conv_a"), published(4, "conv_a")];
        let outcomes = [delivered("msg_0001"), delivered("msg_gone")];
        let (saved, known) = db
            .write_together(&second, &["msg_0001".to_owned()], &outcomes)
            .await
            .unwrap()
            .unwrap();
        let sequences: Vec<_> = saved
            .iter()
            .map(|s| match s {
                SaveOutcome::Saved { sequence } => *sequence,
                SaveOutcome::Duplicate => None,
            })
            .collect();
        assert_eq!(sequences, vec![Some(2), Some(3)]);
        assert_eq!(known, vec![true, false]);
        let row = db.get_message("msg_0001").await.unwrap().unwrap();
        assert_eq!(
            row.delivery_status,
            shared::model::DeliveryStatus::Delivered
        );
        assert_eq!(row.delivery_attempts, 1);
        let outbox: Vec<String> = db
            .pending_outbox(10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.message_id)
            .collect();
        assert!(!outbox.contains(&"msg_0001".to_owned()), "{outbox:?}");
        assert!(outbox.contains(&"msg_0002".to_owned()), "{outbox:?}");

        // Two outcomes of one message in a turn apply in their order.
        let mut retrying = delivered("msg_0002");
        retrying.outcome = shared::subjects::Outcome::Retrying;
        retrying.status_code = Some(500);
        let mut then = delivered("msg_0002");
        then.attempt = 2;
        let (_, known) = db
            .write_together(&[], &[], &[retrying, then])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(known, vec![true, true]);
        let row = db.get_message("msg_0002").await.unwrap().unwrap();
        assert_eq!(
            row.delivery_status,
            shared::model::DeliveryStatus::Delivered
        );
        assert_eq!(row.delivery_attempts, 2);

        // A redelivery of message 4 beside a new event: nothing of the turn
        // is written together, and the caller is told so.
        let mut again = published(4, "conv_a");
        again.id = "msg_again".into();
        let third = [again, published(5, "conv_a")];
        assert!(db.write_together(&third, &[], &[]).await.unwrap().is_none());
        // A refused turn leaves no transaction open behind it (SQLite's turn
        // begins and commits inside its own queries): the turns after it,
        // on whichever pooled connection, write.
        for i in 0..4 {
            assert!(db.write_together(&third, &[], &[]).await.unwrap().is_none());
            let (saved, _) = db
                .write_together(&[published(10 + i, "conv_b")], &[], &[])
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                saved,
                [SaveOutcome::Saved {
                    sequence: Some(2 + i as u64)
                }]
            );
        }
        let saved = db.save_messages(&third).await.unwrap();
        assert_eq!(
            saved,
            vec![
                SaveOutcome::Duplicate,
                SaveOutcome::Saved { sequence: Some(4) }
            ]
        );
        assert!(db.get_message("msg_again").await.unwrap().is_none());
    }

    /// A committed save reaches the database file itself within moments,
    /// copied there by the checkpointer off the write path, with nothing
    /// written after it; left to the writing connection it would wait in
    /// the WAL until thousands of pages had gathered there.
    #[tokio::test]
    async fn the_checkpointer_copies_a_write_turn_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_with_account(&dir).await;
        db.write_together(&[published(1, "conv_a")], &[], &[])
            .await
            .unwrap()
            .unwrap();
        let copy = dir.path().join("copy.db");
        let in_file = |copy: std::path::PathBuf| async move {
            // The database file alone, without its WAL: what is checkpointed.
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(copy)
                .immutable(true);
            let mut conn = sqlx::ConnectOptions::connect(&options).await.ok()?;
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messages WHERE id = 'msg_0001'")
                .fetch_one(&mut conn)
                .await
                .ok()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            std::fs::copy(dir.path().join("t.db"), &copy).unwrap();
            if in_file(copy.clone()).await == Some(1) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the saved message never reached the database file"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Copies an SQLite store's WAL into its database file and empties it;
    /// again while the store's own checkpointer holds the WAL (`busy`).
    async fn empty_the_wal(conn: &mut sqlx::SqliteConnection) {
        for _ in 0..100 {
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            if busy == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the WAL stayed busy");
    }

    /// The b-trees (tables and indexes) whose pages the last write turns
    /// put in the WAL of the store in `dir` (`conn` is a connection to it),
    /// by name, each with its count of pages.
    async fn pages_in_the_wal(
        dir: &tempfile::TempDir,
        conn: &mut sqlx::SqliteConnection,
    ) -> std::collections::BTreeMap<String, usize> {
        let wal = std::fs::read(dir.path().join("t.db-wal")).unwrap();
        let be = |bytes: &[u8]| u32::from_be_bytes(bytes[..4].try_into().unwrap());
        let page_size = be(&wal[8..]) as usize;
        let salts = &wal[16..24];
        let owners: std::collections::HashMap<i64, String> =
            sqlx::query_as::<_, (String, i64)>("SELECT name, pageno FROM dbstat")
                .fetch_all(conn)
                .await
                .unwrap()
                .into_iter()
                .map(|(name, page)| (page, name))
                .collect();
        let mut pages = std::collections::BTreeMap::new();
        // Frames of a 24-byte header (the page's number first) and a page,
        // after the WAL's 32-byte header; a frame of an older WAL has other salts.
        for frame in wal[32..].chunks_exact(24 + page_size) {
            if &frame[8..16] != salts {
                break;
            }
            let page = i64::from(be(frame));
            let owner = owners.get(&page).cloned().unwrap_or_else(|| "?".into());
            *pages.entry(owner).or_insert(0) += 1;
        }
        pages
    }

    /// At a steady load an SQLite write turn is one message's save, the
    /// removal of the message before it from the outbox and that one's
    /// delivery outcome. SQLite writes each page a transaction changes to
    /// its WAL whole (and again into the database file at the next
    /// checkpoint), so a turn costs what it touches: 15.1 pages a turn at
    /// 500 messages a second, 13.3 since neither a save nor a delivery
    /// touches the dead-letter index (which holds only the messages set
    /// aside) and an attempt is written in one b-tree, not two. Here, on a
    /// small database, 12 pages with the old schema, 10 now.
    #[tokio::test]
    async fn an_sqlite_turn_writes_no_page_of_the_dead_letter_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_with_account(&dir).await;
        let turn = |i: usize| {
            let save = [published(i, &format!("conv_{}", i % 20))];
            let before = format!("msg_{:04}", i - 1);
            (save, vec![before.clone()], vec![delivered(&before)])
        };
        db.write_together(&[published(0, "conv_0")], &[], &[])
            .await
            .unwrap()
            .unwrap();
        for i in 1..200 {
            let (save, removal, outcome) = turn(i);
            db.write_together(&save, &removal, &outcome)
                .await
                .unwrap()
                .unwrap();
        }
        // The WAL emptied, then one turn more.
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&sqlite_url(&dir))
            .await
            .unwrap();
        empty_the_wal(&mut conn).await;
        let (save, removal, outcome) = turn(200);
        let (_, known) = db
            .write_together(&save, &removal, &outcome)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(known, [true]);
        // One page of each b-tree the turn changes, and of no other: none of
        // the dead-letter index (`messages_set_aside`), none of a separate
        // key for the attempts.
        let pages = pages_in_the_wal(&dir, &mut conn).await;
        let written: Vec<&str> = pages.keys().map(String::as_str).collect();
        assert_eq!(
            written,
            [
                "conversations",
                "delivery_attempts",
                "messages",
                "messages_by_conversation",
                "messages_by_mid",
                "outbox",
                "outbox_by_conversation",
                "sqlite_autoindex_messages_1",
                "sqlite_autoindex_messages_2",
                "sqlite_autoindex_outbox_1",
            ]
        );
        assert_eq!(pages.values().sum::<usize>(), written.len(), "{pages:?}");

        // A message set aside is in the index, and listed from it.
        let (save, removal, mut outcome) = turn(201);
        outcome[0].outcome = shared::subjects::Outcome::Dead;
        db.write_together(&save, &removal, &outcome)
            .await
            .unwrap()
            .unwrap();
        let listed = db
            .list_dead_letters(&crate::store::DeadLetterFilter::default(), None, 10)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, "msg_0200");
    }
}
