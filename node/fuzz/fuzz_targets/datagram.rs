//! Fuzzes the datagram decoder with whatever libFuzzer invents: decoding must never panic, and
//! re-encoding what decoded must be stable (`kadscale_node::codec::check_decoder`).
//! `just test-fuzz` (part of `just test`) runs it for a fixed number of inputs: `node/fuzz/run.sh`;
//! open-ended: `cd node/fuzz && cargo fuzz run datagram --sanitizer none` (or `cargo +nightly fuzz
//! run datagram` for AddressSanitizer too).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kadscale_node::codec::check_decoder(data);
});
