//! Fuzzes the path every untrusted edit takes: parse the wire JSON, check it
//! against a document, apply, invert and transform it. The checks live in
//! `collab_ot::fuzz` so that committed crash inputs replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| collab_ot::fuzz::parse_apply(data));
