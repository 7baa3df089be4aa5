//! Meta's protocol, and nothing of ours: the webhook handshake and
//! signature ([`verify`]), the webhook payload and how each event is
//! classified ([`payload`]), and the Graph API client ([`graph`]: Send API,
//! profiles). Nothing here touches the store, NATS or HTTP routing.

pub mod graph;
pub mod payload;
pub mod verify;
