//! The `tenants` tests again, with ingest on PostgreSQL: compiled when
//! `TEST_DATABASE_URL` is set (the harness gives each test its own database).
#![cfg(postgres_tests)]

#[path = "tenants.rs"]
mod cases;
