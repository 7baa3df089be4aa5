//! NATS names derived from `ROUTER_SUBJECT_PREFIX`: subjects, stream names,
//! the consumer and the key-value bucket. Both services derive them here so
//! that they can never disagree.

use crate::ids::AccountId;

/// Where a delivery ended up, as published on `<prefix>.delivery.<outcome>.<account_id>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Delivered,
    Retrying,
    Dead,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retrying => "retrying",
            Outcome::Dead => "dead",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// The prefix must be one or more NATS tokens without wildcards or spaces.
    pub fn new(prefix: &str) -> Result<Self, String> {
        let valid = !prefix.is_empty()
            && prefix.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if valid {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(format!(
                "ROUTER_SUBJECT_PREFIX {prefix:?} must be dot-separated tokens of letters, digits, '_' or '-'"
            ))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn inbound(&self, account: &AccountId) -> String {
        format!("{}.inbound.{}", self.prefix, account)
    }

    pub fn inbound_all(&self) -> String {
        format!("{}.inbound.>", self.prefix)
    }

    pub fn delivery(&self, outcome: Outcome, account: &AccountId) -> String {
        format!("{}.delivery.{}.{}", self.prefix, outcome.as_str(), account)
    }

    pub fn delivery_all(&self) -> String {
        format!("{}.delivery.>", self.prefix)
    }

    /// Where an account's CRM health alerts go: paused and resumed deliveries.
    pub fn crm_alert(&self, account: &AccountId) -> String {
        format!("{}.alerts.crm.{}", self.prefix, account)
    }

    /// Where an account's access-token alerts go: expiring, refreshed, invalid.
    pub fn credentials_alert(&self, account: &AccountId) -> String {
        format!("{}.alerts.credentials.{}", self.prefix, account)
    }

    pub fn alerts_all(&self) -> String {
        format!("{}.alerts.>", self.prefix)
    }

    /// Where a service instance publishes its live summary.
    pub fn stats(&self, service: &str, instance: &str) -> String {
        format!("{}.stats.{service}.{instance}", self.prefix)
    }

    /// `router` → `ROUTER`, `acme.router` → `ACME_ROUTER`: stream names allow no dots.
    fn name_base(&self) -> String {
        self.prefix.replace(['.', '-'], "_").to_uppercase()
    }

    pub fn inbound_stream(&self) -> String {
        format!("{}_INBOUND", self.name_base())
    }

    pub fn delivery_stream(&self) -> String {
        format!("{}_DELIVERY", self.name_base())
    }

    pub fn alerts_stream(&self) -> String {
        format!("{}_ALERTS", self.name_base())
    }

    /// The durable pull consumer of one account's inbound messages. Each
    /// account has its own, so its unacknowledged messages (in flight,
    /// waiting for a retry) count against its own limit, never another's.
    pub fn account_consumer(&self, account: &AccountId) -> String {
        format!("deliver_{account}")
    }

    /// The account whose consumer this is, for a name made by
    /// [`Subjects::account_consumer`].
    pub fn consumer_account(&self, consumer: &str) -> Option<AccountId> {
        AccountId::parse(consumer.strip_prefix("deliver_")?).ok()
    }

    /// The one consumer every forwarder shared before consumers were per
    /// account; a forwarder that finds it takes over from its position.
    pub fn legacy_forwarder_consumer(&self) -> String {
        "forwarder".to_owned()
    }

    /// The durable consumer through which ingest records delivery outcomes.
    pub fn outcome_consumer(&self) -> String {
        "ingest-outcomes".to_owned()
    }

    /// The key-value bucket holding each account's routing (CRM URL, secret, status).
    pub fn accounts_bucket(&self) -> String {
        self.bucket("accounts")
    }

    /// Each account's CRM health (the circuit breaker), written by the
    /// forwarder serving the account, read by ingest for the account API.
    pub fn health_bucket(&self) -> String {
        self.bucket("delivery_health")
    }

    /// Conversations held behind a message that waits for a retry, so that
    /// no later message of the conversation overtakes it.
    pub fn holds_bucket(&self) -> String {
        self.bucket("conversation_holds")
    }

    /// The running forwarders' heartbeats: who shares the accounts.
    pub fn forwarders_bucket(&self) -> String {
        self.bucket("forwarders")
    }

    fn bucket(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix.replace('.', "_"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let s = Subjects::new("router").unwrap();
        let acc = AccountId::parse("acc_x1").unwrap();
        assert_eq!(s.inbound(&acc), "router.inbound.acc_x1");
        assert_eq!(
            s.delivery(Outcome::Dead, &acc),
            "router.delivery.dead.acc_x1"
        );
        assert_eq!(s.inbound_stream(), "ROUTER_INBOUND");
        assert_eq!(s.accounts_bucket(), "router_accounts");
        assert_eq!(s.crm_alert(&acc), "router.alerts.crm.acc_x1");
        assert_eq!(
            s.credentials_alert(&acc),
            "router.alerts.credentials.acc_x1"
        );
        assert_eq!(s.account_consumer(&acc), "deliver_acc_x1");
        assert_eq!(s.consumer_account("deliver_acc_x1"), Some(acc));
        assert_eq!(s.consumer_account("forwarder"), None);
        let s = Subjects::new("acme.router").unwrap();
        assert_eq!(s.inbound_stream(), "ACME_ROUTER_INBOUND");
        assert_eq!(s.accounts_bucket(), "acme_router_accounts");
    }

    #[test]
    fn prefixes_with_wildcards_or_empty_tokens_are_refused() {
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a"] {
            assert!(Subjects::new(bad).is_err(), "{bad:?}");
        }
    }
}
