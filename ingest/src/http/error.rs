//! Every error the HTTP API returns is JSON `{code, message}` with a stable,
//! machine-readable `code`. Handlers return [`ApiError`]; everything else
//! (unknown routes, bad auth, unparsable bodies, oversized bodies) is turned
//! into the same shape by [`render_error`] at the edge.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

/// The body of every error response.
#[derive(Debug, Object, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code. Every one the router answers, by status:
    /// 400 `invalid_request`, `invalid_account_id`, `invalid_crm_webhook_url`,
    /// `crm_webhook_url_not_public`, `invalid_webhook_secret`, `text_too_long`,
    /// `text_empty`, `text_or_attachment_required`, `invalid_attachment_url`,
    /// `quick_replies_need_text`, `invalid_template`, `invalid_url`,
    /// `invalid_payload`, `unreadable_body`; 401 `unauthorized`, `missing_signature`,
    /// `invalid_signature`; 403 `operator_token_required`, `forbidden`,
    /// `verification_failed`; 404 `not_found`, `account_not_found`,
    /// `dead_letter_not_found`, `refused_event_not_found`, `token_not_found`,
    /// `comment_not_found`; 405 `method_not_allowed`; 409
    /// `instagram_account_exists`, `still_refused`,
    /// `idempotency_key_in_progress`, `private_reply_already_sent`; 413
    /// `payload_too_large`; 415 `unsupported_media_type`; 422
    /// `instagram_token_missing`, `outside_messaging_window`,
    /// `idempotency_key_reused`, `private_reply_window_closed`; 429
    /// `rate_limited`, `instagram_rate_limited`; 500 `internal_error`; 502
    /// `instagram_auth_failed`, `instagram_error`, `instagram_unavailable`;
    /// 503 `storage_unavailable`; 504 `instagram_timeout`.
    pub code: String,
    /// Human-readable explanation. Never contains secrets or message text.
    pub message: String,
    /// Meta's error code, when Meta's Graph API failed.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta_code: Option<i64>,
    /// Meta's trace id, for Meta's support.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fbtrace_id: Option<String>,
}

#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "invalid_request")]
pub enum ApiError {
    /// The request is malformed or a field is invalid.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or unknown bearer token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The token may not do this (an account token, where an operator
    /// token from `ROUTER_API_TOKENS` is needed).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such resource (or not one this token can reach).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The request conflicts with an existing resource.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The body is larger than `INGEST_API_MAX_BODY_BYTES` (answered at the
    /// edge, before the handler).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body is not JSON (`Content-Type: application/json`), answered at
    /// the edge.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// The request is valid but cannot be carried out as it stands.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// Slow down: retry after the given number of seconds.
    #[oai(status = 429)]
    RateLimited(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// Unexpected failure; the request can be retried.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// Meta's Graph API failed.
    #[oai(status = 502)]
    BadGateway(Json<ErrorBody>),
    /// Meta's Graph API did not answer in time.
    #[oai(status = 504)]
    GatewayTimeout(Json<ErrorBody>),
}

fn body(code: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody::new(code, message))
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            meta_code: None,
            fbtrace_id: None,
        }
    }
}

impl ApiError {
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::BadRequest(body(code, message))
    }
    pub fn forbidden(code: &str, message: impl Into<String>) -> Self {
        Self::Forbidden(body(code, message))
    }
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::NotFound(body(code, message))
    }
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::Conflict(body(code, message))
    }
    pub fn unprocessable(code: &str, message: impl Into<String>) -> Self {
        Self::Unprocessable(body(code, message))
    }
    pub fn rate_limited(code: &str, message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::RateLimited(body(code, message), retry_after_secs)
    }
    pub fn gateway_timeout(code: &str, message: impl Into<String>) -> Self {
        Self::GatewayTimeout(body(code, message))
    }
    pub fn bad_gateway(
        code: &str,
        message: impl Into<String>,
        meta_code: Option<i64>,
        fbtrace_id: Option<String>,
    ) -> Self {
        let mut b = ErrorBody::new(code, message);
        b.meta_code = meta_code;
        b.fbtrace_id = fbtrace_id;
        Self::BadGateway(Json(b))
    }
    /// Logs the cause (which never holds secrets or content) and answers 500.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::Internal(body("internal_error", "internal error, try again"))
    }
}

impl ApiError {
    /// Its HTTP status and body, to keep an answer (`Idempotency-Key`).
    pub fn parts(&self) -> (u16, &ErrorBody) {
        let (status, Json(body)) = match self {
            Self::BadRequest(b) => (400, b),
            Self::Unauthorized(b) => (401, b),
            Self::Forbidden(b) => (403, b),
            Self::NotFound(b) => (404, b),
            Self::Conflict(b) => (409, b),
            Self::PayloadTooLarge(b) => (413, b),
            Self::UnsupportedMediaType(b) => (415, b),
            Self::Unprocessable(b) => (422, b),
            Self::RateLimited(b, _) => (429, b),
            Self::Internal(b) => (500, b),
            Self::BadGateway(b) => (502, b),
            Self::GatewayTimeout(b) => (504, b),
        };
        (status, body)
    }

    /// An answer kept by [`Self::parts`], given again.
    pub fn from_parts(status: u16, body: ErrorBody) -> Self {
        let body = Json(body);
        match status {
            400 => Self::BadRequest(body),
            401 => Self::Unauthorized(body),
            403 => Self::Forbidden(body),
            404 => Self::NotFound(body),
            409 => Self::Conflict(body),
            413 => Self::PayloadTooLarge(body),
            415 => Self::UnsupportedMediaType(body),
            422 => Self::Unprocessable(body),
            429 => Self::RateLimited(body, 60),
            502 => Self::BadGateway(body),
            504 => Self::GatewayTimeout(body),
            _ => Self::Internal(body),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::DuplicateInstagramAccount => Self::conflict(
                "instagram_account_exists",
                "an account with this instagram_account_id already exists",
            ),
            other => Self::internal(other),
        }
    }
}

fn invalid_request(err: poem::Error) -> ApiError {
    ApiError::bad_request("invalid_request", err.to_string())
}

/// The stable code for an HTTP status that reached the edge as a bare error.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal_error",
        _ => "error",
    }
}

/// Renders any error that escaped a handler as JSON `{code, message}`;
/// responses that already carry a JSON body pass through unchanged.
pub async fn render_error(err: poem::Error) -> Response {
    let resp = err.into_response();
    let is_json = resp
        .headers()
        .get(poem::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let status = resp.status();
    let text = resp.into_body().into_string().await.unwrap_or_default();
    let message = match (status, text.trim()) {
        (StatusCode::UNAUTHORIZED, _) => "a valid bearer token is required".to_owned(),
        (StatusCode::PAYLOAD_TOO_LARGE, _) => "the request body is too large".to_owned(),
        (s, "") => s.canonical_reason().unwrap_or("error").to_owned(),
        (_, t) => t.chars().take(300).collect(),
    };
    (
        status,
        poem::web::Json(ErrorBody::new(code_for(status), message)),
    )
        .into_response()
}
