//! The `callbridge` command: the local server, scenario replay, a CRM recorder for local runs
//! and tests, and the operator commands.

pub mod calls;
#[cfg(feature = "aws")]
pub mod connections;
pub mod deliveries;
pub mod recorder;
#[cfg(feature = "aws")]
pub mod redrive;
pub mod replay;
pub mod serve;
pub mod target;
