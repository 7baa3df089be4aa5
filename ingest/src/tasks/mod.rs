//! The background tasks, each with a small handle holding just what it
//! uses: publishing the outbox ([`outbox`]), recording what the forwarders
//! report ([`outcomes`]), and keeping the accounts bucket in step
//! ([`routing`]). They stop when their cancellation token is cancelled.

pub mod outbox;
pub mod outcomes;
pub mod routing;
