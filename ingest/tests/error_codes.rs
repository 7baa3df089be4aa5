//! Every error code ingest can answer is listed where API users look: in the
//! OpenAPI document (the `code` of `ErrorBody`) and in the README. The codes
//! are read from the sources, where each is the first argument of an error
//! constructor, so a new one that is not documented fails here.

use std::path::Path;

/// The calls whose first argument is an error code.
const CALLS: &[&str] = &[
    "bad_request(",
    "forbidden(",
    "not_found(",
    "conflict(",
    "unprocessable(",
    "rate_limited(",
    "bad_gateway(",
    "gateway_timeout(",
    " error(",
    "(error(",
    "ErrorBody::new(",
];

fn codes_in(text: &str, codes: &mut std::collections::BTreeSet<String>) {
    let mut take = |rest: &str| {
        let rest = rest.trim_start();
        if let Some(literal) = rest.strip_prefix('"')
            && let Some(end) = literal.find('"')
        {
            let code = &literal[..end];
            if !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                codes.insert(code.to_owned());
            }
        }
    };
    for call in CALLS {
        for (at, _) in text.match_indices(call) {
            take(&text[at + call.len()..]);
        }
    }
    // The codes of bare statuses (`code_for`).
    for (at, _) in text.match_indices("StatusCode::") {
        if let Some(arrow) = text[at..].find("=> ")
            && arrow < 60
        {
            take(&text[at + arrow + 3..]);
        }
    }
}

fn sources(dir: &Path, codes: &mut std::collections::BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, codes);
        } else if path.extension().is_some_and(|e| e == "rs") {
            codes_in(&std::fs::read_to_string(&path).unwrap(), codes);
        }
    }
}

#[test]
fn every_error_code_is_in_the_openapi_document_and_the_readme() {
    let mut codes = std::collections::BTreeSet::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut codes,
    );
    assert!(
        codes.len() >= 40 && codes.contains("instagram_account_exists"),
        "the codes are found: {codes:?}"
    );
    let spec: serde_json::Value =
        serde_json::from_str(&ingest::http::openapi::spec_json()).unwrap();
    let documented =
        spec["components"]["schemas"]["ErrorBody"]["properties"]["code"]["description"]
            .as_str()
            .unwrap()
            .to_owned();
    let readme = include_str!("../../README.md");
    for code in &codes {
        assert!(
            documented.contains(&format!("`{code}`")),
            "{code} is not in ErrorBody.code's description"
        );
        assert!(
            readme.contains(&format!("`{code}`")),
            "{code} is not in the README"
        );
    }
}
