//! ingest: the HTTP side of the router. It receives Meta's signed webhooks,
//! saves every message with an outbox entry, publishes it on NATS, and serves
//! the account API and its OpenAPI document.
//!
//! The folders are the layers, from the top; a module may use the layers
//! below it and never one above or beside it (`tests/layers.rs` checks the
//! `use` lines):
//!
//! | layer | modules | may use |
//! |---|---|---|
//! | wiring | [`app`] | everything |
//! | edges | [`http`], [`tasks`] | domain, meta, store, nats, config |
//! | domain | [`domain`] | meta, store, nats, config |
//! | adapters | [`meta`], [`store`], [`nats`] | config |
//! | settings | [`config`] | nothing of ingest |
//!
//! Architecture invariant: ingest is the only process that touches the
//! database. The forwarder learns about accounts through the NATS
//! key-value bucket that [`domain::routing`] keeps in step.

pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod meta;
pub mod nats;
pub mod store;
pub mod tasks;
