//! Settings both services read: each an environment variable and a flag.

use clap::{Args, ValueEnum};

use crate::subjects::Subjects;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Clone, Debug, Args)]
pub struct CommonConfig {
    /// NATS server with JetStream; several, comma-separated, for a cluster
    /// (the services connect to one and move to another when it dies).
    #[arg(
        long,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222",
        value_parser = parse_nats_urls
    )]
    pub nats_url: String,

    /// Replicas of every stream and key-value bucket the router creates: 1
    /// for one server, 3 (or 5) on a JetStream cluster. A stream or bucket
    /// found with another count is changed in place, and the change logged.
    #[arg(long, env = "ROUTER_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub router_stream_replicas: u8,

    /// A NATS credentials file (`.creds`: a user JWT and its nkey seed), for
    /// servers run with accounts and JWTs. Unset: no JWT login.
    #[arg(long, env = "NATS_CREDS_FILE")]
    pub nats_creds_file: Option<std::path::PathBuf>,

    /// A file holding a user's nkey seed (`SU…`), for servers that list
    /// their users by nkey. Unset: no nkey login.
    #[arg(long, env = "NATS_NKEY_SEED_FILE")]
    pub nats_nkey_seed_file: Option<std::path::PathBuf>,

    /// PEM certificates of the CA that signed the NATS servers' TLS
    /// certificates; set, the connection must be TLS (as with `tls://`).
    /// Unset: the system's roots, and TLS only for `tls://` URLs.
    #[arg(long, env = "NATS_TLS_CA_FILE")]
    pub nats_tls_ca_file: Option<std::path::PathBuf>,

    /// First token(s) of every subject, stream and bucket name.
    #[arg(long, env = "ROUTER_SUBJECT_PREFIX", default_value = "router", value_parser = parse_subjects)]
    pub router_subject_prefix: Subjects,

    /// 32 random bytes, standard base64: encrypts webhook secrets and access
    /// tokens at rest (database and accounts bucket). Unset: stored in plaintext.
    #[arg(long, env = "ROUTER_ENCRYPTION_KEY", hide_env_values = true, value_parser = parse_key)]
    pub router_encryption_key: Option<crate::secrets::SecretBox>,

    /// Older encryption keys, comma-separated, while `ROUTER_ENCRYPTION_KEY`
    /// is being rotated: they open what they sealed, never seal; ingest
    /// re-seals every stored value with the current key when it starts.
    /// Unset: no older key.
    #[arg(long, env = "ROUTER_ENCRYPTION_KEY_PREVIOUS", hide_env_values = true, value_parser = parse_key, value_delimiter = ',')]
    pub router_encryption_key_previous: Vec<crate::secrets::SecretBox>,

    /// Allow CRM URLs that are, or resolve to, loopback, private or other
    /// non-public addresses (a CRM on your own network). Off: ingest refuses
    /// such a URL when an account is created or updated, and the forwarder
    /// refuses to connect to one at delivery.
    #[arg(long, env = "CRM_ALLOW_PRIVATE_NETWORKS", default_value_t = false, action = clap::ArgAction::Set)]
    pub crm_allow_private_networks: bool,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// The most deliveries in flight an account may ask for (`max_in_flight`
    /// in the account API): ingest refuses more, forwarders never go above it.
    #[arg(long, env = "ROUTER_ACCOUNT_IN_FLIGHT_MAX", default_value_t = ACCOUNT_IN_FLIGHT_MAX, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub router_account_in_flight_max: u32,
}

/// `ROUTER_ACCOUNT_IN_FLIGHT_MAX` when not set.
pub const ACCOUNT_IN_FLIGHT_MAX: u32 = 64;

impl CommonConfig {
    /// The keys secrets are sealed and opened with, `None` for plaintext.
    pub fn encryption_keys(&self) -> anyhow::Result<Option<crate::secrets::SecretBox>> {
        let previous = self.router_encryption_key_previous.clone();
        match &self.router_encryption_key {
            Some(key) => Ok(Some(key.clone().with_previous(previous))),
            None if previous.is_empty() => Ok(None),
            None => anyhow::bail!(
                "ROUTER_ENCRYPTION_KEY_PREVIOUS is set but ROUTER_ENCRYPTION_KEY is not: set the new key there"
            ),
        }
    }
}

/// One or more NATS server URLs, comma-separated; each must parse.
fn parse_nats_urls(s: &str) -> Result<String, String> {
    let urls = crate::jetstream::nats_urls(s);
    if urls.is_empty() {
        return Err("names no server".into());
    }
    for url in &urls {
        url.parse::<async_nats::ServerAddr>()
            .map_err(|e| format!("`{}` is not a NATS URL ({e})", redact(url)))?;
    }
    Ok(s.to_owned())
}

/// A URL as it may be shown: without the user and password it may hold,
/// even when it does not parse.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn parse_key(s: &str) -> Result<crate::secrets::SecretBox, String> {
    crate::secrets::SecretBox::from_base64(s)
}

fn parse_subjects(s: &str) -> Result<Subjects, String> {
    Subjects::new(s)
}

/// A duration such as `500ms`, `10s`, `1m`, `6h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "not a duration like 10s, 1m or 6h".to_owned())?;
    let secs = match unit {
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err("unknown unit (use ms, s, m, h or d)".to_owned()),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// Parses the command line and environment. `--help` and `--version` print
/// as usual; any other problem stops the process with one clear line.
pub fn parse_or_exit<T: clap::Parser>(service: &str) -> T {
    match T::try_parse() {
        Ok(config) => config,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) if let Some(summary) = invalid_value(&e) => {
            eprintln!("{service}: invalid configuration: {summary} (see {service} --help)");
            std::process::exit(2);
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let summary: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            let summary = summary.join(" ");
            let summary = summary.strip_prefix("error: ").unwrap_or(&summary);
            eprintln!("{service}: invalid configuration: {summary} (see {service} --help)");
            std::process::exit(2);
        }
    }
}

/// A rejected value's setting and reason, without the value: it may be a
/// secret (an API token, the encryption key, a URL with a password).
fn invalid_value(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let setting = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.clone(),
        _ => "a setting".to_owned(),
    };
    let reason = match (std::error::Error::source(e), e.get(ContextKind::ValidValue)) {
        (Some(why), _) => why.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("expected one of {}", valid.join(", "))
        }
        _ => "not accepted".to_owned(),
    };
    Some(format!("invalid value for {setting}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nats_url_takes_one_server_or_a_comma_separated_cluster() {
        assert!(parse_nats_urls("nats://127.0.0.1:4222").is_ok());
        assert!(parse_nats_urls("nats://a:4222, nats://b:4222,nats://c:4222").is_ok());
        assert_eq!(
            crate::jetstream::nats_urls("nats://a:4222, nats://b:4222,"),
            ["nats://a:4222", "nats://b:4222"]
        );
        assert!(parse_nats_urls(" , ").is_err());
        let e = parse_nats_urls("nats://u:secret@a:4222,http://b:4222").unwrap_err();
        assert!(e.contains("http://b:4222"), "{e}");
        let e = parse_nats_urls("nats://u:secret@a:99999").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(21600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5w").is_err());
    }
}
