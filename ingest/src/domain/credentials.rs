//! The access token's lifecycle. Instagram's long-lived tokens last 60
//! days and can be refreshed once they are 24 h old; a background pass
//! ([`check_all`]) refreshes each one `INGEST_TOKEN_REFRESH_BEFORE` its
//! expiry, at most once a day per account across every ingest, and turns
//! the account's `credentials` to `expiring` when that fails and to
//! `invalid` when Meta refuses the token or it expires. Each change is
//! announced on `<prefix>.alerts.credentials.<account_id>`.

use chrono::{DateTime, TimeDelta, Utc};
use shared::ids::AccountId;
use shared::model::CredentialsState;
use shared::wire::{
    ALERT_TOKEN_EXPIRING, ALERT_TOKEN_INVALID, ALERT_TOKEN_REFRESHED, CredentialsAlert,
};

use super::Core;
use crate::meta::graph::GraphError;
use crate::store::{AccountRow, CredentialsChange, StoreError};

/// Meta's rule: a token is refreshed at most this often (and only once it
/// is this old); we try no more often either.
const ONCE_A_DAY: TimeDelta = TimeDelta::hours(24);

/// What an account's token needs now.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// It has expired: `invalid`.
    Expire,
    /// Ask Meta for a fresh one.
    Refresh,
}

/// What `row`'s token needs at `now`, refreshing `before` its expiry.
pub fn next_step(row: &AccountRow, now: DateTime<Utc>, before: TimeDelta) -> Step {
    if matches!(
        row.credentials(),
        CredentialsState::Missing | CredentialsState::Invalid
    ) {
        return Step::Nothing;
    }
    if row.token_expires_at.is_some_and(|at| at <= now) {
        return Step::Expire;
    }
    if row
        .token_refresh_attempted_at
        .is_some_and(|last| now - last < ONCE_A_DAY)
    {
        return Step::Nothing;
    }
    let due = match row.token_expires_at {
        Some(at) => at - now <= before,
        // Not known: the first refresh tells, once Meta allows one.
        None => row.token_set_at.is_none_or(|set| now - set >= ONCE_A_DAY),
    };
    if due { Step::Refresh } else { Step::Nothing }
}

/// A short, token-free name for why Meta did not refresh or take a token.
fn error_code(e: &GraphError) -> String {
    match e {
        GraphError::Meta { code, .. } => format!("meta_{code}"),
        GraphError::Timeout => "timeout".into(),
        GraphError::Transport(_) => "unreachable".into(),
    }
}

/// Records a change of `row`'s credentials (unless another token was set
/// meanwhile) and announces it. Returns the state now.
async fn record(
    core: &Core,
    row: &AccountRow,
    change: CredentialsChange,
    event: &str,
) -> Result<CredentialsState, StoreError> {
    if !core
        .store
        .accounts
        .record_credentials(&row.id, row.token_set_at, &change)
        .await?
    {
        // A new token was set since this one was read: it stands.
        return Ok(CredentialsState::Valid);
    }
    core.routing.account_changed(&row.id).await;
    if let Ok(id) = AccountId::parse(&row.id) {
        let alert = CredentialsAlert {
            event: event.into(),
            account_id: row.id.clone(),
            at: change.at,
            state: change.state,
            expires_at: change.expires_at.or(row.token_expires_at),
            error: change.error.clone(),
        };
        shared::jetstream::publish_credentials_alert(&core.nats.js, &core.subjects, &id, &alert)
            .await;
    }
    Ok(change.state)
}

/// Meta refused the account's token (code 190, or it expired): replies
/// fail until a new one is set. `error` says which.
pub async fn invalid(core: &Core, row: &AccountRow, error: &str) {
    let change = CredentialsChange {
        token: None,
        expires_at: None,
        state: CredentialsState::Invalid,
        error: Some(error.to_owned()),
        at: Utc::now(),
    };
    match record(core, row, change, ALERT_TOKEN_INVALID).await {
        Ok(_) => {
            tracing::warn!(account_id = %row.id, error, "the access token is invalid; the account needs a new instagram_access_token")
        }
        Err(e) => {
            tracing::error!(account_id = %row.id, error = %e, "could not record the invalid token")
        }
    }
}

/// Refreshes `row`'s token through Meta and records the outcome.
async fn refresh(
    core: &Core,
    row: &AccountRow,
    token: &str,
) -> Result<CredentialsState, StoreError> {
    let now = Utc::now();
    match core.graph.refresh_token(token).await {
        Ok((token, expires_in)) => {
            let expires_at = chrono::SubsecRound::trunc_subsecs(
                now + TimeDelta::seconds(expires_in.min(365 * 86_400)),
                0,
            );
            metrics::counter!("router_ingest_token_refreshes_total", "result" => "refreshed")
                .increment(1);
            tracing::info!(account_id = %row.id, %expires_at, "access token refreshed");
            let change = CredentialsChange {
                token: Some(token),
                expires_at: Some(expires_at),
                state: CredentialsState::Valid,
                error: None,
                at: now,
            };
            record(core, row, change, ALERT_TOKEN_REFRESHED).await
        }
        Err(e @ GraphError::Meta { code: 190, .. }) => {
            metrics::counter!("router_ingest_token_refreshes_total", "result" => "refused")
                .increment(1);
            invalid(core, row, &error_code(&e)).await;
            Ok(CredentialsState::Invalid)
        }
        Err(e) => {
            metrics::counter!("router_ingest_token_refreshes_total", "result" => "failed")
                .increment(1);
            let error = error_code(&e);
            tracing::warn!(account_id = %row.id, error, "access token refresh failed; tried again in 24 h");
            let change = CredentialsChange {
                token: None,
                expires_at: None,
                state: CredentialsState::Expiring,
                error: Some(error),
                at: now,
            };
            record(core, row, change, ALERT_TOKEN_EXPIRING).await
        }
    }
}

/// What one account's pass did: its state afterwards.
async fn check_one(
    core: &Core,
    row: &AccountRow,
    now: DateTime<Utc>,
    before: TimeDelta,
) -> Result<CredentialsState, StoreError> {
    match next_step(row, now, before) {
        Step::Nothing => Ok(row.credentials()),
        Step::Expire => {
            invalid(core, row, "expired").await;
            Ok(CredentialsState::Invalid)
        }
        Step::Refresh => {
            let token = row.instagram_access_token.clone().unwrap_or_default();
            let claimed = core
                .store
                .accounts
                .claim_token_refresh(
                    &row.id,
                    row.token_set_at,
                    row.token_refresh_attempted_at,
                    now,
                )
                .await?;
            if !claimed {
                // Another ingest has it (or the token just changed).
                return Ok(row.credentials());
            }
            refresh(core, row, &token).await
        }
    }
}

/// One pass over every account: refreshes what is due, expires what has
/// expired, and sets `router_ingest_accounts_credentials{state}`.
pub async fn check_all(core: &Core, before: TimeDelta) -> Result<(), StoreError> {
    let mut counts = [0u64; CredentialsState::ALL.len()];
    let mut cursor: Option<String> = None;
    loop {
        let page = core
            .store
            .accounts
            .list_accounts(cursor.as_deref(), 200)
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        cursor = Some(last.id.clone());
        for row in &page {
            let state = match check_one(core, row, Utc::now(), before).await {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!(account_id = %row.id, error = %e, "access token check failed");
                    row.credentials()
                }
            };
            if let Some(i) = CredentialsState::ALL.iter().position(|s| *s == state) {
                counts[i] += 1;
            }
        }
    }
    for (state, count) in CredentialsState::ALL.iter().zip(counts) {
        metrics::gauge!("router_ingest_accounts_credentials", "state" => state.as_str())
            .set(count as f64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(
        set: Option<i64>,
        expires: Option<i64>,
        tried: Option<i64>,
        now: DateTime<Utc>,
    ) -> AccountRow {
        let at = |h: Option<i64>| h.map(|h| now + TimeDelta::hours(h));
        let mut row = AccountRow::example("acc_1", "1");
        row.instagram_access_token = Some("IGAA".into());
        row.token_set_at = at(set);
        row.token_expires_at = at(expires);
        row.token_refresh_attempted_at = at(tried);
        row
    }

    #[test]
    fn a_token_is_refreshed_before_its_expiry_at_most_once_a_day() {
        let now = Utc::now();
        let before = TimeDelta::days(10);
        let step = |set, expires, tried| next_step(&account(set, expires, tried, now), now, before);
        // Far from expiry: nothing; within ten days: refresh.
        assert_eq!(step(Some(-24), Some(30 * 24), None), Step::Nothing);
        assert_eq!(step(Some(-24), Some(9 * 24), None), Step::Refresh);
        // Tried 23 h ago: not again yet; 25 h ago: again.
        assert_eq!(step(Some(-24), Some(9 * 24), Some(-23)), Step::Nothing);
        assert_eq!(step(Some(-24), Some(9 * 24), Some(-25)), Step::Refresh);
        // Expired: invalid, whatever was tried.
        assert_eq!(step(Some(-24), Some(-1), Some(-1)), Step::Expire);
        // Expiry unknown: refreshed once Meta allows (24 h after it was set).
        assert_eq!(step(Some(-23), None, None), Step::Nothing);
        assert_eq!(step(Some(-25), None, None), Step::Refresh);
        assert_eq!(step(None, None, None), Step::Refresh);
    }

    #[test]
    fn invalid_and_missing_tokens_are_left_alone() {
        let now = Utc::now();
        let mut row = account(Some(-24), Some(-1), None, now);
        row.credentials_state = CredentialsState::Invalid;
        assert_eq!(next_step(&row, now, TimeDelta::days(10)), Step::Nothing);
        row.credentials_state = CredentialsState::Valid;
        row.instagram_access_token = None;
        assert_eq!(row.credentials(), CredentialsState::Missing);
        assert_eq!(next_step(&row, now, TimeDelta::days(10)), Step::Nothing);
    }
}
