#!/usr/bin/env bash
# `just bench-storm`: N workers (BENCH_STORM_SIZES, 100,500,1000) join at once through the
# bootstrap tier the policy gives for N, Python kademlia 2.2.3 nodes against dht-node, the same
# process layout for both (bench/storm.py says which), and at BENCH_STORM_PER_PROCESS_SIZES (100)
# with every worker a process of its own. Writes target/bench/storm.json, the plot
# bench/join-storm.svg and the "storm" section of BENCHMARKS.md.
# `bench/storm.sh --smoke` (part of `just test`): 10 workers, checked, nothing written outside
# target/bench. Needs dht-node and join-load (release; --smoke: BENCH_PROFILE, default debug)
# and .venv (just interop-venv). BENCH_TARGET=x86_64-unknown-linux-musl (which `just bench-storm`
# sets) measures the image's static binaries, built by `just node-release`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

machine=$(machine_line)
if [[ ${1:-} == --smoke ]]; then
    BENCH_PROFILE=${BENCH_PROFILE:-debug} .venv/bin/python bench/storm.py --sizes 10 --group 5 --per-process-sizes 3 \
        --machine "$machine" --json "$results_dir/storm-smoke.json" \
        --markdown "$results_dir/storm-smoke.md" --svg "$results_dir/storm-smoke.svg" \
        --log "$results_dir/storm-smoke.log" --check
    exit
fi
echo "bench-storm: $machine"
plot=bench/join-storm.svg
.venv/bin/python bench/storm.py --sizes "${BENCH_STORM_SIZES:-100,500,1000}" \
    --per-process-sizes "${BENCH_STORM_PER_PROCESS_SIZES-100}" \
    --group "${BENCH_STORM_GROUP:-50}" --machine "$machine" --json "$results_dir/storm.json" \
    --markdown "$results_dir/storm.md" --svg "$plot" --svg-link "$plot" --log "$results_dir/storm.log"
replace_section storm "Join storm side by side: dht-node against Python kademlia (just bench-storm)" \
    "$results_dir/storm.md"
cat "$results_dir/storm.md"
