//! The `status` target: see fuzz/README.md and `openim_callback_gateway_fuzz::status`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    openim_callback_gateway_fuzz::status(openim_callback_gateway_fuzz::harness(), data);
});
