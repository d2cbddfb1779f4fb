#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keybag_fuzzing::server_requests(data));
