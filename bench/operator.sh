#!/usr/bin/env bash
# `just bench-operator`: the operator on a local control plane with kwok (kadscale_e2e::bench,
# e2e/src/bin/operator-bench.rs). Starts a cluster of its own (run dir e2e/.run-bench, ports
# 26443 etc., 12 kwok nodes x 1,000 pods), so a test cluster on the default ports is never
# touched, and tears it down at the end. Needs the release builds of dht-operator and
# operator-bench. Writes target/bench/operator.json, bench/operator-tiers.svg and the
# "operator" section of BENCHMARKS.md.
# Sizes: BENCH_OPERATOR_ARGS (e.g. "--clusters 20") is passed on to operator-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

# The bench cluster's own settings, whatever KADSCALE_* the caller's shell holds for another one.
export KADSCALE_RUN_DIR="${BENCH_OPERATOR_RUN_DIR:-$PWD/e2e/.run-bench}"
export KADSCALE_APISERVER_PORT="${BENCH_OPERATOR_APISERVER_PORT:-26443}"
export KADSCALE_ETCD_CLIENT_PORT="${BENCH_OPERATOR_ETCD_CLIENT_PORT:-33790}"
export KADSCALE_ETCD_PEER_PORT="${BENCH_OPERATOR_ETCD_PEER_PORT:-33800}"
export KADSCALE_CONTROLLER_MANAGER_PORT="${BENCH_OPERATOR_CONTROLLER_MANAGER_PORT:-20357}"
export KADSCALE_SCHEDULER_PORT="${BENCH_OPERATOR_SCHEDULER_PORT:-20359}"
export KADSCALE_KWOK_PORT="${BENCH_OPERATOR_KWOK_PORT:-20347}"
# 100 clusters x (100 workers + 4 bootstraps) = 10,400 pods, plus room; a node's /22 holds 1,000.
export KADSCALE_KWOK_NODES="${BENCH_OPERATOR_KWOK_NODES:-12}"
export KADSCALE_KWOK_PODS_PER_NODE="${BENCH_OPERATOR_KWOK_PODS_PER_NODE:-1000}"
# The e2e suite audits the chart's ServiceAccounts; the benchmark measures without that log.
export KADSCALE_AUDITED_GROUP="kadscale-bench-audits-nobody"

operator_bin="$target_dir/release/dht-operator"
bench_bin="$target_dir/release/operator-bench"
svg=bench/operator-tiers.svg
json="$results_dir/operator.json"

# A fresh cluster every run: its node capacity and state are the benchmark's.
e2e/controlplane/down.sh >/dev/null
trap 'e2e/controlplane/down.sh' EXIT
cluster_started=$SECONDS
e2e/controlplane/up.sh
cluster_up_s=$((SECONDS - cluster_started))
# shellcheck source=/dev/null # written by up.sh
source "$KADSCALE_RUN_DIR/env"

started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
machine=$(machine_line)
echo "bench-operator: $machine"
# shellcheck disable=SC2206 # the extra arguments are words
extra_args=(${BENCH_OPERATOR_ARGS:-})
command=("$bench_bin" --json "$json" --svg "$svg" --subtitle "just bench-operator, $started_at, $(nproc) cores" "${extra_args[@]}")
KADSCALE_OPERATOR_BIN="$operator_bin" KADSCALE_E2E_REQUIRED=1 "${command[@]}"

component_rss() {
    local pid
    pid=$(cat "$KADSCALE_RUN_DIR/cluster/pids/$1.pid")
    awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status"
}
peaks="kube-apiserver $(component_rss kube-apiserver) MB, etcd $(component_rss etcd) MB, kube-controller-manager $(component_rss kube-controller-manager) MB, kwok $(component_rss kwok) MB"

fragment="$results_dir/operator.md"
jq -r --arg started "$started_at" --arg machine "$machine" --arg load_end "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --arg command "$(printf '%q ' "${command[@]/#$PWD\//}")" --arg operator_bin "${operator_bin/#$PWD\//}" --arg svg "$svg" \
    --arg nodes "$KADSCALE_KWOK_NODES" --arg per_node "$KADSCALE_KWOK_PODS_PER_NODE" \
    --arg cluster_up "$cluster_up_s" --arg peaks "$peaks" '
  def f1: (. * 10 | round) / 10 | tostring;
  def f2: (. * 100 | round) / 100 | tostring;
  def mb: . / 1048576 | f1;
  def verdict(ok): if ok then "met" else "**missed**" end;
  "Run \($started), \($machine) at start, \($load_end) at end (the machine is shared).",
  "Cluster: kube-apiserver, etcd, kube-controller-manager, kube-scheduler and kwok v1.33 on 127.0.0.1,",
  "\(.nodes) kwok nodes with room for \(.pod_capacity) pods (\($nodes) x \($per_node)), up in \($cluster_up) s. Operator: `\($operator_bin) run` as a local",
  "process with the chart'"'"'s ServiceAccount token, one namespace watched, log level info.",
  "",
  "| measure | figure | target |",
  "|---|---:|---|",
  "| scale → StatefulSet updated, settled cluster, p50 (\(.scale.changes | length) tier changes) | **\(.scale.p50_ms | f1) ms** | under 100 ms: \(verdict(.scale.p50_ms < 100)) |",
  "| … p99 / max | \(.scale.p99_ms | f1) ms / \(.scale.max_ms | f1) ms | |",
  "| … the scale PATCH itself, p50 | \(.scale.request_p50_ms | f1) ms | |",
  "| scale → StatefulSet updated, back to back (pods still moving), p50 / p99 (\(.busy_scale.changes | length) changes) | \(.busy_scale.p50_ms | f1) ms / \(.busy_scale.p99_ms | f1) ms | |",
  (if .xlarge then
    "| xlarge, \(.xlarge.workers) workers + \(.xlarge.bootstraps) bootstraps: create → Ready | **\(.xlarge.ready_s | f1) s** | |",
    "| … first status / bootstraps Ready / workers applied | \(.xlarge.reconciled_s | f2) s / \(.xlarge.bootstrap_ready_s | f1) s / \(.xlarge.workers_applied_s | f1) s | |"
  else empty end),
  "| \(.clusters.clusters) DhtClusters created at once: all reconciled | **\(.clusters.reconciled_s | f2) s, \(.clusters.reconciled_per_second | f1) clusters/s** | |",
  (if .clusters.ready_s then
    "| … all Ready (\(.clusters.pods_ready) pods Ready) | \(.clusters.ready_s | f1) s | |"
  else
    "| … all Ready | **not within \(.sizes.ready_timeout.secs) s: \(.clusters.pods_ready) of \(.clusters.pods_wanted) pods Ready** | |"
  end),
  "| … all scaled by one worker at once: all reconciled | \(.clusters.rescaled_s | f2) s, \(.clusters.rescaled_per_second | f1) clusters/s | |",
  "| operator RSS, \(.clusters.clusters) clusters and \(.clusters.pods_ready) pods Ready, \(.sizes.settle.secs) s settled | **\(.clusters.settled_rss_bytes | mb) MB** | under 50 MB: \(verdict(.clusters.settled_rss_bytes < 50 * 1048576)) |",
  "| operator peak RSS over the run (VmHWM) | \(.operator.peak_rss_bytes | mb) MB | |",
  "| operator CPU over the run | \(.operator.cpu_seconds | f2) s | |",
  "| reconciles (errors), mean reconcile | \(.operator.reconciles) (\(.operator.reconcile_errors + 0)), \(.operator.mean_reconcile_ms | f1) ms | |",
  "| tier sweep: StatefulSet replicas as the policy says | \(.sweep | length) of \(.sweep | length) points\(if .sweep_mismatches > 0 then ", **\(.sweep_mismatches) differ**" else "" end) | |",
  "",
  "Operator per phase:",
  "",
  "| phase | wall s | operator CPU s | RSS at end | peak RSS |",
  "|---|---:|---:|---:|---:|",
  (.operator.phases[] | "| \(.phase) | \(.seconds | f1) | \(.cpu_seconds | f2) | \(.rss_bytes | mb) MB | \(.peak_rss_bytes | mb) MB |"),
  "",
  "Scale changes by step (workers, bootstrap replicas; scale → StatefulSet latency in ms):",
  "",
  "| change | settled: n | p50 | max | back to back: n | p50 | max |",
  "|---|---:|---:|---:|---:|---:|---:|",
  ((.scale.changes | map(. + {run: "settled"})) + (.busy_scale.changes | map(. + {run: "busy"}))
   | group_by("\(.from_workers)→\(.to_workers)") | sort_by(.[0].from_workers * 1000 + .[0].to_workers)[]
   | . as $step
   | def stats(run): [$step[] | select(.run == run) | .latency_ms] | sort
       | if length == 0 then "0 | - | -" else "\(length) | \(.[(length - 1) / 2 | floor] | f1) | \(.[-1] | f1)" end;
   "| \(.[0].from_workers) → \(.[0].to_workers) workers (\(.[0].from_bootstraps) → \(.[0].to_bootstraps)) | \(stats("settled")) | \(stats("busy")) |"),
  "",
  "Peak RSS of the control plane over the run: \($peaks).",
  "",
  "![bootstrap replicas and ratio against workers](\($svg))",
  "",
  "Command (`just bench-operator` runs it after starting the cluster):",
  "",
  "```",
  "KADSCALE_OPERATOR_BIN=\($operator_bin) \($command)",
  "```"
' "$json" >"$fragment"
replace_section operator "The operator on a local control plane (just bench-operator)" "$fragment"
cat "$fragment"
