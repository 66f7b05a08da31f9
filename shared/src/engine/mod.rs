//! The steps of the bridge, written once over the [`crate::ports`] traits and run by both
//! hosts ([`crate::hosts`]) and the tests alike.

pub mod activation;
pub mod apply;
pub mod contacts;
pub mod crash;
pub mod deliver;
pub mod ingest;
pub mod observe;
pub mod rest_delivery;
pub mod signature;
