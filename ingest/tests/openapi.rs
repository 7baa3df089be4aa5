//! The committed OpenAPI document must be what the code generates, and its
//! description of the CRM webhook must match the wire type the forwarder
//! actually sends. Regenerate with `UPDATE_OPENAPI=1 cargo test -p ingest --test openapi`.

use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json")
}

#[test]
fn committed_openapi_document_matches_the_code() {
    let generated = ingest::http::openapi::spec_json();
    let path = committed_path();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, format!("{generated}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test -p ingest --test openapi` and commit it"
    );
}

#[test]
fn each_path_appears_once_so_no_parser_drops_an_operation() {
    // Two `#[OpenApi]` impls serving one path each write it as a key of
    // its own, and a JSON parser keeps only the last: the operations a
    // parser sees must be every operation written.
    let text = ingest::http::openapi::spec_json();
    let written = text.matches("\"operationId\"").count();
    let spec: serde_json::Value = serde_json::from_str(&text).unwrap();
    let operations = |section: &str| -> usize {
        spec[section]
            .as_object()
            .unwrap()
            .values()
            .map(|ops| ops.as_object().unwrap().len())
            .sum()
    };
    let parsed = operations("paths") + operations("webhooks");
    assert_eq!(parsed, written, "a path is written twice in the document");
}

#[test]
fn webhook_schema_lists_exactly_the_fields_the_crm_receives() {
    let spec: serde_json::Value =
        serde_json::from_str(&ingest::http::openapi::spec_json()).unwrap();
    let schema = &spec["components"]["schemas"]["InboundMessageWebhook"]["properties"];
    let mut documented: Vec<String> = schema.as_object().unwrap().keys().cloned().collect();
    documented.sort();

    let sample = shared::wire::InboundMessageWebhook {
        event: shared::model::EventKind::MessageReceived,
        message_id: "msg_1".into(),
        account_id: "acc_1".into(),
        sender_id: "1".into(),
        sender_username: None,
        message: None,
        message_type: "text".into(),
        timestamp: "2025-11-08T10:30:00Z".into(),
        instagram_message_id: "mid".into(),
        conversation_id: "conv_1_2".into(),
        sequence: Some(1),
        attachments: vec![],
        reply_to: Some(Default::default()),
        quick_reply: Some(shared::wire::QuickReply {
            payload: "p".into(),
        }),
        reaction: Some(shared::wire::Reaction {
            action: "react".into(),
            reaction: None,
            emoji: None,
        }),
        postback: Some(shared::wire::Postback {
            title: None,
            payload: None,
        }),
        referral: Some(serde_json::json!({})),
        edit_count: Some(1),
        reply_window_ends_at: Some("2025-11-09T10:30:00Z".into()),
        human_agent_window_ends_at: Some("2025-11-15T10:30:00Z".into()),
        comment: Some(Default::default()),
    };
    let wire = serde_json::to_value(sample).unwrap();
    let mut sent: Vec<String> = wire.as_object().unwrap().keys().cloned().collect();
    sent.sort();
    assert_eq!(documented, sent);

    for event in shared::model::EventKind::ALL.iter().map(|e| e.as_str()) {
        assert!(
            spec["webhooks"][event]["post"].is_object(),
            "webhook {event} is not documented"
        );
    }
    let webhook = &spec["webhooks"]["message.received"]["post"];
    let headers: Vec<&str> = webhook["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for h in [
        "X-Hub-Signature-256",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ] {
        assert!(headers.contains(&h), "webhook header {h} is not documented");
    }
}

#[test]
fn every_api_route_requires_the_bearer_token() {
    let spec: serde_json::Value =
        serde_json::from_str(&ingest::http::openapi::spec_json()).unwrap();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1") {
            continue;
        }
        for (method, op) in ops.as_object().unwrap() {
            assert!(
                op["security"].is_array(),
                "{method} {path} has no security requirement"
            );
        }
    }
}

#[test]
fn metas_endpoint_is_in_the_document_with_its_signature_and_payload() {
    let spec: serde_json::Value =
        serde_json::from_str(&ingest::http::openapi::spec_json()).unwrap();
    let path = &spec["paths"]["/webhooks/instagram"];
    let names = |op: &serde_json::Value| -> Vec<String> {
        op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{}:{}",
                    p["in"].as_str().unwrap(),
                    p["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        names(&path["get"]),
        [
            "query:hub.mode",
            "query:hub.verify_token",
            "query:hub.challenge"
        ]
    );
    let post = &path["post"];
    assert_eq!(names(post), ["header:X-Hub-Signature-256"]);
    assert!(
        post.get("security").is_none(),
        "Meta signs, it has no API token"
    );
    assert_eq!(
        post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/MetaWebhookPayload"
    );
    let statuses: Vec<&String> = post["responses"].as_object().unwrap().keys().collect();
    assert_eq!(statuses, ["200", "400", "401", "413", "503"]);
    let messaging = &spec["components"]["schemas"]["MetaMessaging"]["properties"];
    for field in [
        "message",
        "message_edit",
        "reaction",
        "read",
        "postback",
        "referral",
    ] {
        assert!(messaging[field].is_object(), "MetaMessaging.{field}");
    }
}
