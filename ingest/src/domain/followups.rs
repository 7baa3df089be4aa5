//! Work that follows a saved event without delaying Meta's 200: looking up
//! the customer's username (while the outbox holds the message for at most
//! [`USERNAME_HOLD`]) and sending the account's auto-reply.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use hashlink::LruCache;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::Core;
use crate::meta::graph::GraphError;
use crate::store::AccountRow;

/// The longest a message waits for its sender's username before it is
/// published without one.
pub const USERNAME_HOLD: chrono::TimeDelta = chrono::TimeDelta::seconds(3);
/// The lookup's own bound, inside the hold.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(2500);
const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);
const UNKNOWN_FOR: Duration = Duration::from_secs(600);

type Lookup = Arc<OnceCell<Option<String>>>;

/// The most senders whose usernames are kept; the least recently used goes
/// first (about 2 MiB when full).
const USERNAMES_KEPT: usize = 10_000;

/// Usernames per (account, sender), so each is looked up once a day, and
/// concurrent messages from one sender share one lookup. Bounded: senders
/// not seen for a while make room for new ones.
pub struct UsernameCache {
    entries: Mutex<LruCache<(String, String), (Instant, Lookup)>>,
}

impl Default for UsernameCache {
    fn default() -> Self {
        Self::with_capacity(USERNAMES_KEPT)
    }
}

/// How long a finished lookup is trusted: a day when Meta gave a username,
/// ten minutes when it did not.
fn still_fresh(at: Instant, value: &Option<String>) -> bool {
    let ttl = if value.is_some() {
        KNOWN_FOR
    } else {
        UNKNOWN_FOR
    };
    at.elapsed() < ttl
}

impl UsernameCache {
    fn with_capacity(senders: usize) -> Self {
        Self {
            entries: Mutex::new(LruCache::new(senders)),
        }
    }

    /// A finished, unexpired lookup: `Some(username or None)`; `None` when
    /// the sender must be looked up.
    pub fn cached(&self, account_id: &str, sender_id: &str) -> Option<Option<String>> {
        let mut entries = self.entries.lock().unwrap();
        let (at, cell) = entries.get(&(account_id.to_owned(), sender_id.to_owned()))?;
        let value = cell.get()?;
        still_fresh(*at, value).then(|| value.clone())
    }

    fn cell(&self, account_id: &str, sender_id: &str) -> Lookup {
        let mut entries = self.entries.lock().unwrap();
        let key = (account_id.to_owned(), sender_id.to_owned());
        // A lookup still running is shared rather than repeated.
        if let Some((at, cell)) = entries.get(&key)
            && cell.get().is_none_or(|value| still_fresh(*at, value))
        {
            return cell.clone();
        }
        let cell = Lookup::default();
        entries.insert(key, (Instant::now(), cell.clone()));
        cell
    }
}

async fn lookup_username(state: &Core, account: &AccountRow, sender_id: &str) -> Option<String> {
    let token = account.instagram_access_token.as_deref()?;
    let cell = state.usernames.cell(&account.id, sender_id);
    cell.get_or_init(|| async {
        match tokio::time::timeout(LOOKUP_TIMEOUT, state.graph.profile(sender_id, token)).await {
            Ok(Ok(profile)) => profile.username,
            Ok(Err(GraphError::Meta { code: 230, .. })) => {
                tracing::debug!(account_id = %account.id, "username not available (consent required)");
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(account_id = %account.id, error = %e, "username lookup failed");
                None
            }
            Err(_) => {
                tracing::warn!(account_id = %account.id, "username lookup timed out");
                None
            }
        }
    })
    .await
    .clone()
}

/// Looks the sender up, puts the username in the held message and lets the
/// outbox publish it. If this never finishes, the hold expires on its own.
pub fn spawn_username_lookup(
    state: Arc<Core>,
    account: AccountRow,
    message_id: String,
    sender_id: String,
) {
    tokio::spawn(async move {
        let username = lookup_username(&state, &account, &sender_id).await;
        let released = state
            .store
            .messages
            .release_outbox(&message_id, username.as_deref())
            .await;
        if let Err(e) = released {
            tracing::warn!(message_id, error = %e, "could not add the username; published without it");
        }
        state.outbox_wakeup.notify_one();
    });
}

/// Answers a new comment with the account's `comment_auto_reply_text`, as
/// its one private reply: claimed in the database like any private reply,
/// so the comment gets it once, across every ingest and Meta's redeliveries.
pub fn spawn_comment_auto_reply(state: Arc<Core>, account: AccountRow, comment_id: String) {
    let (Some(text), Some(token)) = (
        account.comment_auto_reply_text.clone(),
        account.instagram_access_token.clone(),
    ) else {
        return;
    };
    tokio::spawn(async move {
        use super::comments::{ReplyError, private_reply};
        match private_reply(&state, &account, &token, &comment_id, &text).await {
            Ok(sent) => {
                tracing::info!(account_id = %account.id, message_id = %sent.id, "comment auto-reply sent")
            }
            Err(ReplyError::AlreadyReplied) => {}
            Err(e) => {
                tracing::warn!(account_id = %account.id, error = ?e, "comment auto-reply not sent")
            }
        }
    });
}

/// Sends the account's auto-reply if this conversation has had none within
/// the cooldown. Claimed in the database first, so several ingests send one.
pub fn spawn_auto_reply(
    state: Arc<Core>,
    account: AccountRow,
    customer_id: String,
    conversation_id: String,
) {
    let (Some(text), Some(token)) = (
        account.auto_reply_text.clone(),
        account.instagram_access_token.clone(),
    ) else {
        return;
    };
    tokio::spawn(async move {
        let claimed = state
            .store
            .messages
            .claim_auto_reply(
                &account.id,
                &conversation_id,
                Utc::now(),
                account.auto_reply_cooldown_secs,
            )
            .await;
        match claimed {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(account_id = %account.id, error = %e, "auto-reply claim failed");
                return;
            }
        }
        let request = super::send::OutgoingMessage::text(&customer_id, &text);
        match super::send::send_and_record(&state, &account, &token, &request).await {
            Ok(sent) => {
                tracing::info!(account_id = %account.id, message_id = %sent.id, "auto-reply sent")
            }
            Err(e) => {
                tracing::warn!(account_id = %account.id, error = %e, "auto-reply not sent");
                let _ = state
                    .store
                    .messages
                    .release_auto_reply(&account.id, &conversation_id)
                    .await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_username_is_trusted_for_a_day_and_a_miss_for_ten_minutes() {
        let cache = UsernameCache::default();
        assert_eq!(cache.cached("acc_1", "1"), None, "never looked up");
        cache.cell("acc_1", "1").set(Some("ana".into())).unwrap();
        cache.cell("acc_1", "2").set(None).unwrap();
        assert_eq!(cache.cached("acc_1", "1"), Some(Some("ana".into())));
        assert_eq!(cache.cached("acc_1", "2"), Some(None));
        assert_eq!(cache.cached("acc_2", "1"), None, "per account");

        tokio::time::advance(UNKNOWN_FOR).await;
        assert_eq!(cache.cached("acc_1", "1"), Some(Some("ana".into())));
        assert_eq!(cache.cached("acc_1", "2"), None, "a miss is retried");

        tokio::time::advance(KNOWN_FOR - UNKNOWN_FOR).await;
        assert_eq!(
            cache.cached("acc_1", "1"),
            None,
            "a username is refreshed daily"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_least_recently_used_sender_makes_room_when_full() {
        let cache = UsernameCache::with_capacity(3);
        for sender in ["1", "2", "3"] {
            cache
                .cell("acc_1", sender)
                .set(Some(format!("user{sender}")))
                .unwrap();
        }
        assert!(cache.cached("acc_1", "1").is_some(), "1 used again");
        cache.cell("acc_1", "4").set(None).unwrap();
        assert_eq!(cache.entries.lock().unwrap().len(), 3);
        assert_eq!(
            cache.cached("acc_1", "2"),
            None,
            "the least recently used left"
        );
        for kept in ["1", "3", "4"] {
            assert!(cache.cached("acc_1", kept).is_some(), "{kept} kept");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_still_running_is_shared_and_an_expired_one_replaced() {
        let cache = UsernameCache::default();
        let first = cache.cell("acc_1", "1");
        assert!(
            Arc::ptr_eq(&first, &cache.cell("acc_1", "1")),
            "shared while running"
        );
        first.set(None).unwrap();
        tokio::time::advance(UNKNOWN_FOR).await;
        let second = cache.cell("acc_1", "1");
        assert!(!Arc::ptr_eq(&first, &second), "a new lookup after expiry");
        assert!(second.get().is_none());
    }
}
