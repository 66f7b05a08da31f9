//! The whole ingest path on any bytes: the first byte picks the provider, the method, the
//! content type, the credential and the signing; the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| callbridge_fuzz::ingest(data));
