#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| profiler_agent_fuzz::go_runtime(data));
