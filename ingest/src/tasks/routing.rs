//! The accounts bucket's background task: a full reconciliation at start
//! and every minute, and retries of changes that could not be pushed when
//! they were made (see [`RoutingSync`]).

use std::sync::Arc;
use std::time::Duration;

use shared::shutdown::nap;
use tokio_util::sync::CancellationToken;

use crate::domain::routing::RoutingSync;

const RECONCILE_EVERY: Duration = Duration::from_secs(60);
const RETRY_EVERY: Duration = Duration::from_secs(1);

pub async fn run(sync: Arc<RoutingSync>, shutdown: CancellationToken) {
    let mut reconciled_at: Option<tokio::time::Instant> = None;
    loop {
        if reconciled_at.is_none_or(|at| at.elapsed() >= RECONCILE_EVERY) {
            match sync.reconcile_all().await {
                Ok(n) => {
                    tracing::info!(accounts = n, "accounts bucket reconciled with the database");
                    reconciled_at = Some(tokio::time::Instant::now());
                }
                Err(e) => tracing::warn!(error = %e, "accounts bucket reconciliation failed"),
            }
        }
        let all_pushed = sync.push_pending().await;
        let pause = if reconciled_at.is_some() && all_pushed {
            RECONCILE_EVERY
        } else {
            RETRY_EVERY
        };
        if !nap(&shutdown, pause, &sync.wakeup).await {
            return;
        }
    }
}
