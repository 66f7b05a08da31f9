//! The `callbridge` command: the local server, scenario replay, a CRM recorder for local runs
//! and tests, and the operator commands.

pub mod recorder;
pub mod replay;
pub mod serve;
