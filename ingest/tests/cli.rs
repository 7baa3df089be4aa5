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
        "CRM_ALLOW_PRIVATE_NETWORKS",
        "INGEST_API_MAX_BODY_BYTES",
        "INGEST_MAX_CONNECTIONS",
        "INGEST_CLIENT_TIMEOUT_SECS",
        "INGEST_METRICS_ADDR",
        "ROUTER_API_RATE_LIMIT",
        "INGEST_PUBLISH_ATTEMPTS",
        "NATS_CREDS_FILE",
        "NATS_NKEY_SEED_FILE",
        "NATS_TLS_CA_FILE",
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
fn an_invalid_setting_is_named_and_no_value_is_echoed() {
    let valid_token = "a-valid-token-0123456789";
    for (setting, value, reason) in [
        (
            "ROUTER_API_TOKENS",
            "tok-SHORT1,a-valid-token-0123456789",
            "at least 16 characters",
        ),
        ("ROUTER_ENCRYPTION_KEY", "c2VjcmV0LWtleQ==", "32 bytes"),
        ("LOG_FORMAT", "xml-please", "expected one of text, json"),
        (
            "DATABASE_URL",
            "mysql://router:hunter2-db@db/router",
            "must start with sqlite:, postgres:// or postgresql://",
        ),
        (
            "DATABASE_URL",
            "postgres://router:hunter2-db@db:notaport/router",
            "`postgres://***@db:notaport/router` is not a database URL",
        ),
        (
            "NATS_URL",
            "nats://ingest:hunter2-nats@nats:port",
            "is not a NATS URL",
        ),
    ] {
        let out = ingest()
            .env("META_APP_SECRET", "s3cr3t-app-secret")
            .env("META_VERIFY_TOKEN", "verify")
            .env("ROUTER_API_TOKENS", valid_token)
            .env(setting, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(setting), "{err}");
        assert!(err.contains(reason), "{err}");
        for secret in [
            "s3cr3t-app-secret",
            "tok-SHORT1",
            valid_token,
            value,
            "hunter2",
        ] {
            assert!(!err.contains(secret), "{setting}: {err}");
        }
    }
}

#[test]
fn help_shows_no_secret_and_no_url_with_credentials() {
    let secrets = [
        ("DATABASE_URL", "postgres://router:hunter2-db@db/router"),
        ("NATS_URL", "nats://ingest:hunter2-nats@nats:4222"),
        ("META_APP_SECRET", "hunter2-app"),
        ("META_VERIFY_TOKEN", "hunter2-verify"),
        ("ROUTER_API_TOKENS", "hunter2-token-0123456789"),
        (
            "ROUTER_ENCRYPTION_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        ),
    ];
    let out = ingest().envs(secrets).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (setting, value) in secrets {
        assert!(help.contains(setting));
        assert!(!help.contains(value), "--help shows {setting}'s value");
    }
}
