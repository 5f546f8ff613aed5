# kadscale: every task a person runs. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Run every test suite: unit, interop, e2e.
test: test-unit

# Rust unit and integration tests of the whole workspace.
test-unit:
    cargo test --workspace --all-targets

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
