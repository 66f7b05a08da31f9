//! The hosts: they schedule the [`crate::engine`]'s steps and wire its ports to adapters, and
//! nothing else.

#[cfg(feature = "aws")]
pub mod lambda;
#[cfg(feature = "local")]
pub mod local;
