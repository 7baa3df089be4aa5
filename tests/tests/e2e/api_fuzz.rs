//! Schemathesis against the served OpenAPI document: generated requests
//! (valid and not) to every operation, with an operator token, on a real
//! ingest whose account has an Instagram token (Meta is the fake Graph API).
//! No answer may be a 5xx, every answer must be one the document lists,
//! with its content type, headers and schema, and the document must say
//! what the API accepts: a request the schema allows is not refused, one it
//! forbids is not accepted. Bounded here (a fixed seed, 30 examples per
//! operation); a longer run, or another seed: `SCHEMATHESIS_MAX_EXAMPLES=1000
//! SCHEMATHESIS_SEED=7 cargo test -p router-tests --test e2e api_fuzz`.

use std::process::Command;

use router_tests::graph::FakeGraph;
use router_tests::{API_TOKEN, CrmReceiver, Db, System};

#[tokio::test]
async fn schemathesis_finds_no_server_error_no_answer_outside_the_document_and_no_rule_outside_it()
{
    let binary = router_tests::schemathesis::binary();
    let graph = FakeGraph::start().await;
    let graph_url = graph.url();
    let sys = System::start_with(
        Db::Sqlite,
        &[
            ("GRAPH_API_BASE", graph_url.as_str()),
            // The fuzzer sends as fast as it can: rate limiting would hide
            // the operations behind 429s.
            ("ROUTER_API_RATE_LIMIT", "100000"),
        ],
    )
    .await;
    let crm = CrmReceiver::start().await;
    sys.create_account_with(serde_json::json!({
        "name": "Fuzzed shop",
        "instagram_account_id": "17841400000000301",
        "crm_webhook_url": crm.url(),
        "instagram_access_token": "IGAAfuzz",
    }))
    .await;
    let spec = sys.url("/openapi.json");
    let max_examples = std::env::var("SCHEMATHESIS_MAX_EXAMPLES").unwrap_or_else(|_| "30".into());
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    // Schemathesis keeps a cache where it runs: not in the repository.
    let workdir = tempfile::tempdir().unwrap();
    // A 422 here is always the state refusing a well-formed request (no
    // Instagram token, an Idempotency-Key reused with another body, Meta's
    // messaging window closed), never a shape the document allows being
    // refused (that is a 400): a request the schema allows may get it.
    std::fs::write(
        workdir.path().join("schemathesis.toml"),
        "[checks.positive_data_acceptance]\n\
         expected-statuses = [\"2xx\", \"3xx\", \"401\", \"403\", \"404\", \"409\", \"422\", \"429\"]\n",
    )
    .unwrap();
    let cwd = workdir.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .current_dir(cwd)
            .args([
                "run",
                &spec,
                "--no-color",
                "--seed",
                &seed,
                "--max-examples",
                &max_examples,
            ])
            .args(["-H", &format!("Authorization: Bearer {API_TOKEN}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance,\
                 positive_data_acceptance,negative_data_rejection",
            ])
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    // It exits non-zero on warnings too (operations it could not reach
    // past a 404, say): the summary line is what counts.
    let summary = out
        .lines()
        .rev()
        .find(|l| l.starts_with("====") && l.contains(" in "))
        .unwrap_or_else(|| {
            panic!(
                "no summary line:\n{out}\n{}",
                String::from_utf8_lossy(&run.stderr)
            )
        });
    assert!(
        !summary.contains("failure") && !summary.contains("error"),
        "schemathesis: {summary}\n{out}"
    );
    let cases = out
        .lines()
        .find(|l| l.contains(" generated, "))
        .unwrap_or_default();
    assert!(cases.contains(" passed"), "test cases ran: {cases}\n{out}");
    // The API still answers afterwards (the fuzzer may have deleted the
    // account: deleting is one of the operations it calls).
    let accounts = sys.api_get("/api/v1/accounts").await;
    assert!(accounts["data"].is_array(), "{accounts}");
}
