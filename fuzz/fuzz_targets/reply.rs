//! The `reply` target: see fuzz/README.md and `openim_callback_gateway_fuzz::reply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    openim_callback_gateway_fuzz::reply(openim_callback_gateway_fuzz::harness(), data);
});
