//! Prefixed, sortable identifiers (`msg_…`, `acc_…`). ULIDs sort by creation
//! time, so ids double as a stable paging cursor.

use std::fmt;

macro_rules! prefixed_id {
    ($name:ident, $prefix:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// What [`Self::parse`] accepts, as a regular expression for the
            /// OpenAPI document.
            pub const PATTERN: &'static str = concat!("^", $prefix, "[A-Za-z0-9_-]{1,64}$");

            /// A new id, unique and increasing with time.
            pub fn generate() -> Self {
                Self(format!(
                    "{}{}",
                    $prefix,
                    ulid::Ulid::new().to_string().to_lowercase()
                ))
            }

            /// Accepts only ids with our prefix and a short, URL-safe tail, so a
            /// value that made it past the edge can be put in a subject or a path.
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                let tail = s.strip_prefix($prefix).ok_or(InvalidId)?;
                let ok = !tail.is_empty()
                    && tail.len() <= 64
                    && tail
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if ok {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(InvalidId)
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    MessageId,
    "msg_",
    "Our id of a stored message: the CRM's `message_id` and `webhook-id`."
);
prefixed_id!(
    AccountId,
    "acc_",
    "Our id of a connected Instagram account."
);
prefixed_id!(
    TokenId,
    "tok_",
    "Our id of an account-scoped API token (never the token itself)."
);

/// The value is not an id of the expected kind.
#[derive(Debug, thiserror::Error)]
#[error("not a valid identifier")]
pub struct InvalidId;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back_and_sort_by_time() {
        let a = MessageId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = MessageId::generate();
        assert!(a.as_str().starts_with("msg_"));
        assert_eq!(MessageId::parse(a.as_str()).unwrap(), a);
        assert!(a < b);
    }

    #[test]
    fn ids_with_wrong_prefix_or_unsafe_characters_are_refused() {
        assert!(AccountId::parse("msg_abc").is_err());
        assert!(AccountId::parse("acc_").is_err());
        assert!(AccountId::parse("acc_a.b").is_err());
        assert!(AccountId::parse("acc_a>b").is_err());
        assert!(AccountId::parse("acc_xyz789").is_ok());
    }
}
