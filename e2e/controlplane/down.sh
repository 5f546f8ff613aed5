#!/usr/bin/env bash
# Stops the cluster that up.sh started (local processes or kind) and removes its state:
# etcd data, certificates, kubeconfigs. Logs of a local cluster stay in e2e/.run/logs.
# Usage: down.sh [kind]   (up.sh remembers the mode; `kind` also deletes the kind cluster)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

lock_run_dir
mode="${1:-}"
case "$mode" in
  "" | local | kind) ;;
  *)
    echo "cluster-down: unknown mode '$mode' (expected nothing, 'local' or 'kind')" >&2
    exit 2
    ;;
esac
if [[ -z "$mode" && -f "$STATE_DIR/mode" ]]; then
  mode="$(cat "$STATE_DIR/mode")"
fi
if [[ "$mode" == kind ]] && command -v kind >/dev/null &&
  kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER_NAME"; then
  kind delete cluster --name "$KIND_CLUSTER_NAME"
fi
# Always: stops whatever local components are recorded (none in kind mode), removes the state.
stop_local_cluster
echo "cluster is down"
