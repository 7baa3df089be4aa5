//! Bearer-token authentication for `/api/v1`: the token must be one of
//! `ROUTER_API_TOKENS`. A failure becomes a JSON 401 at the edge.

use std::sync::Arc;

use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

use crate::domain::Core;

/// `Authorization: Bearer <token>`, one of `ROUTER_API_TOKENS`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_token")]
pub struct ApiToken(());

async fn check_token(req: &Request, bearer: Bearer) -> Option<()> {
    let state = req.data::<Arc<Core>>()?;
    if state.config.router_api_tokens.accepts(&bearer.token) {
        Some(())
    } else {
        tracing::warn!(path = %req.uri().path(), "api request with an unknown bearer token refused");
        None
    }
}
