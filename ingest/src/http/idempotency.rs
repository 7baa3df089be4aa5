//! `Idempotency-Key` on the operations that call Meta (a reply, a comment's
//! private or public reply): a repeat of the same request with the same key
//! within 24 h gets the first answer, status and body, and Meta is not
//! called again. Keys are per account and kept in the database, so any
//! ingest answers a repeat. While the first is still running, a repeat gets
//! 409 `idempotency_key_in_progress`; the same key with another request,
//! 422 `idempotency_key_reused`.

use chrono::{SubsecRound as _, TimeDelta, Utc};
use serde_json::Value;

use poem_openapi::error::ParseParamError;
use poem_openapi::registry::{MetaParamIn, MetaSchema, MetaSchemaRef};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

use super::error::{ApiError, ErrorBody};
use crate::domain::Core;
use crate::store::{AccountRow, KeyClaim};

/// How long a repeat of a key gets the first answer.
const WINDOW: TimeDelta = TimeDelta::hours(24);

/// A success answer that can be kept (its status and body, as JSON) and
/// given again.
pub trait Kept: Sized {
    fn kept(&self) -> Option<(u16, Value)>;
    fn from_kept(status: u16, json: Value) -> Option<Self>;
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
/// poem-openapi's `Header` reads a value that is not ASCII as no header at
/// all: such a key would be ignored, and the retry it was meant to make safe
/// would reach Meta twice. This reads the header itself, and a key outside
/// the rule is 400 `invalid_request` naming the header.
pub struct IdempotencyKey(pub Option<String>);

impl<'a> ApiExtractor<'a> for IdempotencyKey {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::Parameter];
    type ParamType = Option<String>;
    type ParamRawType = ();

    fn param_in() -> Option<MetaParamIn> {
        Some(MetaParamIn::Header)
    }

    fn param_schema_ref() -> Option<MetaSchemaRef> {
        Some(MetaSchemaRef::Inline(Box::new(MetaSchema {
            min_length: Some(1),
            max_length: Some(MAX_KEY_LEN),
            pattern: Some("^[!-~]+$".to_owned()),
            ..MetaSchema::new("string")
        })))
    }

    async fn from_request(
        request: &'a poem::Request,
        _body: &mut poem::RequestBody,
        param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let Some(value) = request.headers().get(param_opts.name) else {
            return Ok(Self(None));
        };
        let bytes = value.as_bytes();
        if (1..=MAX_KEY_LEN).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic) {
            Ok(Self(Some(String::from_utf8_lossy(bytes).into_owned())))
        } else {
            Err(ParseParamError {
                name: param_opts.name,
                reason: format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
            }
            .into())
        }
    }
}

/// The longest `Idempotency-Key`.
const MAX_KEY_LEN: usize = 255;

/// What makes two requests the same: the operation, its path parameters
/// and its body as parsed (so spacing and key order do not matter), hashed.
pub fn request(operation: &str, path: &[&str], body: &Option<Value>) -> String {
    use sha2::Digest as _;
    let canonical = serde_json::json!([operation, path, body]).to_string();
    hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
}

/// Runs `call` once per key: without a key, always; with one, only if no
/// request of this key has answered (or is answering) in the last 24 h.
pub async fn once<R: Kept>(
    state: &Core,
    account: &AccountRow,
    key: Option<String>,
    request: String,
    call: impl Future<Output = Result<R, ApiError>>,
) -> Result<R, ApiError> {
    let Some(key) = key else {
        return call.await;
    };
    let keys = &state.store.idempotency;
    let now = Utc::now().trunc_subsecs(6);
    // A request still unanswered this long after it started died with its
    // ingest: its key may be claimed again.
    let abandoned = TimeDelta::seconds(state.config.graph_api_timeout_secs as i64 + 60);
    let claim = keys
        .claim_key(
            &account.id,
            &key,
            &request,
            now,
            now - WINDOW,
            now - abandoned,
        )
        .await?;
    let started_at = match claim {
        KeyClaim::Claimed(started_at) => started_at,
        KeyClaim::Answered { status, response } => {
            tracing::info!(account_id = %account.id, status, "idempotent repeat answered as the first time");
            return replayed(status, &response);
        }
        KeyClaim::InProgress => {
            return Err(ApiError::conflict(
                "idempotency_key_in_progress",
                "a request with this Idempotency-Key is still running; retry in a few seconds to get its answer",
            ));
        }
        KeyClaim::OtherRequest => {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used with another request in the last 24 hours",
            ));
        }
    };
    let answer = call.await;
    let kept = match kept_answer(&answer) {
        Some((status, response)) => {
            keys.answer_key(&account.id, &key, started_at, status, &response)
                .await
        }
        None => keys.release_key(&account.id, &key, started_at).await,
    };
    if let Err(e) = kept {
        tracing::warn!(account_id = %account.id, error = %e, "could not keep the answer of an idempotent request");
    }
    answer
}

/// The answer to keep for a repeat: every answer but a rate limit, after
/// which Meta did nothing and a repeat should really try again.
fn kept_answer<R: Kept>(answer: &Result<R, ApiError>) -> Option<(i64, Vec<u8>)> {
    let (status, json) = match answer {
        Ok(done) => done.kept()?,
        Err(e) => match e.parts() {
            (429, _) => return None,
            (status, body) => (status, serde_json::to_value(body).ok()?),
        },
    };
    Some((i64::from(status), json.to_string().into_bytes()))
}

/// A kept answer, given again.
fn replayed<R: Kept>(status: i64, response: &[u8]) -> Result<R, ApiError> {
    let json: Value = serde_json::from_slice(response).map_err(ApiError::internal)?;
    if (200..300).contains(&status) {
        return R::from_kept(status as u16, json)
            .ok_or_else(|| ApiError::internal("a kept answer is unreadable"));
    }
    let body: ErrorBody = serde_json::from_value(json).map_err(ApiError::internal)?;
    Err(ApiError::from_parts(
        u16::try_from(status).unwrap_or(500),
        body,
    ))
}
