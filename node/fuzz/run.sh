#!/usr/bin/env bash
# Runs the datagram decoder's fuzz target for a fixed number of inputs (default 1,000,000, 5 to
# 15 s) from a fixed libFuzzer seed, starting from the datagrams the Python package produced
# (node/tests/fixtures/python_datagrams.json), so that every run of `just test` explores the
# same inputs. Fails on the first input that panics the decoder (libFuzzer prints it and saves
# it under node/fuzz/artifacts/datagram/).
#
# Stable Rust: `--sanitizer none` needs none of nightly's -Z flags, and the decoder has no
# unsafe code for AddressSanitizer to watch; coverage instrumentation (SanitizerCoverage) is on.
# Needs cargo-fuzz (.ci/run installs it). Builds in "${CARGO_TARGET_DIR:-target}/fuzz".
set -euo pipefail
cd "$(dirname "$0")"
runs="${1:-1000000}"
target_dir="${CARGO_TARGET_DIR:-$(cd ../.. && pwd)/target}/fuzz"
corpus="$target_dir/datagram-corpus"
seeds="$target_dir/datagram-seeds"
rm -rf "$corpus" "$seeds"
mkdir -p "$corpus" "$seeds"
python3 - ../tests/fixtures/python_datagrams.json "$seeds" <<'EOF'
import json, pathlib, sys
fixtures, seeds = sys.argv[1], pathlib.Path(sys.argv[2])
for fixture in json.load(open(fixtures)):
    (seeds / fixture["name"]).write_bytes(bytes.fromhex(fixture["hex"]))
EOF
# libFuzzer writes its findings into the first directory and only reads the seeds. Left out of
# the output: each new input, the suggested dictionary, and the warnings about sanitizer hooks
# that --sanitizer none leaves out on purpose.
cargo fuzz run datagram --sanitizer none --target-dir "$target_dir" "$corpus" "$seeds" -- \
  -runs="$runs" -seed=1 -print_final_stats=1 2>&1 |
  grep -v -e '^#[0-9]*[[:space:]]*\(NEW\|REDUCE\|pulse\)' -e '^[[:space:]]*NEW_FUNC' \
    -e '^"' -e 'ecommended dictionary' -e 'Failed to find function "__sanitizer_'
