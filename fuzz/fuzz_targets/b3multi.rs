//! Fuzz target `b3multi`: the round-trip properties of [`tracemesh::context::fuzzing::check_b3multi`].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tracemesh::context::fuzzing::check_b3multi(data));
