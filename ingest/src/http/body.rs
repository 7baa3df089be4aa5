//! A JSON request body that may be left out: no body at all reads as `{}`,
//! for operations whose every field is optional (a bulk replay's filter, a
//! rotation's grace period). A body that is there is JSON as anywhere else:
//! `Content-Type: application/json` (415 otherwise) and a valid object (400).

use poem::http::StatusCode;
use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::{ParseFromJSON, Type};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

pub struct OptionalJson<T>(pub T);

impl<'a, T: Type + ParseFromJSON> ApiExtractor<'a> for OptionalJson<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: Some("Optional: no body is the same as `{}`."),
            content: vec![MetaMediaType {
                content_type: "application/json; charset=utf-8",
                schema: T::schema_ref(),
            }],
            required: false,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let bytes = body.take()?.into_bytes().await?;
        let value = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::json!({})
        } else {
            let json = request
                .content_type()
                .is_some_and(|t| t.starts_with("application/json"));
            if !json {
                return Err(poem::Error::from_string(
                    "the body must be JSON, sent with Content-Type: application/json",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ));
            }
            serde_json::from_slice(&bytes).map_err(|e| {
                poem::Error::from_string(
                    format!("parse request payload error: {e}"),
                    StatusCode::BAD_REQUEST,
                )
            })?
        };
        T::parse_from_json(Some(value)).map(Self).map_err(|e| {
            poem::Error::from_string(
                format!("parse request payload error: {}", e.into_message()),
                StatusCode::BAD_REQUEST,
            )
        })
    }
}
