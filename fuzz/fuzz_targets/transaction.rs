//! Fuzz target: see `chaincore::fuzzing::transaction` for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chaincore::fuzzing::transaction(data));
