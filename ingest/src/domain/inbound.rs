//! What ingest does with a verified webhook from Meta: each event of a
//! known, enabled account is saved with its outbox entry (before Meta gets
//! its 200), and the follow-ups (username, auto-reply) are started.

use std::sync::Arc;

use chrono::Utc;
use shared::ids::{AccountId, MessageId};
use shared::model::{AccountStatus, Direction, EventKind, MessageEvent};
use shared::wire::{self, InboundMessageWebhook};
use tracing::Instrument as _;

use super::{Core, followups};
use crate::meta::payload::{Classified, WebhookPayload};
use crate::store::{AccountRow, KeptEvent, NewMessage, RefusedRow, SaveOutcome, StoreError};

/// What one webhook delivery came to, for the log line and the tests.
#[derive(Debug, Default)]
pub struct Tally {
    pub saved: u32,
    pub duplicates: u32,
    pub unknown_account: u32,
    pub not_forwarded: u32,
    /// Events the database kept refusing, set aside.
    pub set_aside: u32,
}

pub async fn save_events(core: &Arc<Core>, payload: &WebhookPayload) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    if payload.object != "instagram" {
        tracing::info!(object = %payload.object, "ignoring webhook for another object");
        return Ok(tally);
    }
    for entry in &payload.entry {
        let events = entry.events();
        let count = events.len();
        let account = core
            .store
            .accounts
            .account_by_instagram_id(&entry.id)
            .await?;
        let Some(account) = account else {
            tracing::info!(instagram_account_id = %entry.id, events = count, "webhook for an unknown account ignored");
            tally.unknown_account += count as u32;
            continue;
        };
        if account.status == AccountStatus::Disabled {
            tracing::info!(account_id = %account.id, events = count, "webhook for a disabled account ignored");
            tally.not_forwarded += count as u32;
            continue;
        }
        let account_id = AccountId::parse(&account.id)?;
        // An entry's events are saved together (one trip to the writer),
        // except that what must see the earlier events stored (a deletion,
        // an echo) waits until they are.
        let mut batch = Vec::new();
        for classified in events {
            let Some(c) = classified else {
                tracing::debug!(account_id = %account.id, "event kind not forwarded");
                tally.not_forwarded += 1;
                continue;
            };
            if matches!(
                c.event,
                EventKind::MessageDeleted | EventKind::MessageEdited | EventKind::MessageEcho
            ) {
                save_batch(core, &account, std::mem::take(&mut batch), &mut tally).await?;
            }
            let span = tracing::info_span!("event", account_id = %account.id, event = %c.event);
            if let Some(prepared) = prepare_event(core, &account, &account_id, &entry.id, c)
                .instrument(span)
                .await?
            {
                batch.push(prepared);
            } else {
                tally.duplicates += 1;
            }
        }
        save_batch(core, &account, batch, &mut tally).await?;
    }
    Ok(tally)
}

/// An event ready to be saved, with what its follow-ups need.
struct Prepared {
    new: NewMessage,
    followup: Followup,
}

/// What happens after an event is saved needs: the CRM payload (with its
/// message id), whether it is held for a username, and whom it is from;
/// or, if the database keeps refusing it, what is kept of it.
struct Followup {
    kept: KeptEvent,
    customer_id: String,
    held_for_username: bool,
}

/// Runs an event's steps before its save; `None` when it is the echo of a
/// reply sent through the API (recorded with that reply).
async fn prepare_event(
    core: &Arc<Core>,
    account: &AccountRow,
    account_id: &AccountId,
    instagram_account_id: &str,
    c: Classified,
) -> anyhow::Result<Option<Prepared>> {
    if c.event == EventKind::MessageDeleted {
        core.store
            .messages
            .mark_deleted(&account.id, &c.mid, c.time)
            .await?;
    }
    if c.event == EventKind::MessageEdited {
        core.store
            .messages
            .mark_edited(&account.id, &c.mid, c.time, c.text.as_deref())
            .await?;
    }
    if c.event == EventKind::MessageEcho && echo_of_our_send(core, &account.id, &c).await? {
        tracing::info!(account_id = %account.id, "echo of a message sent through the API recorded");
        return Ok(None);
    }
    // The customer's username: from the cache now, or looked up after the
    // 200 while the outbox holds the message for a moment.
    let token = account
        .instagram_access_token
        .as_deref()
        .filter(|t| !t.is_empty());
    let (sender_username, lookup) = match (c.direction, token) {
        // A comment names its author.
        _ if c.sender_username.is_some() => (c.sender_username.clone(), false),
        // A mention names no one.
        _ if c.sender_id.is_empty() => (None, false),
        (Direction::Inbound, Some(_)) => match core.usernames.cached(&account.id, &c.sender_id) {
            Some(known) => (known, false),
            None => (None, true),
        },
        _ => (None, false),
    };
    let publish = account.events.receives(c.event);
    let id = MessageId::generate();
    let webhook = InboundMessageWebhook {
        event: c.event,
        message_id: id.to_string(),
        account_id: account_id.to_string(),
        sender_id: c.sender_id.clone(),
        sender_username,
        message: c.text.clone(),
        message_type: c.message_type.clone(),
        timestamp: wire::rfc3339(c.time),
        instagram_message_id: c.mid.clone(),
        conversation_id: wire::conversation_id(&c.customer_id, instagram_account_id),
        sequence: None,
        attachments: c.attachments.clone(),
        reply_to: c.reply_to,
        quick_reply: c.quick_reply,
        reaction: c.reaction,
        postback: c.postback,
        referral: c.referral,
        edit_count: c.edit_count,
        // Set when it is saved, from the conversation's stored state.
        reply_window_ends_at: None,
        human_agent_window_ends_at: None,
        comment: c.comment,
    };
    let new = NewMessage {
        id: id.to_string(),
        account_id: account_id.to_string(),
        event: MessageEvent::Received(c.event),
        event_key: c.event_key,
        instagram_message_id: c.mid,
        direction: c.direction,
        conversation_id: webhook.conversation_id.clone(),
        sender_id: c.sender_id.clone(),
        recipient_id: c.recipient_id,
        message_type: c.message_type,
        text: c.text,
        attachments: serde_json::to_string(&c.attachments)?,
        sent_at: c.time,
        subject: core.subjects.inbound(account_id),
        webhook: Some(webhook.clone()),
        publish,
        hold_until: (publish && lookup).then(|| Utc::now() + followups::USERNAME_HOLD),
    };
    let followup = Followup {
        kept: KeptEvent {
            event_key: new.event_key.clone(),
            direction: new.direction,
            recipient_id: new.recipient_id.clone(),
            sent_at: new.sent_at,
            publish,
            webhook,
        },
        customer_id: c.customer_id,
        held_for_username: new.hold_until.is_some(),
    };
    Ok(Some(Prepared { new, followup }))
}

/// Saves prepared events in one group, in order, then starts their
/// follow-ups. Fails (and Meta redelivers) if any could not be saved.
async fn save_batch(
    core: &Arc<Core>,
    account: &AccountRow,
    batch: Vec<Prepared>,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    // Exactly as long as the batch (`unzip` would reserve room for four):
    // they are held until the save is committed, for every webhook in flight.
    let mut news = Vec::with_capacity(batch.len());
    let mut followups = Vec::with_capacity(batch.len());
    for p in batch {
        news.push(p.new);
        followups.push(p.followup);
    }
    let outcomes = core.store.saves.save_all(news).await;
    for (followup, outcome) in followups.into_iter().zip(outcomes) {
        let Followup {
            kept,
            customer_id,
            held_for_username,
        } = followup;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                if set_aside(core, &kept, &e).await {
                    tally.set_aside += 1;
                    continue;
                }
                return Err(e.into());
            }
        };
        let event = kept.webhook.event;
        let webhook = kept.webhook;
        match outcome {
            SaveOutcome::Saved { .. } => {
                tracing::info!(account_id = %account.id, message_id = %webhook.message_id, %event, "message saved");
                tally.saved += 1;
                if held_for_username {
                    followups::spawn_username_lookup(
                        core.clone(),
                        account.clone(),
                        webhook.message_id.clone(),
                        webhook.sender_id.clone(),
                    );
                }
                if event == EventKind::CommentCreated && kept.direction == Direction::Inbound {
                    followups::spawn_comment_auto_reply(
                        core.clone(),
                        account.clone(),
                        webhook.instagram_message_id.clone(),
                    );
                }
                if event == EventKind::MessageReceived {
                    followups::spawn_auto_reply(
                        core.clone(),
                        account.clone(),
                        customer_id,
                        webhook.conversation_id,
                    );
                }
            }
            SaveOutcome::Duplicate => {
                tracing::info!(account_id = %account.id, %event, "redelivered event ignored");
                tally.duplicates += 1;
            }
        }
    }
    Ok(())
}

/// Counts a refusal of an event by the database; true when the event is
/// now set aside (refused `INGEST_SAVE_ATTEMPTS` times, across Meta's
/// redeliveries), so its webhook can be accepted without it. False for an
/// error that is not a refusal (the database is down, say: Meta redelivers
/// and nothing is counted) or that could not be counted.
async fn set_aside(core: &Core, kept: &KeptEvent, error: &StoreError) -> bool {
    let Some(code) = error.refusal_code() else {
        return false;
    };
    let limit = core.config.ingest_save_attempts;
    let account_id = &kept.webhook.account_id;
    match core.store.messages.count_refusal(kept, &code, limit).await {
        Ok(true) => {
            metrics::counter!("router_ingest_save_set_aside_total").increment(1);
            tracing::error!(%account_id, message_id = %kept.webhook.message_id, error_code = %code, "the database keeps refusing this event; set aside (see /api/v1/refused-events)");
            true
        }
        Ok(false) => {
            tracing::warn!(%account_id, error_code = %code, "the database refused an event; meta will redeliver it");
            false
        }
        Err(e) => {
            tracing::warn!(%account_id, error = %e, "could not count a refused event");
            false
        }
    }
}

/// How long an echo waits for a reply to the same customer that is still on
/// its way to Meta: the echo can arrive before Meta's answer to the send.
const ECHO_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether an echo is of a message sent through our API (and so recorded).
async fn echo_of_our_send(core: &Core, account_id: &str, c: &Classified) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + ECHO_WAIT;
    loop {
        if core
            .store
            .messages
            .confirm_echo(account_id, &c.mid, c.time)
            .await?
        {
            return Ok(true);
        }
        let waiting = core
            .store
            .messages
            .send_in_flight(account_id, &c.customer_id)
            .await?;
        if !waiting || tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// What saving a set-aside event again came to.
#[derive(Debug)]
pub enum SavedAgain {
    /// Saved and on its way to the CRM, under its message id.
    Saved,
    /// Already saved (a redelivery from Meta got through since): nothing
    /// more to do.
    AlreadySaved,
    /// The database refuses it still, with this code.
    StillRefused(String),
}

/// Saves an event set aside after the database kept refusing it, now that
/// the cause may be fixed: as it would have been saved (same message id),
/// taking the conversation's next `sequence`. Its follow-ups (username,
/// auto-reply) are not run again. Forgotten once saved.
pub async fn save_again(core: &Core, row: &RefusedRow) -> Result<SavedAgain, StoreError> {
    let unreadable = |e: serde_json::Error| StoreError::Database(sqlx::Error::Decode(e.into()));
    let kept: KeptEvent = serde_json::from_slice(&row.kept).map_err(unreadable)?;
    let account_id = AccountId::parse(&row.account_id)
        .map_err(|e| StoreError::Database(sqlx::Error::Decode(e.into())))?;
    let new =
        NewMessage::from_kept(kept, core.subjects.inbound(&account_id)).map_err(unreadable)?;
    let outcome = core.store.saves.save_all(vec![new]).await.pop();
    match outcome.expect("one outcome per message") {
        Ok(saved) => {
            core.store.messages.forget_refused(&row.message_id).await?;
            Ok(match saved {
                SaveOutcome::Saved { .. } => {
                    core.outbox_wakeup.notify_one();
                    SavedAgain::Saved
                }
                SaveOutcome::Duplicate => SavedAgain::AlreadySaved,
            })
        }
        Err(e) => {
            let Some(code) = e.refusal_code() else {
                return Err(e);
            };
            core.store
                .messages
                .refused_again(&row.message_id, &code)
                .await?;
            Ok(SavedAgain::StillRefused(code))
        }
    }
}
