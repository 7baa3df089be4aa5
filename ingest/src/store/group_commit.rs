//! Group commit: saves that arrive while another is being written share the
//! next transaction, and so one commit (one fsync) for many webhooks. Each
//! caller still gets its answer only after its own rows are committed, so
//! Meta's 200 still means "saved". Under light load a save is written at
//! once, alone; nothing waits for a batch to fill.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{MessageStore, NewMessage, SaveOutcome, StoreError};

/// The most saves in one transaction.
const MAX_BATCH: usize = 256;

/// One caller's messages, saved in order and in the same transaction.
struct Job {
    messages: Vec<NewMessage>,
    done: oneshot::Sender<Vec<Result<SaveOutcome, StoreError>>>,
}

/// The handle callers save through; the writer task ends with the last one.
#[derive(Clone)]
pub struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    pub fn start(store: Arc<dyn MessageStore>) -> Self {
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write(store, queue));
        Self { jobs }
    }

    /// Saves messages in this order, together, in whatever transaction is
    /// next; one outcome per message, once that transaction is committed.
    pub async fn save_all(
        &self,
        messages: Vec<NewMessage>,
    ) -> Vec<Result<SaveOutcome, StoreError>> {
        let count = messages.len();
        let stopped = || {
            (0..count)
                .map(|_| Err(StoreError::Database(sqlx::Error::PoolClosed)))
                .collect()
        };
        let (done, answer) = oneshot::channel();
        if self.jobs.send(Job { messages, done }).await.is_err() {
            return stopped();
        }
        answer.await.unwrap_or_else(|_| stopped())
    }
}

async fn write(store: Arc<dyn MessageStore>, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut sizes = Vec::with_capacity(batch.len());
        let mut answers = Vec::with_capacity(batch.len());
        let mut messages = Vec::new();
        for job in batch.drain(..) {
            sizes.push(job.messages.len());
            answers.push(job.done);
            messages.extend(job.messages);
        }
        metrics::histogram!("router_ingest_save_batch_size").record(messages.len() as f64);
        let mut outcomes: Vec<Result<SaveOutcome, StoreError>> =
            match store.save_messages(&messages).await {
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
            }
            .into_iter()
            .rev()
            .collect();
        for (answer, size) in answers.into_iter().zip(sizes) {
            let mine = (0..size).filter_map(|_| outcomes.pop()).collect();
            let _ = answer.send(mine);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use shared::model::{AccountStatus, CrmWebhookUrl, Direction, EventKind, EventSelection};

    use super::*;
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
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let db = Arc::new(SqliteStore::open(&url).await.unwrap());
        let now = Utc::now();
        db.insert_account(&AccountRow {
            id: "acc_1".into(),
            name: "Shop".into(),
            instagram_account_id: "1".into(),
            crm_webhook_url: CrmWebhookUrl::parse("https://crm.example/").unwrap(),
            auto_reply_text: None,
            status: AccountStatus::Active,
            instagram_access_token: None,
            webhook_secret: "whsec_c2VjcmV0".into(),
            created_at: now,
            updated_at: now,
            events: EventSelection::Every,
            auto_reply_cooldown_secs: 60,
            max_in_flight: None,
            deliveries_paused_at: None,
            deliveries_resumed_at: None,
        })
        .await
        .unwrap();
        let saves = GroupCommit::start(db.clone());
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
}
