//! The `decode` target: see fuzz/README.md and `openim_callback_gateway_fuzz::decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    openim_callback_gateway_fuzz::decode(openim_callback_gateway_fuzz::harness(), data);
});
