//! The `forwarder` binary's start-up contract: `--help` lists every setting,
//! and an invalid one stops it at once with one clear line.

use std::process::Command;

#[test]
fn help_lists_every_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_forwarder"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "NATS_URL",
        "ROUTER_SUBJECT_PREFIX",
        "LOG_FORMAT",
        "FORWARDER_METRICS_ADDR",
        "FORWARDER_RETRY_SCHEDULE",
        "FORWARDER_CONCURRENCY",
        "FORWARDER_ACCOUNT_IN_FLIGHT",
        "ROUTER_ACCOUNT_IN_FLIGHT_MAX",
        "FORWARDER_BREAKER_FAILURES",
        "FORWARDER_BREAKER_PROBE_INTERVAL",
        "FORWARDER_BREAKER_MAX_PROBE_INTERVAL",
        "CRM_TIMEOUT_SECS",
        "CRM_ALLOW_PRIVATE_NETWORKS",
        "ROUTER_ENCRYPTION_KEY",
    ] {
        assert!(help.contains(var), "--help does not mention {var}");
    }
}

#[test]
fn an_invalid_retry_schedule_stops_it_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_forwarder"))
        .env_clear()
        .env("FORWARDER_RETRY_SCHEDULE", "10s,soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("FORWARDER_RETRY_SCHEDULE"), "{err}");
}
