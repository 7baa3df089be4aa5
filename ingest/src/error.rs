//! Every error the HTTP API returns is JSON `{code, message}` with a stable,
//! machine-readable `code`. Handlers return [`ApiError`]; everything else
//! (unknown routes, bad auth, unparsable bodies, oversized bodies) is turned
//! into the same shape by [`render_error`] at the edge.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

/// The body of every error response.
#[derive(Debug, Object, serde::Serialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `not_found`, `invalid_request`.
    pub code: String,
    /// Human-readable explanation. Never contains secrets or message text.
    pub message: String,
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
    /// No such resource.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The request conflicts with an existing resource.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// Unexpected failure; the request can be retried.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

fn body(code: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        code: code.to_owned(),
        message: message.into(),
    })
}

impl ApiError {
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::BadRequest(body(code, message))
    }
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::NotFound(body(code, message))
    }
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::Conflict(body(code, message))
    }
    /// Logs the cause (which never holds secrets or content) and answers 500.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::Internal(body("internal_error", "internal error, try again"))
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
        Json(ErrorBody {
            code: code_for(status).to_owned(),
            message,
        })
        .0
        .into_json(),
    )
        .into_response()
}

impl ErrorBody {
    fn into_json(self) -> poem::web::Json<ErrorBody> {
        poem::web::Json(self)
    }
}
