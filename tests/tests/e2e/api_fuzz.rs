//! Schemathesis against the served OpenAPI document: generated requests
//! (valid and not) to every operation, with an operator token, on a real
//! ingest. No answer may be a 5xx, and every answer must be one the
//! document lists, with its content type, headers and schema. Bounded
//! here (a fixed seed, 30 examples per operation); a longer run:
//!
//! ```sh
//! target/schemathesis-4.32.5/bin/schemathesis run http://127.0.0.1:8080/openapi.json \
//!   -H "Authorization: Bearer dev-api-token-change-me" --max-examples 1000 \
//!   --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
//! ```

use std::process::Command;

use router_tests::{API_TOKEN, CrmReceiver, Db, System};

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let binary = router_tests::schemathesis::binary();
    let sys = System::start(Db::Sqlite).await;
    let crm = CrmReceiver::start().await;
    sys.create_account("17841400000000301", &crm.url()).await;
    let spec = sys.url("/openapi.json");
    // Schemathesis keeps a cache where it runs: not in the repository.
    let workdir = tempfile::tempdir().unwrap();
    let cwd = workdir.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .current_dir(cwd)
            .args([
                "run",
                &spec,
                "--no-color",
                "--seed",
                "1",
                "--max-examples",
                "30",
            ])
            .args(["-H", &format!("Authorization: Bearer {API_TOKEN}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance",
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
