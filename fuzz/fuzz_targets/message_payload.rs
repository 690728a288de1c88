//! Fuzz target: see `chaincore::fuzzing::message_payload` for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chaincore::fuzzing::message_payload(data));
