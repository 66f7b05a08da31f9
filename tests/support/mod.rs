//! Helpers of the end-to-end tests of the local server: a real `callbridge serve` process
//! ([`bridge`]), the provider scenarios and their expectations ([`scenario`]), and the CRM
//! recorder of the `callbridge` library.

// Each test file uses its own part of these helpers.
#![allow(dead_code)]

pub mod bridge;
pub mod command;
pub mod scenario;
