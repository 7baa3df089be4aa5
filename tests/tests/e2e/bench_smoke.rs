//! A short run of `router-bench throughput` on each store: it exits with an
//! error on any refused webhook, lost or duplicated message, bad signature
//! or conversation delivered out of order. Counts only; its speed figures
//! mean nothing in a debug build.

use router_tests::Db;

async fn router_bench_runs_clean(db: Db) {
    let store = match db {
        Db::Sqlite => "sqlite",
        Db::Postgres => "postgres",
    };
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_router-bench"))
        .args(["throughput", "--store", store, "--messages", "400"])
        .args([
            "--per-webhook",
            "10",
            "--concurrency",
            "4",
            "--accounts",
            "3",
            // Twenty messages a conversation, so that order is checked.
            "--conversations",
            "20",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "router-bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("| 0 | 0 | 0 | 0 | 0 |"),
        "no refusal, loss, duplicate, bad signature or disorder:\n{stdout}"
    );
    // Ingest's own timing of its answers, read from its /metrics: every
    // webhook counted somewhere under the highest bucket shown.
    let own = stdout
        .lines()
        .skip_while(|l| !l.starts_with("| ingest's answers by its own clock"))
        .nth(2)
        .unwrap_or_default();
    assert!(
        own.starts_with("| | ") && own.matches('%').count() == 3,
        "ingest's own answer times:\n{stdout}"
    );
}

router_tests::on_both_stores!(router_bench_runs_clean);
