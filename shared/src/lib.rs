//! What ingest and forwarder both speak: the NATS message bodies and the CRM
//! payload, the subject and stream names, webhook signing, and the small
//! start-up helpers (logging, TLS provider, config parsing) both binaries use.
//!
//! Architecture invariant: nothing here serves HTTP or touches SQL. The
//! forwarder depends on this crate and on NATS only.

pub mod config;
pub mod ids;
pub mod jetstream;
pub mod model;
pub mod net;
pub mod observe;
pub mod secrets;
pub mod service;
pub mod shutdown;
pub mod signing;
pub mod subjects;
pub mod telemetry;
pub mod wire;

/// Installs the process-wide rustls crypto provider (ring). async-nats and
/// reqwest both use rustls; with one provider installed up front neither has
/// to guess. Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
