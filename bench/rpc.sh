#!/usr/bin/env bash
# `just bench-rpc`: find_node answers per second of one node on one core, dht-node against the
# Python kademlia 2.2.3 node in the same run. Each node runs pinned to core $BENCH_SERVER_CORE
# (0) and is loaded by rpc-load (node/src/bin/rpc-load.rs) pinned to core $BENCH_LOAD_CORE (1):
# the same 200 seeded contacts, 8 source sockets, closed-loop steps of 8, 32 and 128
# outstanding requests, $BENCH_RPC_STEP_SECS (3) seconds each; only 127.0.0.1.
# Writes target/bench/rpc-{dht-node,python}.json, rpc.json and the "rpc" section of BENCHMARKS.md.
# Needs the release binaries (dht-node, rpc-load; of BENCH_TARGET, see bench/lib.sh) and .venv
# (just interop-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

server_core=${BENCH_SERVER_CORE:-0}
load_core=${BENCH_LOAD_CORE:-1}
step_secs=${BENCH_RPC_STEP_SECS:-3}
outstanding=${BENCH_RPC_OUTSTANDING:-8,32,128}
contacts=${BENCH_RPC_CONTACTS:-200}
sockets=${BENCH_RPC_SOCKETS:-8}
rpc_load="$bin_dir/rpc-load"
dht_node="$bin_dir/dht-node"
python=.venv/bin/python

server_pid=
stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT

# measure LABEL PORT: loads the node started in the background on 127.0.0.1:PORT.
measure() {
    local label=$1 port=$2
    taskset -c "$load_core" "$rpc_load" --target "127.0.0.1:$port" --server-pid "$server_pid" \
        --label "$label" --seed-contacts "$contacts" --sockets "$sockets" \
        --outstanding "$outstanding" --step-secs "$step_secs" >"$results_dir/rpc-$label.json"
    stop_server
}

started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
machine=$(machine_line)
echo "bench-rpc: $machine"
port=$(shuf -i 40000-59999 -n 1)

# The per-source rate limits are off: 8 load sockets would otherwise measure the limit (2,000
# requests/s each by default), and the Python node has none.
dht_node_command=(taskset -c "$server_core" "$dht_node" bootstrap --port "$port" --host 127.0.0.1
    --admin-addr 127.0.0.1:0 --max-requests-per-source 0 --max-answer-bytes-per-source 0)
"${dht_node_command[@]}" 2>"$results_dir/rpc-dht-node.log" &
server_pid=$!
measure dht-node "$port"

python_command=(env DHT_PORT="$((port + 1))" DHT_HOST=127.0.0.1 taskset -c "$server_core" "$python"
    interop/pyworker.py)
"${python_command[@]}" 2>"$results_dir/rpc-python.log" &
server_pid=$!
measure python "$((port + 1))"

load_command="taskset -c $load_core $rpc_load --target 127.0.0.1:PORT --server-pid PID --seed-contacts $contacts --sockets $sockets --outstanding $outstanding --step-secs $step_secs"
jq -n --slurpfile dht "$results_dir/rpc-dht-node.json" --slurpfile py "$results_dir/rpc-python.json" \
    --arg started "$started_at" --arg machine "$machine" --arg load_end "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --arg dht_cmd "${dht_node_command[*]}" --arg py_cmd "${python_command[*]}" --arg load_cmd "$load_command" '
    {started: $started, machine: $machine, load_average_at_end: $load_end,
     commands: {dht_node: $dht_cmd, python: $py_cmd, load: $load_cmd},
     dht_node: $dht[0], python: $py[0],
     ratio_answers_per_second: ($dht[0].best.answers_per_second / $py[0].best.answers_per_second),
     most_per_cpu_second: {dht_node: ([$dht[0].steps[].answers_per_cpu_second] | max),
                           python: ([$py[0].steps[].answers_per_cpu_second] | max)}}
    | .ratio_answers_per_cpu_second = (.most_per_cpu_second.dht_node / .most_per_cpu_second.python)
' >"$results_dir/rpc.json"

fragment="$results_dir/rpc.md"
jq -r '
  def n: if . == null then "-" else (. + 0.5 | floor | tostring) end;
  def f2: if . == null then "-" else ((. * 100 | round) / 100 | tostring) end;
  def row(name): "| \(name) | \(.outstanding) | \(.answers_per_second | n) | \(.server_cpu_seconds | f2) | \(.answers_per_cpu_second | n) | \(.lost) | \(.malformed) |";
  "Run \(.started), \(.machine) at start, \(.load_average_at_end) at end (the machine is shared;",
  "other work ran on both cores, so the per-CPU-second figures are the steadier ones).",
  "",
  "Each node alone on core 0, the load generator on core 1, \(.dht_node.step_seconds) s per step. Both nodes",
  "first get the same \(.dht_node.seed_contacts) contacts (same node ids, by real pings from the generator; answered:",
  "dht-node \(.dht_node.seed_contacts_answered), Python \(.python.seed_contacts_answered)) plus the \(.dht_node.sockets) load sockets; distinct contacts",
  "seen in their answers: dht-node \(.dht_node.steps[0].distinct_contacts_in_answers), Python \(.python.steps[0].distinct_contacts_in_answers). Every request asks for a random key.",
  "",
  "| node | outstanding | answers/s | server CPU s | answers per CPU-second | lost | malformed |",
  "|---|---:|---:|---:|---:|---:|---:|",
  (.dht_node.steps[] | row("dht-node")),
  (.python.steps[] | row("Python kademlia 2.2.3")),
  "",
  "Most answers per second: dht-node **\(.dht_node.best.answers_per_second | n)**, Python **\(.python.best.answers_per_second | n)**;",
  "most answers per CPU-second (per core): dht-node **\(.most_per_cpu_second.dht_node | n)**, Python **\(.most_per_cpu_second.python | n)**.",
  "Ratio dht-node / Python in this run: **\(.ratio_answers_per_second | f2)x** answers/s, **\(.ratio_answers_per_cpu_second | f2)x** answers per CPU-second",
  "(targets: at least 30x, and at least 50,000 answers per second on one core).",
  "",
  "Commands (`just bench-rpc` runs them; PORT is random, PID is the node'"'"'s):",
  "",
  "```",
  .commands.dht_node,
  .commands.python,
  .commands.load,
  "```"
' "$results_dir/rpc.json" >"$fragment"
replace_section rpc "find_node answers per second, one core (just bench-rpc)" "$fragment"
cat "$fragment"
