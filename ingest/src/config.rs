//! ingest's settings: each an environment variable and a command-line flag.
//! A missing or invalid one stops the service at start with one clear line
//! (clap's own message).

use std::net::SocketAddr;

use clap::Parser;
use shared::config::CommonConfig;

#[derive(Clone, Parser)]
#[command(
    name = "ingest",
    version,
    about = "Receives Instagram webhooks from Meta, stores each message and publishes it on NATS; serves the account API"
)]
pub struct IngestConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Database: sqlite://path/to/file.db (created when missing).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://data/ingest.db",
        value_parser = parse_database_url
    )]
    pub database_url: String,

    /// Address the HTTP server listens on.
    #[arg(long, env = "INGEST_ADDR", default_value = "127.0.0.1:8080")]
    pub ingest_addr: SocketAddr,

    /// Address of `/metrics` (Prometheus), kept off INGEST_ADDR, which faces
    /// Meta and the CRM.
    #[arg(long, env = "INGEST_METRICS_ADDR", default_value = "127.0.0.1:9092")]
    pub ingest_metrics_addr: SocketAddr,

    /// Meta app secret: verifies X-Hub-Signature-256 on Meta's webhooks.
    #[arg(long, env = "META_APP_SECRET", hide_env_values = true, value_parser = non_empty)]
    pub meta_app_secret: String,

    /// The verify token entered in Meta's webhook settings (handshake).
    #[arg(long, env = "META_VERIFY_TOKEN", hide_env_values = true, value_parser = non_empty)]
    pub meta_verify_token: String,

    /// Comma-separated bearer tokens accepted on /api/v1.
    #[arg(long, env = "ROUTER_API_TOKENS", hide_env_values = true, value_parser = parse_tokens)]
    pub router_api_tokens: ApiTokens,

    /// Base URL of Meta's Graph API: https, or http on loopback only (a
    /// fake, for tests), since access tokens travel with every call.
    #[arg(
        long,
        env = "GRAPH_API_BASE",
        default_value = "https://graph.instagram.com/v23.0",
        value_parser = parse_graph_base
    )]
    pub graph_api_base: url::Url,

    /// Requests per second each API token may make (bursts of twice as
    /// many); above it, 429 `rate_limited` with `Retry-After`.
    #[arg(long, env = "ROUTER_API_RATE_LIMIT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub router_api_rate_limit: u32,

    /// Publishes of one message that JetStream may refuse (while it accepts
    /// others) before the message is set aside as a dead letter
    /// (`publish_refused`), so it stops holding up the outbox.
    #[arg(long, env = "INGEST_PUBLISH_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub ingest_publish_attempts: u32,

    /// Times the database may refuse to save one event (a constraint, a
    /// trigger, a value it cannot hold), across Meta's redeliveries, before
    /// the event is set aside (`/api/v1/refused-events`) and the rest of its
    /// webhook is accepted.
    #[arg(long, env = "INGEST_SAVE_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub ingest_save_attempts: u32,

    /// How long before an access token expires it is refreshed (`10d`,
    /// `240h`; 1h to 50d). A refresh is tried at most once a day.
    #[arg(long, env = "INGEST_TOKEN_REFRESH_BEFORE", default_value = "10d", value_parser = parse_refresh_before)]
    pub ingest_token_refresh_before: std::time::Duration,

    /// How often the access tokens are checked (refreshed when due, expired
    /// ones marked invalid): `1h`, `10m`; 1s to 1d.
    #[arg(long, env = "INGEST_TOKEN_CHECK_INTERVAL", default_value = "1h", value_parser = parse_check_interval)]
    pub ingest_token_check_interval: std::time::Duration,

    /// Seconds to wait for Meta's Graph API.
    #[arg(long, env = "GRAPH_API_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub graph_api_timeout_secs: u64,

    /// Largest webhook body accepted from Meta, in bytes (413 above it).
    #[arg(long, env = "INGEST_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub ingest_max_body_bytes: usize,

    /// Largest request body accepted on /api/v1, in bytes (413 above it).
    #[arg(long, env = "INGEST_API_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub ingest_api_max_body_bytes: usize,

    /// HTTP connections open at once; more wait in the kernel's queue.
    #[arg(long, env = "INGEST_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub ingest_max_connections: u32,

    /// Seconds a connection has to complete a request after it opens or
    /// after its last answer (slow headers or body, idle keep-alive); never
    /// less than GRAPH_API_TIMEOUT_SECS + 5, so a reply sent through the
    /// API is never cut short.
    #[arg(long, env = "INGEST_CLIENT_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ingest_client_timeout_secs: u64,
}

impl shared::service::ServiceConfig for IngestConfig {
    fn common(&self) -> &CommonConfig {
        &self.common
    }
}

impl std::fmt::Debug for IngestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestConfig")
            .field("ingest_addr", &self.ingest_addr)
            .finish_non_exhaustive()
    }
}

fn parse_graph_base(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err("must be an https URL (http only on loopback, for a fake)".into()),
    }
}

fn duration_within(
    s: &str,
    min: std::time::Duration,
    max: std::time::Duration,
    range: &str,
) -> Result<std::time::Duration, String> {
    let d = shared::config::parse_duration(s)?;
    if d < min || d > max {
        return Err(format!("must be between {range}"));
    }
    Ok(d)
}

fn parse_refresh_before(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    duration_within(
        s,
        Duration::from_secs(3600),
        Duration::from_secs(50 * 86_400),
        "1h and 50d",
    )
}

fn parse_check_interval(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    duration_within(
        s,
        Duration::from_secs(1),
        Duration::from_secs(86_400),
        "1s and 1d",
    )
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
}

/// The accepted API tokens. Compared in constant time; never printed.
#[derive(Clone)]
pub struct ApiTokens(Vec<String>);

impl ApiTokens {
    /// Which token this is (its place in the list), never the token itself:
    /// what a request is counted and logged under.
    pub fn position(&self, candidate: &str) -> Option<usize> {
        use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};
        // Look at every token so the time taken does not tell which matched.
        let mut found = 0u64;
        for (i, t) in self.0.iter().enumerate() {
            let same = t.as_bytes().ct_eq(candidate.as_bytes());
            found = u64::conditional_select(&found, &(i as u64 + 1), same);
        }
        (found > 0).then(|| found as usize - 1)
    }
}

fn parse_tokens(s: &str) -> Result<ApiTokens, String> {
    let tokens: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    if tokens.is_empty() {
        return Err("must list at least one token".into());
    }
    if tokens.iter().any(|t| t.len() < 16) {
        return Err("every token must be at least 16 characters".into());
    }
    Ok(ApiTokens(tokens))
}

/// The database a `DATABASE_URL` names, by its scheme.
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(database_url: &str) -> Result<Self, &'static str> {
        if database_url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
        {
            Ok(Self::Postgres)
        } else {
            Err("must start with sqlite:, postgres:// or postgresql://")
        }
    }
}

/// `DATABASE_URL`, read as sqlx will read it, so a malformed one stops
/// ingest at start with a line naming the setting (never its password).
fn parse_database_url(s: &str) -> Result<String, String> {
    use std::str::FromStr as _;
    let parsed = match Backend::of(s)? {
        Backend::Sqlite => sqlx::sqlite::SqliteConnectOptions::from_str(s).map(drop),
        Backend::Postgres => sqlx::postgres::PgConnectOptions::from_str(s).map(drop),
    };
    parsed.map(|()| s.to_owned()).map_err(|e| {
        format!(
            "`{}` is not a database URL ({})",
            shared::config::redact(s),
            e.to_string().replace(s, "<DATABASE_URL>")
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_graph_api_is_reached_over_https_or_on_loopback() {
        for ok in [
            "https://graph.instagram.com/v23.0",
            "http://127.0.0.1:4000/v23.0",
            "http://localhost:4000",
            "http://[::1]:4000",
        ] {
            assert!(super::parse_graph_base(ok).is_ok(), "{ok}");
        }
        for refused in [
            "http://graph.instagram.com/v23.0",
            "http://10.0.0.5",
            "ftp://x",
        ] {
            assert!(super::parse_graph_base(refused).is_err(), "{refused}");
        }
    }

    use super::*;

    #[test]
    fn tokens_are_split_trimmed_and_checked() {
        let t = parse_tokens(" aaaaaaaaaaaaaaaa , bbbbbbbbbbbbbbbb,").unwrap();
        assert_eq!(t.position("aaaaaaaaaaaaaaaa"), Some(0));
        assert_eq!(t.position("bbbbbbbbbbbbbbbb"), Some(1));
        assert_eq!(t.position("aaaaaaaaaaaaaaa"), None);
        assert_eq!(t.position(""), None);
        assert!(parse_tokens(" , ").is_err());
        assert!(parse_tokens("short").is_err());
    }
}
