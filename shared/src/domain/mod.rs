//! The pure core: provider parsing, the call fold and the Morph mapping. No I/O, no clock.

pub mod connection;
pub mod contact;
pub mod delivery;
pub mod event;
pub mod fold;
pub mod providers;
pub mod record;
pub mod resource;
pub mod rest;
pub mod time;
