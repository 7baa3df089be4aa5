//! The background tasks, each with a small handle holding just what it
//! uses: publishing the outbox ([`outbox`]), recording what the forwarders
//! report ([`outcomes`]), and keeping the accounts bucket in step
//! ([`routing`]). They stop when their cancellation token is cancelled.

pub mod outbox;
pub mod outcomes;
pub mod routing;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::IdempotencyStore;

/// Checks every account's access token each `INGEST_TOKEN_CHECK_INTERVAL`
/// (the first time at start): see [`crate::domain::credentials`].
pub async fn check_tokens(core: Arc<crate::domain::Core>, stop: CancellationToken) {
    let before = chrono::TimeDelta::from_std(core.config.ingest_token_refresh_before)
        .unwrap_or(chrono::TimeDelta::days(10));
    let mut every = tokio::time::interval(core.config.ingest_token_check_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let pass = crate::domain::credentials::check_all(&core, before);
        tokio::select! {
            () = stop.cancelled() => return,
            done = pass => if let Err(e) = done {
                tracing::warn!(error = %e, "access token check failed; tried again at the next interval");
            },
        }
    }
}

/// Forgets `Idempotency-Key`s older than their 24 hours, every ten minutes
/// (a repeat after that is a new request anyway).
pub async fn forget_idempotency_keys(keys: Arc<dyn IdempotencyStore>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let before = chrono::Utc::now() - chrono::TimeDelta::hours(24);
        match keys.forget_keys(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(keys = n, "expired idempotency keys forgotten"),
            Err(e) => tracing::warn!(error = %e, "could not forget expired idempotency keys"),
        }
    }
}
