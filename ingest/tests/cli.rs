//! The `ingest` binary's start-up contract: `--help` lists every setting, and
//! a missing or invalid one stops it at once with one clear line.

use std::process::Command;

fn ingest() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ingest"));
    cmd.env_clear();
    cmd
}

#[test]
fn help_lists_every_setting() {
    let out = ingest().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "NATS_URL",
        "DATABASE_URL",
        "INGEST_ADDR",
        "META_APP_SECRET",
        "META_VERIFY_TOKEN",
        "ROUTER_API_TOKENS",
        "ROUTER_ACCOUNT_IN_FLIGHT_MAX",
        "GRAPH_API_BASE",
        "ROUTER_SUBJECT_PREFIX",
        "LOG_FORMAT",
        "INGEST_MAX_BODY_BYTES",
        "GRAPH_API_TIMEOUT_SECS",
        "ROUTER_ENCRYPTION_KEY",
    ] {
        assert!(help.contains(var), "--help does not mention {var}");
    }
}

#[test]
fn missing_settings_stop_it_with_one_line() {
    let out = ingest().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("META_APP_SECRET"), "{err}");
}

#[test]
fn an_invalid_setting_is_named_and_secrets_are_not_echoed() {
    let out = ingest()
        .env("META_APP_SECRET", "s3cr3t-app-secret")
        .env("META_VERIFY_TOKEN", "verify")
        .env("ROUTER_API_TOKENS", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("ROUTER_API_TOKENS"), "{err}");
    assert!(!err.contains("s3cr3t-app-secret"), "{err}");
}
