//! Fuzz target `detect`: protocol detection is total and monotone
//! ([`tracemesh::proxy::detect::fuzzing::check_detect`]).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tracemesh::proxy::detect::fuzzing::check_detect(data));
