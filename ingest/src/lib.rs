//! ingest: the HTTP side of the router. It receives Meta's signed webhooks,
//! saves every message with an outbox entry, publishes it on NATS, and serves
//! the account API and its OpenAPI document.
//!
//! Architecture invariant: ingest is the only process that touches the
//! database. The forwarder learns about accounts through the NATS
//! key-value bucket that [`routing`] keeps in step.

pub mod accounts;
pub mod app;
pub mod auth;
pub mod config;
pub mod dead_letters;
pub mod deliveries;
pub mod error;
pub mod followups;
pub mod graph;
pub mod health;
pub mod messages;
pub mod meta;
pub mod nats;
pub mod openapi;
pub mod outbox;
pub mod outcomes;
pub mod routing;
pub mod send;
pub mod store;
pub mod webhooks;
