#!/usr/bin/env bash
# `just bench-join`: join storms of `dht-node cluster` (release build), 100 and 1,000 workers
# joining through the bootstrap tier the policy gives, paced (the default --max-joining) and,
# for 1,000, all at once; join time p50/p99 and time until all joined into the "join" section
# of BENCHMARKS.md, with the machine, the load and the exact commands.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

bin="$bin_dir/dht-node"
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
machine=$(machine_line)
echo "bench-join: $machine"

# Datagrams the kernel dropped because a UDP socket's receive buffer was full (all sockets).
receive_buffer_drops() {
    awk '/^Udp:/ { row++ } /^Udp:/ && row == 2 { print $6 }' /proc/net/snmp
}

fragment="$results_dir/join.md"
{
    printf 'Run %s, %s at start (the machine is shared).\n\n' "$started_at" "$machine"
    printf '| command | tier | bootstrap nodes | workers joined | join p50 | join p99 | all joined after | joins served per bootstrap node | receive-buffer drops |\n'
    printf '|---|---|---:|---:|---:|---:|---:|---|---:|\n'
} >"$fragment"

for flags in "--workers 100" "--workers 1000" "--workers 1000 --max-joining 0"; do
    command="dht-node cluster $flags < /dev/null"
    echo "--- $command"
    drops_before=$(receive_buffer_drops)
    # shellcheck disable=SC2086 # the flags are words
    table=$("$bin" cluster $flags </dev/null | sed '/^== final ==$/,$d')
    drops=$(($(receive_buffer_drops) - drops_before))
    printf '%s\n' "$table"
    tier=$(awk '$1 == "tier" { print $2; exit }' <<<"$table")
    bootstraps=$(sed -n 's/^bootstrap  *\([0-9]*\) running of.*/\1/p' <<<"$table" | head -1)
    workers=$(sed -n 's/^workers  *\([0-9/]*\) joined$/\1/p' <<<"$table" | head -1)
    read -r p50 p99 all_joined < <(sed -n \
        's/^join time  *p50 \([0-9.]*\) ms  p99 \([0-9.]*\) ms .*all joined in \([0-9.]*\) s)$/\1 \2 \3/p' \
        <<<"$table" | head -1)
    served=$(awk '$1 ~ /^[0-9]+$/ && $3 == "running" { printf "%s%s", sep, $4; sep = ", " }' <<<"$table")
    # shellcheck disable=SC2016 # the backquotes are Markdown
    printf '| `%s` | %s | %s | %s | %s ms | %s ms | **%s s** | %s | %s |\n' \
        "$command" "$tier" "$bootstraps" "$workers" "$p50" "$p99" "${all_joined:-not all}" \
        "$served" "$drops" >>"$fragment"
done

{
    printf '\nJoin time: from the worker node'"'"'s start to its bootstrap manager reporting it joined.\n'
    printf 'All joined after: from the first new worker'"'"'s start to the last join.\n'
    # shellcheck disable=SC2016 # the backquotes are Markdown
    printf 'Target: 1,000 workers all joined in under 5 s. Binary: `%s`.\n' "$bin"
} >>"$fragment"

replace_section join "Join storm (dht-node cluster)" "$fragment"
echo "bench-join: BENCHMARKS.md updated"
