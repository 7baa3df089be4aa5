//! The patterns the OpenAPI document publishes for ids, webhook secrets and
//! CRM URLs agree with the parsers the API applies: every string generated
//! from a pattern (as a client or a schema-driven fuzzer would) is
//! accepted, and what ingest generates or a user typically writes matches.
//! (The API checks a URL against the pattern itself, so there the two are
//! one rule; ids and secrets have parsers of their own.)

use proptest::prelude::*;
use regex::Regex;
use shared::ids::{AccountId, MessageId};
use shared::model::CrmWebhookUrl;
use shared::signing::WebhookSecret;

/// Strings matching `pattern` (proptest generates from it without anchors).
fn matching(pattern: &'static str) -> impl Strategy<Value = String> {
    let body = pattern
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix('$'))
        .expect("an anchored pattern");
    proptest::string::string_regex(body).expect("a pattern proptest can generate from")
}

fn matches(pattern: &str, s: &str) -> bool {
    Regex::new(pattern).unwrap().is_match(s)
}

proptest! {
    #[test]
    fn every_url_the_pattern_allows_is_a_crm_url(url in matching(CrmWebhookUrl::PATTERN)) {
        prop_assert!(CrmWebhookUrl::from_user(&url).is_ok(), "{url}");
    }

    #[test]
    fn every_secret_the_pattern_allows_is_a_webhook_secret(s in matching(WebhookSecret::PATTERN)) {
        prop_assert!(WebhookSecret::parse(&s).is_ok(), "{s}");
    }

    #[test]
    fn every_id_the_patterns_allow_parses(
        account in matching(AccountId::PATTERN),
        message in matching(MessageId::PATTERN),
    ) {
        prop_assert!(AccountId::parse(&account).is_ok(), "{account}");
        prop_assert!(MessageId::parse(&message).is_ok(), "{message}");
    }

    #[test]
    fn secrets_of_24_to_64_bytes_match_and_no_other_length_does(
        key in prop::collection::vec(any::<u8>(), 1..100),
    ) {
        use base64::Engine as _;
        let s = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&key));
        let accepted = WebhookSecret::parse(&s).is_ok();
        prop_assert_eq!(accepted, (24..=64).contains(&key.len()));
        prop_assert_eq!(matches(WebhookSecret::PATTERN, &s), accepted, "{}", s);
    }
}

#[test]
fn generated_ids_and_secrets_match_their_patterns() {
    for _ in 0..100 {
        let account = AccountId::generate();
        assert!(matches(AccountId::PATTERN, account.as_str()), "{account}");
        let message = MessageId::generate();
        assert!(matches(MessageId::PATTERN, message.as_str()), "{message}");
        let secret = WebhookSecret::generate();
        assert!(matches(WebhookSecret::PATTERN, secret.expose()));
    }
}

#[test]
fn the_url_pattern_takes_what_users_write_and_refuses_what_the_api_does() {
    for url in [
        "https://crm.example.com/hooks/instagram",
        "https://crm.example.com/hooks/instagram?source=ig&team=2",
        "http://127.0.0.1:8080/hook",
        "http://localhost:9/x",
        "https://my-crm.example.co.uk:65535/",
        "https://example.com",
        "http://10.0.0.5/inbound/%7Eig",
        "HTTPS://crm.example.com/hook#ig",
        "http://[::1]:8080/hook",
        "http://[2001:db8::1]/x",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[64:ff9b::a9fe:a9fe]/hook",
        "http://[1:2:3:4:5:6:7:8]/",
    ] {
        assert!(CrmWebhookUrl::from_user(url).is_ok(), "{url}");
    }
    for url in [
        "ftp://crm.example.com/",
        "https://user:password@crm.example.com/",
        "http://",
        "javascript:alert(1)",
        "crm.example.com/hook",
        "https://crm.example.com:70000/",
        "https://1.2.3.256/",
        "https://0.com*/",
        "https://crm.example.com/a b",
        "http://[1:2:3:4:5:6:7:8:9]/",
        "http://[::1%eth0]/",
    ] {
        assert!(CrmWebhookUrl::from_user(url).is_err(), "{url}");
    }
    // What the URL parser alone takes, but the published pattern does not,
    // is refused from users with its own reason; a URL stored before is
    // still read.
    assert_eq!(
        CrmWebhookUrl::from_user("https://0.com*/").err(),
        Some(shared::model::CrmUrlError::Form)
    );
    assert!(CrmWebhookUrl::parse("https://0.com*/").is_ok());
}
