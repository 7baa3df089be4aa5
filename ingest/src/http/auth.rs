//! Bearer-token authentication for `/api/v1`. Two kinds of token:
//! - operator tokens, `ROUTER_API_TOKENS`: every account, and the only ones
//!   that create accounts and manage tokens;
//! - account tokens (`rtok_…`), created through the API, stored only as a
//!   SHA-256: one account. Anything of another account is "not found" to
//!   them (404, never 403), so they cannot tell which ids exist.
//!
//! A failure becomes a JSON 401 at the edge. Each token may make
//! `ROUTER_API_RATE_LIMIT` requests a second (bursts of twice as many);
//! above that, 429 `rate_limited` with `Retry-After`. Requests are counted
//! and logged under the token's name ([`Caller::label`]), never the token.

use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use governor::clock::{Clock as _, MonotonicClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use poem::{IntoResponse as _, Request};
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::domain::Core;
use crate::http::error::ApiError;

/// How an account token starts, so it can be told from an operator token
/// (and found by secret scanners).
pub const ACCOUNT_TOKEN_PREFIX: &str = "rtok_";

/// A new account token and its hash (what is stored).
pub fn new_account_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!(
        "{ACCOUNT_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = token_hash(&token);
    (token, hash)
}

/// Hex SHA-256: the token has 256 random bits, so a fast hash is enough.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Requests counted per token, by its label.
pub struct ApiLimiter(RateLimiter<String, HashMapStateStore<String>, MonotonicClock>);

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
    fn check(&self, label: &str) -> Result<(), u64> {
        self.0.check_key(&label.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(MonotonicClock.now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// Who made a request.
#[derive(Clone, Debug)]
pub enum Caller {
    /// One of `ROUTER_API_TOKENS`, by its place in the list (from 1).
    Operator(usize),
    /// An account token: its id and the one account it reaches.
    Account {
        token_id: String,
        account_id: String,
    },
}

impl Caller {
    /// What the request is counted and logged under: `1`, `2`… for operator
    /// tokens, the token's id (`tok_…`) for account tokens.
    pub fn label(&self) -> String {
        match self {
            Caller::Operator(n) => n.to_string(),
            Caller::Account { token_id, .. } => token_id.clone(),
        }
    }
}

/// Where the request log finds the caller once the token is checked.
#[derive(Clone, Default)]
pub struct CallerSlot(pub Arc<OnceLock<String>>);

/// `Authorization: Bearer <token>`: an operator token of
/// `ROUTER_API_TOKENS`, or an account token (`rtok_…`) that reaches only its
/// own account.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_token")]
pub struct ApiToken(pub Caller);

impl ApiToken {
    /// 404 `account_not_found` unless this token reaches `account_id`.
    pub fn reach(&self, account_id: &str) -> Result<(), ApiError> {
        match &self.0 {
            Caller::Account {
                account_id: own, ..
            } if own != account_id => Err(crate::http::accounts::account_not_found()),
            _ => Ok(()),
        }
    }

    /// The one account an account token reaches; `None` for operators.
    pub fn scope(&self) -> Option<&str> {
        match &self.0 {
            Caller::Operator(_) => None,
            Caller::Account { account_id, .. } => Some(account_id),
        }
    }

    /// 403 `operator_token_required` for an account token.
    pub fn operator(&self) -> Result<(), ApiError> {
        match self.0 {
            Caller::Operator(_) => Ok(()),
            Caller::Account { .. } => Err(ApiError::forbidden(
                "operator_token_required",
                "this needs an operator token (ROUTER_API_TOKENS), not an account token",
            )),
        }
    }
}

async fn check_token(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    let unauthorized = || poem::Error::from_status(poem::http::StatusCode::UNAUTHORIZED);
    let state = req.data::<Arc<Core>>().ok_or_else(unauthorized)?;
    let caller = if let Some(i) = state.config.router_api_tokens.position(&bearer.token) {
        Caller::Operator(i + 1)
    } else if bearer.token.starts_with(ACCOUNT_TOKEN_PREFIX) {
        let found = state
            .store
            .tokens
            .token_by_hash(&token_hash(&bearer.token))
            .await
            .map_err(|e| poem::Error::from_response(ApiError::internal(e).into_response()))?;
        match found {
            Some(t) => Caller::Account {
                token_id: t.id,
                account_id: t.account_id,
            },
            None => {
                tracing::warn!(path = %req.uri().path(), "api request with an unknown or revoked account token refused");
                return Err(unauthorized());
            }
        }
    } else {
        tracing::warn!(path = %req.uri().path(), "api request with an unknown bearer token refused");
        return Err(unauthorized());
    };
    let label = caller.label();
    if let Some(slot) = req.extensions().get::<CallerSlot>() {
        let _ = slot.0.set(label.clone());
    }
    if let Some(limiter) = req.data::<Arc<ApiLimiter>>()
        && let Err(wait) = limiter.check(&label)
    {
        tracing::warn!(path = %req.uri().path(), token = %label, retry_after_secs = wait, "api token over its rate limit");
        let refused = ApiError::rate_limited(
            "rate_limited",
            "too many requests with this token (ROUTER_API_RATE_LIMIT); retry later",
            wait,
        );
        return Err(poem::Error::from_response(refused.into_response()));
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_tokens_are_long_random_and_hashed() {
        let (a, hash_a) = new_account_token();
        let (b, _) = new_account_token();
        assert!(a.starts_with(ACCOUNT_TOKEN_PREFIX));
        assert_eq!(a.len(), ACCOUNT_TOKEN_PREFIX.len() + 43, "256 bits");
        assert_ne!(a, b);
        assert_eq!(hash_a, token_hash(&a));
        assert_eq!(hash_a.len(), 64);
        assert!(!hash_a.contains(&a[ACCOUNT_TOKEN_PREFIX.len()..]));
    }
}
