//! The store's multi-row writes, on each real database: many webhooks'
//! events saved with a few statements, outcomes recorded together, outbox
//! rows removed together, and all three in one transaction when they meet
//! in the writer. What a user would see if they went wrong: a gap
//! or a repeat in a conversation's `sequence`, a redelivered event saved
//! twice, or a message's delivery state out of order.

use chrono::Utc;
use ingest::store::{AccountRow, NewMessage, SaveOutcome, Stores};
use router_tests::{Db, TestDatabase};
use shared::model::{CrmWebhookUrl, DeliveryStatus, Direction, EventKind, MessageEvent};
use shared::subjects::Outcome;
use shared::wire::{DeliveryOutcome, InboundMessageWebhook};

router_tests::on_both_stores!(
    saves_together_number_conversations_without_gaps,
    outcomes_together_apply_in_order_per_message,
    one_turn_writes_saves_removals_and_outcomes_or_nothing
);

async fn open(db: Db) -> (TestDatabase, Stores) {
    let database = TestDatabase::create(db).await;
    let stores = ingest::store::open(&database.url(), None).await.unwrap();
    let now = Utc::now();
    stores
        .accounts
        .insert_account(&AccountRow::new(
            "acc_1".into(),
            "Shop".into(),
            "1784".into(),
            CrmWebhookUrl::parse("https://crm.example/").unwrap(),
            "whsec_c2VjcmV0".into(),
            now,
        ))
        .await
        .unwrap();
    (database, stores)
}

/// An inbound message of conversation `conversation`, recognised by `mid`.
fn event(mid: &str, conversation: &str, publish: bool) -> NewMessage {
    let id = format!("msg_{}", ulid::Ulid::new().to_string().to_lowercase());
    NewMessage {
        id: id.clone(),
        account_id: "acc_1".into(),
        event: MessageEvent::Received(EventKind::MessageReceived),
        event_key: mid.into(),
        instagram_message_id: mid.into(),
        direction: Direction::Inbound,
        conversation_id: conversation.into(),
        sender_id: "9".into(),
        recipient_id: "1784".into(),
        message_type: "text".into(),
        text: Some("hello".into()),
        attachments: "[]".into(),
        sent_at: Utc::now(),
        subject: "router.inbound.acc_1".into(),
        webhook: Some(InboundMessageWebhook {
            event: EventKind::MessageReceived,
            message_id: id,
            account_id: "acc_1".into(),
            sender_id: "9".into(),
            sender_username: None,
            message: Some("hello".into()),
            message_type: "text".into(),
            timestamp: shared::wire::rfc3339(Utc::now()),
            instagram_message_id: mid.into(),
            conversation_id: conversation.into(),
            sequence: None,
            attachments: vec![],
            reply_to: None,
            quick_reply: None,
            reaction: None,
            postback: None,
            referral: None,
            edit_count: None,
            reply_window_ends_at: None,
            human_agent_window_ends_at: None,
            comment: None,
        }),
        publish,
        hold_until: None,
    }
}

fn saved(sequence: u64) -> SaveOutcome {
    SaveOutcome::Saved {
        sequence: Some(sequence),
    }
}

async fn saves_together_number_conversations_without_gaps(db: Db) {
    let (_database, stores) = open(db).await;
    let messages = &stores.messages;
    let first = vec![
        event("m1", "conv_a", true),
        event("m2", "conv_b", true),
        event("m3", "conv_a", true),
        event("m4", "conv_a", false),
        event("m5", "conv_a", true),
    ];
    assert_eq!(
        messages.save_messages(&first).await.unwrap(),
        vec![
            saved(1),
            saved(1),
            saved(2),
            SaveOutcome::Saved { sequence: None },
            saved(3)
        ],
        "each conversation numbered in the order of the batch; a skipped event takes no number"
    );
    let stored = messages.get_message(&first[4].id).await.unwrap().unwrap();
    assert_eq!(stored.sequence, Some(3));
    assert_eq!(
        messages
            .get_message(&first[3].id)
            .await
            .unwrap()
            .unwrap()
            .delivery_status,
        DeliveryStatus::Skipped
    );
    let outbox = messages.pending_outbox(100).await.unwrap();
    let mut heads: Vec<_> = outbox.iter().map(|e| e.message_id.clone()).collect();
    heads.sort();
    let mut expected = vec![first[0].id.clone(), first[1].id.clone()];
    expected.sort();
    assert_eq!(
        heads, expected,
        "the outbox holds the published events, one conversation head at a time"
    );

    // A redelivery among new events: it is refused as a duplicate, and the
    // new events still follow on without a gap.
    let second = vec![
        event("m6", "conv_a", true),
        event("m3", "conv_a", true),
        event("m7", "conv_b", true),
    ];
    assert_eq!(
        messages.save_messages(&second).await.unwrap(),
        vec![saved(4), SaveOutcome::Duplicate, saved(2)]
    );
    assert_eq!(
        messages
            .save_messages(&[event("m8", "conv_a", true), event("m9", "conv_a", true)])
            .await
            .unwrap(),
        vec![saved(5), saved(6)]
    );
    assert!(
        messages.get_message(&second[1].id).await.unwrap().is_none(),
        "the duplicate is not stored"
    );

    // Published rows leave the outbox together.
    let (before, _) = messages.outbox_backlog().await.unwrap();
    assert_eq!(before, 8);
    messages
        .remove_from_outbox(&[
            first[0].id.clone(),
            first[1].id.clone(),
            second[0].id.clone(),
        ])
        .await
        .unwrap();
    let (after, _) = messages.outbox_backlog().await.unwrap();
    assert_eq!(after, 5);
}

fn outcome(
    message_id: &str,
    attempt: u32,
    outcome: Outcome,
    error: Option<&str>,
) -> DeliveryOutcome {
    DeliveryOutcome {
        message_id: message_id.into(),
        account_id: "acc_1".into(),
        outcome,
        inbound_sequence: 7,
        attempt,
        status_code: Some(if outcome == Outcome::Delivered {
            200
        } else {
            500
        }),
        error: error.map(str::to_owned),
        at: Utc::now(),
    }
}

async fn outcomes_together_apply_in_order_per_message(db: Db) {
    let (_database, stores) = open(db).await;
    let batch = vec![
        event("m1", "conv_a", true),
        event("m2", "conv_b", true),
        event("m3", "conv_c", true),
    ];
    stores.messages.save_messages(&batch).await.unwrap();
    let [one, two, three] = [&batch[0].id, &batch[1].id, &batch[2].id];
    let known = stores
        .outcomes
        .record_outcomes(&[
            outcome(one, 1, Outcome::Retrying, Some("http_500")),
            outcome(two, 1, Outcome::Delivered, None),
            outcome(one, 2, Outcome::Delivered, None),
            outcome("msg_gone", 1, Outcome::Delivered, None),
            outcome(three, 2, Outcome::Dead, Some("http_500")),
            // Older than what is recorded for `three`: counted, state kept.
            outcome(three, 1, Outcome::Retrying, Some("timeout")),
        ])
        .await
        .unwrap();
    assert_eq!(known, vec![true, true, true, false, true, true]);

    let row = |id: &str| {
        let messages = stores.messages.clone();
        let id = id.to_owned();
        async move { messages.get_message(&id).await.unwrap().unwrap() }
    };
    let one = row(one).await;
    assert_eq!(one.delivery_status, DeliveryStatus::Delivered);
    assert_eq!(one.delivery_attempts, 2);
    assert_eq!(
        one.last_error.as_deref(),
        Some("http_500"),
        "the failed attempt before the delivery is still shown"
    );
    assert!(one.delivered_at.is_some());
    let two = row(two).await;
    assert_eq!(two.delivery_status, DeliveryStatus::Delivered);
    assert_eq!(two.delivery_attempts, 1);
    let three = row(three).await;
    assert_eq!(three.delivery_status, DeliveryStatus::Dead);
    assert_eq!(three.delivery_attempts, 2);
    assert_eq!(three.last_error.as_deref(), Some("http_500"));
    assert!(three.dead_at.is_some());

    // The same outcome again (a redelivered outcome) changes nothing.
    stores
        .outcomes
        .record_outcomes(&[outcome(&three.id, 2, Outcome::Dead, Some("http_500"))])
        .await
        .unwrap();
    assert_eq!(row(&three.id).await.delivery_attempts, 2);
}

async fn one_turn_writes_saves_removals_and_outcomes_or_nothing(db: Db) {
    let (_database, stores) = open(db).await;
    let first = vec![event("m1", "conv_a", true), event("m2", "conv_b", true)];
    stores.messages.save_messages(&first).await.unwrap();
    let status = |id: &str| {
        let messages = stores.messages.clone();
        let id = id.to_owned();
        async move {
            messages
                .get_message(&id)
                .await
                .unwrap()
                .unwrap()
                .delivery_status
        }
    };

    // A save, a removal and an outcome written together.
    let next = event("m3", "conv_a", true);
    let (saved_now, known) = stores
        .messages
        .write_together(
            std::slice::from_ref(&next),
            std::slice::from_ref(&first[0].id),
            &[outcome(&first[1].id, 1, Outcome::Delivered, None)],
        )
        .await
        .unwrap()
        .expect("nothing already saved");
    assert_eq!(saved_now, vec![saved(2)], "conv_a's second event");
    assert_eq!(known, vec![true]);
    assert_eq!(stores.messages.outbox_backlog().await.unwrap().0, 2);
    assert_eq!(status(&first[1].id).await, DeliveryStatus::Delivered);

    // A turn with an event already saved writes nothing at all.
    let again = event("m1", "conv_a", true);
    let turn = stores
        .messages
        .write_together(
            std::slice::from_ref(&again),
            std::slice::from_ref(&next.id),
            &[outcome(&next.id, 1, Outcome::Delivered, None)],
        )
        .await
        .unwrap();
    assert!(turn.is_none());
    assert_eq!(stores.messages.outbox_backlog().await.unwrap().0, 2);
    assert_eq!(status(&next.id).await, DeliveryStatus::Pending);

    // Through the writer, the same three at once: the duplicate is told
    // apart, the removal and the outcome still land.
    let writes = &stores.saves;
    let (saves, removal, recorded) = tokio::join!(
        writes.save_all(vec![again, event("m4", "conv_c", true)]),
        writes.remove_from_outbox(vec![next.id.clone()]),
        writes.record_outcomes(vec![outcome(&next.id, 1, Outcome::Delivered, None)]),
    );
    let saves: Vec<_> = saves.into_iter().map(Result::unwrap).collect();
    assert_eq!(saves, vec![SaveOutcome::Duplicate, saved(1)]);
    removal.unwrap();
    assert_eq!(recorded.unwrap(), vec![true]);
    assert_eq!(
        stores.messages.outbox_backlog().await.unwrap().0,
        2,
        "m2 and m4"
    );
    assert_eq!(status(&next.id).await, DeliveryStatus::Delivered);
}
