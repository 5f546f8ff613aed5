#!/usr/bin/env bash
# `just bench-capacity`: the highest rate of joins per second one bootstrap node sustains with
# join p99 under 100 ms, dht-node against the Python kademlia 2.2.3 node; the node on core
# BENCH_SERVER_CORE (0), the load on BENCH_LOAD_CORE (1), rates BENCH_CAPACITY_RATES (rising)
# of BENCH_CAPACITY_SECS (2) s each. Writes target/bench/capacity.json and the "capacity"
# section of BENCHMARKS.md. `bench/capacity.sh --smoke` (part of `just test`): one step of
# 100 joins/s for 1 s, checked, nothing written outside target/bench.
# Needs dht-node and join-load (release; --smoke: BENCH_PROFILE, default debug) and .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

machine=$(machine_line)
# On a one-core machine (a small CI runner) node and load share core 0.
cores=(--server-core "${BENCH_SERVER_CORE:-0}" --load-core "${BENCH_LOAD_CORE:-$(($(nproc) > 1 ? 1 : 0))}")
if [[ ${1:-} == --smoke ]]; then
    BENCH_PROFILE=${BENCH_PROFILE:-debug} .venv/bin/python bench/capacity.py --rates 100 --secs 1 \
        "${cores[@]}" --machine "$machine" --json "$results_dir/capacity-smoke.json" \
        --markdown "$results_dir/capacity-smoke.md" --log "$results_dir/capacity-smoke.log" --check
    exit
fi
echo "bench-capacity: $machine"
rates=(${BENCH_CAPACITY_RATES:+--rates "$BENCH_CAPACITY_RATES"})
.venv/bin/python bench/capacity.py "${rates[@]}" --secs "${BENCH_CAPACITY_SECS:-2}" "${cores[@]}" \
    --machine "$machine" --json "$results_dir/capacity.json" \
    --markdown "$results_dir/capacity.md" --log "$results_dir/capacity.log"
replace_section capacity "Bootstrap capacity: joins per second one node sustains (just bench-capacity)" \
    "$results_dir/capacity.md"
cat "$results_dir/capacity.md"
