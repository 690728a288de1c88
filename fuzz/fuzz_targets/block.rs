//! Fuzz target: see `chaincore::fuzzing::block` for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chaincore::fuzzing::block(data));
