//! Helpers of the end-to-end tests of the local server: a real `callbridge serve` process
//! ([`bridge`]), the provider scenarios and their expectations ([`scenario`]), the faults the
//! CRM recorder of the `callbridge` library is told to answer ([`faults`]), and the outcome of
//! an operator's command ([`command`]).

// Each test file uses its own part of these helpers.
#![allow(dead_code)]

pub mod bridge;
pub mod command;
pub mod faults;
pub mod scenario;
