//! Bearer-token authentication for `/api/v1`: the token must be one of
//! `ROUTER_API_TOKENS`. A failure becomes a JSON 401 at the edge. Each token
//! may make `ROUTER_API_RATE_LIMIT` requests a second (bursts of twice as
//! many); above that, 429 `rate_limited` with `Retry-After`.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock as _, MonotonicClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use poem::{IntoResponse as _, Request};
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

use crate::domain::Core;
use crate::http::error::ApiError;

/// Requests counted per token, by its place in `ROUTER_API_TOKENS`.
pub struct ApiLimiter(RateLimiter<usize, HashMapStateStore<usize>, MonotonicClock>);

impl ApiLimiter {
    pub fn new(per_second: u32) -> Self {
        let rate = NonZeroU32::new(per_second.max(1)).expect("at least one");
        let burst = NonZeroU32::new(per_second.max(1).saturating_mul(2)).expect("at least two");
        let quota = Quota::per_second(rate).allow_burst(burst);
        Self(RateLimiter::new(
            quota,
            HashMapStateStore::default(),
            MonotonicClock,
        ))
    }

    /// `Err(seconds to wait)` when the token is over its rate.
    fn check(&self, token: usize) -> Result<(), u64> {
        self.0.check_key(&token).map_err(|not_until| {
            let wait = not_until.wait_time_from(MonotonicClock.now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// `Authorization: Bearer <token>`, one of `ROUTER_API_TOKENS`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_token")]
pub struct ApiToken(());

async fn check_token(req: &Request, bearer: Bearer) -> poem::Result<()> {
    let unauthorized = || poem::Error::from_status(poem::http::StatusCode::UNAUTHORIZED);
    let state = req.data::<Arc<Core>>().ok_or_else(unauthorized)?;
    let Some(token) = state.config.router_api_tokens.position(&bearer.token) else {
        tracing::warn!(path = %req.uri().path(), "api request with an unknown bearer token refused");
        return Err(unauthorized());
    };
    if let Some(limiter) = req.data::<Arc<ApiLimiter>>()
        && let Err(wait) = limiter.check(token)
    {
        tracing::warn!(path = %req.uri().path(), token = token + 1, retry_after_secs = wait, "api token over its rate limit");
        let refused = ApiError::rate_limited(
            "rate_limited",
            "too many requests with this token (ROUTER_API_RATE_LIMIT); retry later",
            wait,
        );
        return Err(poem::Error::from_response(refused.into_response()));
    }
    Ok(())
}
