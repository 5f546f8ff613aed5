//! Fuzzes the datagram decoder with whatever libFuzzer invents: decoding must never panic, and
//! re-encoding what decoded must be stable (`kadscale_node::codec::check_decoder`).
//! Run: `cd node/fuzz && cargo +nightly fuzz run datagram`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kadscale_node::codec::check_decoder(data);
});
