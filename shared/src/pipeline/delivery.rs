//! Delivery of a record's outbox to the CRM. (Being written.)
