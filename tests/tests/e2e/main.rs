//! The end-to-end tests, in one binary: a real nats-server, ingest and
//! forwarder as real processes, real HTTP to a CRM receiver and a fake Graph
//! API. The cases that depend on the store run once per database
//! ([`router_tests::on_both_stores!`]): `sqlite::<case>` always, and
//! `postgres::<case>` when `TEST_DATABASE_URL` was set at build time.

mod accounts_api;
mod api_fuzz;
mod api_tokens;
mod bench_smoke;
mod cluster;
mod compose;
mod delivery;
mod inbound;
mod instagram;
mod observe;
mod readme_examples;
mod router_local;
mod scale_out;
mod security;
mod store_batches;
mod tenants;
