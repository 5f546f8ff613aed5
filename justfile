# kadscale: every task a person runs. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Run every test suite: unit, interop, e2e.
test: test-unit

# Rust unit and integration tests of the whole workspace.
test-unit:
    cargo test --workspace --all-targets
