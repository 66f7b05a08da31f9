//! The I/O behind the [`crate::ports`] traits.

#[cfg(feature = "aws")]
pub mod aws;
pub mod cached;
pub mod clock;
pub mod config_directory;
pub mod contact_http;
pub mod crm_http;
pub mod memory;
#[cfg(feature = "local")]
pub mod sqlite;
#[cfg(feature = "local")]
pub mod stdout_crm;
