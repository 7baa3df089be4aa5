//! An operator's hold on an account's deliveries: the CRM health the
//! forwarders store (their circuit breaker, in the delivery-health bucket),
//! and the pause and resume, which are saved on the account, reach the
//! forwarders through its routing and are announced on
//! `<prefix>.alerts.crm.<account_id>`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::ids::AccountId;
use shared::wire::{ALERT_DELIVERIES_PAUSED, ALERT_DELIVERIES_RESUMED, CrmAlert, DeliveryHealth};

use super::Core;
use crate::store::{AccountRow, StoreError};

/// NATS did not answer within a second.
#[derive(Clone, Copy, Debug)]
pub struct HealthUnknown;

/// What the forwarders last stored about the account's CRM; `None` when
/// nothing (it has always been healthy).
pub async fn stored_health(
    core: &Core,
    account_id: &str,
) -> Result<Option<DeliveryHealth>, HealthUnknown> {
    let bucket = core.nats.health().ok_or(HealthUnknown)?;
    let read = tokio::time::timeout(Duration::from_secs(1), bucket.get(account_id)).await;
    match read {
        Ok(Ok(Some(bytes))) => Ok(serde_json::from_slice(&bytes).ok()),
        Ok(Ok(None)) => Ok(None),
        _ => Err(HealthUnknown),
    }
}

/// Pauses the account's deliveries, unless an operator already did.
pub async fn pause(core: &Core, row: &mut AccountRow) -> Result<(), StoreError> {
    if row.deliveries_paused_at.is_some() {
        return Ok(());
    }
    let now = Utc::now();
    row.deliveries_paused_at = Some(now);
    row.updated_at = now;
    core.store.accounts.update_account(row).await?;
    core.routing.account_changed(&row.id).await;
    tracing::info!(account_id = %row.id, "deliveries paused by an operator");
    announce(core, &row.id, ALERT_DELIVERIES_PAUSED, now, None).await;
    Ok(())
}

/// Resumes the account's deliveries: ends an operator's pause and a pause
/// of the circuit breaker. `paused_since` is `Some` when they were paused
/// (with when, if known); the resume is then announced. Returns its time.
pub async fn resume(
    core: &Core,
    row: &mut AccountRow,
    paused_since: Option<Option<DateTime<Utc>>>,
) -> Result<DateTime<Utc>, StoreError> {
    let now = Utc::now();
    row.deliveries_paused_at = None;
    row.deliveries_resumed_at = Some(now);
    row.updated_at = now;
    core.store.accounts.update_account(row).await?;
    core.routing.account_changed(&row.id).await;
    if let Some(since) = paused_since {
        tracing::info!(account_id = %row.id, "deliveries resumed by an operator");
        announce(core, &row.id, ALERT_DELIVERIES_RESUMED, now, since).await;
    }
    Ok(now)
}

/// Announces an operator's pause or resume on `<prefix>.alerts.crm.<account_id>`.
async fn announce(
    core: &Core,
    account: &str,
    event: &str,
    at: DateTime<Utc>,
    paused_since: Option<DateTime<Utc>>,
) {
    let Ok(id) = AccountId::parse(account) else {
        return;
    };
    let alert = CrmAlert {
        event: event.into(),
        account_id: account.to_owned(),
        at,
        cause: "operator".into(),
        consecutive_failures: None,
        last_error: None,
        next_probe_at: None,
        paused_since,
    };
    shared::jetstream::publish_crm_alert(&core.nats.js, &core.subjects, &id, &alert).await;
}
