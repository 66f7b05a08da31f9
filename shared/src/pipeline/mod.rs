//! The steps of the bridge, written once over the [`crate::ports`] traits and run by the local
//! server, the Lambda functions and the tests alike.

pub mod activation;
pub mod contacts;
pub mod crash;
pub mod delivery;
pub mod ingest;
pub mod rest;
pub mod signature;
pub mod worker;
