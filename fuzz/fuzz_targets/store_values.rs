//! Fuzz target: see `chaincore::fuzzing::store_values` for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chaincore::fuzzing::store_values(data));
