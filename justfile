# kadscale: every task a person runs. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Run every test suite: unit, interop, e2e, and the benchmarks at a tiny size.
test: test-unit test-fuzz test-interop test-e2e test-bench-smoke

# A whole DHT in one process on 127.0.0.1: 10 -> 60 -> 300 workers, a bootstrap node killed on the way.
demo:
    cargo build -p kadscale-node --bin dht-node --bin dht-node-cluster
    "${CARGO_TARGET_DIR:-$PWD/target}/debug/dht-node" cluster --workers 10 --scenario scenarios/demo.txt

# Every benchmark (micro, rpc, join, operator, storm, capacity); figures, machine, load and commands go to BENCHMARKS.md.
bench: bench-micro bench-rpc bench-join bench-operator bench-storm bench-capacity

# Criterion benches (codec, routing table at 10k contacts, selection), short; to BENCHMARKS.md.
bench-micro:
    bench/micro.sh

# find_node answers/s on one core, dht-node vs the Python node, same run (~25 s); to BENCHMARKS.md.
bench-rpc: interop-venv (node-release "--bin dht-node --bin rpc-load")
    BENCH_TARGET={{node_target}} bench/rpc.sh

# Join storms of dht-node cluster: 100, then 1,000 workers through the policy's tier (~10 s); to BENCHMARKS.md.
bench-join: (node-release "--bin dht-node --bin dht-node-cluster")
    BENCH_TARGET={{node_target}} bench/join.sh

# Join storms side by side, Python kademlia vs dht-node, 100/500/1,000 workers (~1 min); to BENCHMARKS.md and bench/join-storm.svg.
bench-storm: interop-venv (node-release "--bin dht-node --bin join-load")
    BENCH_TARGET={{node_target}} bench/storm.sh

# Joins/s one bootstrap node sustains with p99 under 100 ms, dht-node vs Python, one core each (1 to 3 min); to BENCHMARKS.md.
bench-capacity: interop-venv (node-release "--bin dht-node --bin join-load")
    BENCH_TARGET={{node_target}} bench/capacity.sh

# The node benchmarks measure the binary the image ships: static, for musl (image/build-oci.sh).
node_target := "x86_64-unknown-linux-musl"

# Release builds of kadscale-node's binaries `bins` ("--bin dht-node ...") for the image's musl target.
node-release bins:
    rustup target list --installed | grep -qx {{node_target}} || rustup target add {{node_target}}
    cargo build --release --target {{node_target}} -p kadscale-node {{bins}}

# bench-storm (10 workers) and bench-capacity (one step) at a tiny size, checked; BENCHMARKS.md untouched.
test-bench-smoke: interop-venv
    cargo build -p kadscale-node --bin dht-node --bin join-load
    bench/storm.sh --smoke
    bench/capacity.sh --smoke

# The operator on a control plane of its own (e2e/.run-bench, port 26443): scale latency, tier plot, 100 DhtClusters, CPU, RSS; to BENCHMARKS.md.
bench-operator:
    cargo build --release -p kadscale-operator --bin dht-operator -p kadscale-e2e --bin operator-bench
    bench/operator.sh

# Rust unit and integration tests of the whole workspace (the e2e crate runs in test-e2e).
test-unit:
    cargo test --workspace --exclude kadscale-e2e --all-targets

# The datagram decoder's fuzz target (cargo-fuzz, stable Rust) for a fixed number of inputs (~10 s).
test-fuzz runs="1000000":
    node/fuzz/run.sh {{runs}}

# End-to-end tests of the chart, the operator and the image, on the test cluster (started if down).
test-e2e mode="local": (cluster-up mode) image-oci
    cargo build -p kadscale-operator --bin dht-operator
    KUBECONFIG="$PWD/e2e/.run/kubeconfig" KADSCALE_E2E_REQUIRED=1 KADSCALE_OPERATOR_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/dht-operator" cargo test -p kadscale-e2e --no-fail-fast

# Build the image (static binaries, user 65532) with umoci, no Docker: target/image/*.oci.tar.
image-oci:
    image/build-oci.sh

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

# Build (or reuse from ~/.cache/kadscale/bin) etcd, kube-*, kwok and helm from Go modules.
controlplane:
    e2e/controlplane/build.sh

# Start the test cluster on 127.0.0.1 with kwok nodes (or `kind`); kubeconfig: e2e/.run/kubeconfig.
cluster-up mode="local":
    e2e/controlplane/up.sh {{mode}}

# Stop the test cluster and remove its state.
cluster-down:
    e2e/controlplane/down.sh

# Regenerate crds/dhtcluster.yaml from the DhtCluster type (a unit test fails while it is stale).
crds:
    cargo run -q -p kadscale-operator --bin dht-operator -- crd > crds/dhtcluster.yaml

# The operator on the local cluster: helm install, apply an example, scale it through every tier.
demo-k8s:
    e2e/demo-k8s.sh

# Build the image with a Docker engine (where one runs): kadscale/kadscale:<version>.
image:
    docker build -f image/Dockerfile -t kadscale/kadscale:$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1) .
