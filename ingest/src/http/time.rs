//! The one timestamp form of the API, the CRM payload and the alerts: RFC
//! 3339 in UTC with `Z`, to the millisecond (`2026-11-30T10:30:00.123Z`).
//! poem-openapi writes a `DateTime<Utc>` as `+00:00` with nanoseconds, so
//! the API's objects hold this type instead.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

/// A moment, written `2026-11-30T10:30:00.123Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub DateTime<Utc>);

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Self(t)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl Type for Timestamp {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_date-time".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        let mut schema = MetaSchema::new_with_format("string", "date-time");
        schema.example = Some(Value::String("2026-11-30T10:30:00.123Z".into()));
        MetaSchemaRef::Inline(Box::new(schema))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Timestamp {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(s) => DateTime::parse_from_rfc3339(&s)
                .map(|t| Self(t.to_utc()))
                .map_err(|e| ParseError::custom(format!("not an RFC 3339 time: {e}"))),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for Timestamp {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_in_utc_with_z_to_the_millisecond_and_read_back() {
        let t: DateTime<Utc> = "2026-11-30T10:30:00.123456789+00:00".parse().unwrap();
        let json = Timestamp(t).to_json().unwrap();
        assert_eq!(json, Value::String("2026-11-30T10:30:00.123Z".into()));
        let back = Timestamp::parse_from_json(Some(json)).unwrap();
        assert_eq!(back.0.timestamp_millis(), t.timestamp_millis());
        let whole: DateTime<Utc> = "2026-11-30T10:30:00Z".parse().unwrap();
        assert_eq!(Timestamp(whole).to_string(), "2026-11-30T10:30:00.000Z");
    }
}
