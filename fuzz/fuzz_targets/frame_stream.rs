//! Fuzz target: see `chaincore::fuzzing::frame_stream` for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chaincore::fuzzing::frame_stream(data));
