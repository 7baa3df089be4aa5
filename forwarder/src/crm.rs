//! The HTTP client that calls CRMs: no redirects, a timeout, the exact signed
//! bytes, and (unless `CRM_ALLOW_PRIVATE_NETWORKS`) no connection to
//! loopback, private, link-local or other non-public addresses, checked on
//! the addresses actually resolved so DNS cannot point us inside.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use shared::model::CrmWebhookUrl;
use shared::net::is_public;
use shared::signing::{
    HUB_SIGNATURE_HEADER, SigningKeys, WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
};

/// What one POST to the CRM came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// 2xx.
    Delivered { status: u16 },
    /// 408, 429, 5xx, timeout, connection failure: try again later.
    Retry {
        status: Option<u16>,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Any other 4xx, or a URL we refuse to call: retrying will not help.
    Reject { status: Option<u16>, reason: String },
}

pub struct CrmClient {
    http: reqwest::Client,
    allow_private: bool,
}

impl CrmClient {
    pub fn new(timeout: Duration, allow_private: bool) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .no_proxy()
            .user_agent(concat!("instagram-crm-router/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            builder = builder.dns_resolver(std::sync::Arc::new(PublicOnlyResolver));
        }
        Ok(Self {
            http: builder.build()?,
            allow_private,
        })
    }

    /// Signs `body` for this attempt and POSTs it.
    pub async fn deliver(
        &self,
        url: &CrmWebhookUrl,
        secret: &SigningKeys,
        message_id: &str,
        body: Bytes,
    ) -> Answer {
        let url = url.url().clone();
        if !self.allow_private {
            let literal = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            };
            if literal.is_some_and(|ip| !is_public(ip)) {
                return Answer::Reject {
                    status: None,
                    reason: "private_address".into(),
                };
            }
        }
        let now = chrono::Utc::now();
        let timestamp = now.timestamp();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        };
        put(HUB_SIGNATURE_HEADER, secret.hub_signature(&body, now));
        put(WEBHOOK_ID_HEADER, message_id.to_owned());
        put(WEBHOOK_TIMESTAMP_HEADER, timestamp.to_string());
        put(
            WEBHOOK_SIGNATURE_HEADER,
            secret.standard_signature(message_id, timestamp, &body, now),
        );
        match self.http.post(url).headers(headers).body(body).send().await {
            Ok(resp) => classify(resp.status(), resp.headers()),
            Err(e) => classify_error(&e),
        }
    }
}

fn classify(status: StatusCode, headers: &HeaderMap) -> Answer {
    let code = status.as_u16();
    if status.is_success() {
        return Answer::Delivered { status: code };
    }
    let reason = format!("http_{code}");
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        Answer::Retry {
            status: Some(code),
            reason,
            retry_after,
        }
    } else {
        // Other 4xx and 3xx (we never follow redirects): the CRM must be fixed.
        Answer::Reject {
            status: Some(code),
            reason,
        }
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn classify_error(e: &reqwest::Error) -> Answer {
    let reason = if e.is_timeout() {
        "timeout"
    } else if is_refused_address(e) {
        return Answer::Reject {
            status: None,
            reason: "private_address".into(),
        };
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    };
    Answer::Retry {
        status: None,
        reason: reason.into(),
        retry_after: None,
    }
}

fn is_refused_address(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<PrivateAddressError>().is_some() {
            return true;
        }
        source = s.source();
    }
    false
}

#[derive(Debug, thiserror::Error)]
#[error("the CRM host resolves only to non-public addresses")]
struct PrivateAddressError;

/// Resolves with the system resolver and keeps only public addresses.
struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(
                    Box::new(PrivateAddressError) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_as_the_design_says() {
        let h = HeaderMap::new();
        assert!(matches!(
            classify(StatusCode::OK, &h),
            Answer::Delivered { .. }
        ));
        assert!(matches!(
            classify(StatusCode::NO_CONTENT, &h),
            Answer::Delivered { .. }
        ));
        for s in [408, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(s).unwrap();
            assert!(matches!(classify(status, &h), Answer::Retry { .. }), "{s}");
        }
        for s in [301, 400, 401, 403, 404, 410, 422] {
            let status = StatusCode::from_u16(s).unwrap();
            assert!(matches!(classify(status, &h), Answer::Reject { .. }), "{s}");
        }
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("30"));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h),
            Answer::Retry {
                status: Some(429),
                reason: "http_429".into(),
                retry_after: Some(Duration::from_secs(30))
            }
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let in_a_minute = std::time::SystemTime::now() + Duration::from_secs(60);
        let d = parse_retry_after(&httpdate::fmt_http_date(in_a_minute)).unwrap();
        assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(60),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
