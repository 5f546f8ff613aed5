# kadscale: every task a person runs. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Run every test suite: unit, interop, e2e.
test: test-unit test-interop

# Rust unit and integration tests of the whole workspace.
test-unit:
    cargo test --workspace --all-targets

# Interop tests against the real PyPI kademlia 2.2.3: Python nodes and dht-node processes on 127.0.0.1.
test-interop: interop-venv
    cargo build -p kadscale-node --bin dht-node
    DHT_NODE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/dht-node" .venv/bin/python -m pytest interop/ -q

# The virtualenv .venv with the interop tests' Python packages (interop/requirements.txt).
interop-venv:
    test -x .venv/bin/python || python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r interop/requirements.txt

# Regenerate node/tests/fixtures/python_datagrams.json from real Python kademlia nodes.
capture-fixtures: interop-venv
    .venv/bin/python interop/capture_fixtures.py

# Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and helm from Go
# modules into ~/.cache/kadscale/bin (once per version; a cold build takes a long while).
controlplane:
    e2e/controlplane/build.sh

# Start a test cluster on 127.0.0.1 (kwok nodes), or `just cluster-up kind` where Docker runs.
# Writes the admin kubeconfig to e2e/.run/kubeconfig.
cluster-up mode="local":
    e2e/controlplane/up.sh {{mode}}

# Stop the test cluster and remove its state.
cluster-down:
    e2e/controlplane/down.sh
