//! Meta's Instagram messaging webhook payload, as documented for the
//! Instagram Messaging API, parsed leniently: unknown fields are ignored and
//! an event we do not understand is counted, never an error, so that one
//! odd event never makes Meta redeliver (and us re-save) a whole batch.
//!
//! [`classify`] turns one event into what we store and forward.

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;
use shared::model::{Direction, EventKind};
use shared::wire::{Attachment, Postback, QuickReply, Reaction, ReplyTo, StoryRef};

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
    /// Field changes: comments, mentions, and messaging events as the app
    /// dashboard's "Test" button sends them.
    #[serde(default)]
    pub changes: Vec<Change>,
    /// When Meta sent it (milliseconds; comments carry no time of their own).
    #[serde(default, deserialize_with = "opt_millis")]
    pub time: Option<i64>,
}

/// A comment on the account's media (`comments`, `live_comments`).
#[derive(Debug, Deserialize)]
pub struct MetaComment {
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    pub from: Option<MetaCommenter>,
    pub text: Option<String>,
    pub media: Option<MetaMedia>,
    pub parent_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct MetaCommenter {
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    pub username: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct MetaMedia {
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    pub media_product_type: Option<String>,
}

/// The account @mentioned in a comment elsewhere (`mentions`): ids only.
#[derive(Debug, Deserialize)]
pub struct MetaMention {
    pub media_id: Option<String>,
    pub comment_id: String,
}

#[derive(Debug, Deserialize)]
pub struct Change {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub value: Value,
}

impl Entry {
    /// Every event of the entry, classified in order: `messaging[]`,
    /// `standby[]`, then `changes[]` (comments, mentions, and messaging
    /// events as the dashboard's test sends them). `None` for an event kind
    /// that is accepted but not forwarded, or a change that is not one.
    pub fn events(&self) -> Vec<Option<Classified>> {
        let direct = self.messaging.iter().chain(self.standby.iter());
        let mut all: Vec<Option<Classified>> = direct.map(|e| classify(&self.id, e)).collect();
        for change in &self.changes {
            let value = || change.value.clone();
            all.push(match change.field.as_str() {
                field @ ("comments" | "live_comments") => serde_json::from_value(value())
                    .ok()
                    .map(|c| classify_comment(&self.id, field, c, self.time_or_now())),
                "mentions" => serde_json::from_value(value())
                    .ok()
                    .map(|m| classify_mention(&self.id, m, self.time_or_now())),
                field if field.starts_with("messag") => {
                    serde_json::from_value::<MessagingEvent>(value())
                        .ok()
                        .and_then(|e| classify(&self.id, &e))
                }
                _ => None,
            });
        }
        all
    }

    fn time_or_now(&self) -> DateTime<Utc> {
        millis_or_now(self.time)
    }
}

/// A comment on the account's media, in the commenter's conversation.
fn classify_comment(
    business_id: &str,
    source: &str,
    c: MetaComment,
    time: DateTime<Utc>,
) -> Classified {
    let (sender_id, username) = c.from.map(|f| (f.id, f.username)).unwrap_or_default();
    let from_business = sender_id == business_id;
    Classified {
        customer_id: sender_id.clone(),
        recipient_id: business_id.to_owned(),
        sender_id,
        mid: c.id.clone(),
        text: c.text,
        message_type: "comment".to_owned(),
        comment: Some(shared::wire::Comment {
            media_id: c.media.as_ref().map(|m| m.id.clone()),
            media_product_type: c.media.and_then(|m| m.media_product_type),
            parent_id: c.parent_id,
            source: source.to_owned(),
        }),
        sender_username: username,
        ..Classified::bare(
            EventKind::CommentCreated,
            format!("comment:{}", c.id),
            direction(from_business),
            time,
        )
    }
}

/// A mention of the account in a comment elsewhere: Meta gives only ids, so
/// it has no sender and is a conversation of its own.
fn classify_mention(business_id: &str, m: MetaMention, time: DateTime<Utc>) -> Classified {
    Classified {
        customer_id: format!("mention{}", m.comment_id),
        recipient_id: business_id.to_owned(),
        mid: m.comment_id.clone(),
        message_type: "mention".to_owned(),
        comment: Some(shared::wire::Comment {
            media_id: m.media_id,
            media_product_type: None,
            parent_id: None,
            source: "mentions".to_owned(),
        }),
        ..Classified::bare(
            EventKind::CommentMentioned,
            format!("mention:{}", m.comment_id),
            Direction::Inbound,
            time,
        )
    }
}

fn millis_or_now(t: Option<i64>) -> DateTime<Utc> {
    t.map(|t| if t < 100_000_000_000 { t * 1000 } else { t }) // seconds → ms
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .unwrap_or_else(Utc::now)
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
    /// Milliseconds since the epoch (some test payloads send seconds, or a string).
    #[serde(default, deserialize_with = "opt_millis")]
    pub timestamp: Option<i64>,
    pub message: Option<Message>,
    pub reaction: Option<MetaReaction>,
    pub read: Option<MetaRead>,
    pub postback: Option<MetaPostback>,
    pub referral: Option<Value>,
    pub message_edit: Option<MetaMessageEdit>,
}

/// A customer edited a message: its mid, the new text, and how many times
/// it has been edited (a number or a string, as Meta's examples vary).
#[derive(Debug, Deserialize)]
pub struct MetaMessageEdit {
    pub mid: String,
    pub text: Option<String>,
    #[serde(default, deserialize_with = "opt_count")]
    pub num_edit: Option<u32>,
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
    pub quick_reply: Option<QuickReply>,
    pub reply_to: Option<MetaReplyTo>,
    pub referral: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct MetaReplyTo {
    pub mid: Option<String>,
    pub story: Option<MetaStory>,
}

#[derive(Debug, Deserialize)]
pub struct MetaStory {
    pub id: Option<String>,
    pub url: Option<String>,
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

#[derive(Debug, Deserialize)]
pub struct MetaReaction {
    pub mid: String,
    pub action: String,
    pub reaction: Option<String>,
    pub emoji: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct MetaRead {
    pub mid: String,
}

#[derive(Debug, Deserialize)]
pub struct MetaPostback {
    pub mid: Option<String>,
    pub title: Option<String>,
    pub payload: Option<String>,
}

/// One event as we store and forward it.
#[derive(Debug)]
pub struct Classified {
    /// `message.received`, `message.echo`, ...
    pub event: EventKind,
    /// Recognises Meta's redelivery of this same event.
    pub event_key: String,
    /// `inbound` (from the customer) or `outbound` (from the business).
    pub direction: Direction,
    /// The customer's id, whichever side of the event they are on.
    pub customer_id: String,
    pub sender_id: String,
    pub recipient_id: String,
    /// The mid the event is about.
    pub mid: String,
    pub text: Option<String>,
    pub message_type: String,
    pub attachments: Vec<Attachment>,
    pub time: DateTime<Utc>,
    pub reply_to: Option<ReplyTo>,
    pub quick_reply: Option<QuickReply>,
    pub reaction: Option<Reaction>,
    pub postback: Option<Postback>,
    pub referral: Option<Value>,
    /// For an edit: how many times the message has been edited.
    pub edit_count: Option<u32>,
    /// For a comment: the comment and its media.
    pub comment: Option<shared::wire::Comment>,
    /// When Meta names the author (comments do).
    pub sender_username: Option<String>,
}

impl Classified {
    /// An event with its kind, key, direction and time, and nothing else
    /// yet: each kind fills in what it has.
    fn bare(
        event: EventKind,
        event_key: String,
        direction: Direction,
        time: DateTime<Utc>,
    ) -> Self {
        Self {
            event,
            event_key,
            direction,
            customer_id: String::new(),
            sender_id: String::new(),
            recipient_id: String::new(),
            mid: String::new(),
            text: None,
            message_type: String::new(),
            attachments: Vec::new(),
            time,
            reply_to: None,
            quick_reply: None,
            reaction: None,
            postback: None,
            referral: None,
            edit_count: None,
            comment: None,
            sender_username: None,
        }
    }
}

/// Outbound when the business wrote it, inbound when the customer did.
fn direction(from_business: bool) -> Direction {
    if from_business {
        Direction::Outbound
    } else {
        Direction::Inbound
    }
}

impl MessagingEvent {
    /// Meta's event time; now when Meta sent none or an impossible one.
    pub fn time(&self) -> DateTime<Utc> {
        millis_or_now(self.timestamp)
    }
}

/// Maps Meta's attachment `type` to ours.
pub fn attachment_type(kind: &str) -> &'static str {
    match kind {
        "image" | "animated_image" | "sticker" => "image",
        "video" => "video",
        "audio" => "audio",
        "file" => "file",
        "share" | "ig_post" => "share",
        "story_mention" => "story_mention",
        "ig_reel" | "reel" => "reel",
        _ => "unsupported",
    }
}

/// What one messaging event is, for the account `business_id`; `None` for
/// an event kind we accept but do not forward.
pub fn classify(business_id: &str, e: &MessagingEvent) -> Option<Classified> {
    let time = e.time();
    let ms = time.timestamp_millis();
    let from_business = e.sender.id == business_id;
    let customer_id = if from_business {
        e.recipient.id.clone()
    } else {
        e.sender.id.clone()
    };
    let base = |event, event_key: String, mid: &str, message_type: &str| Classified {
        customer_id: customer_id.clone(),
        sender_id: e.sender.id.clone(),
        recipient_id: e.recipient.id.clone(),
        mid: mid.to_owned(),
        message_type: message_type.to_owned(),
        ..Classified::bare(event, event_key, direction(from_business), time)
    };
    if let Some(m) = &e.message {
        if m.is_deleted {
            return Some(base(
                EventKind::MessageDeleted,
                format!("deleted:{}", m.mid),
                &m.mid,
                "deleted",
            ));
        }
        let event = if m.is_echo {
            EventKind::MessageEcho
        } else {
            EventKind::MessageReceived
        };
        let reply_to = m.reply_to.as_ref().map(|r| ReplyTo {
            mid: r.mid.clone(),
            story: r.story.as_ref().map(|s| StoryRef {
                id: s.id.clone(),
                url: s.url.clone(),
            }),
        });
        let message_type = if m.is_unsupported {
            "unsupported"
        } else if let Some(a) = m.attachments.first() {
            attachment_type(&a.kind)
        } else if reply_to.as_ref().is_some_and(|r| r.story.is_some()) {
            "story_reply"
        } else if m.text.is_some() {
            "text"
        } else {
            "unsupported"
        };
        let mut c = base(event, m.mid.clone(), &m.mid, message_type);
        c.text = m.text.clone();
        c.attachments = m
            .attachments
            .iter()
            .map(|a| Attachment {
                kind: attachment_type(&a.kind).to_owned(),
                url: a.payload.as_ref().and_then(|p| p.url.clone()),
            })
            .collect();
        c.reply_to = reply_to;
        c.quick_reply = m.quick_reply.clone();
        c.referral = m.referral.clone();
        return Some(c);
    }
    if let Some(edit) = &e.message_edit {
        // Each edit is its own event; a redelivery of one is recognised by
        // its count (or, without one, its time).
        let nth = edit
            .num_edit
            .map_or_else(|| format!("t{ms}"), |n| n.to_string());
        let mut c = base(
            EventKind::MessageEdited,
            format!("edit:{}:{nth}", edit.mid),
            &edit.mid,
            "edited",
        );
        c.text = edit.text.clone();
        c.edit_count = edit.num_edit;
        return Some(c);
    }
    if let Some(r) = &e.reaction {
        let key = format!("reaction:{}:{}:{}:{ms}", r.mid, e.sender.id, r.action);
        let mut c = base(EventKind::MessageReaction, key, &r.mid, "reaction");
        c.reaction = Some(Reaction {
            action: r.action.clone(),
            reaction: r.reaction.clone(),
            emoji: r.emoji.clone(),
        });
        return Some(c);
    }
    if let Some(r) = &e.read {
        let key = format!("read:{}:{}:{ms}", r.mid, e.sender.id);
        return Some(base(EventKind::MessageRead, key, &r.mid, "read"));
    }
    if let Some(p) = &e.postback {
        let mid = p.mid.clone().unwrap_or_else(|| format!("postback_{ms}"));
        let mut c = base(
            EventKind::MessagePostback,
            format!("postback:{mid}:{}", e.sender.id),
            &mid,
            "postback",
        );
        c.text = p.title.clone();
        c.postback = Some(Postback {
            title: p.title.clone(),
            payload: p.payload.clone(),
        });
        return Some(c);
    }
    if let Some(r) = &e.referral {
        let key = format!("referral:{}:{ms}", e.sender.id);
        let mut c = base(EventKind::MessageReferral, key.clone(), &key, "referral");
        c.referral = Some(r.clone());
        return Some(c);
    }
    None
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom("expected a string or number id")),
    }
}

fn opt_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
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

    fn event(json: &str) -> MessagingEvent {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn messages_are_classified_with_type_and_direction() {
        let text = event(
            r#"{"sender":{"id":"123"},"recipient":{"id":"999"},"timestamp":1731061800000,"message":{"mid":"m1","text":"hi"}}"#,
        );
        let c = classify("999", &text).unwrap();
        assert_eq!(
            (c.event, c.direction, c.message_type.as_str()),
            (EventKind::MessageReceived, Direction::Inbound, "text")
        );
        assert_eq!(c.customer_id, "123");
        assert_eq!(c.time.timestamp(), 1731061800);

        let reel = event(
            r#"{"sender":{"id":"123"},"recipient":{"id":"999"},"timestamp":"1731061800001","message":{"mid":"m2","attachments":[{"type":"ig_reel","payload":{"url":"https://x/y"}}]}}"#,
        );
        assert_eq!(classify("999", &reel).unwrap().message_type, "reel");

        let echo = event(
            r#"{"sender":{"id":"999"},"recipient":{"id":"123"},"timestamp":1,"message":{"mid":"m3","text":"yo","is_echo":true}}"#,
        );
        let c = classify("999", &echo).unwrap();
        assert_eq!(
            (c.event, c.direction, c.customer_id.as_str()),
            (EventKind::MessageEcho, Direction::Outbound, "123")
        );

        let story = event(
            r#"{"sender":{"id":"123"},"recipient":{"id":"999"},"timestamp":1,"message":{"mid":"m4","text":"nice","reply_to":{"story":{"url":"https://s","id":"s1"}}}}"#,
        );
        assert_eq!(classify("999", &story).unwrap().message_type, "story_reply");
    }

    #[test]
    fn an_edit_names_the_edited_message_and_each_edit_has_its_own_key() {
        let first = event(
            r#"{"sender":{"id":"123"},"recipient":{"id":"999"},"timestamp":5,"message_edit":{"mid":"m1","text":"new","num_edit":1}}"#,
        );
        let c = classify("999", &first).unwrap();
        assert_eq!(
            (c.event, c.mid.as_str(), c.text.as_deref(), c.edit_count),
            (EventKind::MessageEdited, "m1", Some("new"), Some(1))
        );
        let second = event(
            r#"{"sender":{"id":"123"},"recipient":{"id":"999"},"timestamp":6,"message_edit":{"mid":"m1","text":"newer","num_edit":"2"}}"#,
        );
        let c2 = classify("999", &second).unwrap();
        assert_eq!(c2.edit_count, Some(2));
        assert_ne!(c.event_key, c2.event_key);
        assert_ne!(c.event_key, "m1", "an edit never collides with its message");
    }

    #[test]
    fn comments_live_comments_and_mentions_become_their_own_events() {
        let entry: Entry = serde_json::from_str(
            r#"{"id":"999","time":1731061800000,"changes":[
                {"field":"comments","value":{"id":"c1","from":{"id":"123","username":"ana"},"text":"price?","media":{"id":"m1","media_product_type":"REELS"},"parent_id":"c0"}},
                {"field":"live_comments","value":{"id":"c2","from":{"id":"124","username":"bo"},"text":"hi","media":{"id":"m2"}}},
                {"field":"mentions","value":{"media_id":"m3","comment_id":"c3"}},
                {"field":"story_insights","value":{"media_id":"m4"}}
            ]}"#,
        )
        .unwrap();
        let events = entry.events();
        assert_eq!(events.len(), 4);
        let c = events[0].as_ref().unwrap();
        assert_eq!(
            (
                c.event,
                c.mid.as_str(),
                c.sender_id.as_str(),
                c.text.as_deref()
            ),
            (EventKind::CommentCreated, "c1", "123", Some("price?"))
        );
        assert_eq!(c.sender_username.as_deref(), Some("ana"));
        assert_eq!(c.customer_id, "123", "in the commenter's conversation");
        let comment = c.comment.as_ref().unwrap();
        assert_eq!(
            (
                comment.media_id.as_deref(),
                comment.parent_id.as_deref(),
                comment.source.as_str()
            ),
            (Some("m1"), Some("c0"), "comments")
        );
        assert_eq!(c.time.timestamp_millis(), 1731061800000);
        let live = events[1].as_ref().unwrap();
        assert_eq!(live.comment.as_ref().unwrap().source, "live_comments");
        let mention = events[2].as_ref().unwrap();
        assert_eq!(
            (
                mention.event,
                mention.mid.as_str(),
                mention.sender_id.as_str()
            ),
            (EventKind::CommentMentioned, "c3", "")
        );
        assert!(events[3].is_none(), "a field we do not forward");
        assert_ne!(c.event_key, mention.event_key);
    }

    #[test]
    fn other_events_get_their_own_kind_and_a_stable_key() {
        let reaction = event(
            r#"{"sender":{"id":"123"},"recipient":{"id":"999"},"timestamp":5,"reaction":{"mid":"m1","action":"react","reaction":"love","emoji":"❤"}}"#,
        );
        let c = classify("999", &reaction).unwrap();
        assert_eq!(c.event, EventKind::MessageReaction);
        assert_eq!(classify("999", &reaction).unwrap().event_key, c.event_key);
        let read = event(
            r#"{"sender":{"id":"123"},"recipient":{"id":"999"},"timestamp":5,"read":{"mid":"m1"}}"#,
        );
        assert_eq!(
            classify("999", &read).unwrap().event,
            EventKind::MessageRead
        );
        let unknown =
            event(r#"{"sender":{"id":"123"},"recipient":{"id":"999"},"timestamp":5,"optin":{}}"#);
        assert!(classify("999", &unknown).is_none());
    }
}
