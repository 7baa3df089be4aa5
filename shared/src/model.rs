//! The router's domain values, parsed once where they enter (the API, the
//! database, the accounts bucket) and carried as types from there on, so
//! no code compares strings and every reader agrees on a bad value: it is
//! an error, never a silent default.
//!
//! With the `openapi` feature (ingest) the enums the API shows are also
//! poem-openapi enums, so the API and the wire share one definition.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A stored or received value that is not one the router knows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not one of: {known}")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
    pub known: String,
}

/// Defines a string-valued enum: its variants and names in one list, with
/// `as_str`, `ALL`, `Display`, `FromStr`, `TryFrom<String>` (how rows are
/// read) and serde as the name.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident as $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        $vis enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)]
               #[cfg_attr(feature = "openapi", oai(rename = $text))]
               $variant, )+
        }

        impl $name {
            /// Every value, in the order they are documented.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        what: $what,
                        value: s.to_owned(),
                        known: [$($text),+].join(", "),
                    }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownValue;
            fn try_from(s: String) -> Result<Self, UnknownValue> {
                s.parse()
            }
        }
    };
}

named_enum! {
    /// An event the CRM can receive.
    pub enum EventKind as "event" {
        /// A customer sent a direct message.
        MessageReceived = "message.received",
        /// The business sent a message from the Instagram app (not through our API).
        MessageEcho = "message.echo",
        /// A customer reacted to a message, or removed a reaction.
        MessageReaction = "message.reaction",
        /// A customer deleted (unsent) a message.
        MessageDeleted = "message.deleted",
        /// A customer edited a message they had sent.
        MessageEdited = "message.edited",
        /// A customer read the conversation up to a message.
        MessageRead = "message.read",
        /// A customer tapped a button (icebreaker, generic template, persistent menu).
        MessagePostback = "message.postback",
        /// A customer opened the conversation from a referral (ig.me link, ad).
        MessageReferral = "message.referral",
        /// Someone commented on the account's post, reel, ad or live video,
        /// or answered a comment there.
        CommentCreated = "comment.created",
        /// Someone @mentioned the account in a comment elsewhere.
        CommentMentioned = "comment.mentioned",
    }
}

/// What a stored message records: an event from Meta, or a reply sent
/// through the API (`message.sent`, which the CRM never receives: it sent it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageEvent {
    Received(EventKind),
    Sent,
}

impl MessageEvent {
    pub const SENT: &'static str = "message.sent";

    pub const fn as_str(self) -> &'static str {
        match self {
            MessageEvent::Received(kind) => kind.as_str(),
            MessageEvent::Sent => Self::SENT,
        }
    }
}

impl TryFrom<String> for MessageEvent {
    type Error = UnknownValue;
    fn try_from(s: String) -> Result<Self, UnknownValue> {
        if s == Self::SENT {
            return Ok(MessageEvent::Sent);
        }
        s.parse().map(MessageEvent::Received).map_err(|mut e| {
            e.known.push_str(", message.sent");
            e
        })
    }
}

named_enum! {
    /// Whether messages for the account are forwarded.
    pub enum AccountStatus as "account status" {
        /// Messages are saved and forwarded to the CRM.
        Active = "active",
        /// Webhooks for the account are accepted but nothing is saved or forwarded.
        Disabled = "disabled",
        /// Meta rejected the access token: messages still flow to the CRM, but
        /// replies fail until a new `instagram_access_token` is set.
        CredentialsInvalid = "credentials_invalid",
    }
}

named_enum! {
    /// Where the account's Instagram access token stands (`credentials.state`).
    pub enum CredentialsState as "credentials state" {
        /// Meta accepted it, or nothing says otherwise; refreshed before it expires.
        Valid = "valid",
        /// A refresh failed (Meta unreachable or refusing the refresh); the
        /// token still works until it expires, and the refresh is tried again
        /// once a day.
        Expiring = "expiring",
        /// Meta refused the token, or it expired: replies fail until a new
        /// `instagram_access_token` is set.
        Invalid = "invalid",
        /// The account has no access token: it receives, but cannot reply.
        Missing = "missing",
    }
}

named_enum! {
    /// Who wrote a message.
    pub enum Direction as "direction" {
        /// From the customer.
        Inbound = "inbound",
        /// From the business (an echo, or a reply through the API).
        Outbound = "outbound",
    }
}

named_enum! {
    /// Where a message stands on its way to the CRM.
    pub enum DeliveryStatus as "delivery status" {
        /// Saved; not yet attempted (or replayed and waiting).
        Pending = "pending",
        /// An attempt failed; another is scheduled.
        Retrying = "retrying",
        /// The CRM answered 2xx.
        Delivered = "delivered",
        /// Retries exhausted or refused by the CRM: see the dead-letter API.
        Dead = "dead",
        /// Not forwarded: an outbound message sent through this API, or an event
        /// the account does not receive.
        Skipped = "skipped",
        /// A dead letter an operator discarded.
        Discarded = "discarded",
    }
}

/// The events an account's CRM receives: every one (also those added in
/// later versions), or a chosen list. Stored as `NULL` or a JSON array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventSelection {
    Every,
    Only(Vec<EventKind>),
}

impl EventSelection {
    pub fn receives(&self, event: EventKind) -> bool {
        match self {
            EventSelection::Every => true,
            EventSelection::Only(list) => list.contains(&event),
        }
    }

    /// The chosen events, in the documented order.
    pub fn kinds(&self) -> Vec<EventKind> {
        EventKind::ALL
            .iter()
            .copied()
            .filter(|e| self.receives(*e))
            .collect()
    }

    /// The stored form: `None` for every event.
    pub fn to_stored(&self) -> Option<String> {
        match self {
            EventSelection::Every => None,
            EventSelection::Only(list) => {
                Some(serde_json::to_string(list).expect("event names serialize"))
            }
        }
    }
}

/// How a stored selection is read: the one parser, an error on a bad value.
impl TryFrom<Option<String>> for EventSelection {
    type Error = UnknownValue;
    fn try_from(stored: Option<String>) -> Result<Self, UnknownValue> {
        let Some(json) = stored else {
            return Ok(EventSelection::Every);
        };
        let names: Vec<String> = serde_json::from_str(&json).map_err(|_| UnknownValue {
            what: "event list",
            value: json.clone(),
            known: "a JSON array of event names".into(),
        })?;
        let kinds = names
            .iter()
            .map(|n| n.parse())
            .collect::<Result<Vec<EventKind>, _>>()?;
        Ok(EventSelection::Only(kinds))
    }
}

/// Why a CRM URL is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CrmUrlError {
    #[error("is not an absolute URL")]
    NotAbsolute,
    #[error("must use http or https")]
    Scheme,
    #[error("must name a host")]
    NoHost,
    #[error("must not carry credentials")]
    Credentials,
    #[error(
        "must have a host name of letters, digits, hyphens and dots (or an IP address), and \
         only the characters a URL allows, others percent-encoded"
    )]
    Form,
}

/// Whether `s` is a URL as the API takes them: [`CrmWebhookUrl::PATTERN`]
/// (which every URL in a request body follows: a CRM's, a button's, an
/// image's).
pub fn is_web_url(s: &str) -> bool {
    static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(CrmWebhookUrl::PATTERN).expect("the URL pattern compiles")
    });
    PATTERN.is_match(s)
}

/// Where an account's messages are POSTed: an absolute http(s) URL with a
/// host and no credentials. Whether its address is public is checked when
/// it is called (the forwarder resolves it then).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CrmWebhookUrl(url::Url);

impl CrmWebhookUrl {
    /// The URLs the API takes ([`Self::from_user`]), as a regular
    /// expression for the OpenAPI document: http(s), a host name (letters,
    /// digits and hyphens in dot-separated labels, the last starting with a
    /// letter), an IPv4 address or an IPv6 one in brackets, an optional port, path, query and
    /// fragment, each character one RFC 3986 allows there or percent-encoded.
    /// Every URL it matches is one [`Self::parse`] takes.
    pub const PATTERN: &'static str = concat!(
        "^[Hh][Tt][Tt][Pp][Ss]?://(?:",
        // A host name,
        r"(?:[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\.)*[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*",
        // an IPv4 address,
        r"|(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
        // or an IPv6 address in brackets, in any of its written forms.
        r"|\[(?:",
        r"(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}",
        r"|(?:[0-9A-Fa-f]{1,4}:){1,7}:",
        r"|(?:[0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}",
        r"|(?:[0-9A-Fa-f]{1,4}:){1,5}(?::[0-9A-Fa-f]{1,4}){1,2}",
        r"|(?:[0-9A-Fa-f]{1,4}:){1,4}(?::[0-9A-Fa-f]{1,4}){1,3}",
        r"|(?:[0-9A-Fa-f]{1,4}:){1,3}(?::[0-9A-Fa-f]{1,4}){1,4}",
        r"|(?:[0-9A-Fa-f]{1,4}:){1,2}(?::[0-9A-Fa-f]{1,4}){1,5}",
        r"|[0-9A-Fa-f]{1,4}:(?::[0-9A-Fa-f]{1,4}){1,6}",
        r"|:(?:(?::[0-9A-Fa-f]{1,4}){1,7}|:)",
        r"|::(?:[Ff]{4}(?::0{1,4})?:)?(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
        r"|(?:[0-9A-Fa-f]{1,4}:){1,4}:(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
        r")\]",
        ")(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0))?",
        "(?:/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})*)*",
        r"(?:\?(?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*)?",
        "(?:#(?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*)?$"
    );

    /// A CRM URL given through the API: one [`Self::PATTERN`] matches (so
    /// the API takes exactly what its document says), then [`Self::parse`].
    /// A URL stored before is read with `parse` alone.
    pub fn from_user(s: &str) -> Result<Self, CrmUrlError> {
        let url = Self::parse(s)?;
        if is_web_url(s) {
            Ok(url)
        } else {
            Err(CrmUrlError::Form)
        }
    }

    pub fn parse(s: &str) -> Result<Self, CrmUrlError> {
        let url = url::Url::parse(s).map_err(|_| CrmUrlError::NotAbsolute)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CrmUrlError::Scheme);
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(CrmUrlError::NoHost);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(CrmUrlError::Credentials);
        }
        Ok(Self(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

impl TryFrom<String> for CrmWebhookUrl {
    type Error = CrmUrlError;
    fn try_from(s: String) -> Result<Self, CrmUrlError> {
        Self::parse(&s)
    }
}

impl From<CrmWebhookUrl> for String {
    fn from(u: CrmWebhookUrl) -> String {
        u.0.into()
    }
}

impl fmt::Display for CrmWebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shows the host only: a path or query may carry a token.
impl fmt::Debug for CrmWebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CrmWebhookUrl({}://{}/…)",
            self.0.scheme(),
            self.0.host_str().unwrap_or("")
        )
    }
}

/// How ingest's store reads these values from text columns (the `sqlx`
/// feature): a value the router does not know is a decoding error that
/// names the column and the value, never a default.
#[cfg(feature = "sqlx")]
mod stored {
    use sqlx::error::BoxDynError;
    use sqlx::{Database, Decode, Type};

    use super::*;

    /// Stored in a text column, like `String`.
    macro_rules! text_column {
        ($($name:ty),+) => {$(
            impl<DB: Database> Type<DB> for $name
            where
                String: Type<DB>,
            {
                fn type_info() -> DB::TypeInfo {
                    <String as Type<DB>>::type_info()
                }
                fn compatible(ty: &DB::TypeInfo) -> bool {
                    <String as Type<DB>>::compatible(ty)
                }
            }
        )+};
    }

    text_column!(
        AccountStatus,
        CredentialsState,
        Direction,
        DeliveryStatus,
        MessageEvent,
        CrmWebhookUrl,
        EventSelection
    );

    /// Read with the value's one parser, `TryFrom` the column's text.
    macro_rules! decoded_from {
        ($text:ty => $($name:ty),+) => {$(
            impl<'r, DB: Database> Decode<'r, DB> for $name
            where
                String: Decode<'r, DB>,
            {
                fn decode(value: DB::ValueRef<'r>) -> Result<Self, BoxDynError> {
                    Ok(<$name>::try_from(<$text>::decode(value)?)?)
                }
            }
        )+};
    }

    decoded_from!(String => AccountStatus, CredentialsState, Direction, DeliveryStatus, MessageEvent, CrmWebhookUrl);
    // `NULL` is every event; otherwise a JSON array of event names.
    decoded_from!(Option<String> => EventSelection);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(*kind));
            assert_eq!(
                serde_json::to_string(kind).unwrap(),
                format!("\"{}\"", kind.as_str())
            );
        }
        let e = "message.typo".parse::<EventKind>().unwrap_err();
        assert!(e.to_string().contains("message.received"), "{e}");
        assert_eq!(
            MessageEvent::try_from("message.sent".to_owned()),
            Ok(MessageEvent::Sent)
        );
        assert!(AccountStatus::try_from("paused".to_owned()).is_err());
        assert!(Direction::try_from("sideways".to_owned()).is_err());
    }

    #[test]
    fn a_stored_selection_is_read_one_way_and_a_bad_one_is_an_error() {
        assert_eq!(EventSelection::try_from(None), Ok(EventSelection::Every));
        let only = EventSelection::try_from(Some(r#"["message.read"]"#.to_owned())).unwrap();
        assert!(only.receives(EventKind::MessageRead));
        assert!(!only.receives(EventKind::MessageReceived));
        assert_eq!(only.kinds(), [EventKind::MessageRead]);
        assert_eq!(
            EventSelection::try_from(only.to_stored()),
            Ok(only.clone()),
            "what is written is read back"
        );
        assert!(EventSelection::try_from(Some("not json".into())).is_err());
        assert!(EventSelection::try_from(Some(r#"["message.typo"]"#.into())).is_err());
    }

    #[test]
    fn crm_urls_are_checked_once() {
        assert!(CrmWebhookUrl::parse("https://crm.example/hook?t=1").is_ok());
        assert_eq!(
            CrmWebhookUrl::parse("crm.example"),
            Err(CrmUrlError::NotAbsolute)
        );
        assert_eq!(
            CrmWebhookUrl::parse("ftp://crm.example/"),
            Err(CrmUrlError::Scheme)
        );
        assert_eq!(
            CrmWebhookUrl::parse("https://user:pw@crm.example/"),
            Err(CrmUrlError::Credentials)
        );
        let url = CrmWebhookUrl::parse("https://crm.example/hook?token=secret").unwrap();
        assert!(!format!("{url:?}").contains("secret"));
        let json = serde_json::to_string(&url).unwrap();
        assert_eq!(serde_json::from_str::<CrmWebhookUrl>(&json).unwrap(), url);
        assert!(serde_json::from_str::<CrmWebhookUrl>("\"ftp://x/\"").is_err());
    }
}
