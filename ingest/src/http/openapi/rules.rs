//! The rules the handlers apply beyond poem-openapi's validators, written
//! into the published document so that a client (or a schema-driven fuzzer)
//! reads the same contract the API enforces. poem-openapi's types cannot
//! say these: a pattern whose refusal keeps its own error code
//! (`invalid_crm_webhook_url`, `invalid_url`, `invalid_webhook_secret`,
//! `invalid_account_id`), which fields go together (exactly one of a
//! reply's `text`, `attachment`, `template`, `sender_action`), a maximum set
//! by configuration, and `additionalProperties: false` (request bodies
//! refuse unknown fields; a tagged variant's `allOf` cannot say it, so those
//! are written out as one object).

use serde_json::{Map, Value, json};
use shared::ids::{AccountId, MessageId};
use shared::model::CrmWebhookUrl;
use shared::signing::WebhookSecret;

/// What the document says that depends on configuration.
pub struct Limits {
    /// `ROUTER_ACCOUNT_IN_FLIGHT_MAX`: an account's `max_in_flight` at most.
    pub account_in_flight_max: u32,
}

/// Where `#/components/schemas/` entries are referenced from.
const SCHEMA_REF: &str = "#/components/schemas/";

/// Properties that carry a rule of their own, by schema and property name.
fn property_rules() -> Vec<(&'static str, &'static str, Value)> {
    let url = json!({ "format": "uri", "pattern": CrmWebhookUrl::PATTERN });
    let secret = json!({ "pattern": WebhookSecret::PATTERN });
    let account = json!({ "pattern": AccountId::PATTERN });
    // Instagram's limit is 1000 UTF-8 bytes (`text_too_long`): at most 1000
    // characters, fewer when some take several bytes.
    let text = json!({ "minLength": 1, "maxLength": 1000 });
    vec![
        ("CreateAccount", "crm_webhook_url", url.clone()),
        ("UpdateAccount", "crm_webhook_url", url.clone()),
        ("CreateAccount", "webhook_secret", secret.clone()),
        ("UpdateAccount", "webhook_secret", secret),
        ("ReplayMany", "account_id", account),
        ("SendMessage", "text", text.clone()),
        ("CommentAnswer", "text", text),
        ("OutgoingAttachment", "url", url.clone()),
        ("UrlButton", "url", url.clone()),
        ("MenuUrl", "url", url.clone()),
        ("TemplateElement", "image_url", url.clone()),
        ("TemplateElement", "default_action_url", url),
    ]
}

/// Rules over a whole object: which of its fields go together.
fn object_rules() -> Vec<(&'static str, Value)> {
    let has = |field: &str| json!({ "required": [field] });
    // A reply is exactly one of these; quick replies go with a text only,
    // and a sender action takes no tag.
    let kinds = ["text", "attachment", "template", "sender_action"];
    let one_of: Vec<Value> = kinds
        .iter()
        .map(|kind| {
            let mut refused: Vec<Value> = kinds
                .iter()
                .filter(|other| *other != kind)
                .map(|other| has(other))
                .collect();
            if *kind != "text" {
                refused.push(has("quick_replies"));
            }
            if *kind == "sender_action" {
                refused.push(has("tag"));
            }
            json!({ "required": [kind], "not": { "anyOf": refused } })
        })
        .collect();
    // A token's lifetime is given with a token only.
    let expiry_with_token = json!({
        "not": {
            "required": ["instagram_access_token_expires_in"],
            "not": has("instagram_access_token"),
        }
    });
    // A card has a title and at least one of these (Meta's rule).
    let card_needs = ["subtitle", "image_url", "default_action_url", "buttons"].map(has);
    vec![
        ("SendMessage", json!({ "oneOf": one_of })),
        ("TemplateElement", json!({ "anyOf": card_needs })),
        ("CreateAccount", expiry_with_token.clone()),
        ("UpdateAccount", expiry_with_token),
    ]
}

/// Path and query parameters whose values are our ids.
fn parameter_rules() -> [(&'static str, &'static str); 2] {
    [
        ("account_id", AccountId::PATTERN),
        ("message_id", MessageId::PATTERN),
    ]
}

/// Writes the rules into `doc` (poem-openapi's document, parsed).
pub fn apply(doc: &mut Value, limits: &Limits) {
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("the document has schemas");
    for (schema, property, rule) in property_rules() {
        let target = &mut schemas[schema]["properties"][property];
        assert!(target.is_object(), "no property {schema}.{property}");
        merge(target, rule);
    }
    for (schema, rule) in object_rules() {
        assert!(schemas[schema].is_object(), "no schema {schema}");
        merge(&mut schemas[schema], rule);
    }
    for schema in ["CreateAccount", "UpdateAccount"] {
        schemas[schema]["properties"]["max_in_flight"]["maximum"] =
            json!(limits.account_in_flight_max);
    }
    let requests = request_schemas(doc);
    let schemas = doc["components"]["schemas"].as_object_mut().unwrap();
    for name in &requests {
        let written_out = write_out_variant(schemas, name);
        let schema = &mut schemas[name.as_str()];
        if let Some(written_out) = written_out {
            *schema = written_out;
        }
        if schema.get("properties").is_some() && schema.get("additionalProperties").is_none() {
            schema["additionalProperties"] = json!(false);
        }
    }
    for operation in operations(doc) {
        let Some(parameters) = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for parameter in parameters {
            if let Some((_, pattern)) = parameter_rules()
                .into_iter()
                .find(|(name, _)| parameter["name"] == *name)
            {
                parameter["schema"]["pattern"] = json!(pattern);
            }
        }
    }
    drop_unreferenced(doc);
}

/// Adds `rule`'s keys to `target`.
fn merge(target: &mut Value, rule: Value) {
    if let (Some(target), Value::Object(rule)) = (target.as_object_mut(), rule) {
        target.extend(rule);
    }
}

/// Every operation of the document's paths.
fn operations(doc: &mut Value) -> impl Iterator<Item = &mut Value> {
    doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|methods| methods.values_mut())
}

/// The schemas a request body of ours can hold, nested ones included.
/// Meta's notifications are left open: Meta adds fields, and ingest
/// takes them.
fn request_schemas(doc: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    for (path, methods) in doc["paths"].as_object().into_iter().flatten() {
        if path.starts_with("/webhooks/") {
            continue;
        }
        for operation in methods.as_object().into_iter().flat_map(Map::values) {
            references(&operation["requestBody"], &mut pending);
        }
    }
    while let Some(name) = pending.pop() {
        if found.contains(&name) {
            continue;
        }
        references(&doc["components"]["schemas"][name.as_str()], &mut pending);
        found.push(name);
    }
    found.sort();
    found
}

/// The names of the schemas `value` refers to.
fn references(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, v) in object {
                match (key.as_str(), v.as_str()) {
                    ("$ref", Some(target)) => {
                        if let Some(name) = target.strip_prefix(SCHEMA_REF) {
                            into.push(name.to_owned());
                        }
                    }
                    _ => references(v, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, into)),
        _ => {}
    }
}

/// A tagged variant as poem-openapi writes it, `allOf` of its tag and its
/// struct, written out as one object with both parts' properties.
fn write_out_variant(schemas: &Map<String, Value>, name: &str) -> Option<Value> {
    let parts = schemas[name]["allOf"].as_array()?;
    let mut properties = Map::new();
    let mut required = Vec::new();
    for part in parts {
        let part = match part["$ref"].as_str() {
            Some(target) => &schemas[target.strip_prefix(SCHEMA_REF)?],
            None => part,
        };
        properties.extend(part["properties"].as_object()?.clone());
        required.extend(part["required"].as_array().cloned().unwrap_or_default());
    }
    let mut object = json!({
        "type": "object",
        "required": required,
        "properties": properties,
    });
    if let Some(description) = schemas[name].get("description") {
        object["description"] = description.clone();
    }
    Some(object)
}

/// Drops the schemas nothing refers to any more (the structs of variants
/// written out as one object).
fn drop_unreferenced(doc: &mut Value) {
    loop {
        let mut referenced = Vec::new();
        references(doc, &mut referenced);
        let schemas = doc["components"]["schemas"].as_object_mut().unwrap();
        let before = schemas.len();
        schemas.retain(|name, _| referenced.contains(name));
        if schemas.len() == before {
            return;
        }
    }
}
