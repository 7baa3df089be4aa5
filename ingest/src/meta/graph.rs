//! Meta's Graph API, behind `GRAPH_API_BASE`: the Send API, comment
//! replies, the user profile lookup and the token refresh. Errors keep
//! Meta's code, subcode, message and trace id so callers can map them to
//! stable codes.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// The most of an answer read from the Graph API: Meta's are a few hundred
/// bytes, and a larger one is not read into memory.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    base: String,
}

#[derive(Debug, Clone)]
pub enum GraphError {
    /// Meta answered with an error object.
    Meta {
        http_status: u16,
        code: i64,
        subcode: Option<i64>,
        message: String,
        fbtrace_id: Option<String>,
    },
    /// No answer within the timeout.
    Timeout,
    /// Connection failure or an answer that is not Meta's JSON.
    Transport(String),
}

impl std::fmt::Display for GraphError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraphError::Meta {
                http_status,
                code,
                subcode,
                ..
            } => {
                write!(
                    f,
                    "graph api error: http {http_status}, code {code}, subcode {subcode:?}"
                )
            }
            GraphError::Timeout => f.write_str("graph api timeout"),
            GraphError::Transport(e) => write!(f, "graph api unreachable: {e}"),
        }
    }
}

/// A failed request or read: a timeout, or Meta unreachable.
fn failed_call(e: reqwest::Error) -> GraphError {
    if e.is_timeout() {
        GraphError::Timeout
    } else {
        GraphError::Transport(e.without_url().to_string())
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: MetaError,
}

#[derive(Deserialize)]
struct MetaError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: i64,
    error_subcode: Option<i64>,
    fbtrace_id: Option<String>,
}

/// Meta's answer to a send.
#[derive(Debug, Deserialize)]
pub struct Sent {
    pub message_id: String,
    #[serde(default)]
    pub recipient_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Profile {
    pub username: Option<String>,
}

impl GraphClient {
    pub fn new(base: &url::Url, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("instagram-crm-router/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: base.as_str().trim_end_matches('/').to_owned(),
        })
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value, GraphError> {
        let resp = req.send().await.map_err(failed_call)?;
        let status = resp.status();
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(failed_call)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(GraphError::Transport(format!(
                    "answer larger than {} KiB",
                    MAX_ANSWER_BYTES / 1024
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|_| GraphError::Transport("answer is not JSON".into()));
        }
        match serde_json::from_slice::<ErrorEnvelope>(&body) {
            Ok(env) => Err(GraphError::Meta {
                http_status: status.as_u16(),
                code: env.error.code,
                subcode: env.error.error_subcode,
                message: env.error.message.chars().take(300).collect(),
                fbtrace_id: env.error.fbtrace_id,
            }),
            Err(_) => Err(GraphError::Transport(format!(
                "http {} without an error object",
                status.as_u16()
            ))),
        }
    }

    /// `POST {base}/{instagram_account_id}/messages` with the account's token.
    pub async fn send_message(
        &self,
        instagram_account_id: &str,
        token: &str,
        body: &Value,
    ) -> Result<Sent, GraphError> {
        let url = format!("{}/{}/messages", self.base, instagram_account_id);
        let value = self
            .call(self.http.post(url).bearer_auth(token).json(body))
            .await?;
        serde_json::from_value(value)
            .map_err(|_| GraphError::Transport("send answer without message_id".into()))
    }

    /// `method {base}/{path}` with the account's token and a JSON body, for
    /// calls whose answer says nothing but success.
    async fn done(
        &self,
        method: reqwest::Method,
        path: String,
        token: &str,
        body: &Value,
    ) -> Result<(), GraphError> {
        let url = format!("{}/{path}", self.base);
        let req = self.http.request(method, url).bearer_auth(token).json(body);
        self.call(req).await.map(drop)
    }

    /// `POST {base}/{instagram_account_id}/messages` with a `sender_action`:
    /// Meta answers with the recipient only.
    pub async fn send_action(
        &self,
        instagram_account_id: &str,
        token: &str,
        body: &Value,
    ) -> Result<(), GraphError> {
        let path = format!("{instagram_account_id}/messages");
        self.done(reqwest::Method::POST, path, token, body).await
    }

    /// `POST {base}/{instagram_account_id}/messenger_profile`: sets the
    /// account's ice breakers or persistent menu (`body` names which).
    pub async fn set_messenger_profile(
        &self,
        instagram_account_id: &str,
        token: &str,
        body: &Value,
    ) -> Result<(), GraphError> {
        let path = format!("{instagram_account_id}/messenger_profile");
        self.done(reqwest::Method::POST, path, token, body).await
    }

    /// `DELETE {base}/{instagram_account_id}/messenger_profile`: removes the
    /// named field (`ice_breakers`, `persistent_menu`).
    pub async fn delete_messenger_profile(
        &self,
        instagram_account_id: &str,
        token: &str,
        field: &str,
    ) -> Result<(), GraphError> {
        let path = format!("{instagram_account_id}/messenger_profile");
        let body = serde_json::json!({ "platform": "instagram", "fields": [field] });
        self.done(reqwest::Method::DELETE, path, token, &body).await
    }

    /// `POST {base}/{comment_id}/replies`: a public reply; returns its id.
    pub async fn reply_to_comment(
        &self,
        comment_id: &str,
        token: &str,
        text: &str,
    ) -> Result<String, GraphError> {
        #[derive(Deserialize)]
        struct Created {
            id: String,
        }
        let url = format!("{}/{}/replies", self.base, comment_id);
        let body = serde_json::json!({ "message": text });
        let value = self
            .call(self.http.post(url).bearer_auth(token).json(&body))
            .await?;
        serde_json::from_value::<Created>(value)
            .map(|c| c.id)
            .map_err(|_| GraphError::Transport("reply answer without id".into()))
    }

    /// `GET {base}/refresh_access_token?grant_type=ig_refresh_token`: a
    /// long-lived token refreshed for another 60 days. Returns the token
    /// and its lifetime in seconds (Meta's `expires_in`).
    pub async fn refresh_token(&self, token: &str) -> Result<(String, i64), GraphError> {
        #[derive(Deserialize)]
        struct Refreshed {
            access_token: String,
            expires_in: i64,
        }
        let mut url = url::Url::parse(&format!("{}/refresh_access_token", self.base))
            .map_err(|_| GraphError::Transport("GRAPH_API_BASE is not a base URL".into()))?;
        url.query_pairs_mut()
            .append_pair("grant_type", "ig_refresh_token")
            .append_pair("access_token", token);
        let value = self.call(self.http.get(url)).await?;
        serde_json::from_value::<Refreshed>(value)
            .ok()
            .filter(|r| !r.access_token.is_empty() && r.expires_in > 0)
            .map(|r| (r.access_token, r.expires_in))
            .ok_or_else(|| {
                GraphError::Transport("refresh answer without access_token and expires_in".into())
            })
    }

    /// `GET {base}/{user_id}?fields=username,name` with the account's token.
    pub async fn profile(&self, user_id: &str, token: &str) -> Result<Profile, GraphError> {
        let url = format!("{}/{}?fields=username,name", self.base, user_id);
        let value = self.call(self.http.get(url).bearer_auth(token)).await?;
        serde_json::from_value(value)
            .map_err(|_| GraphError::Transport("unexpected profile answer".into()))
    }
}
