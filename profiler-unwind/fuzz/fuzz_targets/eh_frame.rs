#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| profiler_unwind::fuzzing::eh_frame(data));
