//! What a step that did not go through means for its call, decided once for both hosts: worth
//! another try (at an instant the engine chose, or soon), parked until an operator acts, or
//! never possible as it is. The hosts only carry it out (the local server sleeps and parks in
//! its store; the AWS worker hides the message until then, or moves it to the dead-letter
//! queue).

use crate::domain::record::{Delivery, RecordError};
use crate::domain::time::Timestamp;
use crate::ports::DeliveryOutcome;
use std::fmt::Display;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A delivery to try again at `until`: the retry schedule's next try after a failure
    /// retrying can fix, or the next probe of its destination's open breaker.
    Wait { reason: String, until: Timestamp },
    /// Worth another try soon (the store unavailable, too little time left; the CRM's answer
    /// before the schedule turns it into a [`Failure::Wait`]), not before the CRM's
    /// `Retry-After` when it gave one.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The CRM refused a delivery for good, or may have taken a create that must not be sent
    /// twice: the call waits until someone fixes the cause. The CRM's status and answer, when
    /// it gave them, are kept for the operator.
    Park {
        reason: String,
        crm_status: Option<u16>,
        crm_answer: Option<String>,
    },
    /// It can never succeed as it is (a message or a record that does not read, a record that
    /// would be too large, a connection that is gone).
    Poison { reason: String },
}

impl Failure {
    /// `reason`, with its causes when it is an error.
    pub fn retry(reason: impl Display) -> Self {
        Self::Retry {
            reason: format!("{reason:#}"),
            retry_after: None,
        }
    }

    /// `reason`, with its causes when it is an error.
    pub fn poison(reason: impl Display) -> Self {
        Self::Poison {
            reason: format!("{reason:#}"),
        }
    }

    /// A store's error: a record that does not read or would be too large can never succeed;
    /// anything else may pass on another try.
    pub fn of_store(error: anyhow::Error) -> Self {
        if RecordError::of(&error).is_some() {
            Self::poison(error)
        } else {
            Self::retry(error)
        }
    }

    /// Why the CRM did not take `delivery`.
    pub fn of_delivery(delivery: &Delivery, outcome: DeliveryOutcome) -> Self {
        let key = &delivery.idempotency_key;
        match outcome {
            DeliveryOutcome::Reject { status, body } => Self::Park {
                reason: format!("the CRM refused {key} with HTTP {status}"),
                crm_status: Some(status),
                crm_answer: Some(body),
            },
            DeliveryOutcome::Uncertain { reason } => Self::Park {
                reason: format!("{key}: {reason}"),
                crm_status: None,
                crm_answer: None,
            },
            DeliveryOutcome::Retry {
                reason,
                retry_after,
            } => Self::Retry {
                reason: format!("the CRM did not take {key}: {reason}"),
                retry_after,
            },
            // A delivery taken does not stop the outbox; should one come here, trying it
            // again is harmless (the same idempotency key).
            DeliveryOutcome::Delivered => {
                Self::retry(format!("the CRM took {key} but the outbox stopped at it"))
            }
        }
    }

    /// The whole reason, with the CRM's answer when it gave one, for the logs.
    pub fn reason(&self) -> String {
        match self {
            Self::Park {
                reason,
                crm_answer: Some(answer),
                ..
            } => format!("{reason}: {answer}"),
            Self::Wait { reason, .. }
            | Self::Retry { reason, .. }
            | Self::Park { reason, .. }
            | Self::Poison { reason } => reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::record::RecordError;

    fn delivery() -> Delivery {
        Delivery {
            resource_id: "r".into(),
            revision: 3,
            event: crate::domain::resource::MorphEventType::Updated,
            idempotency_key: "r-r3".into(),
            body: serde_json::Value::Null,
            closed: None,
            received_at: None,
            attempted: false,
            waiting: None,
        }
    }

    #[test]
    fn a_refusal_parks_with_the_crms_answer() {
        let failure = Failure::of_delivery(
            &delivery(),
            DeliveryOutcome::Reject {
                status: 422,
                body: "{\"error\":\"bad\"}".into(),
            },
        );
        assert_eq!(
            failure,
            Failure::Park {
                reason: "the CRM refused r-r3 with HTTP 422".into(),
                crm_status: Some(422),
                crm_answer: Some("{\"error\":\"bad\"}".into()),
            }
        );
        assert_eq!(
            failure.reason(),
            "the CRM refused r-r3 with HTTP 422: {\"error\":\"bad\"}"
        );
    }

    #[test]
    fn an_uncertain_create_parks_and_an_unavailable_crm_is_retried_after_its_wait() {
        let uncertain = Failure::of_delivery(
            &delivery(),
            DeliveryOutcome::Uncertain {
                reason: "look in Morph".into(),
            },
        );
        assert!(matches!(
            uncertain,
            Failure::Park {
                crm_status: None,
                ..
            }
        ));
        let busy = Failure::of_delivery(
            &delivery(),
            DeliveryOutcome::Retry {
                reason: "HTTP 429".into(),
                retry_after: Some(Duration::from_secs(7)),
            },
        );
        assert_eq!(
            busy,
            Failure::Retry {
                reason: "the CRM did not take r-r3: HTTP 429".into(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
    }

    #[test]
    fn a_record_that_does_not_read_is_poison_and_a_store_outage_is_retried() {
        let unreadable = anyhow::Error::new(RecordError::Unreadable {
            call: crate::domain::record::CallKey::new(
                "acme",
                crate::domain::event::Provider::Voys,
                "c",
            ),
            version: 1,
            reason: "garbled".into(),
        });
        assert!(matches!(
            Failure::of_store(unreadable),
            Failure::Poison { .. }
        ));
        let outage = anyhow::anyhow!("DynamoDB is unavailable");
        assert!(matches!(
            Failure::of_store(outage),
            Failure::Retry {
                retry_after: None,
                ..
            }
        ));
    }
}
