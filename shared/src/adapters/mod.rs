//! The I/O behind the [`crate::ports`] traits.
