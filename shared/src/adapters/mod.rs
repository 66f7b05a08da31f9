//! The I/O behind the [`crate::ports`] traits.

pub mod crm_http;
pub mod memory;
