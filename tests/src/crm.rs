//! A CRM on loopback: a real HTTP server that records every delivery and
//! checks both signatures with its own HMAC code (not the router's), the way
//! a CRM team would from the README.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use poem::http::{HeaderMap, StatusCode};
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::Data;
use poem::{Body, EndpointExt, Route, Server, handler, post};
use sha2::Sha256;

/// One request the CRM received.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub json: serde_json::Value,
    pub received_at: std::time::Instant,
}

impl Delivery {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id")
    }

    /// Checks `X-Hub-Signature-256` with the account's whole `whsec_…` secret.
    pub fn hub_signature_valid(&self, secret: &str) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&self.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        self.header("x-hub-signature-256") == expected
    }

    /// Checks the Standard Webhooks signature, keyed with the bytes after `whsec_`.
    pub fn standard_signature_valid(&self, secret: &str) -> bool {
        let key = B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(
            format!(
                "{}.{}.",
                self.webhook_id(),
                self.header("webhook-timestamp")
            )
            .as_bytes(),
        );
        mac.update(&self.body);
        let expected = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
        self.header("webhook-signature")
            .split(' ')
            .any(|s| s == expected)
    }
}

/// A scripted answer: the status, and how long to wait before giving it.
type Answer = (u16, Option<Duration>);

#[derive(Default)]
struct Shared {
    deliveries: Mutex<Vec<Delivery>>,
    /// Scripted answers (status, delay before answering), used in order;
    /// then `delay` and the default status (200 unless set).
    answers: Mutex<VecDeque<Answer>>,
    /// Scripted answers for one message (by Instagram mid), used in order.
    per_message: Mutex<std::collections::HashMap<String, VecDeque<Answer>>>,
    delay: Mutex<Option<Duration>>,
    status: Mutex<Option<u16>>,
    /// Requests being answered now, and the most at once.
    in_flight: Mutex<(usize, usize)>,
}

pub struct CrmReceiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _server: tokio::task::JoinHandle<()>,
}

#[handler]
async fn receive(headers: &HeaderMap, body: Body, Data(shared): Data<&Arc<Shared>>) -> StatusCode {
    let body = body.into_vec().await.unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    {
        let mut in_flight = shared.in_flight.lock().unwrap();
        in_flight.0 += 1;
        in_flight.1 = in_flight.1.max(in_flight.0);
    }
    let mid = json["instagram_message_id"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    shared.deliveries.lock().unwrap().push(Delivery {
        headers: headers.clone(),
        body,
        json,
        received_at: std::time::Instant::now(),
    });
    let for_message = shared
        .per_message
        .lock()
        .unwrap()
        .get_mut(&mid)
        .and_then(VecDeque::pop_front);
    let scripted = for_message.or_else(|| shared.answers.lock().unwrap().pop_front());
    let default_status = shared.status.lock().unwrap().unwrap_or(200);
    let (code, delay) = scripted.unwrap_or((default_status, *shared.delay.lock().unwrap()));
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    shared.in_flight.lock().unwrap().0 -= 1;
    StatusCode::from_u16(code).unwrap()
}

impl CrmReceiver {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
        let app = Route::new().at("/hook", post(receive)).data(shared.clone());
        let server = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(app).await;
        });
        Self {
            addr,
            shared,
            _server: server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// How many requests arrived so far (without copying them).
    pub fn count(&self) -> usize {
        self.shared.deliveries.lock().unwrap().len()
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.deliveries.lock().unwrap().clone()
    }

    /// Answers the next requests with these statuses, then 200.
    pub fn answer_with(&self, statuses: &[u16]) {
        let mut answers = self.shared.answers.lock().unwrap();
        answers.extend(statuses.iter().map(|s| (*s, None)));
    }

    /// Answers the next request with `status` only after `delay`.
    pub fn answer_late(&self, status: u16, delay: Duration) {
        self.shared
            .answers
            .lock()
            .unwrap()
            .push_back((status, Some(delay)));
    }

    /// Delays every unscripted answer.
    pub fn delay_answers(&self, delay: Option<Duration>) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// Answers every unscripted request with `status` (200 when `None`).
    pub fn answer_all_with(&self, status: Option<u16>) {
        *self.shared.status.lock().unwrap() = status;
    }

    /// Answers the next attempts of the message with this Instagram mid
    /// with these statuses, whatever else is scripted.
    pub fn answer_message_with(&self, mid: &str, statuses: &[u16]) {
        self.script_message(mid, statuses.iter().map(|s| (*s, None)));
    }

    /// Answers the next attempt of this message with `status` after `delay`.
    pub fn answer_message_late(&self, mid: &str, status: u16, delay: Duration) {
        self.script_message(mid, [(status, Some(delay))]);
    }

    fn script_message(&self, mid: &str, answers: impl IntoIterator<Item = Answer>) {
        self.shared
            .per_message
            .lock()
            .unwrap()
            .entry(mid.to_owned())
            .or_default()
            .extend(answers);
    }

    /// The Instagram mid of every request received, in arrival order.
    pub fn arrivals(&self) -> Vec<String> {
        self.deliveries()
            .iter()
            .map(|d| {
                d.json["instagram_message_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    }

    /// The most requests this CRM was answering at once.
    pub fn most_at_once(&self) -> usize {
        self.shared.in_flight.lock().unwrap().1
    }

    /// Waits until at least `n` deliveries arrived.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Delivery> {
        crate::eventually(limit, &format!("{n} deliveries at the CRM"), || async {
            let d = self.deliveries();
            (d.len() >= n).then_some(d)
        })
        .await
    }
}
