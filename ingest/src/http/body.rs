//! JSON request bodies, checked against their own schema before they are
//! parsed, so that a refusal names the field and the rule. A body that may
//! be left out ([`OptionalJson`]) reads as `{}` when there is none, for
//! operations whose every field is optional (a bulk replay's filter, a
//! rotation's grace period). A body that is there is
//! `Content-Type: application/json` (415 otherwise) and valid JSON (400).

use poem::http::StatusCode;
use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, Type};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

/// A JSON request body, like poem-openapi's `Json`, checked against its own
/// schema first so that a refusal names the field and the rule:
/// `field `quick_replies[0].title` must be a string, not null`, where
/// poem-openapi would only say which type it was parsing. Unknown fields are
/// refused at every depth, in a tagged object (`"type": "web_url"`) too, and
/// a JSON type is never converted (a number is not a string). `OPTIONAL`:
/// no body at all is the same as `{}`.
pub struct JsonBody<T, const OPTIONAL: bool = false>(pub T);

/// A JSON request body that may be left out (no body is `{}`).
pub type OptionalJson<T> = JsonBody<T, true>;

impl<'a, T: Type + ParseFromJSON, const OPTIONAL: bool> ApiExtractor<'a> for JsonBody<T, OPTIONAL> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: OPTIONAL.then_some("Optional: no body is the same as `{}`."),
            content: vec![MetaMediaType {
                content_type: "application/json; charset=utf-8",
                schema: T::schema_ref(),
            }],
            required: !OPTIONAL,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let empty = OPTIONAL.then(|| serde_json::json!({}));
        let value = read_json(request, body, empty).await?;
        parse_checked::<T>(value).map(Self)
    }
}

/// A request body as JSON: `Content-Type: application/json` (415 otherwise)
/// and valid JSON (400). An empty body reads as `empty` when the operation
/// allows one.
async fn read_json(
    request: &Request,
    body: &mut RequestBody,
    empty: Option<serde_json::Value>,
) -> poem::Result<serde_json::Value> {
    let bytes = body.take()?.into_bytes().await?;
    if let Some(empty) = empty
        && bytes.iter().all(u8::is_ascii_whitespace)
    {
        return Ok(empty);
    }
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
            format!("the body is not JSON: {e}"),
            StatusCode::BAD_REQUEST,
        )
    })
}

/// Checks a body against `T`'s schema (naming what breaks it), then parses it.
fn parse_checked<T: Type + ParseFromJSON>(value: serde_json::Value) -> poem::Result<T> {
    let mut registry = Registry::new();
    T::register(&mut registry);
    let schemas = Schemas(&registry);
    if let Err(problem) = schemas.check(&value, &T::schema_ref(), "", true) {
        return Err(poem::Error::from_string(problem, StatusCode::BAD_REQUEST));
    }
    T::parse_from_json(Some(value)).map_err(|e| {
        poem::Error::from_string(
            format!("parse request payload error: {}", e.into_message()),
            StatusCode::BAD_REQUEST,
        )
    })
}

/// The request schemas, to check a body against: what must be there, its
/// JSON type, the values an enum allows, which fields exist, and which
/// variant a `type` tag names. Lengths, patterns and ranges are left to
/// poem-openapi, whose messages name the field and the rule already.
struct Schemas<'r>(&'r Registry);

impl Schemas<'_> {
    fn resolve<'s>(&'s self, schema: &'s MetaSchemaRef) -> Option<&'s MetaSchema> {
        match schema {
            MetaSchemaRef::Inline(inline) => Some(inline),
            MetaSchemaRef::Reference(name) => self.0.schemas.get(name),
        }
    }

    /// Every field an object schema has, its `allOf` parts included.
    fn fields<'s>(&'s self, schema: &'s MetaSchemaRef, into: &mut Vec<&'s str>) {
        if let Some(s) = self.resolve(schema) {
            into.extend(s.properties.iter().map(|(name, _)| *name));
            for part in &s.all_of {
                self.fields(part, into);
            }
        }
    }

    fn check(
        &self,
        value: &serde_json::Value,
        schema: &MetaSchemaRef,
        path: &str,
        whole_object: bool,
    ) -> Result<(), String> {
        use serde_json::Value;
        let Some(s) = self.resolve(schema) else {
            return Ok(());
        };
        if value.is_null() {
            return if s.nullable {
                Ok(())
            } else {
                Err(format!("{} must not be null", field(path)))
            };
        }
        if let Some(tags) = &s.discriminator {
            let Some(object) = value.as_object() else {
                return Err(format!("{} must be an object", field(path)));
            };
            let tag_path = join(path, tags.property_name);
            let choices = || {
                let names: Vec<&str> = tags.mapping.iter().map(|(t, _)| t.as_str()).collect();
                names.join(", ")
            };
            let tag = match object.get(tags.property_name) {
                None | Some(Value::Null) => {
                    return Err(format!("{} is required ({})", field(&tag_path), choices()));
                }
                Some(tag) => tag,
            };
            let variant = tags
                .mapping
                .iter()
                .find(|(t, _)| Some(t.as_str()) == tag.as_str());
            let Some((_, target)) = variant else {
                return Err(format!(
                    "{} must be one of {}, not {}",
                    field(&tag_path),
                    choices(),
                    shown(tag)
                ));
            };
            let name = target.rsplit('/').next().unwrap_or(target);
            return self.check(
                value,
                &MetaSchemaRef::Reference(name.to_owned()),
                path,
                true,
            );
        }
        if !s.all_of.is_empty() {
            for part in &s.all_of {
                self.check(value, part, path, false)?;
            }
            if whole_object && let Some(object) = value.as_object() {
                let mut known = Vec::new();
                self.fields(schema, &mut known);
                if !known.is_empty() {
                    unknown(object, &known, path)?;
                }
            }
            return Ok(());
        }
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        };
        let expected = match s.ty {
            "string" if !value.is_string() => Some("a string"),
            "integer" if !(value.is_i64() || value.is_u64()) => Some("an integer"),
            "number" if !value.is_number() => Some("a number"),
            "boolean" if !value.is_boolean() => Some("true or false"),
            "array" if !value.is_array() => Some("an array"),
            "object" if !value.is_object() => Some("an object"),
            _ => None,
        };
        if let Some(expected) = expected {
            return Err(format!("{} must be {expected}, not {kind}", field(path)));
        }
        if !s.enum_items.is_empty() && !s.enum_items.contains(value) {
            let allowed: Vec<String> = s
                .enum_items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect();
            return Err(format!(
                "{} must be one of {}, not {}",
                field(path),
                allowed.join(", "),
                shown(value)
            ));
        }
        if let (Value::Array(items), Some(item)) = (value, &s.items) {
            for (i, v) in items.iter().enumerate() {
                self.check(v, item, &format!("{path}[{i}]"), true)?;
            }
        }
        if let Value::Object(object) = value {
            for name in &s.required {
                if object.get(*name).is_none_or(Value::is_null) {
                    return Err(format!("{} is required", field(&join(path, name))));
                }
            }
            // An optional field is left out or, where the schema says
            // `nullable`, null; null is not another way to leave it out.
            for (name, property) in &s.properties {
                if let Some(v) = object.get(*name) {
                    self.check(v, property, &join(path, name), true)?;
                }
            }
            if let Some(values) = &s.additional_properties {
                for (name, v) in object {
                    self.check(v, values, &join(path, name), true)?;
                }
            } else if whole_object && !s.properties.is_empty() {
                let known: Vec<&str> = s.properties.iter().map(|(name, _)| *name).collect();
                unknown(object, &known, path)?;
            }
        }
        Ok(())
    }
}

fn unknown(
    object: &serde_json::Map<String, serde_json::Value>,
    known: &[&str],
    path: &str,
) -> Result<(), String> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(name) => Err(format!("unknown field `{}`", join(path, name))),
        None => Ok(()),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// A refused value as the message shows it: the client's own, cut short.
fn shown(value: &serde_json::Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

fn field(path: &str) -> String {
    if path.is_empty() {
        "the body".to_owned()
    } else {
        format!("field `{path}`")
    }
}

impl<T, const OPTIONAL: bool> std::ops::Deref for JsonBody<T, OPTIONAL> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
