#!/usr/bin/env bash
# `just bench-micro`: the criterion benches of kadscale-node (codec encode/decode, routing table
# insert and closest-k at 10,000 contacts offered, closest-k at 200, one lookup's own work in a
# 200-node network, bootstrap selection next to an atomic increment) with short warm-up and
# measurement times ($BENCH_MICRO_SECS, 2 s each), then their mean times from target/criterion
# into target/bench/micro.json and the "micro" section of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

measure_secs=${BENCH_MICRO_SECS:-2}
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
machine=$(machine_line)
echo "bench-micro: $machine"
# Only the results this run writes are reported: criterion keeps older ones next to them.
stamp="$results_dir/micro.stamp"
touch "$stamp"
command=(cargo bench -p kadscale-node --bench codec --bench routing --bench lookup --bench selection --
    --warm-up-time 1 --measurement-time "$measure_secs" --noplot)
"${command[@]}"

find "$target_dir/criterion" -path '*/new/benchmark.json' -newer "$stamp" -print0 |
    while IFS= read -r -d '' benchmark; do
        jq -c --slurpfile estimates "$(dirname "$benchmark")/estimates.json" \
            '{group: .group_id, name: .function_id, mean_ns: $estimates[0].mean.point_estimate,
              elements: (.throughput.Elements // 1)}' "$benchmark"
    done |
    jq -s --arg started "$started_at" --arg machine "$machine" --arg command "${command[*]}" '
        {started: $started, machine: $machine, command: $command,
         benches: (sort_by(.group, .name)
                   | map(. + {per_second: (.elements / .mean_ns * 1e9)}))}
    ' >"$results_dir/micro.json"

fragment="$results_dir/micro.md"
jq -r '
  def time: if . >= 1e6 then "\(. / 1e4 | round / 100) ms" elif . >= 1e3 then "\(. / 10 | round / 100) µs" else "\(. * 10 | round / 10) ns" end;
  def rate: if . >= 1e6 then "\(. / 1e4 | round / 100) M/s" elif . >= 1e3 then "\(. / 10 | round / 100) k/s" else "\(. | round)/s" end;
  (.benches | map(select(.name == "baseline_atomic_increment")) | first | .mean_ns) as $atomic |
  "Run \(.started), \(.machine) at start (shared machine; criterion means, short measurement times).",
  "",
  "| group | benchmark | mean time | elements per second | vs atomic increment |",
  "|---|---|---:|---:|---:|",
  (.benches[] | "| \(.group) | \(.name) | \(.mean_ns | time) | \(.per_second | rate) | \(if .group | startswith("selection") then "\(.mean_ns / $atomic * 10 | round / 10)x" else "" end) |"),
  "",
  "The routing insert row counts the 10,000 contacts offered per iteration as its elements; closest-k",
  "queries the table those 10,000 offers left, and one of 200 (about what the node of bench-rpc holds)",
  "(k = 20, buckets split as in the Python package).",
  "The lookup row is the state machine of one find_node lookup in a 200-node network where every",
  "node holds every other (k = 25, alpha = 3, as in bench-storm): merging the answers and choosing",
  "whom to ask, without sockets; the answers of the nodes are computed outside the timing.",
  "Selection picks 3 of 6 bootstrap endpoints; its last column is its time over an atomic",
  "increment measured in the same run (target: within 20x, and 10,000,000 selections per second).",
  "",
  "Command (`just bench-micro`):",
  "",
  "```",
  .command,
  "```"
' "$results_dir/micro.json" >"$fragment"
replace_section micro "Micro-benchmarks (just bench-micro)" "$fragment"
cat "$fragment"
