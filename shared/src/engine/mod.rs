//! The steps of the bridge, written once over the [`crate::ports`] traits and run by both
//! hosts ([`crate::hosts`]) and the tests alike.

pub mod activation;
pub mod apply;
pub mod breaker;
pub mod contacts;
pub mod crash;
pub mod deliver;
pub mod destination;
pub mod failure;
pub mod ingest;
pub mod observe;
pub mod rate_limit;
pub mod rejection;
pub mod rest_delivery;
pub mod schedule;
pub mod signature;
