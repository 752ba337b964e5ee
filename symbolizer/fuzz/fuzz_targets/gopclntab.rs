#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| symbolizer::fuzzing::gopclntab(data));
