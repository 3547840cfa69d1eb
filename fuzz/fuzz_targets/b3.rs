//! Fuzz target `b3`: the round-trip properties of [`tracemesh::context::fuzzing::check_b3`].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tracemesh::context::fuzzing::check_b3(data));
