//! The telecmi parser on any bytes: read as JSON, and as a form (every value a string).
#![no_main]

use callbridge_shared::domain::event::Provider;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| callbridge_fuzz::parse(Provider::Telecmi, data));
