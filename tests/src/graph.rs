//! A fake of Meta's Graph API: a real HTTP server on loopback that answers
//! the Send API, comment replies, profile lookups and token refreshes the
//! way Meta does, errors included, and records every request it gets.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::http::{HeaderMap, StatusCode};
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::{Data, Json, Path};
use poem::{EndpointExt, IntoResponse, Response, Route, Server, get, handler, post};
use serde_json::{Value, json};

/// A request Meta received.
#[derive(Clone, Debug)]
pub struct GraphRequest {
    /// `GET`, `POST` or `DELETE`.
    pub method: String,
    pub path: String,
    pub authorization: String,
    pub body: Value,
}

/// How the fake answers the next send.
#[derive(Clone, Debug)]
pub enum SendAnswer {
    /// Meta's error object with this HTTP status, code and subcode.
    Error {
        status: u16,
        code: i64,
        subcode: Option<i64>,
        message: &'static str,
    },
    /// Answers only after this delay.
    Slow(Duration),
    /// A 200 whose JSON body is padded to this many bytes.
    Huge(usize),
}

#[derive(Default)]
struct State {
    sends: Mutex<Vec<GraphRequest>>,
    lookups: Mutex<Vec<GraphRequest>>,
    send_answers: Mutex<VecDeque<SendAnswer>>,
    /// The tokens presented for refresh, in order.
    refreshes: Mutex<Vec<String>>,
    refresh_answers: Mutex<VecDeque<SendAnswer>>,
    /// Per user id: Ok(username) or Err(Meta error code); default `user_<id>`.
    profiles: Mutex<HashMap<String, Result<String, i64>>>,
}

pub struct FakeGraph {
    pub addr: SocketAddr,
    state: Arc<State>,
    _server: tokio::task::JoinHandle<()>,
}

fn meta_error(status: u16, code: i64, subcode: Option<i64>, message: &str) -> Response {
    let mut error = json!({ "message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AfakeTrace123" });
    if let Some(s) = subcode {
        error["error_subcode"] = json!(s);
    }
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({ "error": error })),
    )
        .into_response()
}

fn authorization(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

#[handler]
async fn send(
    Path(account): Path<String>,
    headers: &HeaderMap,
    Json(body): Json<Value>,
    Data(state): Data<&Arc<State>>,
) -> Response {
    let recipient = body["recipient"]["id"].clone();
    // A sender action is answered with the recipient only.
    let action = body.get("sender_action").is_some();
    answer_send(
        state,
        ("POST", format!("/{account}/messages")),
        headers,
        body,
        |n| {
            if action {
                json!({ "recipient_id": recipient })
            } else {
                json!({ "recipient_id": recipient, "message_id": format!("mid_sent_{n}") })
            }
        },
    )
    .await
}

/// `POST` and `DELETE /{account}/messenger_profile`: ice breakers and the
/// persistent menu.
#[handler]
async fn messenger_profile(
    method: poem::http::Method,
    Path(account): Path<String>,
    headers: &HeaderMap,
    Json(body): Json<Value>,
    Data(state): Data<&Arc<State>>,
) -> Response {
    answer_send(
        state,
        (method.as_str(), format!("/{account}/messenger_profile")),
        headers,
        body,
        |_| json!({ "result": "success" }),
    )
    .await
}

/// `POST /{comment_id}/replies`: a public reply to a comment.
#[handler]
async fn reply(
    Path(comment): Path<String>,
    headers: &HeaderMap,
    Json(body): Json<Value>,
    Data(state): Data<&Arc<State>>,
) -> Response {
    answer_send(
        state,
        ("POST", format!("/{comment}/replies")),
        headers,
        body,
        |n| json!({ "id": format!("1790000000000{n:04}") }),
    )
    .await
}

/// Records a call that sends something and answers it as told, or with `ok`.
async fn answer_send(
    state: &Arc<State>,
    (method, path): (&str, String),
    headers: &HeaderMap,
    body: Value,
    ok: impl FnOnce(usize) -> Value,
) -> Response {
    let n = {
        let mut sends = state.sends.lock().unwrap();
        sends.push(GraphRequest {
            method: method.to_owned(),
            path,
            authorization: authorization(headers),
            body,
        });
        sends.len()
    };
    let answer = state.send_answers.lock().unwrap().pop_front();
    answer_as_told(answer, ok(n)).await
}

/// Answers with the queued `answer`, or with `ok` when none was queued.
async fn answer_as_told(answer: Option<SendAnswer>, ok: Value) -> Response {
    match answer {
        Some(SendAnswer::Error {
            status,
            code,
            subcode,
            message,
        }) => return meta_error(status, code, subcode, message),
        Some(SendAnswer::Slow(d)) => tokio::time::sleep(d).await,
        Some(SendAnswer::Huge(bytes)) => {
            return Json(json!({ "message_id": "mid_huge", "padding": "x".repeat(bytes) }))
                .into_response();
        }
        None => {}
    }
    Json(ok).into_response()
}

/// `GET /refresh_access_token?grant_type=ig_refresh_token&access_token=…`:
/// a new long-lived token (`IGAA-refreshed-<n>`, 60 days), or the answer
/// queued with [`FakeGraph::answer_next_refresh`].
#[handler]
async fn refresh_token(
    poem::web::Query(query): poem::web::Query<HashMap<String, String>>,
    Data(state): Data<&Arc<State>>,
) -> Response {
    if query.get("grant_type").map(String::as_str) != Some("ig_refresh_token") {
        return meta_error(400, 100, None, "Unsupported grant_type");
    }
    let n = {
        let mut refreshes = state.refreshes.lock().unwrap();
        refreshes.push(query.get("access_token").cloned().unwrap_or_default());
        refreshes.len()
    };
    let answer = state.refresh_answers.lock().unwrap().pop_front();
    let refreshed = json!({
        "access_token": format!("IGAA-refreshed-{n}"),
        "token_type": "bearer",
        "expires_in": 5_184_000,
    });
    answer_as_told(answer, refreshed).await
}

#[handler]
async fn profile(
    Path(user): Path<String>,
    headers: &HeaderMap,
    Data(state): Data<&Arc<State>>,
) -> Response {
    state.lookups.lock().unwrap().push(GraphRequest {
        method: "GET".into(),
        path: format!("/{user}"),
        authorization: authorization(headers),
        body: Value::Null,
    });
    let known = state.profiles.lock().unwrap().get(&user).cloned();
    match known.unwrap_or_else(|| Ok(format!("user_{user}"))) {
        Ok(username) => {
            Json(json!({ "username": username, "name": "A Customer", "id": user })).into_response()
        }
        Err(230) => meta_error(
            400,
            230,
            None,
            "User consent is required to access user profile",
        ),
        Err(code) => meta_error(
            500,
            code,
            None,
            "An unexpected error has occurred. Please retry your request later.",
        ),
    }
}

impl FakeGraph {
    pub async fn start() -> Self {
        let state = Arc::new(State::default());
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
        let graph = Route::new()
            .at("/:account/messages", post(send))
            .at("/:comment/replies", post(reply))
            .at(
                "/:account/messenger_profile",
                post(messenger_profile).delete(messenger_profile),
            )
            .at("/refresh_access_token", get(refresh_token))
            .at("/:user", get(profile));
        let app = Route::new().nest("/v23.0", graph).data(state.clone());
        let server = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(app).await;
        });
        Self {
            addr,
            state,
            _server: server,
        }
    }

    /// The base URL to give ingest as `GRAPH_API_BASE`.
    pub fn url(&self) -> String {
        format!("http://{}/v23.0", self.addr)
    }

    pub fn sends(&self) -> Vec<GraphRequest> {
        self.state.sends.lock().unwrap().clone()
    }

    pub fn lookups(&self) -> Vec<GraphRequest> {
        self.state.lookups.lock().unwrap().clone()
    }

    /// The tokens presented for refresh, in order.
    pub fn refreshes(&self) -> Vec<String> {
        self.state.refreshes.lock().unwrap().clone()
    }

    pub fn answer_next_refresh(&self, answer: SendAnswer) {
        self.state.refresh_answers.lock().unwrap().push_back(answer);
    }

    pub fn answer_next_send(&self, answer: SendAnswer) {
        self.state.send_answers.lock().unwrap().push_back(answer);
    }

    /// Lookups of `user` answer with Meta's error `code` (230: consent required).
    pub fn profile_fails(&self, user: &str, code: i64) {
        self.state
            .profiles
            .lock()
            .unwrap()
            .insert(user.to_owned(), Err(code));
    }

    pub fn profile_is(&self, user: &str, username: &str) {
        self.state
            .profiles
            .lock()
            .unwrap()
            .insert(user.to_owned(), Ok(username.to_owned()));
    }
}
