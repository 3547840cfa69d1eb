//! Fuzz target `tracestate`: the round-trip properties of [`tracemesh::context::fuzzing::check_tracestate`].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tracemesh::context::fuzzing::check_tracestate(data));
