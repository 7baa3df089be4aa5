//! Meta's Instagram messaging webhook payload, as documented for the
//! Instagram Messaging API, parsed leniently: unknown fields are ignored and
//! an event we do not understand is classified, never an error, so that one
//! odd event never makes Meta redeliver (and us re-save) a whole batch.

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct WebhookPayload {
    pub object: String,
    #[serde(default)]
    pub entry: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
pub struct Entry {
    /// The Instagram professional account the events belong to.
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    #[serde(default)]
    pub messaging: Vec<MessagingEvent>,
    /// Events delivered while another app holds the thread (handover protocol).
    #[serde(default)]
    pub standby: Vec<MessagingEvent>,
    /// Field-change notifications, as in the dashboard's "Test" button.
    #[serde(default)]
    pub changes: Vec<Value>,
}

#[derive(Debug, Deserialize)]
pub struct Party {
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub struct MessagingEvent {
    pub sender: Party,
    pub recipient: Party,
    /// Milliseconds since the epoch (some test payloads send a string).
    #[serde(default, deserialize_with = "opt_millis")]
    pub timestamp: Option<i64>,
    pub message: Option<Message>,
    /// Any other event kind: `read`, `reaction`, `postback`, `referral`, ...
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub mid: String,
    pub text: Option<String>,
    #[serde(default)]
    pub attachments: Vec<MetaAttachment>,
    #[serde(default)]
    pub is_echo: bool,
    #[serde(default)]
    pub is_deleted: bool,
    #[serde(default)]
    pub is_unsupported: bool,
}

#[derive(Debug, Deserialize)]
pub struct MetaAttachment {
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: Option<AttachmentPayload>,
}

#[derive(Debug, Deserialize)]
pub struct AttachmentPayload {
    pub url: Option<String>,
}

impl MessagingEvent {
    /// Meta's event time; now when Meta sent none or an impossible one.
    pub fn time(&self) -> DateTime<Utc> {
        self.timestamp
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .unwrap_or_else(Utc::now)
    }

    /// A short name for the event's kind, for counting what we accept.
    pub fn kind(&self) -> &str {
        match &self.message {
            Some(m) if m.is_echo => "echo",
            Some(m) if m.is_deleted => "deleted",
            Some(_) => "message",
            None => self
                .other
                .keys()
                .next()
                .map(String::as_str)
                .unwrap_or("unknown"),
        }
    }
}

impl Message {
    /// The CRM's `message_type`: the first attachment's kind, else text.
    pub fn message_type(&self) -> String {
        if self.is_unsupported {
            return "unsupported".into();
        }
        match self.attachments.first() {
            None if self.text.is_some() => "text".into(),
            None => "unsupported".into(),
            Some(a) => attachment_type(&a.kind).into(),
        }
    }
}

/// Maps Meta's attachment `type` to ours.
pub fn attachment_type(kind: &str) -> &'static str {
    match kind {
        "image" => "image",
        "video" => "video",
        "audio" => "audio",
        "file" => "file",
        "share" => "share",
        "story_mention" => "story_mention",
        "ig_reel" | "reel" => "reel",
        "ig_post" => "share",
        "animated_image" | "sticker" => "image",
        _ => "unsupported",
    }
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom("expected a string or number id")),
    }
}

fn opt_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_text_message_and_an_attachment() {
        let p: WebhookPayload = serde_json::from_str(
            r#"{"object":"instagram","entry":[{"id":"17841400000000000","time":1731061800,
            "messaging":[
              {"sender":{"id":"123"},"recipient":{"id":"17841400000000000"},"timestamp":1731061800000,
               "message":{"mid":"mid_a","text":"hello"}},
              {"sender":{"id":"123"},"recipient":{"id":"17841400000000000"},"timestamp":"1731061800001",
               "message":{"mid":"mid_b","attachments":[{"type":"ig_reel","payload":{"url":"https://x/y"}}]}},
              {"sender":{"id":"123"},"recipient":{"id":"17841400000000000"},"timestamp":1731061800002,
               "read":{"mid":"mid_a"}}
            ]}]}"#,
        )
        .unwrap();
        let events = &p.entry[0].messaging;
        assert_eq!(events[0].message.as_ref().unwrap().message_type(), "text");
        assert_eq!(events[1].message.as_ref().unwrap().message_type(), "reel");
        assert_eq!(events[1].timestamp, Some(1731061800001));
        assert_eq!(events[2].kind(), "read");
        assert_eq!(events[0].time().timestamp(), 1731061800);
    }
}
