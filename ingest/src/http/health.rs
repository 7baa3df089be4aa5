//! Liveness and readiness. `/readyz` answers 503 while the database or NATS
//! is unreachable, so a load balancer stops sending traffic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::domain::Core;

#[derive(Debug, Object)]
pub struct Readiness {
    /// `ok` or `unavailable`.
    pub database: String,
    /// `ok` or `unavailable`.
    pub nats: String,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Database and NATS are reachable.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// Something the service needs is down.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

/// The last database check and its answer: `/readyz` is public, so it pings
/// the database at most once a second however often it is called (callers
/// in between share the answer, or wait for the one ping under way).
static LAST_PING: tokio::sync::Mutex<Option<(Instant, bool)>> = tokio::sync::Mutex::const_new(None);

async fn database_reachable(state: &Core) -> bool {
    let mut last = LAST_PING.lock().await;
    if let Some((at, ok)) = *last
        && at.elapsed() < Duration::from_secs(1)
    {
        return ok;
    }
    let ok = state.store.messages.ping().await.is_ok();
    *last = Some((Instant::now(), ok));
    ok
}

pub struct HealthApi;

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness: the process is serving
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> poem_openapi::payload::PlainText<&'static str> {
        poem_openapi::payload::PlainText("ok")
    }

    /// Readiness: database and NATS reachable
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, Data(state): Data<&Arc<Core>>) -> ReadyResponse {
        let db_ok = database_reachable(state).await;
        let nats_ok = state.nats.is_ready();
        let word = |ok: bool| if ok { "ok" } else { "unavailable" }.to_owned();
        let body = Json(Readiness {
            database: word(db_ok),
            nats: word(nats_ok),
        });
        if db_ok && nats_ok {
            ReadyResponse::Ready(body)
        } else {
            ReadyResponse::NotReady(body)
        }
    }
}
