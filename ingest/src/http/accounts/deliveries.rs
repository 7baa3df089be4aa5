//! An account's deliveries as operators see and steer them: the CRM's health
//! as the forwarder serving the account reports it (its circuit breaker, in
//! the delivery-health bucket), and the operator's pause and resume
//! (`/api/v1/accounts/{id}/deliveries/pause|resume`), which reach the
//! forwarders through the account's routing and are announced on
//! `<prefix>.alerts.crm.<account_id>`.

use crate::http::time::Timestamp;
use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use shared::wire::{DeliveryHealth, HealthState};

use super::{Account, find_account};
use crate::domain::deliveries::HealthUnknown;
use crate::domain::{self, Core};
use crate::http::ApiTags;
use crate::http::auth::ApiToken;
use crate::http::error::ApiError;
use crate::store::AccountRow;

/// How the account's deliveries are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum HealthStateView {
    /// The CRM answered the last attempt.
    Healthy,
    /// Attempts failed in a row, fewer than the forwarders' breaker threshold.
    Degraded,
    /// Deliveries wait, in order: the circuit breaker opened (the CRM kept
    /// failing; one probe delivery is tried at `next_probe_at`) or an
    /// operator paused them.
    Paused,
    /// NATS could not be asked just now.
    Unknown,
}

/// Who paused the deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum PausedBy {
    CircuitBreaker,
    Operator,
}

/// The account's CRM health. Messages are never dead-lettered because of a
/// pause: they wait in order and are delivered once it ends.
#[derive(Debug, Object)]
pub struct DeliveryHealthView {
    pub state: HealthStateView,
    /// Set while paused.
    #[oai(nullable)]
    pub paused_by: Option<PausedBy>,
    /// When the account entered this state; absent when it has always been healthy.
    #[oai(nullable)]
    pub since: Option<Timestamp>,
    /// Failed attempts in a row (timeouts, connection errors, 408, 5xx).
    pub consecutive_failures: u32,
    /// The last failure: `http_<status>`, `timeout`, `connect`, ...
    #[oai(nullable)]
    pub last_error: Option<String>,
    #[oai(nullable)]
    pub last_error_at: Option<Timestamp>,
    /// Paused by the circuit breaker: when the next probe delivery is tried.
    #[oai(nullable)]
    pub next_probe_at: Option<Timestamp>,
}

impl DeliveryHealthView {
    fn healthy() -> Self {
        Self::from_stored(None)
    }

    fn from_stored(stored: Option<DeliveryHealth>) -> Self {
        let Some(h) = stored else {
            return Self {
                state: HealthStateView::Healthy,
                paused_by: None,
                since: None,
                consecutive_failures: 0,
                last_error: None,
                last_error_at: None,
                next_probe_at: None,
            };
        };
        let paused = h.state == HealthState::Paused;
        Self {
            state: match h.state {
                HealthState::Healthy => HealthStateView::Healthy,
                HealthState::Degraded => HealthStateView::Degraded,
                HealthState::Paused => HealthStateView::Paused,
            },
            paused_by: paused.then_some(PausedBy::CircuitBreaker),
            since: Some(h.since.into()),
            consecutive_failures: h.consecutive_failures,
            last_error: h.last_error,
            last_error_at: h.last_error_at.map(Into::into),
            next_probe_at: h.next_probe_at.filter(|_| paused).map(Into::into),
        }
    }
}

/// The account's delivery health: an operator's pause first, else what the
/// forwarders stored, `unknown` when NATS does not answer within a second.
pub async fn delivery_health(state: &Core, row: &AccountRow) -> DeliveryHealthView {
    health_view(domain::deliveries::stored_health(state, &row.id).await, row)
}

/// The health of `row` from what the forwarders stored (`Err` when NATS
/// could not be asked).
fn health_view(
    stored: Result<Option<DeliveryHealth>, HealthUnknown>,
    row: &AccountRow,
) -> DeliveryHealthView {
    let mut view = match stored {
        Ok(stored) => DeliveryHealthView::from_stored(stored),
        Err(HealthUnknown) => DeliveryHealthView {
            state: HealthStateView::Unknown,
            ..DeliveryHealthView::healthy()
        },
    };
    if let Some(at) = row.deliveries_paused_at {
        view.state = HealthStateView::Paused;
        view.paused_by = Some(PausedBy::Operator);
        view.since = Some(at.into());
        view.next_probe_at = None;
    }
    view
}

/// The account as the API shows it, with its delivery health.
pub async fn account_view(state: &Core, row: &AccountRow) -> Account {
    Account::new(row, delivery_health(state, row).await)
}

/// A new account's view: nothing has been delivered yet.
pub fn new_account_view(row: &AccountRow) -> Account {
    Account::new(row, DeliveryHealthView::healthy())
}

pub struct DeliveriesApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Accounts")]
impl DeliveriesApi {
    /// Pause an account's deliveries
    ///
    /// Messages keep being saved and wait, in order, until the deliveries are
    /// resumed; nothing becomes a dead letter meanwhile. Attempts already
    /// running finish. Announced on `<prefix>.alerts.crm.<account_id>`.
    #[oai(
        path = "/accounts/:account_id/deliveries/pause",
        method = "post",
        operation_id = "pause_deliveries"
    )]
    async fn pause(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
    ) -> Result<Json<Account>, ApiError> {
        let mut row = find_account(state, &auth, &account_id.0).await?;
        domain::deliveries::pause(state, &mut row).await?;
        Ok(Json(account_view(state, &row).await))
    }

    /// Resume an account's deliveries
    ///
    /// Ends an operator's pause, and also a pause of the circuit breaker (so
    /// deliveries start again at once instead of at the next probe). Waiting
    /// messages go first, in order. Announced on `<prefix>.alerts.crm.<account_id>`.
    #[oai(
        path = "/accounts/:account_id/deliveries/resume",
        method = "post",
        operation_id = "resume_deliveries"
    )]
    async fn resume(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
    ) -> Result<Json<Account>, ApiError> {
        let mut row = find_account(state, &auth, &account_id.0).await?;
        let stored = domain::deliveries::stored_health(state, &row.id).await;
        let before = health_view(stored.clone(), &row);
        let paused_since =
            (before.state == HealthStateView::Paused).then_some(before.since.map(|t| t.0));
        let now = domain::deliveries::resume(state, &mut row, paused_since).await?;
        let mut health = health_view(stored, &row);
        if health.paused_by == Some(PausedBy::CircuitBreaker) {
            // The forwarder takes the resume a moment later; say what it will do.
            health = DeliveryHealthView {
                since: Some(now.into()),
                ..DeliveryHealthView::healthy()
            };
        }
        Ok(Json(Account::new(&row, health)))
    }
}
